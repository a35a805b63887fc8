"""Stratified, group-aware 8:1:1 split of scanned covers, persisted as a CSV manifest."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from covers.data.archives import Cover

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["archive", "member", "label", "split", "sha256"]
# the look-alike group of each row (covers sharing one share every split and fold); optional in a given manifest,
# where it defaults to the sha256 (exact copies), and not part of the manifest's content hash
GROUP_COLUMN = "group"
SPLITS = ("train", "val", "test")


def assign_splits(
    labels: np.ndarray,
    groups: np.ndarray,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Return a ``train``/``val``/``test`` label per item, stratified by class, groups never straddling splits.

    Uses scikit-learn's :class:`StratifiedGroupKFold` with ``round(1/fraction)`` folds: one fold is the test set,
    one the validation set (8:1:1 for the default 0.1/0.1). A class too small to reach every split is named in a
    warning with where its images went."""
    n_folds = max(2, round(1.0 / min(f for f in (val_fraction, test_fraction) if f > 0)))
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 3:
        small = ", ".join(f"{str(c)!r} has {n}" for c, n in zip(classes, counts, strict=True) if n < 3)
        raise ValueError(f"every class needs at least 3 images for a train/val/test split: {small}")
    n_groups = len(np.unique(groups))
    if n_groups < n_folds or counts.max() < n_folds:
        raise ValueError(
            f"too few images for a {n_folds}-fold split: {n_groups} groups, largest class {counts.max()} images "
            f"(StratifiedGroupKFold needs at least {n_folds} of each)"
        )
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.empty(len(labels), dtype=int)
    for k, (_, idx) in enumerate(skf.split(np.zeros(len(labels)), labels, groups)):
        folds[idx] = k
    n_test = round(test_fraction * n_folds)
    n_val = round(val_fraction * n_folds)
    split = np.full(len(labels), "train", dtype=object)
    split[folds < n_test] = "test"
    split[(folds >= n_test) & (folds < n_test + n_val)] = "val"
    _warn_missing_splits(labels, split, [s for s, n in (("val", n_val), ("test", n_test)) if n], n_folds)
    return split


def _warn_missing_splits(labels: np.ndarray, split: np.ndarray, wanted: list[str], n_folds: int) -> None:
    """Warn, naming the class, where a class too small for the split has no image in a ``wanted`` split."""
    for c in np.unique(labels):
        where = split[labels == c]
        missing = [s for s in wanted if s not in where]
        if missing:
            counts = ", ".join(f"{int((where == s).sum())} {s}" for s in SPLITS)
            log.warning(
                "class %r (%d images) has none in %s: it is split %s (a %d-fold split needs %d per class to reach "
                "every split)",
                str(c),
                len(where),
                "/".join(missing),
                counts,
                n_folds,
                n_folds,
            )


def build_manifest(
    covers: list[Cover],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> pd.DataFrame:
    """Manifest rows (archive, member, label, split, sha256); covers sharing a group share a split.

    ``groups`` (one key per cover, in ``covers`` order) defaults to the sha256, so exact byte copies stay together."""
    df = pd.DataFrame(
        [{"archive": c.archive, "member": c.member, "label": c.label, "sha256": c.sha256} for c in covers]
    )
    df["group"] = df["sha256"] if groups is None else list(groups)
    df = df.sort_values(["label", "archive", "member"], kind="stable").reset_index(drop=True)
    df["split"] = assign_splits(df["label"].to_numpy(), df["group"].to_numpy(), val_fraction, test_fraction, seed)
    df["group"] = df["group"].astype(str)  # as a manifest CSV reads it back (after the split: it orders groups)
    return df[[*MANIFEST_COLUMNS, GROUP_COLUMN]]


def count_leakage(manifest: pd.DataFrame, group_of: Mapping[tuple[str, str], Hashable]) -> int:
    """Number of groups (``group_of[(archive, member)]``) whose rows fall into more than one split; 0 is safe."""
    keys = [group_of[(a, m)] for a, m in zip(manifest["archive"], manifest["member"], strict=True)]
    return int((manifest.assign(_group=keys).groupby("_group")["split"].nunique() > 1).sum())


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (parallel trials may race to create the same manifest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest CSV."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"manifest {path} lacks columns {sorted(missing)}")
    bad = set(df["split"]) - set(SPLITS)
    if bad:
        raise ValueError(f"manifest {path} has unknown split values {sorted(bad)}")
    if GROUP_COLUMN not in df:
        df[GROUP_COLUMN] = df["sha256"]
    return df


def content_hash(df: pd.DataFrame) -> str:
    """A short hash of the manifest's rows: identical content and split give the same key."""
    h = hashlib.sha256()
    for row in df[MANIFEST_COLUMNS].itertuples(index=False):
        h.update("\x1f".join(row).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
