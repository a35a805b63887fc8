"""Exact and near-duplicate covers: fingerprints, a faiss search, groups, and which copy is kept.

Exact duplicates have the same decoded pixels (whatever their bytes). Near duplicates (resized, re-encoded,
slightly cropped copies) are pairs whose 64-bit perceptual hashes (DCT of a 32x32 gray thumbnail, as in
``imagehash.phash``) are within ``hash_distance`` bits, searched with a faiss binary index, *and* whose 16x16
colour thumbnails correlate at least ``similarity`` (the hash alone confuses flat, low-detail images)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.fft
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from covers.data.archives import Cover, Rejection

HASH_BITS = 64
THUMB_SIDE = 16
CROSS_CLASS_POLICIES = ("drop", "keep_first")


@dataclass(frozen=True)
class DuplicateRules:
    """When two covers count as copies, when they must share a split, and what happens across classes."""

    hash_distance: int = 8  # near duplicate: pHash Hamming distance (of 64 bits) at most this ...
    similarity: float = 0.95  # ... and thumbnail correlation at least this; one copy per group is kept
    group_hash_distance: int = 12  # looser look-alikes: both kept, but always in the same split
    group_similarity: float = 0.85
    cross_class: str = "drop"  # copies in different classes: drop them all, or keep_first (the best copy)

    def __post_init__(self) -> None:
        if self.cross_class not in CROSS_CLASS_POLICIES:
            raise ValueError(f"cross_class={self.cross_class!r}; expected one of {CROSS_CLASS_POLICIES}")


@dataclass
class Duplicates:
    """What duplicate detection found and decided, aligned with the scanned covers."""

    keep: np.ndarray  # bool per cover
    split_group: np.ndarray  # int per cover: covers sharing a value must share a split
    rejected: list[Rejection] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)  # every group of two or more copies
    pairs: pd.DataFrame | None = None  # i, j, distance, similarity of every candidate pair within group reach

    @property
    def cross_class(self) -> list[dict[str, Any]]:
        return [g for g in self.groups if len(g["labels"]) > 1]


def fingerprint(im: Image.Image) -> dict[str, Any]:
    """Pixel hash, perceptual hash and normalised colour thumbnail of one decoded RGB image."""
    pixels = hashlib.sha256(f"{im.width}x{im.height}:".encode() + im.tobytes()).hexdigest()
    gray = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = scipy.fft.dctn(gray, norm="ortho")[:8, :8]
    phash = np.packbits((low > np.median(low)).ravel())
    thumb = np.asarray(im.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.float32).ravel()
    thumb -= thumb.mean()
    thumb /= max(float(np.linalg.norm(thumb)), 1e-6)
    return {"pixel_sha256": pixels, "phash": phash, "thumb": thumb}


def _stack(measures: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([m["phash"] for m in measures]), np.stack([m["thumb"] for m in measures])


def _pair_frame(i: np.ndarray, j: np.ndarray, d: np.ndarray, thumbs: np.ndarray) -> pd.DataFrame:
    keep = i < j
    i, j, d = i[keep], j[keep], d[keep]
    sim = np.einsum("ij,ij->i", thumbs[i], thumbs[j]) if len(i) else np.zeros(0)
    df = pd.DataFrame({"i": i, "j": j, "distance": d.astype(int), "similarity": sim.astype(float)})
    return df.drop_duplicates(["i", "j"]).sort_values(["distance", "similarity", "i", "j"], ascending=[1, 0, 1, 1])


def _binary_index(codes: np.ndarray):
    """A faiss exact Hamming-distance index over packed 64-bit hashes."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every CPU variant it tries, at INFO
    import faiss

    index = faiss.IndexBinaryFlat(HASH_BITS)
    index.add(codes)
    return index


def candidate_pairs(measures: list[dict[str, Any]], max_distance: int) -> pd.DataFrame:
    """Every pair (i < j) whose perceptual hashes are at most ``max_distance`` bits apart (faiss range search)."""
    codes, thumbs = _stack(measures)
    lims, dist, idx = _binary_index(codes).range_search(codes, max_distance + 1)  # faiss keeps distances < radius
    rows = np.repeat(np.arange(len(codes)), np.diff(lims.astype(np.int64)))
    return _pair_frame(rows, idx.astype(int), dist, thumbs).reset_index(drop=True)


def closest_pairs(measures: list[dict[str, Any]], n: int = 20, k: int = 4) -> pd.DataFrame:
    """The ``n`` closest pairs by perceptual hash (each cover's ``k`` nearest neighbours), to tune thresholds."""
    codes, thumbs = _stack(measures)
    dist, idx = _binary_index(codes).search(codes, min(k + 1, len(codes)))
    rows = np.repeat(np.arange(len(codes)), dist.shape[1])
    i, j = np.minimum(rows, idx.ravel()), np.maximum(rows, idx.ravel())
    pairs = _pair_frame(i, j, dist.ravel(), thumbs)
    return pairs[pairs["j"] >= 0].head(n).reset_index(drop=True)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _exact_edges(measures: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    first: dict[str, int] = {}
    edges = [(first.setdefault(m["pixel_sha256"], k), k) for k, m in enumerate(measures)]
    i, j = np.array([a for a, b in edges if a != b], int), np.array([b for a, b in edges if a != b], int)
    return i, j


def _name(c: Cover) -> str:
    return f"{c.archive}:{c.member}"


def _why(c: Cover, best: Cover, mc: dict, mb: dict) -> str:
    if mc["pixel_sha256"] == mb["pixel_sha256"]:
        return f"same pixels as {_name(best)}"
    d = int(np.unpackbits(mc["phash"] ^ mb["phash"]).sum())
    return f"near duplicate of {_name(best)} (hash distance {d}, similarity {float(mc['thumb'] @ mb['thumb']):.3f})"


def find_duplicates(covers: list[Cover], measures: list[dict[str, Any]], rules: DuplicateRules) -> Duplicates:
    """Group exact and near copies, keep the best copy of each (most pixels, then most bytes), apply the policy."""
    n = len(covers)
    pairs = candidate_pairs(measures, max(rules.hash_distance, rules.group_hash_distance))
    near = pairs[(pairs["distance"] <= rules.hash_distance) & (pairs["similarity"] >= rules.similarity)]
    alike = pairs[(pairs["distance"] <= rules.group_hash_distance) & (pairs["similarity"] >= rules.group_similarity)]
    ei, ej = _exact_edges(measures)
    dup = _components(n, np.r_[ei, near["i"]], np.r_[ej, near["j"]])
    split_group = _components(n, np.r_[ei, alike["i"]], np.r_[ej, alike["j"]])
    result = Duplicates(keep=np.ones(n, bool), split_group=split_group, pairs=pairs)
    for comp in np.flatnonzero(np.bincount(dup) > 1):
        members = sorted(
            np.flatnonzero(dup == comp), key=lambda k: (-covers[k].width * covers[k].height, -covers[k].nbytes, k)
        )
        best = members[0]
        labels = sorted({covers[k].label for k in members})
        keep_one = len(labels) == 1 or rules.cross_class == "keep_first"
        for k in members[int(keep_one) :]:
            result.keep[k] = False
            c = covers[k]
            if k == best:
                why = f"its copies: {', '.join(_name(covers[o]) for o in members[1:])}"
            else:
                why = _why(c, covers[best], measures[k], measures[best])
            if c.label == covers[best].label and keep_one:
                result.rejected.append(Rejection(c.archive, c.member, "duplicate", why))
            else:
                policy = f"copies in {', '.join(labels)}; cross_class={rules.cross_class}"
                result.rejected.append(Rejection(c.archive, c.member, "cross_class_duplicate", f"{why}; {policy}"))
        exact = len({measures[k]["pixel_sha256"] for k in members}) == 1
        result.groups.append(
            {
                "kind": "exact" if exact else "near",
                "labels": labels,
                "kept": _name(covers[best]) if keep_one else None,
                "members": [
                    {"archive": covers[k].archive, "member": covers[k].member, "label": covers[k].label}
                    for k in members
                ],
            }
        )
    return result
