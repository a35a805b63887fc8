"""Figures logged with every run: learning curves and confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay


def plot_learning_curves(history: Sequence[dict], title: str = "") -> plt.Figure:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(target: np.ndarray, pred: np.ndarray, classes: Sequence[str], title: str = "") -> plt.Figure:
    """Confusion matrix (counts) with class names, via scikit-learn."""
    size = max(5.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        target,
        pred,
        labels=list(range(len(classes))),
        display_labels=list(classes),
        ax=ax,
        xticks_rotation=45,
        colorbar=False,
    )
    ax.set_title(title)
    fig.tight_layout()
    return fig
