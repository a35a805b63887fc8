"""A dead worker's trials: Optuna fails them once their heartbeat is older than ``grace_period``; here their MLflow
runs are ended FAILED with the reason, and their parameters are queued once more (:func:`covers.sweep.budget.retry`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import optuna
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from covers.sweep import budget
from covers.tracking.runs import resolve_sqlite_uri

log = logging.getLogger(__name__)

REASON = "worker died: no heartbeat for {grace}s (failed by the sweeper; its parameters are retried once)"


def trial_run_ids(client: MlflowClient, experiment: str, study_name: str, trial: FrozenTrial) -> list[str]:
    """The MLflow runs of ``trial`` still RUNNING, found by the study and trial tags every trial run carries (the
    job may have died before it recorded its run id in the trial)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    quoted = study_name.replace("'", "\\'")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.study_name = '{quoted}' and tags.trial_number = '{trial.number}'"
        " and attributes.status = 'RUNNING'",
    )
    return [r.info.run_id for r in runs]


def stale_trial_callback(
    mlflow_cfg: DictConfig | None, grace_period: int | None
) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's ``heartbeat_stale_trial_callback``: called in whichever worker found ``trial`` stale."""

    def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
        reason = REASON.format(grace=grace_period)
        log.warning("trial %d: %s", trial.number, reason)
        if mlflow_cfg:
            try:
                client = MlflowClient(tracking_uri=resolve_sqlite_uri(mlflow_cfg.uri))
                for run_id in trial_run_ids(client, mlflow_cfg.experiment, study.study_name, trial):
                    client.set_tag(run_id, "error", reason)
                    client.set_tag(run_id, "trial_state", "FAIL")
                    client.set_terminated(run_id, status="FAILED")
            except Exception:  # the retry below matters more than the run's status
                log.exception("could not end the MLflow run of dead trial %d", trial.number)
        budget.retry(study, trial)

    return on_stale
