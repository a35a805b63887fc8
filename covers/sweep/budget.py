"""Trial bookkeeping shared by every worker of a study: the n_trials budget, retries, heartbeats."""

from __future__ import annotations

import logging
import threading

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

RETRY_OF = "retry_of"
OVER_BUDGET = "over_budget"
WARM_START = "warm_start_from"  # a finished trial of an earlier study, added as history for the sampler
# multi-fidelity (covers.sweep.asha): a promoted configuration's next rung is not a new configuration
CONTINUES = "asha_continues"  # the trial whose configuration this one continues
RUNG = "asha_rung"  # the rung (from 0) a trial trains to
RESUME_RUN = "asha_resume_run_id"  # the MLflow run (with its checkpoint) a later rung continues


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that have a retry (their retry replaces them in the budget)."""
    return {int(t.user_attrs[RETRY_OF]) for t in trials if RETRY_OF in t.user_attrs}


def own(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials this study ran itself: all states, except retried failures, over-budget leftovers and the
    history added from an earlier study (``warm_start_from``)."""
    replaced = retried_numbers(trials)
    return [
        t
        for t in trials
        if t.number not in replaced and not t.user_attrs.get(OVER_BUDGET) and WARM_START not in t.user_attrs
    ]


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that spend the ``n_trials`` budget: the configurations this study ran (:func:`own`), each once; the
    later rungs of a promoted configuration (ASHA) are not new ones."""
    return [t for t in own(trials) if CONTINUES not in t.user_attrs]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial this study ran itself (never a warm-start trial; a promoted configuration's later
    rung counts), or None."""
    done = [t for t in own(study.get_trials(deepcopy=False)) if t.state == TrialState.COMPLETE]
    if not done:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(done, key=lambda t: t.value)


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """How many new trials may still be asked for (waiting retries are already counted)."""
    return n_trials - len(counted(study.get_trials(deepcopy=False)))


def has_waiting(study: optuna.Study) -> bool:
    """Whether a retry (or other enqueued trial) waits to be run."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


# user attributes a retry keeps: what the trial was to do (e.g. which rung of which configuration)
KEPT_BY_RETRY = (RUNG, CONTINUES, RESUME_RUN)


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a failed/interrupted trial's parameters once more (a retry is never retried again)."""
    if RETRY_OF in trial.user_attrs or not trial.params:
        return
    kept = {k: trial.user_attrs[k] for k in KEPT_BY_RETRY if k in trial.user_attrs}
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number, **kept}, skip_if_exists=False)
    log.warning("trial %d will be retried with the same parameters", trial.number)


class Heartbeat:
    """Records heartbeats for in-flight trials so a crashed worker's trials go stale and are retried."""

    def __init__(self, storage: BaseStorage | None, interval: float | None) -> None:
        self.enabled = bool(interval) and hasattr(storage, "record_heartbeat")
        self.storage, self.interval = storage, interval or 0
        self.trial_ids: set[int] = set()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="optuna-heartbeat")

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()

    def add(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.add(trial_id)
        if self.enabled:
            self.storage.record_heartbeat(trial_id)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a missed beat only risks a retry
                    log.exception("heartbeat for trial id %d failed", trial_id)
