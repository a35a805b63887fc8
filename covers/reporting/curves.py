"""Study reports from MLflow: a sweep's trials read back and drawn as a validation curve (mean ± spread over
repeats) or a learning curve (accuracy against the number of training images), logged to the sweep's parent run."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from covers.tracking import registry
from covers.tracking.runs import log_figure, setup_tracking

log = logging.getLogger(__name__)

REPEAT_KEYS = ("seed",)  # swept only to repeat a point: averaged over, never an axis
METRICS = {
    "summary/best_val_acc": "val_acc",
    "summary/train_acc_at_best": "train_acc",
    "summary/best_val_balanced_acc": "val_balanced_acc",
}


def swept_keys(parent: Run) -> list[str]:
    """The sweep's search-space parameters (the parent run's ``search.*`` params), in logged order."""
    return [k.removeprefix("search.") for k in parent.data.params if k.startswith("search.")]


def trial_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The sweep's finished trials (not the ensembles promote logs beside them)."""
    query = (
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'FINISHED' "
        "and tags.`covers.kind` = 'trial'"
    )
    return client.search_runs([parent.info.experiment_id], query, max_results=10_000)


def _value(text: str | None) -> Any:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def run_value(run: Run, key: str) -> Any:
    """A run's value of ``key``: its param, or the chosen option of a config group (param ``choice.<key>``)."""
    params = run.data.params
    return _value(params.get(key, params.get(f"choice.{key}")))


def runs_frame(runs: list[Run], keys: list[str]) -> pd.DataFrame:
    """One row per run: run id, the swept values, ``n_train``, accuracies and per-class validation recall."""
    rows = []
    for run in runs:
        m = run.data.metrics
        row = {"run_id": run.info.run_id, **{k: run_value(run, k) for k in keys}}
        row["n_train"] = _value(run.data.params.get("data.n_train"))
        row["val_acc"] = m.get("summary/best_val_acc", math.nan)
        row["train_acc"] = m.get("summary/train_acc_at_best", m.get("epoch/train_acc", math.nan))
        row["val_balanced_acc"] = m.get("summary/best_val_balanced_acc", math.nan)
        row.update(
            {k.removeprefix("summary/best_val_"): v for k, v in m.items() if k.startswith("summary/best_val_recall.")}
        )
        rows.append(row)
    return pd.DataFrame(rows)


def curve_points(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, standard deviation (0 for a single run) and count of every metric per value of ``keys``, repeats
    (``seed``) averaged over; the run ids of each point are kept."""
    metrics = [c for c in frame.columns if c in ("n_train", *METRICS.values()) or c.startswith("recall.")]
    grouped = frame.groupby(keys, dropna=False, sort=True)
    points = grouped[metrics].mean().add_suffix("_mean")
    points = points.join(grouped[metrics].std(ddof=1).fillna(0.0).add_suffix("_std"))
    points["n_runs"] = grouped.size()
    points["run_ids"] = grouped["run_id"].agg(" ".join)
    return points.reset_index()


def _numeric(values: pd.Series) -> bool:
    return bool(len(values)) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def plot_curve(points: pd.DataFrame, x: str, keys: list[str], title: str = "") -> plt.Figure:
    """Train and validation accuracy (mean ± std band or error bars) against ``x``; categories as labels."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    numeric = x in points and _numeric(points[x])
    xs = points[x].to_numpy(dtype=float) if numeric else np.arange(len(points))
    for metric, style in (("train_acc", "o--"), ("val_acc", "s-"), ("val_balanced_acc", "^:")):
        mean, std = points[f"{metric}_mean"].to_numpy(float), points[f"{metric}_std"].to_numpy(float)
        if np.isnan(mean).all():
            continue
        fmt = style if numeric else style[0]  # categories: markers only, no line between them
        ax.errorbar(xs, mean, yerr=std, fmt=fmt, capsize=4, label=metric.replace("_", " "))
        if numeric:
            ax.fill_between(xs, mean - std, mean + std, alpha=0.15)
    if numeric and xs.min() > 0 and (x.endswith("lr") or xs.max() / xs.min() >= 100):
        ax.set_xscale("log")
    if not numeric:
        labels = [", ".join(f"{k}={row[k]}" for k in keys) for _, row in points.iterrows()]
        ax.set_xticks(xs, labels, rotation=20, ha="right")
    ax.set_xlabel("training images" if x == "n_train_mean" else x if numeric else " × ".join(keys))
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def curve_name(keys: list[str]) -> str:
    """Artifact stem: ``learning_curve`` for ``data.train_fraction``, else ``validation_curve_<param>``."""
    if keys == ["data.train_fraction"]:
        return "learning_curve"
    return "validation_curve_" + "+".join(re.sub(r"[^\w.\-]", "_", k) for k in keys)


def report_sweep(client: MlflowClient, parent: Run, param: str | None = None) -> dict[str, Any]:
    """Read a sweep's trials back, group them by the swept parameter(s) (``param`` to choose one) and log
    ``report/<name>.png``, ``report/<name>.csv`` (the points) and ``report/runs.csv`` to the parent run."""
    keys = [param] if param else [k for k in swept_keys(parent) if k not in REPEAT_KEYS]
    if not keys:
        raise ValueError(f"sweep {parent.info.run_name!r} sweeps no parameter besides {REPEAT_KEYS}")
    runs = trial_runs(client, parent)
    if not runs:
        raise LookupError(f"sweep {parent.info.run_name!r} has no finished trial")
    frame = runs_frame(runs, keys)
    points = curve_points(frame, keys)
    name = curve_name(keys)
    x = "n_train_mean" if name == "learning_curve" else keys[0] if len(keys) == 1 else "_label"
    title = f"{parent.data.tags.get('study_name', parent.info.run_name)}: {len(runs)} runs"
    fig = plot_curve(points, x, keys, title)
    run_id = parent.info.run_id
    log_figure(fig, f"report/{name}.png", run_id, client)
    client.log_text(run_id, points.to_csv(index=False), f"report/{name}.csv")
    client.log_text(run_id, frame.to_csv(index=False), "report/runs.csv")
    log.info("logged report/%s.png (%d points from %d runs) to run %s", name, len(points), len(runs), run_id)
    return {"name": name, "keys": keys, "points": points, "runs": frame, "figure_path": f"report/{name}.png"}


def report(
    tracking_uri: str, experiment: str, sweep: str | None = None, param: str | None = None, artifact_root=None
) -> dict[str, Any]:
    """``experiments/report.py``: ``sweep`` is a study name or a parent run id (none: the latest sweep)."""
    exp_id = setup_tracking(tracking_uri, experiment, artifact_root)
    client = MlflowClient()
    is_id = bool(sweep and re.fullmatch(r"[0-9a-f]{32}", sweep))
    parent = registry.find_sweep(client, exp_id, None if is_id else sweep, sweep if is_id else None)
    return report_sweep(client, parent, param)
