"""The kNN baseline model: pretrained embeddings of the training covers in a faiss index, a cover's genre is the
vote of its k nearest. No training (the run kind ``knn``, :mod:`covers.run.knn`, evaluates and tracks it)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, log_loss

from covers.data import DataBundle
from covers.knn import faiss_index
from covers.models.embed import create_backbone
from covers.serving.cover_model import GALLERY_COLUMNS, CoverModel
from covers.training.runtime import create_runtime

log = logging.getLogger(__name__)


def create_knn_model(
    classes: list[str],
    image_size: int,
    mean: list[float],
    std: list[float],
    name: str = "tf_efficientnet_lite0",
    weights: str = "package",
    checkpoint: str | None = None,
    k: int = 10,
    weighting: str = "similarity",
    temperature: float = 0.1,
    index: str = "flat",
    device: str = "auto",
    batch_size: int = 64,
) -> CoverModel:
    """A kNN :class:`CoverModel` over a pretrained backbone; its gallery is added with ``set_gallery``."""
    if int(k) < 1 or weighting not in faiss_index.WEIGHTINGS or index not in faiss_index.INDEX_KINDS:
        raise ValueError(
            f"kNN model needs k>=1, weighting in {faiss_index.WEIGHTINGS}, index in {faiss_index.INDEX_KINDS}; "
            f"got k={k!r} weighting={weighting!r} index={index!r}"
        )
    log.info("instantiating kNN model on %s (weights=%s, k=%d, %s votes)", name, weights, k, weighting)
    meta = {
        "kind": "knn",
        "model_name": name,
        "weights": weights,
        "checkpoint": checkpoint,
        "classes": list(classes),
        "num_classes": len(classes),
        "image_size": int(image_size),
        "mean": list(mean),
        "std": list(std),
        "knn": {"k": int(k), "weighting": weighting, "temperature": float(temperature)},
        "index": index,
    }
    backbone = create_backbone(name, weights, checkpoint)
    return CoverModel(backbone, meta, rt=create_runtime(device, "fp32"), batch_size=batch_size)


def split_rows(bundle: DataBundle, *splits: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Images and their (archive, member, genre) rows for the given splits, in manifest order."""
    mask = bundle.manifest["split"].isin(splits).to_numpy()
    table = bundle.manifest.loc[mask, ["archive", "member", "label"]].rename(columns={"label": "genre"})
    return bundle.images[mask], table[GALLERY_COLUMNS].reset_index(drop=True)


def cached_embeddings(model: CoverModel, images: np.ndarray, key: str, cache_dir: str | Path) -> np.ndarray:
    """``model.embed(images)``, memoised on disk under ``key`` (trials of a kNN sweep share one pass)."""
    meta = model.meta
    ident = json.dumps([key, meta["model_name"], meta["weights"], meta["checkpoint"], meta["mean"], meta["std"]])
    path = Path(cache_dir) / "embeddings" / f"{hashlib.sha256(ident.encode()).hexdigest()[:20]}.npy"
    if path.exists():
        vectors = np.load(path)
        if len(vectors) == len(images):
            return vectors
    vectors = model.embed(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    return vectors


def evaluate_knn(model: CoverModel, queries: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Validation metrics of the kNN vote for query embeddings, and the predicted classes."""
    probs = model.vote(queries)
    pred = probs.argmax(1)
    metrics = {
        "val_acc": float((pred == labels).mean()),
        "val_loss": float(log_loss(labels, probs, labels=list(range(len(model.classes))))),
        "val_balanced_acc": float(balanced_accuracy_score(labels, pred)),
    }
    return metrics, pred
