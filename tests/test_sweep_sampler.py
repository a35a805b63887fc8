"""Samplers seeded per trial: distinct draws across workers and resumes, reproducible in one process."""

from __future__ import annotations

import functools

import optuna
import pytest

from covers.sweep.devices import slot_devices
from covers.sweep.sampler import TrialSeededSampler, create_sampler, sampler_name

SPACE = {
    "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
    "frozen": optuna.distributions.IntDistribution(0, 4),
}


def _draw(study: optuna.Study, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=SPACE)
        study.tell(trial, trial.params["lr"])
        out.append(trial.params)
    return out


@pytest.mark.parametrize("factory", [optuna.samplers.TPESampler, optuna.samplers.RandomSampler])
def test_seeded_sampler_is_reproducible_and_distinct_across_workers(tmp_path, factory):
    partial = functools.partial(factory, seed=123)
    first = _draw(optuna.create_study(sampler=create_sampler(partial, SPACE)[0]), 6)
    again = _draw(optuna.create_study(sampler=create_sampler(partial, SPACE)[0]), 6)
    assert first == again, "one process, one seed: the same sweep"

    # two workers (two sampler instances, same seed) taking turns on one study, as two processes would
    storage = f"sqlite:///{tmp_path}/shared.db"
    workers = [
        optuna.create_study(
            study_name="s", storage=storage, sampler=create_sampler(partial, SPACE)[0], load_if_exists=True
        )
        for _ in range(2)
    ]
    drawn = [p for _ in range(4) for study in workers for p in _draw(study, 1)]
    assert len({tuple(sorted(p.items())) for p in drawn}) == len(drawn) == 8

    # a resumed sweep: its new trials differ from the first ones
    resumed = optuna.create_study(
        study_name="s", storage=storage, sampler=create_sampler(partial, SPACE)[0], load_if_exists=True
    )
    later = _draw(resumed, 2)
    assert not any(p in drawn for p in later)


def test_sampler_kinds():
    seeded, _ = create_sampler(functools.partial(optuna.samplers.TPESampler, seed=1), SPACE)
    assert isinstance(seeded, TrialSeededSampler) and sampler_name(seeded) == "TPESampler"
    unseeded, _ = create_sampler(functools.partial(optuna.samplers.RandomSampler, seed=None), SPACE)
    assert type(unseeded) is optuna.samplers.RandomSampler
    grid, size = create_sampler(functools.partial(optuna.samplers.GridSampler, seed=0), {"frozen": SPACE["frozen"]})
    assert type(grid) is optuna.samplers.GridSampler and size == 5
    instance = optuna.samplers.RandomSampler(seed=3)
    assert create_sampler(instance, SPACE) == (instance, None)


def test_each_parallel_slot_gets_its_gpu():
    assert slot_devices("auto", 4, "auto", device_count=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert slot_devices("auto", 3, "cuda", device_count=4) == ["cuda:0", "cuda:1", "cuda:2"]
    assert slot_devices("auto", 2, "auto", device_count=1) == [None, None], "one GPU: trials share it"
    assert slot_devices("auto", 1, "auto", device_count=8) == [None], "one slot: the trial's own device"
    assert slot_devices("auto", 2, "cpu", device_count=2) == [None, None], "a pinned device is kept"
    assert slot_devices([2, "cuda:5"], 3, "auto", device_count=0) == ["cuda:2", "cuda:5", "cuda:2"]
    assert slot_devices(None, 2, "auto", device_count=2) == [None, None]
    with pytest.raises(ValueError, match="devices"):
        slot_devices("gpu0", 2, "auto", device_count=2)
