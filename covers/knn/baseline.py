"""The kNN baseline (``model=knn``): pretrained embeddings of the training covers in a faiss index, a cover's
genre is the vote of its k nearest. No training; tracked exactly like a fine-tuned run (``val_acc``,
``summary/best_val_acc``, ``model/meta.json``) so the MLflow UI compares both and ``promote`` can pick either."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import balanced_accuracy_score, log_loss

from covers.data import DataBundle
from covers.knn import faiss_index
from covers.models.embed import create_backbone
from covers.reporting.figures import plot_confusion_matrix
from covers.serving.cover_model import GALLERY_COLUMNS, CoverModel
from covers.sweep.trial_reporter import reporter_for
from covers.tracking import runs
from covers.training.loop import create_runtime, seed_everything, set_threads

log = logging.getLogger(__name__)

# config groups that mean nothing to a model that is not trained; left out of the run record
_UNUSED_GROUPS = ("optim", "loss", "freeze", "aug", "promote")


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
    kind: str = "knn",
    device: str = "auto",
    batch_size: int = 64,
) -> CoverModel:
    """A kNN :class:`CoverModel` over a pretrained backbone; its gallery is added with ``set_gallery``."""
    if kind != "knn" or int(k) < 1 or weighting not in faiss_index.WEIGHTINGS or index not in faiss_index.INDEX_KINDS:
        raise ValueError(
            f"kNN model needs kind=knn, k>=1, weighting in {faiss_index.WEIGHTINGS}, "
            f"index in {faiss_index.INDEX_KINDS}; "
            f"got kind={kind!r} k={k!r} weighting={weighting!r} index={index!r}"
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


def knn_run_name(cfg: DictConfig) -> str:
    """``trial-3 knn k=10 similarity``."""
    head = f"trial-{cfg.trial.number}" if cfg.trial.number is not None else cfg.model.name
    return f"{head} knn k={cfg.model.k} {cfg.model.weighting}"


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


def train_knn(cfg: DictConfig, on_epoch_end=None) -> dict[str, Any]:
    """Evaluate the kNN baseline on the validation split and track it like a training run."""
    from covers.run.finetune import intra_op_threads, load_data, log_run_record, tracked_run

    seed_everything(cfg.seed)
    set_threads(intra_op_threads(cfg.trainer.threads))
    bundle, inp = load_data(cfg)
    model = instantiate(
        cfg.model,
        classes=bundle.classes,
        device=cfg.trainer.device,
        batch_size=cfg.data.eval_batch_size,
        _convert_="all",
        **inp,
    )
    fitted = bundle.manifest["split"].isin(["train", "val"]).to_numpy()
    key = f"{bundle.manifest_hash}-trainval-{inp['image_size']}px"
    vectors = cached_embeddings(model, bundle.images[fitted], key, cfg.paths.cache_dir)
    split = bundle.manifest.loc[fitted, "split"].to_numpy()
    train_images, train_table = split_rows(bundle, "train")
    model.set_gallery(train_images, train_table, cfg.model.index, vectors=vectors[split == "train"])
    _, val_labels = bundle.split("val")

    reporter = reporter_for(cfg, epochs=1)  # one evaluation step: reported, never pruned
    with tracked_run(cfg, knn_run_name(cfg), reporter, **{"model.kind": "knn"}) as run:
        log_run_record(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in _UNUSED_GROUPS]), bundle, inp)
        metrics, pred = evaluate_knn(model, vectors[split == "val"], val_labels)
        log.info("kNN %s", " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        runs.epoch_logger(reporter, on_epoch_end)(1, metrics)
        mlflow.log_metrics(
            {"summary/best_val_acc": metrics["val_acc"], "summary/best_epoch": 1, "summary/epochs_completed": 1}
        )
        fig = plot_confusion_matrix(val_labels, pred, bundle.classes, f"validation, {knn_run_name(cfg)}")
        runs.log_figure(fig, "plots/val_confusion_matrix.png")
        if cfg.tracking.log_model:  # the backbone is pretrained: its spec is enough, promotion saves weights
            meta = {
                **model.meta,
                "best_epoch": 1,
                "best_val_acc": metrics["val_acc"],
                "manifest_hash": bundle.manifest_hash,
                "manifest_file": f"data/{bundle.manifest_path.name}",
            }
            meta.pop("gallery", None)
            mlflow.log_dict(meta, "model/meta.json")
        run_id = run.info.run_id
    best, loss = metrics["val_acc"], metrics["val_loss"]
    return {
        "summary/best_val_acc": best,
        "summary/best_epoch": 1,
        "run_id": run_id,
        "history": [metrics],
        "val_loss_at_best": loss,
    }
