"""Usable but unusual covers, flagged and kept: converted colour modes, extreme aspect ratios, outliers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation
from sklearn.ensemble import IsolationForest

from covers.audit.eda import FEATURES, GRAY_MODES

OUTLIER_METHODS = ("isolation_forest", "zscore", "none")
MIN_FOR_OUTLIERS = 10


@dataclass(frozen=True)
class AnomalyRules:
    """What is flagged (never dropped) as unusual."""

    method: str = "isolation_forest"  # isolation_forest | zscore | none
    contamination: float = 0.02  # isolation_forest: expected share of outliers
    z_threshold: float = 4.0  # zscore: robust |z| above which a feature is extreme
    max_aspect: float = 2.0  # long side / short side above this is extreme
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in OUTLIER_METHODS:
            raise ValueError(f"anomalies.method={self.method!r}; expected one of {OUTLIER_METHODS}")


def robust_z(df: pd.DataFrame) -> pd.DataFrame:
    """(x - median) / (1.4826 MAD) per feature (log for sizes); the std stands in where the MAD is 0."""
    x = df[FEATURES].astype(float).copy()
    for col in ("width", "height", "aspect", "kbytes"):
        x[col] = np.log(x[col].clip(lower=1e-6))
    scale = pd.Series(median_abs_deviation(x, scale="normal", axis=0), index=x.columns)
    scale = scale.where(scale > 0, x.std(ddof=0)).replace(0, np.inf)
    return (x - x.median()) / scale


def _extreme(z: pd.Series, df_row: pd.Series, n: int = 2) -> str:
    top = z.abs().sort_values(ascending=False).index[:n]
    return ", ".join(f"{f}={df_row[f]:.3g} (z={z[f]:+.1f})" for f in top)


def flag_outliers(df: pd.DataFrame, rules: AnomalyRules) -> list[dict[str, Any]]:
    """Statistical outliers on geometry, file size and colour features (IsolationForest or robust z-scores)."""
    if rules.method == "none" or len(df) < MIN_FOR_OUTLIERS:
        return []
    z = robust_z(df)
    if rules.method == "zscore":
        hits = z.abs().max(axis=1) > rules.z_threshold
        how = f"|z| > {rules.z_threshold:g}"
    else:
        forest = IsolationForest(contamination=rules.contamination, random_state=rules.seed)
        hits = pd.Series(forest.fit_predict(z.replace([np.inf, -np.inf], 0).to_numpy()) == -1, index=df.index)
        how = f"isolation forest, contamination {rules.contamination:g}"
    return [
        {
            "archive": df.at[i, "archive"],
            "member": df.at[i, "member"],
            "kind": "outlier",
            "detail": f"{how}: {_extreme(z.loc[i], df.loc[i])}",
        }
        for i in df.index[hits.to_numpy()]
    ]


def flag_anomalies(df: pd.DataFrame, rules: AnomalyRules) -> list[dict[str, Any]]:
    """Every flag on the rows of ``df`` (a :func:`covers.audit.eda.feature_table`): kept, but worth a look."""
    flags = []
    for row in df.itertuples():
        where = {"archive": row.archive, "member": row.member}
        if row.mode in GRAY_MODES:
            flags.append({**where, "kind": "grayscale", "detail": f"colour mode {row.mode}, converted to RGB"})
        elif row.gray_pixels:
            flags.append({**where, "kind": "grayscale", "detail": f"mode {row.mode} but all channels equal"})
        elif row.mode != "RGB":
            flags.append({**where, "kind": "converted", "detail": f"colour mode {row.mode}, converted to RGB"})
        ratio = max(row.aspect, 1 / row.aspect)
        if ratio > rules.max_aspect:
            detail = f"{row.width}x{row.height} px, aspect {ratio:.2f} > max_aspect={rules.max_aspect:g}"
            flags.append({**where, "kind": "extreme_aspect", "detail": detail})
    return flags + flag_outliers(df, rules)
