"""Warm start (``hydra.sweeper.warm_start_from``): the finished trials of an earlier study in the same storage,
added to this one as history for the sampler (Optuna's ``add_trials``); never run again, never counted in
``n_trials``, never this sweep's best."""

from __future__ import annotations

import logging

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from covers.sweep.budget import WARM_START
from covers.sweep.search_space import SearchSpaceError, contains

log = logging.getLogger(__name__)


def check_source(storage: BaseStorage | None, source: str, direction: str) -> optuna.Study:
    """The earlier study ``source``; refused (one line, before any trial) when it is not in ``storage`` or
    optimises the other way."""
    if storage is None:
        raise SearchSpaceError(f"hydra.sweeper.warm_start_from={source} needs hydra.sweeper.storage")
    names = optuna.get_all_study_names(storage)
    if source not in names:
        raise SearchSpaceError(
            f"hydra.sweeper.warm_start_from={source}: no such study in the storage (studies: {', '.join(names)})"
        )
    earlier = optuna.load_study(study_name=source, storage=storage)
    other = earlier.direction.name.lower()
    if other != direction:
        raise SearchSpaceError(f"hydra.sweeper.warm_start_from={source}: it was to {other}, this sweep to {direction}")
    return earlier


def add_history(
    study: optuna.Study, earlier: optuna.Study, distributions: dict[str, BaseDistribution], define_by_run: bool = False
) -> int:
    """Add the complete trials of the ``earlier`` study whose values fit this search space (once per study: a
    resumed sweep or another worker finds them there); the number added. With ``define_by_run`` (a
    ``custom_search_space`` hook) a parameter outside ``params:`` (e.g. γ of the focal trials) keeps its own
    distribution, so that such trials are history too."""
    source = earlier.study_name
    if study.user_attrs.get(WARM_START) == source:
        return 0
    history, skipped = [], 0
    for t in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        own = {k: distributions.get(k, t.distributions[k] if define_by_run else None) for k in t.params}
        fits = t.params and all(d is not None and contains(d, t.params[k]) for k, d in own.items())
        if not fits or WARM_START in t.user_attrs:  # outside this space, or history of the earlier one itself
            skipped += 1
            continue
        history.append(
            optuna.trial.create_trial(
                params=t.params,
                distributions=own,
                value=t.value,
                intermediate_values=t.intermediate_values,
                user_attrs={WARM_START: source, "source_trial": t.number},
                state=TrialState.COMPLETE,
            )
        )
    study.add_trials(history)
    study.set_user_attr(WARM_START, source)
    log.info("warm start: %d complete trials of study %s added as history (%d left out)", len(history), source, skipped)
    return len(history)
