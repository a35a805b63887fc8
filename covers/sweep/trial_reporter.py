"""The job side of a sweep: reach this job's Optuna trial through the storage, report epochs, prune.

The sweeper hands each job ``trial.study_name`` and ``trial.number``; the storage URL and pruner come from the
sweeper's own config (``HydraConfig.get().sweeper``), so this works in-process and in process launchers."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from covers.sweep.storage import job_storage

log = logging.getLogger(__name__)


def connect_trial(
    study_name: str, number: int, storage: str, pruner: Any = None, sqlite_wal: bool = True
) -> optuna.Trial:
    """The live :class:`optuna.Trial` number ``number`` of ``study_name`` in ``storage``."""
    store = job_storage(storage, sqlite_wal)
    study = optuna.load_study(study_name=study_name, storage=store, pruner=pruner)
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study_name), number)
    return optuna.Trial(study, trial_id)


class TrialReporter:
    """Epoch callback (epochs from 1): report ``metric`` to the trial at that step and raise
    :class:`optuna.TrialPruned` when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str = "val_acc", epochs: int | None = None) -> None:
        self.trial, self.metric, self.epochs = trial, metric, epochs

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        value = float(metrics[self.metric])
        self.trial.report(value, epoch)
        last = self.epochs is not None and epoch >= self.epochs  # a finished trial is never thrown away
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({self.metric}={value:.4f})")


def reporter_for(cfg: DictConfig, epochs: int | None = None) -> TrialReporter | None:
    """A reporter for this job's trial when it runs under the covers Optuna sweeper, else ``None``."""
    if cfg.trial.number is None or not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    if "storage" not in sweeper or not sweeper.storage:
        log.warning("trial %s: the sweeper has no storage; no pruning", cfg.trial.number)
        return None
    pruner = instantiate(sweeper.pruner) if sweeper.get("pruner") else None
    wal = bool(sweeper.get("sqlite_wal", True))
    trial = connect_trial(cfg.trial.study_name, int(cfg.trial.number), sweeper.storage, pruner, wal)
    return TrialReporter(trial, str(sweeper.get("metric", "val_acc")), epochs or int(cfg.trainer.epochs))
