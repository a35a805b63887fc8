"""Descriptive statistics of the covers: per-image measurements and per-class distributions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from covers.data.archives import Cover

FEATURES = ["width", "height", "aspect", "kbytes", "brightness", "contrast", "saturation", "colourfulness"]
HIST_BINS = 16
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def image_stats(im: Image.Image, side: int = 128) -> dict[str, Any]:
    """Brightness, contrast (luma mean/std, 0-255), saturation (HSV, 0-1), colourfulness, colour histogram."""
    small = im.copy()
    small.thumbnail((side, side), Image.Resampling.BOX)
    rgb = np.asarray(small, dtype=np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    rg, yb = rgb[..., 0] - rgb[..., 1], 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    hist = [
        np.bincount(rgb[..., c].astype(np.uint8).ravel() // (256 // HIST_BINS), minlength=HIST_BINS) for c in range(3)
    ]
    return {
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(np.asarray(small.convert("HSV"))[..., 1].mean() / 255.0),
        # Hasler & Süsstrunk (2003)
        "colourfulness": float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())),
        "gray_pixels": bool(np.abs(rgb - rgb[..., :1]).max() <= 2.0),
        "mean_rgb": rgb.reshape(-1, 3).mean(0).round(1).tolist(),
        "hist": (np.stack(hist) / luma.size).astype(np.float32),
    }


def feature_table(covers: list[Cover], measures: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per decoded cover: where it is, its geometry, file size, colour mode and colour statistics."""
    rows = [
        {
            "archive": c.archive,
            "member": c.member,
            "label": c.label,
            "width": c.width,
            "height": c.height,
            "aspect": c.width / c.height,
            "kbytes": c.nbytes / 1024,
            "mode": c.mode,
            **{k: m[k] for k in ("brightness", "contrast", "saturation", "colourfulness", "gray_pixels")},
        }
        for c, m in zip(covers, measures, strict=True)
    ]
    return pd.DataFrame(rows)


def _quantiles(s: pd.Series) -> dict[str, float]:
    q = s.quantile([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]).to_numpy()
    keys = ("min", "q05", "q25", "median", "q75", "q95", "max")
    return {"mean": round(float(s.mean()), 4), "std": round(float(s.std(ddof=0)), 4)} | {
        k: round(float(v), 4) for k, v in zip(keys, q, strict=True)
    }


def describe(df: pd.DataFrame) -> dict[str, Any]:
    """Per class and overall: count, share, colour modes and each feature's mean, std and quantiles."""
    out: dict[str, Any] = {}
    for name, part in [*df.groupby("label"), ("(all)", df)]:
        out[str(name)] = {
            "count": len(part),
            "share": round(len(part) / max(len(df), 1), 4),
            "modes": part["mode"].value_counts().to_dict(),
            "grayscale_share": round(float(part["gray_pixels"].mean()), 4),
            "features": {f: _quantiles(part[f]) for f in FEATURES},
        }
    return out


def colour_summary(df: pd.DataFrame, measures: list[dict[str, Any]]) -> dict[str, Any]:
    """Per class: mean RGB and the mean 16-bin histogram of each channel (rows of ``df`` index ``measures``)."""
    out = {}
    for label, part in df.groupby("label"):
        hist = np.mean([measures[i]["hist"] for i in part.index], axis=0)
        rgb = np.mean([measures[i]["mean_rgb"] for i in part.index], axis=0)
        out[str(label)] = {
            "mean_rgb": [round(float(v), 1) for v in rgb],
            "hist": {ch: [round(float(v), 4) for v in h] for ch, h in zip("RGB", hist, strict=True)},
        }
    return out
