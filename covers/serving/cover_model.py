"""A promoted model as one object: network, preprocessing, class names and the similar-cover gallery.

On disk it is a folder (``meta.json``, ``state_dict.pt``, optional ``gallery.faiss`` + ``gallery.csv``) that the
MLflow pyfunc (``covers/serving/pyfunc_model.py``, logged as "models from code") loads without unpickling anything."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import timm
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from covers.data.archives import decode_rgb, fit_square, to_rgb
from covers.data.members import IngestLimits
from covers.knn import faiss_index
from covers.models.embed import create_backbone, embed_images, map_batches
from covers.serving import tta
from covers.training.runtime import Runtime, create_runtime

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

GALLERY_COLUMNS = ["archive", "member", "genre"]
# sha256 of a gallery cover's model input (its decoded pixels at the model's size): a query with the same pixels
# is that cover itself, left out of its own neighbours
PIXELS_COLUMN = "pixels_sha256"
# encoded covers are decoded within ingest's pixel limit (checked from the image header, before decoding)
MAX_PIXELS = IngestLimits().max_pixels
# MLflow warns that the pyfunc's ``list[Any]`` input is not validated: deliberate, inputs are checked per item
_ANY_HINT_WARNING = re.compile(r".*Any type hint is inferred as AnyType")


@contextmanager
def quiet_any_hint() -> Iterator[None]:
    """Drop MLflow's warning about the ``list[Any]`` input hint; every other warning of the block is shown as usual.
    MLflow turns its own user warnings on inside the call (``simplefilter("once")``), so an ignore filter cannot
    catch it: the block's warnings are recorded (``catch_warnings(record=True)``) and the others re-issued."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for w in caught:
            if not _ANY_HINT_WARNING.match(str(w.message)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def read_image(item: Any) -> Image.Image:
    """An RGB image from a file path, encoded bytes, base64 text, an ``(H, W[, 3|4])`` array or a PIL image.

    Encoded images over :data:`MAX_PIXELS` raise ``Image.DecompressionBombError`` before they are decoded."""
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, bytes | bytearray):
        return decode_rgb(bytes(item), MAX_PIXELS)[0]
    if isinstance(item, str | Path):
        path = Path(item)
        try:
            is_file = path.is_file()
        except OSError:  # e.g. base64 text longer than a file name may be
            is_file = False
        if is_file:
            return decode_rgb(path.read_bytes(), MAX_PIXELS)[0]
        if isinstance(item, str) and len(item) > 64:
            try:
                return decode_rgb(base64.b64decode("".join(item.split())), MAX_PIXELS)[0]
            except (binascii.Error, ValueError, OSError) as e:
                raise ValueError("neither an existing file nor base64-encoded image data") from e
        raise FileNotFoundError(f"no such file: {item}")
    arr = np.asarray(item)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(arr))


def pixel_hashes(images: np.ndarray) -> list[str]:
    """sha256 of each ``(S, S, 3)`` uint8 model input: equal for covers with the same pixels at the model's size."""
    return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def describe_error(e: Exception) -> str:
    """One line for a user: what went wrong with an input."""
    if isinstance(e, UnidentifiedImageError):
        return "cannot decode: not an image, or a corrupt one"
    return f"{type(e).__name__}: {e}"


@dataclass
class CoverModel:
    """Classifier (``kind: classifier``) or kNN model (``kind: knn``) with its preprocessing and gallery.

    A classifier may be an ensemble: ``members`` are further networks of the same classes and input (described in
    ``meta["ensemble"]``) whose class probabilities are averaged with ``net``'s; ``meta["tta"]`` names test-time
    augmentation views (:mod:`covers.serving.tta`) averaged the same way. ``net`` alone embeds covers for the
    gallery and :meth:`similar`."""

    net: nn.Module
    meta: dict[str, Any]
    gallery: faiss.Index | None = None
    gallery_table: pd.DataFrame | None = None
    rt: Runtime = field(default_factory=lambda: create_runtime("auto", "fp32"))
    batch_size: int = 64
    members: list[nn.Module] = field(default_factory=list)

    def __post_init__(self) -> None:
        for net in (self.net, *self.members):
            self.rt.place(net.eval())

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @classmethod
    def from_dir(cls, path: str | Path, device: str = "auto", batch_size: int = 64) -> CoverModel:
        """Load a model folder; a kNN run's folder without weights rebuilds its pretrained backbone."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        kind = meta.setdefault("kind", "classifier")
        if (path / "state_dict.pt").exists():
            net = timm.create_model(meta["model_name"], num_classes=meta["num_classes"] if kind != "knn" else 0)
            net.load_state_dict(torch.load(path / "state_dict.pt", map_location="cpu", weights_only=True))
        elif kind == "knn":
            net = create_backbone(meta["model_name"], meta.get("weights", "package"), meta.get("checkpoint"))
        else:
            raise FileNotFoundError(f"{path} has no state_dict.pt")
        members = []
        for i, _ in enumerate(meta.get("ensemble", []), start=1):
            member = timm.create_model(meta["model_name"], num_classes=meta["num_classes"])
            member.load_state_dict(torch.load(path / f"member_{i}.pt", map_location="cpu", weights_only=True))
            members.append(member)
        model = cls(net, meta, rt=create_runtime(device, "fp32"), batch_size=batch_size, members=members)
        if (path / "gallery.faiss").exists():
            model.gallery = faiss_index.load_index(path / "gallery.faiss")
            model.gallery_table = pd.read_csv(path / "gallery.csv", dtype=str, keep_default_na=False)
        return model

    def save(self, path: str | Path) -> Path:
        """Write the folder :meth:`from_dir` reads (weights always included, so it is self-contained)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "meta.json").write_text(json.dumps(self.meta, indent=2))
        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, path / "state_dict.pt")
        for i, member in enumerate(self.members, start=1):
            torch.save({k: v.detach().cpu() for k, v in member.state_dict().items()}, path / f"member_{i}.pt")
        if self.gallery is not None:
            faiss_index.save_index(self.gallery, path / "gallery.faiss")
            columns = [c for c in (*GALLERY_COLUMNS, PIXELS_COLUMN) if c in self.gallery_table]
            self.gallery_table[columns].to_csv(path / "gallery.csv", index=False)
        return path

    # -- preprocessing -------------------------------------------------------------------------------------------
    def prepare(self, items: list[Any]) -> tuple[np.ndarray, list[str | None]]:
        """Decode and resize every item; returns the images that worked and a per-item error (``None`` if ok)."""
        size = int(self.meta["image_size"])
        images, errors = [], []
        for item in items:
            try:
                images.append(fit_square(read_image(item), size))
                errors.append(None)
            except Exception as e:  # one bad input must not sink the others
                errors.append(describe_error(e))
        batch = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
        return batch, errors

    # -- inference on (N, S, S, 3) uint8 images -----------------------------------------------------------------
    def _map(self, fn, images: np.ndarray, desc: str) -> np.ndarray:
        return map_batches(fn, images, self.meta["mean"], self.meta["std"], self.batch_size, self.rt, desc)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings from the network's pre-logits features."""
        return embed_images(self.net, images, self.meta["mean"], self.meta["std"], self.batch_size, self.rt)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)``: softmax of the classifier, or the kNN vote over the gallery."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)))
        if self.kind == "knn":
            return self.vote(self.embed(images))
        nets, looks = [self.net, *self.members], tta.views(self.meta.get("tta"))

        def mean_probs(x: torch.Tensor) -> torch.Tensor:  # every network on every view, averaged
            return torch.stack([net(look(x)).softmax(-1) for net in nets for look in looks]).mean(0)

        return self._map(mean_probs, images, "predict").astype(np.float64)

    def vote(self, embeddings: np.ndarray) -> np.ndarray:
        """kNN class probabilities of ``embeddings`` against the gallery (``meta["knn"]``: k, weighting, …)."""
        if self.gallery is None:
            raise RuntimeError("a kNN model needs its gallery (build it with set_gallery)")
        index_of = {c: i for i, c in enumerate(self.classes)}
        labels = self.gallery_table["genre"].map(index_of).fillna(-1).to_numpy(dtype=np.int64)
        return faiss_index.classify(self.gallery, labels, embeddings, len(self.classes), **self.meta["knn"])

    def set_gallery(
        self, images: np.ndarray, table: pd.DataFrame, index: str = "flat", vectors: np.ndarray | None = None
    ) -> None:
        """Index ``images`` (rows of ``table``: archive, member, genre) for :meth:`similar` and the kNN vote.

        ``vectors``: their embeddings when already computed with this network."""
        vectors = self.embed(images) if vectors is None else vectors
        self.gallery = faiss_index.build_index(vectors, index)
        self.gallery_table = table[GALLERY_COLUMNS].reset_index(drop=True)
        self.gallery_table[PIXELS_COLUMN] = pixel_hashes(images)
        self.meta["gallery"] = {"index": index, "size": len(table)}

    def _same_pixels(self, images: np.ndarray) -> list[np.ndarray]:
        """Per image, the gallery rows with exactly its pixels (none for a gallery made without pixel hashes)."""
        if PIXELS_COLUMN not in self.gallery_table:
            log.warning("this model's gallery has no pixel hashes (promoted by an older covers): self-matches stay")
            return [np.zeros(0, np.int64)] * len(images)
        rows = self.gallery_table.groupby(PIXELS_COLUMN).indices
        return [rows.get(h, np.zeros(0, np.int64)) for h in pixel_hashes(images)]

    def similar(self, images: np.ndarray, k: int = 5, keep_self: bool = False) -> list[pd.DataFrame]:
        """Per image, its ``k`` nearest gallery covers: rank, similarity, archive, member, genre.

        A gallery cover with exactly the image's pixels is the image itself and left out, unless ``keep_self``."""
        if self.gallery is None:
            raise RuntimeError("this model has no gallery of covers (promote it to build one)")
        selves = [np.zeros(0, np.int64)] * len(images) if keep_self else self._same_pixels(images)
        sims, ids = faiss_index.search(self.gallery, self.embed(images), k + max(map(len, selves), default=0))
        out = []
        for row_sims, row_ids, own in zip(sims, ids, selves, strict=True):
            keep = np.flatnonzero((row_ids >= 0) & ~np.isin(row_ids, own))[:k]
            table = self.gallery_table.iloc[row_ids[keep]][GALLERY_COLUMNS].reset_index(drop=True)
            table.insert(0, "similarity", row_sims[keep].astype(float))
            table.insert(0, "rank", np.arange(1, len(keep) + 1))
            out.append(table)
        return out

    def predict_items(self, items: list[Any]) -> list[dict[str, Any]]:
        """Per item: ``genre``, ``probability``, ``probabilities`` (every class) and ``error`` (``None`` if ok)."""
        images, errors = self.prepare(list(items))
        probs = iter(self.predict_proba(images))
        rows = []
        for error in errors:
            if error is not None:
                rows.append({"genre": None, "probability": None, "probabilities": {}, "error": error})
                continue
            p = next(probs)
            best = int(p.argmax())
            rows.append(
                {
                    "genre": self.classes[best],
                    "probability": float(p[best]),
                    "probabilities": {c: float(v) for c, v in zip(self.classes, p, strict=True)},
                    "error": None,
                }
            )
        return rows
