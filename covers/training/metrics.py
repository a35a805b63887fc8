"""Held-out evaluation with scikit-learn: accuracy, balanced accuracy, per-class precision/recall/F1."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    f1_score,
    precision_recall_fscore_support,
)

from covers.training.intervals import interval_metrics


def metric_key(name: str) -> str:
    """``name`` with characters MLflow refuses in metric keys replaced by ``_`` (``R&B`` → ``R_B``)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def classification_metrics(
    target: np.ndarray, pred: np.ndarray, classes: Sequence[str], prefix: str = "test_"
) -> tuple[dict[str, float], pd.DataFrame, str]:
    """Metric dict (``test_acc``, ``test_balanced_acc``, ``test_macro_f1``, ``test_f1.<class>`` …, with 95 %
    intervals ``test_acc_ci_low/high`` and ``test_balanced_acc_ci_low/high``), the per-class table (precision,
    recall, f1, support) and scikit-learn's text report."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(target, pred, labels=labels, zero_division=0)
    table = pd.DataFrame(
        {"genre": list(classes), "precision": precision, "recall": recall, "f1": f1, "support": support}
    )
    metrics = {
        f"{prefix}acc": float(accuracy_score(target, pred)),
        f"{prefix}balanced_acc": float(balanced_accuracy_score(target, pred)),
        f"{prefix}macro_f1": float(f1_score(target, pred, labels=labels, average="macro", zero_division=0)),
        **interval_metrics(target, pred, prefix),
    }
    for row in table.itertuples(index=False):
        for stat in ("precision", "recall", "f1"):
            metrics[f"{prefix}{stat}.{metric_key(row.genre)}"] = float(getattr(row, stat))
    report = classification_report(target, pred, labels=labels, target_names=list(classes), digits=4, zero_division=0)
    return metrics, table, report
