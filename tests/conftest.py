"""Shared fixtures: real data from ../shared/data, composed configs shrunk for CPU, a per-test MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        if os.environ.get("COVERS_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"{path} is missing (CI requires ../shared/data)")
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def album_covers() -> Path:
    """151 real album covers, 10 genre zips."""
    return _shared("album-covers")


@pytest.fixture(scope="session")
def cifar_covers() -> Path:
    """5 000 CIFAR-10 images as 10 class zips."""
    return _shared("cifar10-covers")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decode cache for the whole session (decoding is not what the tests are about)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path: Path, cache_dir: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/config.yaml`` with overrides, shrunk for tests: CPU, tracking and outputs in ``tmp_path``."""

    def _make(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.cache_dir = str(cache_dir)
            cfg.paths.output_dir = str(tmp_path / "output")
            cfg.trainer.device = "cpu"
            cfg.data.num_workers = 0
        GlobalHydra.instance().clear()
        return cfg

    yield _make
    GlobalHydra.instance().clear()


def sweep_cmd(tmp_path: Path, cache_dir: Path, *overrides: str) -> list[str]:
    """``python experiments/run.py -m`` with tracking, outputs and caches in ``tmp_path``, tiny images on CPU."""
    demo = [] if any(o.startswith("data=") for o in overrides) else ["data.demo.per_class=20"]
    return [
        sys.executable,
        "experiments/run.py",
        "-m",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={tmp_path}/multirun",
        "trainer.device=cpu",
        "data.image_size=32",
        *demo,
        *overrides,
    ]


def run_sweep(tmp_path: Path, cache_dir: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a sweep to completion; on failure show its stderr."""
    proc = subprocess.run(
        sweep_cmd(tmp_path, cache_dir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"sweep failed:\n{proc.stderr[-6000:]}"
    return proc
