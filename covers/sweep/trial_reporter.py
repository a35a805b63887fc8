"""The job side of a sweep: reach this job's Optuna trial through the storage, report epochs, prune.

The sweeper hands each job everything it needs in the trial's config (``trial.study_name``, ``trial.number``,
``trial.storage``, ``trial.metric``, ``trial.pruner``); the run layer passes those values here, so this works
in-process and in process launchers alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.storages import RDBStorage

from covers.sweep.storage import open_storage

# trial user attribute: the 95 % interval [low, high] of the trial's objective (its validation accuracy), which the
# sweep summary compares the other trials with
INTERVAL_ATTR = "objective_ci"


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

    def record_interval(self, low: float, high: float) -> None:
        """The objective's 95 % interval, for the sweep summary (:data:`INTERVAL_ATTR`)."""
        self.trial.set_user_attr(INTERVAL_ATTR, [float(low), float(high)])


@contextmanager
def trial_reporter(
    study_name: str,
    number: int,
    storage: str,
    metric: str = "val_acc",
    pruner: optuna.pruners.BasePruner | None = None,
    epochs: int | None = None,
) -> Iterator[TrialReporter]:
    """A :class:`TrialReporter` for the live trial ``number`` of ``study_name`` in ``storage``, connected for the
    length of the block (the storage's mode, e.g. SQLite's WAL, is the sweeper's business and left alone)."""
    store = open_storage(storage, sqlite_wal=False)
    try:
        study = optuna.load_study(study_name=study_name, storage=store, pruner=pruner)
        trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study_name), number)
        yield TrialReporter(optuna.Trial(study, trial_id), metric, epochs)
    finally:
        if isinstance(store, RDBStorage):
            store.engine.dispose()
