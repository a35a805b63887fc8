"""The study's sampler from its Hydra config: grids from the search space, seeds that differ per trial.

A sampler seeded once per process draws the same sequence in every process: two workers on one study, or a sweep
resumed later, would propose the configurations of the first worker again. A seeded sampler is therefore built
afresh for every trial with a seed derived from ``(seed, trial number)``: trial numbers are unique in a study, so
every worker and every resumed process draws its own configurations, and a single-process sweep with a fixed seed
is still reproducible. ``seed: null`` draws from the operating system's entropy in each process."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import FrozenTrial, TrialState

from covers.sweep.search_space import grid_choices


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` in a sweep seeded with ``seed`` (independent streams for every pair)."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Runs the configured sampler, rebuilt for each trial with :func:`trial_seed` (see the module docstring).

    The samplers this is used with (TPE, random, QMC…) keep what they learn in the study, not in the instance, so a
    fresh instance per trial samples as the long-lived one would, from its own random stream."""

    def __init__(self, factory: Callable[..., BaseSampler], seed: int) -> None:
        self.factory, self.seed = factory, int(seed)
        self.sampler = factory(seed=self.seed)

    @property
    def name(self) -> str:
        return type(self.sampler).__name__

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler = self.factory(seed=trial_seed(self.seed, trial.number))
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def sampler_name(sampler: BaseSampler) -> str:
    """The configured sampler's class name (``TPESampler``), also through :class:`TrialSeededSampler`."""
    return sampler.name if isinstance(sampler, TrialSeededSampler) else type(sampler).__name__


def create_sampler(sampler: Any, distributions: dict) -> tuple[BaseSampler | None, int | None]:
    """The sampler from the Hydra-instantiated config (``_partial_: true``: a factory). Returns ``(sampler, grid size
    or None)``.

    - ``GridSampler``: its grid comes from the search space; one instance (its seed fixes the grid's order, which
      every worker must share); n_trials is capped at the grid's size.
    - any other partial with a ``seed``: a :class:`TrialSeededSampler`; with ``seed: null``, one unseeded instance.
    - an instance (a user's config without ``_partial_``) is used as it is: workers sharing a study then need
      different seeds."""
    if isinstance(sampler, functools.partial) and sampler.func is GridSampler:
        grid = {name: grid_choices(d, name) for name, d in distributions.items()}
        return sampler(search_space=grid), math.prod(len(v) for v in grid.values())
    if isinstance(sampler, functools.partial):
        seed = sampler.keywords.get("seed")
        return (sampler() if seed is None else TrialSeededSampler(sampler, seed)), None
    if sampler is not None and not isinstance(sampler, BaseSampler):
        raise TypeError(f"hydra.sweeper.sampler must be an Optuna sampler config, got {type(sampler).__name__}")
    return sampler, None
