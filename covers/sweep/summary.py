"""Sweep summary on the MLflow parent run: best trial, all trials as CSV."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

log = logging.getLogger(__name__)


def trials_table(study: optuna.Study):
    """All trials: number, state, params, value, duration, MLflow run id."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    if "duration" in df:
        df["duration_s"] = df["duration"].dt.total_seconds()
        df = df.drop(columns=["duration"])
    return df


def log_sweep_summary(study: optuna.Study, parent_run_id: str, status: str = "FINISHED") -> None:
    """Best value and params, counts per state and the trials CSV, on the parent run; then end it."""
    client = MlflowClient()
    trials = study.get_trials(deepcopy=False)
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        client.log_metric(parent_run_id, f"trials_{state.name.lower()}", sum(t.state == state for t in trials))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        client.log_metric(parent_run_id, "best_value", float(best.value))
        client.set_tag(parent_run_id, "best_trial_number", str(best.number))
        for k, v in best.params.items():
            client.set_tag(parent_run_id, f"best.{k}", str(v))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        trials_table(study).to_csv(path, index=False)
        client.log_artifact(parent_run_id, str(path), "sweep")
    client.set_terminated(parent_run_id, status=status)
