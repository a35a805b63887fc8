"""The audit's figures: class balance, distributions by genre, colour histograms, samples, closest pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def upright_class_names(ax: plt.Axes) -> None:
    """Class names on the x axis turned upright, each on its own tick: long names (``Christian_&_Gospel``) never
    run into their neighbours."""
    ax.tick_params(axis="x", labelrotation=90)


def plot_stacked_bars(table: pd.DataFrame, ylabel: str, title: str) -> plt.Figure:
    """A stacked bar per row of ``table`` (e.g. per class: kept and each rejection reason, or colour modes)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(table) + 2), 4))
    table.plot.bar(stacked=True, ax=ax)
    upright_class_names(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_by_class(df: pd.DataFrame, features: Sequence[str], title: str) -> plt.Figure:
    """One box plot per feature, a box per class."""
    cols = 2
    rows = -(-len(features) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.6 * rows), squeeze=False)
    for ax, feature in zip(axes.ravel(), features, strict=False):
        df.boxplot(column=feature, by="label", ax=ax, grid=False)
        upright_class_names(ax)
        ax.set_title(feature)
        ax.set_xlabel("")
    for ax in axes.ravel()[len(features) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_colour_histograms(summary: Mapping[str, Mapping]) -> plt.Figure:
    """Mean per-channel histogram of each class."""
    cols = min(5, len(summary))
    rows = -(-len(summary) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.3 * rows), squeeze=False, sharey=True)
    for ax, (label, s) in zip(axes.ravel(), summary.items(), strict=False):
        for ch, colour in zip("RGB", ("tab:red", "tab:green", "tab:blue"), strict=True):
            h = np.asarray(s["hist"][ch])
            ax.plot(np.linspace(0, 255, len(h)), h, color=colour)
        ax.set_title(label, fontsize=9)
    for ax in axes.ravel()[len(summary) :]:
        ax.set_visible(False)
    fig.suptitle("mean colour histogram per class")
    fig.tight_layout()
    return fig


def plot_image_grid(
    rows: Mapping[str, Sequence[np.ndarray]], captions: Mapping[str, Sequence[str]] | None = None
) -> plt.Figure:
    """A grid of images, one row per key (class name or pair), optional caption per image."""
    n_cols = max((len(v) for v in rows.values()), default=1)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.5 * n_cols + 1.5, 1.6 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
                if captions:
                    ax.set_title(captions[name][c], fontsize=6)
        axes[r][0].text(-0.1, 0.5, name, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def plot_nearest_distances(
    distances: np.ndarray, similarity: np.ndarray, hash_distance: int, min_similarity: float
) -> plt.Figure:
    """Each cover's nearest neighbour: hash distance and thumbnail similarity, with the duplicate thresholds."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(distances, similarity, s=10, alpha=0.6)
    ax.axvline(hash_distance, color="tab:red", ls="--", label=f"hash_distance={hash_distance}")
    ax.axhline(min_similarity, color="tab:orange", ls="--", label=f"similarity={min_similarity:g}")
    ax.set_xlabel("perceptual-hash distance to the nearest other cover (bits of 64)")
    ax.set_ylabel("thumbnail similarity")
    ax.set_title("near duplicates: left of the red and above the orange line")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
