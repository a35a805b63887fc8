"""95 % intervals for held-out scores (scipy): Wilson for accuracy (a proportion of covers), a paired bootstrap for
balanced accuracy (a mean of per-class recalls, not a proportion)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import binomtest, bootstrap
from sklearn.metrics import balanced_accuracy_score

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of ``correct / n`` (``nan, nan`` for no covers)."""
    if n <= 0:
        return math.nan, math.nan
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def balanced_accuracy_interval(
    target: np.ndarray, pred: np.ndarray, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of balanced accuracy, resampling (target, prediction) pairs."""
    target, pred = np.asarray(target), np.asarray(pred)
    if len(target) < 2 or len(np.unique(target)) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():  # a resample that lacks a class warns "y_pred contains classes not in y_true"
        warnings.simplefilter("ignore")
        result = bootstrap(
            (target, pred),
            balanced_accuracy_score,
            paired=True,
            vectorized=False,
            n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def interval_metrics(target: np.ndarray, pred: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}acc_ci_low/high`` (Wilson) and ``{prefix}balanced_acc_ci_low/high`` (bootstrap), 95 %."""
    target, pred = np.asarray(target), np.asarray(pred)
    acc = wilson_interval(int((target == pred).sum()), len(target))
    balanced = balanced_accuracy_interval(target, pred)
    return {
        f"{prefix}acc_ci_low": acc[0],
        f"{prefix}acc_ci_high": acc[1],
        f"{prefix}balanced_acc_ci_low": balanced[0],
        f"{prefix}balanced_acc_ci_high": balanced[1],
    }


def format_interval(value: float, low: float, high: float) -> str:
    """``0.356 (95 % CI 0.283–0.435)``."""
    return f"{value:.3f} (95 % CI {low:.3f}–{high:.3f})"
