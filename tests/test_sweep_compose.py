"""The sweep's cached composition gives exactly the config Hydra's own per-job composition gives."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from covers.sweep import compose
from tests.conftest import CONF

MASTER = ["hydra.sweeper.n_trials=3", "hydra/sweeper/sampler=random", "hydra.job.chdir=false"]


@pytest.fixture()
def loaders():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_loader = GlobalHydra.instance().config_loader()
        master = hydra_loader.load_configuration("config", overrides=MASTER, run_mode=RunMode.MULTIRUN)
        OmegaConf.select(master, "hydra.sweeper.study_name")  # resolves ${now:} into the master's cache
        compose._composed.clear()
        yield hydra_loader, compose.SweepConfigLoader(hydra_loader), master
    compose._composed.clear()


def _same(a, b, master) -> None:
    assert OmegaConf.to_container(a) == OmegaConf.to_container(b)
    assert OmegaConf.is_struct(a) == OmegaConf.is_struct(b) and OmegaConf.is_struct(b)
    # the sweep's resolver cache (one ${now:} for all trials), as Hydra's copy_cache gives it
    assert OmegaConf.get_cache(b) == OmegaConf.get_cache(master) and OmegaConf.get_cache(master)


@pytest.mark.parametrize(
    ("trials", "compositions"),
    [
        (
            # the usual sweep: only plain values differ between trials
            [
                ["optim.lr=0.001", "loss.gamma=2.5", "freeze.n_frozen=3", "trial.number=0", "trial.study_name='s 1'"],
                ["optim.lr=0.02", "loss.gamma=0.5", "freeze.n_frozen=1", "trial.number=1", "trial.study_name='s 1'"],
            ],
            1,
        ),
        # config-group choices in the search space: one composition per choice, values applied after
        ([["loss=ce", "optim.lr=0.1"], ["optim.lr=0.2", "loss=ce"], ["loss=focal", "loss.gamma=1.0"]], 2),
        ([["model=resnet18", "optim=sgd", "optim.lr=0.05"], ["model=resnet18", "optim=adamw", "optim.lr=0.05"]], 2),
        # a config override that is not plain: Hydra's full composition, every time
        ([["+extra=1", "optim.lr=0.1"], ["++trainer.epochs=3", "optim.lr=0.2"], ["~seed", "optim.lr=0.3"]], 0),
        # a dict value, even on a config group, is applied in order with the plain values: Hydra's full composition
        ([["optim.lr=0.2", "optim={lr:0.1}"], ["optim={lr:0.1}", "optim.lr=0.2"]], 0),
    ],
)
def test_cached_composition_equals_hydras(loaders, trials, compositions):
    hydra_loader, loader, master = loaders
    for overrides in trials * 2:  # the second pass is served from the cache
        _same(hydra_loader.load_sweep_config(master, overrides), loader.load_sweep_config(master, overrides), master)
    assert len(compose._composed) == compositions


def test_cached_config_is_not_shared_between_trials(loaders):
    hydra_loader, loader, master = loaders
    first = loader.load_sweep_config(master, ["optim.lr=0.1"])
    first.optim.lr = 123.0
    first.hydra.overrides.task.append("x=1")
    second = loader.load_sweep_config(master, ["trainer.epochs=2"])
    _same(hydra_loader.load_sweep_config(master, ["trainer.epochs=2"]), second, master)
    assert second.optim.lr != 123.0


def test_copied_environment_is_read_per_trial(loaders, monkeypatch):
    hydra_loader, loader, _ = loaders
    monkeypatch.setenv("COVERS_TEST_VAR", "0")
    master = hydra_loader.load_configuration(
        "config", overrides=[*MASTER, "hydra.job.env_copy=[COVERS_TEST_VAR]"], run_mode=RunMode.MULTIRUN
    )
    for value in ("1", "2"):
        monkeypatch.setenv("COVERS_TEST_VAR", value)
        cfg = loader.load_sweep_config(master, ["optim.lr=0.1"])
        assert cfg.hydra.job.env_set["COVERS_TEST_VAR"] == value
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(
            hydra_loader.load_sweep_config(master, ["optim.lr=0.1"])
        )


def test_search_path_falls_back_to_hydra(loaders, tmp_path):
    hydra_loader, loader, _ = loaders
    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "extra.yaml").write_text("_target_: torch.nn.CrossEntropyLoss\nlabel_smoothing: 0.3\n")
    master = hydra_loader.load_configuration(
        "config", overrides=[*MASTER, f"hydra.searchpath=[file://{tmp_path}]"], run_mode=RunMode.MULTIRUN
    )
    ours = loader.load_sweep_config(master, ["loss=extra", "optim.lr=0.1"])
    assert ours.loss.label_smoothing == 0.3 and not compose._composed
    assert OmegaConf.to_container(ours) == OmegaConf.to_container(
        hydra_loader.load_sweep_config(master, ["loss=extra", "optim.lr=0.1"])
    )


def test_bad_override_fails_as_in_hydra(loaders):
    hydra_loader, loader, master = loaders
    for overrides in (["optim.no_such_key=1"], ["optim.lr.x=1"], ["optim=no_such_option"]):
        with pytest.raises(ConfigCompositionException):
            hydra_loader.load_sweep_config(master, overrides)
        with pytest.raises(ConfigCompositionException):
            loader.load_sweep_config(master, overrides)
