"""The sweep's MLflow parent run: search space and settings, then a summary updated as trials finish."""

from __future__ import annotations

import logging
import tempfile
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from omegaconf import DictConfig
from optuna.trial import TrialState

from covers.sweep.budget import best_trial, counted
from covers.sweep.outcome import best_interval
from covers.sweep.search_space import describe
from covers.tracking.runs import setup_tracking

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"


def mlflow_key(override_key: str) -> str:
    """A search-space key as an MLflow param/tag name (``+probe.x`` → ``probe.x``: MLflow refuses ``+`` and ``~``)."""
    return override_key.lstrip("+~")


def open_parent_run(study: optuna.Study, mlflow_cfg: DictConfig, distributions: dict, settings: dict) -> str:
    """The sweep's parent run: reused when the study already has one (resume, or another worker), else created."""
    wal = mlflow_cfg.get("sqlite_wal", True)
    exp_id = setup_tracking(mlflow_cfg.uri, mlflow_cfg.experiment, mlflow_cfg.get("artifact_root"), wal)
    client = MlflowClient()
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing:
        client.update_run(existing, status="RUNNING")
        log.info("continuing MLflow parent run %s", existing)
        return existing
    name = f"sweep {study.study_name} ({datetime.now():%Y-%m-%d %H:%M})"
    run = client.create_run(exp_id, run_name=name, tags={"covers.kind": "sweep", "study_name": study.study_name})
    run_id = run.info.run_id
    for k, v in {
        **{f"search.{mlflow_key(k)}": describe(v) for k, v in distributions.items()},
        **{f"sweeper.{k}": v for k, v in settings.items()},
    }.items():
        client.log_param(run_id, k[:250], str(v)[:6000])
    study.set_user_attr(PARENT_ATTR, run_id)
    if study.user_attrs.get(PARENT_ATTR) != run_id:  # another worker created one at the same moment
        client.delete_run(run_id)
        return study.user_attrs[PARENT_ATTR]
    return run_id


def trials_table(study: optuna.Study):
    """All trials: number, state, params, value, duration, MLflow run id (user attributes)."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    if "duration" in df:
        df["duration_s"] = pd.to_timedelta(df["duration"]).dt.total_seconds()  # NaN for unfinished trials
        df = df.drop(columns=["duration"])
    return df


def importance_evaluator() -> optuna.importance.BaseImportanceEvaluator:
    """Optuna's PED-ANOVA, named (Optuna 5's default; Optuna 4's was fANOVA): the figures mean the same on either,
    and a conditional parameter (γ, drawn with the focal loss) is judged on the trials that drew it."""
    return optuna.importance.PedAnovaImportanceEvaluator()


def _log_plots(client: MlflowClient, run_id: str, study: optuna.Study, folder: Path) -> None:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots: dict[str, Any] = {
        "optimization_history": vis.plot_optimization_history,
        "parallel_coordinate": vis.plot_parallel_coordinate,
        "param_importances": lambda study: vis.plot_param_importances(study, evaluator=importance_evaluator()),
    }
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        except Exception as e:  # e.g. too few complete trials for importances
            log.info("sweep plot %s skipped: %s", name, e)
    plt.close("all")


def log_sweep_summary(study: optuna.Study, parent_run_id: str, final: bool = False) -> None:
    """After every trial: trial counts, best value/params, ``sweep/trials.csv``. When ``final``, also Optuna's
    parameter importances (:func:`importance_evaluator`) and plots."""
    client = MlflowClient()
    trials = counted(study.get_trials(deepcopy=False))
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        client.log_metric(parent_run_id, f"trials_{state.name.lower()}", sum(t.state == state for t in trials))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        trials_table(study).to_csv(folder / "trials.csv", index=False)
        if complete:
            _tag_best(client, parent_run_id, study)
        if final and len(complete) >= 2:
            try:
                importances = optuna.importance.get_param_importances(study, evaluator=importance_evaluator())
                for k, v in importances.items():
                    client.log_metric(parent_run_id, f"importance.{k}", float(v))
            except Exception as e:
                log.info("parameter importances skipped: %s", e)
        if final and complete:
            _log_plots(client, parent_run_id, study, folder)
        client.log_artifacts(parent_run_id, tmp, "sweep")


def _set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    """Tags in one batch: sweep workers sharing a study write the same tags at the same moment, and MLflow's
    batch path retries an insert that another writer won (``set_tag`` fails with a UNIQUE constraint on SQLite)."""
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _delete_tag(client: MlflowClient, run_id: str, key: str) -> None:
    """Delete a tag that another sweep worker may have deleted a moment ago."""
    try:
        client.delete_tag(run_id, key)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise


def tag_trial_state(study: optuna.Study, number: int) -> None:
    """The trial's Optuna state (COMPLETE, PRUNED, FAIL) as tag ``trial_state`` on its MLflow run: a pruned trial's
    run is FINISHED, and this tag (a column in the runs list) tells it from a complete one."""
    trial = study.get_trials(deepcopy=False)[number]
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        _set_tags(MlflowClient(), run_id, {"trial_state": trial.state.name})


def _tag_best(client: MlflowClient, parent_run_id: str, study: optuna.Study) -> None:
    best = best_trial(study)
    client.log_metric(parent_run_id, "best_value", float(best.value))
    ci = best_interval(study)
    if ci is not None:
        for key, value in (("best_value_ci_low", ci.low), ("best_value_ci_high", ci.high)):
            client.log_metric(parent_run_id, key, float(value))
        client.log_metric(parent_run_id, "trials_within_best_ci", ci.within)
    parent_tags = client.get_run(parent_run_id).data.tags
    previous = parent_tags.get("best_trial_number")
    tags = {"best_trial_number": best.number, **{f"best.{mlflow_key(k)}": v for k, v in best.params.items()}}
    _set_tags(client, parent_run_id, tags)
    # a conditional parameter of an earlier best (γ of a focal loss) is not one of this best's
    for key in [k for k in parent_tags if k.startswith("best.") and k not in tags]:
        _delete_tag(client, parent_run_id, key)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    if previous is not None and previous != str(best.number):
        old = by_number[int(previous)].user_attrs.get("mlflow_run_id")
        if old:
            _set_tags(client, old, {"best_trial": "false"})
    run_id = best.user_attrs.get("mlflow_run_id")
    if run_id:
        _set_tags(client, run_id, {"best_trial": "true"})
