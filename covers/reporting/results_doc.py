"""``docs/results.md`` from real MLflow runs: per sweep its report (curve, table, run ids), best trial, test
accuracy after promotion, the registry's champion; every number is followed to the run it came from."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from covers.reporting.curves import REPEAT_KEYS, report_sweep, runs_frame, swept_keys, trial_runs
from covers.tracking import registry
from covers.tracking.runs import setup_tracking
from covers.training.intervals import wilson_interval

log = logging.getLogger(__name__)

# cited, not measured here: the original study (ResNet50, its own album-cover data set)
ORIGINAL_STUDY = "val accuracy 0.727–0.736, test accuracy 0.727 (ResNet50, 20 epochs, lr 0.01, focal γ 2, 3 frozen)"


def _fmt(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def with_interval(metrics: dict[str, float], key: str, n: int | str | None) -> str:
    """``0.442 (0.364–0.524)``: the metric with its logged 95 % interval (``<key>_ci_low/high``), or for runs
    logged before intervals were, the Wilson interval over ``n`` covers; ``–`` when the metric is missing."""
    if key not in metrics:
        return "–"
    value = metrics[key]
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is None or high is None:
        if not n or int(n) <= 0:
            return f"{value:.3f}"
        low, high = wilson_interval(round(value * int(n)), int(n))
    return f"{value:.3f} ({low:.3f}–{high:.3f})"


def points_table(points: pd.DataFrame, keys: list[str], per_class: bool = False) -> str:
    """Markdown table of a report's points: swept values, runs, accuracies (mean ± std), per-class validation
    recall (``per_class``), run ids."""
    recall_cols = (c.removesuffix("_mean") for c in points if c.startswith("recall.") and c.endswith("_mean"))
    recalls = sorted(recall_cols) if per_class else []
    head = [*keys, "n train", "runs", "val acc", "train acc", "val balanced acc", *recalls, "MLflow run ids"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, p in points.iterrows():
        cells = [str(p[k]) for k in keys] + [f"{p['n_train_mean']:.0f}", str(p["n_runs"])]
        cells += [_fmt(p[f"{m}_mean"], p[f"{m}_std"]) for m in ("val_acc", "train_acc", "val_balanced_acc")]
        cells += [f"{p[f'{r}_mean']:.2f}" for r in recalls]
        cells.append(" ".join(f"`{i}`" for i in p["run_ids"].split()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _copy_artifact(client: MlflowClient, run_id: str, path: str, figures: Path, stem: str) -> Path | None:
    """Download ``path`` of a run into ``figures`` as ``<stem>_<file name>``; ``None`` if the run lacks it."""
    folder, _, name = path.rpartition("/")
    if name not in {Path(a.path).name for a in client.list_artifacts(run_id, folder or None)}:
        return None
    local = Path(client.download_artifacts(run_id, path, str(figures)))
    target = figures / f"{stem}_{local.name}"
    local.replace(target)
    return target


def promoted_run(client: MlflowClient, parent: Run, best: Run) -> Run | None:
    """The run that was tested for the sweep's best trial: the trial itself, or the newest ensemble/TTA
    composition promote built on it (``covers.kind=ensemble``, the trial first in ``ensemble.members``)."""
    if "test_acc" in best.data.metrics:
        return best
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`covers.kind` = 'ensemble'"
    runs = client.search_runs([parent.info.experiment_id], query, order_by=["attributes.start_time DESC"])
    built = [r for r in runs if r.data.params.get("ensemble.members", "").split(",")[0] == best.info.run_id]
    return next((r for r in built if "test_acc" in r.data.metrics), None)


def _test(run: Run | None) -> str:
    if run is None:
        return "–"
    m = run.data.metrics
    return with_interval(m, "test_acc", m.get("test_n_images", run.data.params.get("data.n_test")))


def _best_line(best: Run, tested: Run | None) -> str:
    m, p = best.data.metrics, best.data.params
    val = with_interval(m, "summary/best_val_acc", p.get("data.n_val"))
    line = f"Best trial: run `{best.info.run_id}` ({best.info.run_name}), best val_acc {val}"
    if tested is None:
        return line + ", not promoted"
    if tested is best:
        return line + f", test_acc {_test(tested)} (promoted)"
    return line + f"; promoted as `{tested.info.run_name}` (run `{tested.info.run_id}`), test_acc {_test(tested)}"


def _data_line(best: Run) -> str:
    p = best.data.params
    source = p.get("data.source")
    where = f"`{source}`, " if source not in (None, "None") else ""
    return (
        f"data `{p.get('data.name')}` ({where}{p.get('data.resolved_image_size')} px, "
        f"{p.get('data.n_train')} train / {p.get('data.n_val')} val / {p.get('data.n_test')} test images), "
        f"model `{p.get('model.name')}`"
    )


def sweep_section(client: MlflowClient, sweep: str, parent: Run, best: Run, figures: Path, rel: str) -> str:
    """One sweep (its parent run and best trial): a grid (validation or learning curve) gets its curve and table
    of points, any other sampler (a search) its history, importances and best trials; both end with the best
    trial (and its test accuracy)."""
    if parent.data.params.get("sweeper.sampler", "GridSampler") != "GridSampler":
        return search_section(client, parent, best, sweep, figures, rel)
    out = report_sweep(client, parent)
    target = _copy_artifact(client, parent.info.run_id, out["figure_path"], figures, sweep)
    per_class = best.data.params.get("data.imbalance", "None") != "None"
    lines = [
        f"## {sweep}",
        "",
        f"Parent run `{parent.info.run_id}`, {len(out['runs'])} finished trials; {_data_line(best)}.",
        "",
        f"![{out['name']}]({rel}/{target.name})",
        "",
        points_table(out["points"], out["keys"], per_class=per_class),
        "",
        _best_line(best, promoted_run(client, parent, best)),
        "",
    ]
    return "\n".join(lines)


def search_section(client: MlflowClient, parent: Run, best: Run, sweep: str, figures: Path, rel: str) -> str:
    """A search sweep: trial counts, the top trials with their parameters, Optuna's importances and plots."""
    keys = [k for k in swept_keys(parent) if k not in REPEAT_KEYS]
    frame = runs_frame(trial_runs(client, parent), keys).sort_values("val_acc", ascending=False)
    m = parent.data.metrics
    counts = ", ".join(f"{int(m[f'trials_{s}'])} {s}" for s in ("complete", "pruned", "fail") if f"trials_{s}" in m)
    sampler, pruner = parent.data.params.get("sweeper.sampler"), parent.data.params.get("sweeper.pruner")
    lines = [f"## {sweep}", "", f"Parent run `{parent.info.run_id}`: {sampler}, {pruner}; trials {counts}."]
    lines += ["", f"Best trial's {_data_line(best)}.", ""]
    lines += [
        "Search space: " + ", ".join(f"`{k}` {parent.data.params[f'search.{k}']}" for k in keys) + ".",
        "",
    ]
    head = [*keys, "val acc", "train acc", "MLflow run id"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in frame.head(8).iterrows():
        values = [f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append(
            "| " + " | ".join([*values, f"{row.val_acc:.3f}", f"{row.train_acc:.3f}", f"`{row.run_id}`"]) + " |"
        )
    importances = {k.removeprefix("importance."): v for k, v in m.items() if k.startswith("importance.")}
    if importances:
        ranked = sorted(importances.items(), key=lambda kv: -kv[1])
        named = ", ".join(f"`{k}` {v:.2f}" for k, v in ranked)
        lines += ["", f"Parameter importances (Optuna, PED-ANOVA; a conditional one over its own trials): {named}"]
    for plot in ("optimization_history", "param_importances"):
        target = _copy_artifact(client, parent.info.run_id, f"sweep/{plot}.png", figures, sweep)
        if target is not None:
            lines += ["", f"![{plot}]({rel}/{target.name})"]
    tested = promoted_run(client, parent, best)
    lines += ["", f"Top {min(8, len(frame))} of {len(frame)} finished trials above.", "", _best_line(best, tested), ""]
    return "\n".join(lines)


def _latest(client: MlflowClient, exp_id: str, kind_query: str, limit: int) -> list[Run]:
    query = f"{kind_query} and attributes.status = 'FINISHED'"
    return client.search_runs([exp_id], query, order_by=["attributes.start_time DESC"], max_results=limit)


def baseline_section(client: MlflowClient, exp_id: str, limit: int = 5) -> list[str]:
    """The latest finished kNN baseline runs of the experiment (tag ``model.kind=knn``), one line each."""
    runs = _latest(client, exp_id, "tags.`model.kind` = 'knn'", limit)
    if not runs:
        return ["No kNN baseline run yet (`python experiments/run.py model=knn`)."]
    lines = []
    for run in runs:
        p, m = run.data.params, run.data.metrics
        lines.append(
            f"- run `{run.info.run_id}`: `{p.get('data.source')}` at {p.get('data.resolved_image_size')} px, "
            f"{p.get('data.n_train')} training images, k={p.get('model.k')} ({p.get('model.weighting')}): "
            f"val_acc {with_interval(m, 'summary/best_val_acc', p.get('data.n_val'))}"
        )
    return lines


def lr_find_section(client: MlflowClient, exp_id: str, figures: Path, rel: str, limit: int = 3) -> list[str]:
    """The latest lr finder runs (tag ``covers.kind=lr_find``): their suggestions and plot."""
    runs = _latest(client, exp_id, "tags.`covers.kind` = 'lr_find'", limit)
    if not runs:
        return ["No lr finder run yet (`python experiments/lr_find.py`)."]
    lines = []
    for run in runs:
        m = run.data.metrics
        found = ", ".join(
            f"{k.removeprefix('lr_find.')} {v:.2e}" for k, v in sorted(m.items()) if k.startswith("lr_find.")
        )
        lines += [f"- run `{run.info.run_id}`: {_data_line(run)}; suggestions: {found}"]
        target = _copy_artifact(client, run.info.run_id, "plots/lr_find.png", figures, f"lr_find_{run.info.run_id[:8]}")
        if target is not None:
            lines += ["", f"  ![lr finder]({rel}/{target.name})", ""]
    return lines


def champion_section(client: MlflowClient, alias: str = "champion") -> list[str]:
    """Every registered model's version holding ``alias``: its test accuracy with interval and, when promote's
    gate judged it, chance, the kNN baseline on the same test covers and McNemar's p-value (tags ``gate.*``)."""
    lines = []
    for model in client.search_registered_models():
        version = registry.alias_version(client, model.name, alias)
        if version is None:
            continue
        metrics = client.get_run(version.run_id).data.metrics
        n = metrics.get("test_n_images")
        acc = with_interval(metrics, "test_acc", n) if "test_acc" in metrics else version.tags.get("test_acc", "–")
        line = f"- `{model.name}@{alias}`: version {version.version} (run `{version.run_id}`), test_acc {acc}"
        t = version.tags
        if "gate.passed" in t:
            line += f" on {t['gate.n']} covers; chance {float(t['gate.chance']):.3f}"
            if t.get("gate.baseline_acc") not in (None, "None"):
                low, high = (float(v) for v in t["gate.baseline_ci"].strip("()").split(","))
                line += (
                    f"; kNN baseline {float(t['gate.baseline_acc']):.3f} ({low:.3f}–{high:.3f}), "
                    f"McNemar p={float(t['gate.mcnemar_p']):.3g}"
                )
            line += f"; gate {'passed' if t['gate.passed'] == 'True' else 'refused'}"
        else:
            line += " (promoted before the gate existed: no baseline comparison)"
        lines.append(line)
    return lines or [f"No model holds `@{alias}` yet (run `python experiments/promote.py`)."]


def summary_table(client: MlflowClient, found: dict[str, tuple[Run, Run]]) -> list[str]:
    """One row per sweep (``{name: (parent run, best trial)}``): data, the best trial's validation (and, once
    promoted, test) accuracy."""
    lines = ["| sweep | data | image px | train images | best val acc | test acc | best run |", "|" + "---|" * 7]
    for sweep, (parent, best) in found.items():
        p, m = best.data.params, best.data.metrics
        tested = promoted_run(client, parent, best)
        test = _test(tested) + (f" ({tested.info.run_name})" if tested is not None and tested is not best else "")
        src = p.get("data.source")
        source = Path(src).name if src not in (None, "None") else p.get("data.name")
        cells = [
            sweep,
            source,
            p.get("data.resolved_image_size"),
            p.get("data.n_train"),
            with_interval(m, "summary/best_val_acc", p.get("data.n_val")),
        ]
        lines.append("| " + " | ".join(str(c) for c in [*cells, test, f"`{best.info.run_id}`"]) + " |")
    return lines


def write_results(tracking_uri: str, experiment: str, sweeps: list[str], out: str | Path) -> Path:
    """Write ``out`` (markdown) and its figures (``<out stem>/``) from the named sweeps of ``experiment``."""
    exp_id = setup_tracking(tracking_uri, experiment)
    client = MlflowClient()
    out = Path(out)
    figures = out.parent / out.stem
    figures.mkdir(parents=True, exist_ok=True)
    rel = figures.name
    command = f'python experiments/report.py "sweeps=[{",".join(sweeps)}]" out={out}'
    parents, missing = {}, []
    for name in sweeps:  # a sweep not (yet) in this store is listed as such, not a reason to write nothing
        try:
            parents[name] = registry.find_sweep(client, exp_id, name)
        except LookupError:
            missing.append(name)
    found = {name: (parent, registry.best_trial(client, parent)) for name, parent in parents.items()}
    parts = [
        "# Results",
        "",
        f"Generated on {datetime.now(timezone.utc):%Y-%m-%d} by `{command}` from the MLflow store "
        f"`{tracking_uri}`, experiment `{experiment}` (the runs: `bash experiments/study.sh`; each run's code "
        "version is its MLflow tag `mlflow.source.git.commit`). Every number below comes from a run whose MLflow "
        "run id is listed.",
        "",
        "## Summary",
        "",
        *summary_table(client, found),
        "",
        *([f"Not in this store (not run): {', '.join(f'`{m}`' for m in missing)}.", ""] if missing else []),
        "Validation accuracy is that of each run's best epoch, chosen on the validation split itself, and a sweep's "
        "best is the maximum over its runs: both read optimistic, the more so on small splits (one image of a "
        "15-image split is 0.067). The test split is used once per model, by promotion (`test acc`). Brackets are "
        "95 % intervals (Wilson for accuracy).",
        "",
        "The data sets: `discogs-covers` (1 500 Discogs covers, 5 genres, 128 px) is the one to rank "
        "configurations on; `cifar10-covers` (5 000 CIFAR-10 images) checks that training works on an easy task; "
        "`album-covers` (151 covers of 10 genres, 15 validation and 16 test covers) is too small to rank "
        "configurations: its intervals span about 0.4, so no difference between its runs below is meaningful.",
        "",
    ]
    parts += [sweep_section(client, name, *runs, figures, rel) for name, runs in found.items()]
    parts += ["## kNN baseline", "", *baseline_section(client, exp_id), ""]
    parts += ["## LR finder", "", *lr_find_section(client, exp_id, figures, rel), ""]
    parts += ["## Champions", "", *champion_section(client), ""]
    parts += ["## The original study (for comparison; its data set differs)", ""]
    parts += [f"Reported there, not measured here: {ORIGINAL_STUDY}."]
    out.write_text("\n".join(parts) + "\n")
    log.info("wrote %s (%d sweeps)", out, len(sweeps))
    return out
