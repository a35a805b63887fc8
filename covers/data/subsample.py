"""Reshaping the train split for study experiments: stratified subsampling and long-tailed imbalance.

Only rows with ``split == "train"`` are dropped; validation and test rows are always kept as they are."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _train_rows(manifest: pd.DataFrame) -> pd.Series:
    return manifest["split"] == "train"


def _keep(manifest: pd.DataFrame, targets: dict[str, int], seed: int) -> np.ndarray:
    """A row mask keeping ``targets[label]`` seeded random train rows per class, and every non-train row."""
    rng = np.random.default_rng(seed)
    keep = ~_train_rows(manifest).to_numpy()
    for label, n in targets.items():
        rows = np.flatnonzero(_train_rows(manifest).to_numpy() & (manifest["label"] == label).to_numpy())
        keep[rng.choice(rows, size=min(n, len(rows)), replace=False)] = True
    return keep


def train_counts(manifest: pd.DataFrame) -> dict[str, int]:
    """Rows per class in the train split."""
    return manifest.loc[_train_rows(manifest), "label"].value_counts().sort_index().to_dict()


def fraction_mask(manifest: pd.DataFrame, fraction: float, seed: int = 0) -> np.ndarray:
    """Keep ``fraction`` of every class's train rows (at least one each), seeded; other splits untouched."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")
    targets = {c: max(1, round(n * fraction)) for c, n in train_counts(manifest).items()}
    return _keep(manifest, targets, seed)


def long_tail_counts(counts: dict[str, int], ratio: float) -> dict[str, int]:
    """Exponential profile over classes in name order: the first keeps ``n``, the last ``n / ratio``, where ``n``
    is the smallest class count (so every target is reachable); largest:smallest is ``ratio`` up to rounding."""
    if ratio < 1:
        raise ValueError(f"data.imbalance must be >= 1 (largest:smallest class), got {ratio}")
    names = sorted(counts)
    n = min(counts.values())
    steps = max(1, len(names) - 1)
    return {c: max(1, round(n * ratio ** (-i / steps))) for i, c in enumerate(names)}


def imbalance_mask(manifest: pd.DataFrame, ratio: float, seed: int = 0) -> np.ndarray:
    """A long-tailed train split with largest:smallest class ``ratio`` (:func:`long_tail_counts`); seeded."""
    return _keep(manifest, long_tail_counts(train_counts(manifest), ratio), seed)


def reshape_train(
    manifest: pd.DataFrame, train_fraction: float = 1.0, imbalance: float | None = None, seed: int = 0
) -> np.ndarray:
    """The row mask for ``data.imbalance`` (first) then ``data.train_fraction``; all rows when neither is set."""
    keep = np.ones(len(manifest), dtype=bool)
    if imbalance and imbalance > 1:
        keep &= imbalance_mask(manifest, imbalance, seed)
    if train_fraction < 1:
        kept = manifest[keep]
        keep[np.flatnonzero(keep)] = fraction_mask(kept, train_fraction, seed)
    return keep
