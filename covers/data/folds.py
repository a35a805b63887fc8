"""K-fold cross-validation over train+val: stratified by genre, look-alike groups intact, the test split untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from covers.data.split import GROUP_COLUMN

POOL = ("train", "val")


def assign_folds(manifest: pd.DataFrame, k: int, seed: int = 0) -> np.ndarray:
    """Fold number (0 … k-1) of every train/val row, -1 for test rows: scikit-learn's
    :class:`StratifiedGroupKFold`, so a look-alike group (the manifest's ``group``) never straddles two folds."""
    if int(k) < 2:
        raise ValueError(f"data.cv_folds needs at least 2 folds, got {k}")
    pool = manifest["split"].isin(POOL).to_numpy()
    labels, groups = manifest.loc[pool, "label"].to_numpy(), manifest.loc[pool, GROUP_COLUMN].to_numpy()
    smallest = pd.Series(labels).value_counts().min()
    if len(np.unique(groups)) < k or smallest < k:
        raise ValueError(
            f"data.cv_folds={k} needs at least {k} groups and {k} train+val covers per genre; the smallest genre "
            f"has {smallest}"
        )
    folds = np.full(len(manifest), -1)
    skf = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=seed)
    pool_index = np.flatnonzero(pool)
    for fold, (_, held_out) in enumerate(skf.split(np.zeros(len(labels)), labels, groups)):
        folds[pool_index[held_out]] = fold
    return folds


def fold_splits(folds: np.ndarray, fold: int) -> np.ndarray:
    """The ``split`` column of fold ``fold``: its rows are ``val``, the other folds' ``train``, test stays test."""
    return np.where(folds < 0, "test", np.where(folds == fold, "val", "train")).astype(object)
