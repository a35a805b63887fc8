"""Finding sweeps and their best trial in MLflow; model-registry versions and the champion alias (no stages)."""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)


class Candidate(NamedTuple):
    """What ranks a trial: higher ``summary/best_val_acc``, then lower validation loss, then the earlier run."""

    best_val_acc: float
    val_loss: float
    start_time: int
    run_id: str


class Decision(NamedTuple):
    """Whether the candidate takes the alias, and why."""

    promote: bool
    reason: str


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def find_sweep(
    client: MlflowClient, experiment_id: str, study_name: str | None = None, parent_run_id: str | None = None
) -> Run:
    """The sweep's parent run: by id, by study name, or the latest sweep of the experiment."""
    if parent_run_id:
        run = client.get_run(parent_run_id)
        if run.data.tags.get("covers.kind") != "sweep":
            raise LookupError(f"run {parent_run_id} is not a sweep's parent run (tag covers.kind=sweep)")
        return run
    query = "tags.`covers.kind` = 'sweep'"
    if study_name:
        query += f" and tags.study_name = {_quote(study_name)}"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        what = f"study {study_name!r}" if study_name else "any sweep"
        raise LookupError(f"no MLflow parent run for {what} in experiment {experiment_id}")
    return runs[0]


def val_loss_at_best(client: MlflowClient, run: Run) -> float:
    """The validation loss logged at the run's best epoch (``inf`` when it was not logged)."""
    step = int(run.data.metrics.get("summary/best_epoch", 0))  # MLflow steps count epochs from 1
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")}
    return float(losses.get(step, math.inf))


def rank_candidates(candidates: list[Candidate]) -> list[Candidate]:
    """Best first: highest ``summary/best_val_acc``, then lowest validation loss, then earliest start."""
    return sorted(candidates, key=lambda c: (-c.best_val_acc, c.val_loss, c.start_time, c.run_id))


def ranked_trials(client: MlflowClient, parent: Run) -> list[Run]:
    """The finished trials of a sweep with ``summary/best_val_acc`` and a logged model, best first (ties: see
    :class:`Candidate`; the validation loss is read only for tied runs)."""
    query = f"tags.mlflow.parentRunId = {_quote(parent.info.run_id)} and attributes.status = 'FINISHED'"
    runs = client.search_runs([parent.info.experiment_id], query, max_results=10_000)
    runs = [
        r
        for r in runs
        if r.data.tags.get("covers.kind") != "ensemble"
        and math.isfinite(r.data.metrics.get("summary/best_val_acc", math.nan))
        and r.data.params.get("tracking.log_model", "True") == "True"
    ]
    if not runs:
        raise LookupError(f"sweep {parent.info.run_name!r} has no finished trial with summary/best_val_acc and a model")
    accs = [r.data.metrics["summary/best_val_acc"] for r in runs]
    by_id = {r.info.run_id: r for r in runs}
    ranked = rank_candidates(
        [
            Candidate(acc, val_loss_at_best(client, r) if accs.count(acc) > 1 else math.inf, r.info.start_time, i)
            for (i, r), acc in zip(by_id.items(), accs, strict=True)
        ]
    )
    return [by_id[c.run_id] for c in ranked]


def best_trial(client: MlflowClient, parent: Run) -> Run:
    """The first of :func:`ranked_trials`."""
    ranked = ranked_trials(client, parent)
    top = ranked[0].data.metrics["summary/best_val_acc"]
    tied = sum(r.data.metrics["summary/best_val_acc"] == top for r in ranked)
    log.info(
        "best of %d trials: run %s (summary/best_val_acc=%.4f, %d tied)", len(ranked), ranked[0].info.run_id, top, tied
    )
    return ranked[0]


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or ``None`` when the model or the alias does not exist yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def run_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The registered version of ``name`` made from run ``run_id``, if any (the newest)."""
    versions = client.search_model_versions(f"name = {_quote(name)} and run_id = {_quote(run_id)}")
    return max(versions, key=lambda v: int(v.version), default=None)


def decide(candidate_acc: float, champion_acc: float | None, force: bool = False) -> Decision:
    """The candidate takes the alias unless its test accuracy is below the champion's (``force`` overrides)."""
    if champion_acc is None:
        return Decision(True, "no current champion")
    if candidate_acc >= champion_acc:
        return Decision(True, f"test_acc {candidate_acc:.4f} is not below the champion's {champion_acc:.4f}")
    if force:
        return Decision(True, f"forced although test_acc {candidate_acc:.4f} < champion's {champion_acc:.4f}")
    return Decision(False, f"test_acc {candidate_acc:.4f} is below the champion's {champion_acc:.4f}")


def newest_champion(client: MlflowClient, alias: str = "champion", prefix: str = "covers-") -> str:
    """``models:/<name>@<alias>`` of the most recently updated registered model named ``prefix*`` that has the
    alias (one per data set: ``covers-<data set>``)."""
    models = client.search_registered_models(f"name LIKE {_quote(prefix + '%')}", max_results=1000)
    holders = [m for m in models if alias in (m.aliases or {})]
    if not holders:
        raise LookupError(
            f"no registered {prefix}* model has the alias @{alias}: python experiments/promote.py makes one"
        )
    newest = max(holders, key=lambda m: m.last_updated_timestamp or 0)
    return f"models:/{newest.name}@{alias}"
