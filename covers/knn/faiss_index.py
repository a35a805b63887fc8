"""Nearest-neighbour search with faiss: inner product on L2-normalised vectors (cosine), and kNN class votes.

``flat`` is exact; ``ivf`` (inverted lists) and ``hnsw`` (graph) are approximate and meant for large galleries
(100 000+ vectors). Vectors are added in chunks, so memory stays bounded by the index itself."""

from __future__ import annotations

import logging
import math
from pathlib import Path

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports each CPU feature it tries, at INFO

import faiss  # noqa: E402
import numpy as np  # noqa: E402

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw")
WEIGHTINGS = ("uniform", "similarity", "softmax")
_ADD_CHUNK = 65_536
_IVF_MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per list


def normalize(vectors: np.ndarray) -> np.ndarray:
    """A float32, C-contiguous, L2-normalised copy of ``vectors`` (rows of zeros stay zero)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"expected an (N, D) array of vectors, got shape {out.shape}")
    faiss.normalize_L2(out)
    return out


def build_index(
    vectors: np.ndarray,
    kind: str = "flat",
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    seed: int = 0,
) -> faiss.Index:
    """A cosine-similarity index over ``vectors``: ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate).

    ``nlist`` (IVF lists) defaults to ~4·√N, capped so every list has enough training points."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {kind!r}; choose one of {INDEX_KINDS}")
    x = normalize(vectors)
    n, dim = x.shape
    if n == 0:
        raise ValueError("cannot build an index over zero vectors")
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        lists = nlist or int(4 * math.sqrt(n))
        lists = max(1, min(lists, n // _IVF_MIN_POINTS_PER_LIST))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = x
        if n > 256 * lists:  # k-means needs a sample, not every vector
            sample = x[np.random.default_rng(seed).choice(n, 256 * lists, replace=False)]
        index.train(sample)
        index.nprobe = min(nprobe, lists)
    for start in range(0, n, _ADD_CHUNK):
        index.add(x[start : start + _ADD_CHUNK])
    log.info("built a %s index over %d vectors of dimension %d", kind, n, dim)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities and ids of the ``k`` nearest gallery vectors per query (id -1: no neighbour)."""
    k = max(1, min(int(k), index.ntotal))
    return index.search(normalize(queries), k)


def vote(
    sims: np.ndarray,
    neighbour_labels: np.ndarray,
    num_classes: int,
    weighting: str = "uniform",
    temperature: float = 0.1,
) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` from neighbours' labels (label -1: no neighbour, ignored).

    ``uniform``: one vote each; ``similarity``: votes weighted by cosine similarity (clipped at 0);
    ``softmax``: weights ``exp(sim / temperature)``, so the closest neighbours dominate."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r}; choose one of {WEIGHTINGS}")
    valid = neighbour_labels >= 0
    if weighting == "uniform":
        weights = np.ones_like(sims, dtype=np.float64)
    elif weighting == "similarity":
        weights = np.clip(sims.astype(np.float64), 0.0, None) + 1e-12
    else:
        z = sims.astype(np.float64) / temperature
        weights = np.exp(z - z.max(axis=1, keepdims=True))
    weights = np.where(valid, weights, 0.0)
    probs = np.zeros((len(sims), num_classes), dtype=np.float64)
    rows = np.repeat(np.arange(len(sims)), sims.shape[1])
    np.add.at(probs, (rows[valid.ravel()], neighbour_labels[valid]), weights[valid])
    total = probs.sum(axis=1, keepdims=True)
    return np.divide(probs, total, out=np.full_like(probs, 1.0 / num_classes), where=total > 0)


def classify(
    index: faiss.Index,
    labels: np.ndarray,
    queries: np.ndarray,
    num_classes: int,
    k: int = 10,
    weighting: str = "uniform",
    temperature: float = 0.1,
) -> np.ndarray:
    """kNN class probabilities for ``queries`` against an index whose vector ``i`` has class ``labels[i]``."""
    sims, ids = search(index, queries, k)
    neighbour_labels = np.where(ids >= 0, np.asarray(labels)[np.clip(ids, 0, None)], -1)
    return vote(sims, neighbour_labels, num_classes, weighting, temperature)


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write ``index`` with faiss's own format."""
    faiss.write_index(index, str(path))
    return Path(path)


def load_index(path: str | Path) -> faiss.Index:
    """Read an index written by :func:`save_index`."""
    return faiss.read_index(str(path))
