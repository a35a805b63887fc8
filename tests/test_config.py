"""Every config group composes and its ``_target_`` instantiates; the entry point prints its config."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from covers.training.losses import resolve_class_weights
from tests.conftest import CONF, ROOT

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF.iterdir() if g.is_dir() and g.name != "hydra"}


def test_all_documented_groups_exist():
    for group in ("data", "model", "loss", "freeze", "aug", "optim", "trainer", "experiment", "hparams_search"):
        assert GROUPS.get(group), f"conf/{group}/ is missing or empty"


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def _own_values(group: str, option: str) -> dict[str, object]:
    """The leaf values an option's file sets itself, by their key in the composed config (its package)."""
    import yaml

    from covers.tracking.runs import flatten

    text = (CONF / group / f"{option}.yaml").read_text()
    values = yaml.safe_load(text) or {}
    values.pop("defaults", None)
    package = "" if "# @package _global_" in text else f"{group}."
    return {f"{package}{k}": v for k, v in flatten(values).items()}


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts if o != "base"])
def test_group_option_sets_its_values(group, option):
    from omegaconf import OmegaConf

    from covers.tracking.runs import flatten

    composed = flatten(OmegaConf.to_container(_compose(f"{group}={option}"), resolve=False))
    own = _own_values(group, option)
    if not own:  # an option made of other options only (seed_best_offline): it must still change the config
        base = flatten(OmegaConf.to_container(_compose(), resolve=False))
        assert {k: v for k, v in composed.items() if base.get(k) != v}, f"{group}/{option}.yaml changes nothing"
    for key, value in own.items():  # every value the file sets is the composed one (nothing later overrides it)
        assert key in composed and composed[key] == value, (key, value, composed.get(key))


def test_option_values_that_matter():
    assert _compose("model=resnet50").model.name == "resnet50"
    lite0 = _compose().model
    assert lite0.name == "tf_efficientnet_lite0" and lite0.weights == "package"  # offline ImageNet weights
    knn = _compose("experiment=knn")
    assert knn.kind == "knn" and knn.model._target_.endswith("create_knn_model")
    assert set(knn.hydra.sweeper.params) == {"model.k", "model.weighting"}
    curve = _compose("hparams_search=gamma_curve")
    assert curve.loss._target_.endswith("FocalLoss") and curve.hydra.sweeper.sampler._target_.endswith("GridSampler")
    assert set(curve.hydra.sweeper.params) == {"seed", "loss.gamma"}
    assert _compose("data=demo").data.image_size == 64 and _compose("data=archives").data.image_size is None
    assert _compose("data=archives").data.batch_size == _compose("data=demo").data.batch_size  # one base
    with pytest.raises(Exception, match="name"):  # the shared base is not a data set
        _compose("data=base").data.name  # noqa: B018


@pytest.mark.parametrize("option", GROUPS["loss"])
def test_losses_instantiate(make_cfg, option):
    cfg = make_cfg(f"loss={option}")
    loss = instantiate(cfg.loss, **resolve_class_weights(cfg.loss, np.array([0, 0, 1, 2]), 3))
    value = loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(value)


@pytest.mark.parametrize("option", GROUPS["aug"])
def test_aug_instantiates(make_cfg, option):
    import numpy as np

    tf = instantiate(make_cfg(f"aug={option}").aug)(32, seed=0)  # as the task calls it
    out = tf(image=np.zeros((32, 32, 3), np.uint8))["image"]
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8  # the loader normalises batches on the device


@pytest.mark.parametrize("option", GROUPS["optim"])
def test_optim_and_freeze_instantiate(make_cfg, option):
    cfg = make_cfg(f"optim={option}", "model.weights=none", "model.name=resnet18", "freeze.n_frozen=2")
    model = instantiate(cfg.model, num_classes=3)
    frozen = instantiate(cfg.freeze)(model)
    assert frozen
    opt = instantiate(cfg.optim.optimizer)(model, lr=cfg.optim.lr)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_seed_best_is_the_original_study():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=seed_best"])
    assert cfg.model.name == "resnet50" and cfg.model.weights == "hub"
    assert cfg.trainer.epochs == 20 and cfg.optim.lr == 0.01
    assert cfg.loss._target_.endswith("FocalLoss") and cfg.loss.gamma == 2.0
    assert cfg.freeze.n_frozen == 3 and cfg.aug.hflip > 0


def test_run_cfg_job_prints_config():
    out = subprocess.run(
        [sys.executable, "experiments/run.py", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "optimized_metric: summary/best_val_acc" in out.stdout and "tf_efficientnet_lite0" in out.stdout


def test_sweeper_plugin_is_discovered():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "CoversOptunaSweeper" in names


HYDRA_GROUPS = {
    g: sorted(p.stem for p in (CONF / "hydra" / "sweeper" / g).glob("*.yaml")) for g in ("sampler", "pruner")
}


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in HYDRA_GROUPS.items() for o in opts])
def test_sweeper_samplers_and_pruners_instantiate(group, option):
    import optuna
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/sweeper/{group}={option}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    obj = instantiate(cfg.hydra.sweeper[group])
    if group == "sampler":  # factories (covers.sweep.sampler): the sweeper builds them, the grid from the space
        from covers.sweep.sampler import create_sampler

        space = {"x": optuna.distributions.CategoricalDistribution([1, 2])}
        obj, _ = create_sampler(obj, space)
    base = optuna.samplers.BaseSampler if group == "sampler" else optuna.pruners.BasePruner
    assert isinstance(obj, base)


def test_importing_covers_does_not_reach_the_network():
    # albumentations' import-time update check would open a connection to PyPI; covers turns it off by default
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise SystemExit('network access at import')\n"
        "socket.create_connection = refuse\n"
        "socket.socket.connect = refuse\n"
        "import covers.data.transforms, covers.run.finetune\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
