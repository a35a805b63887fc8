"""Shared fixtures: real data from ../shared/data, composed configs shrunk for CPU, a per-test MLflow store,
fresh PostgreSQL databases."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"
# screenshots and service logs worth keeping after a run (git-ignored)
TEST_ARTIFACTS = Path(os.environ.get("COVERS_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test whose tool or service is missing; in CI (``CI=true``), where everything must be there, fail."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


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


# what every composed test config gets unless the test overrides it: CPU, no loader workers, tiny images, one epoch
SMALL = ("trainer.device=cpu", "data.num_workers=0", "data.image_size=32", "trainer.epochs=1")
SMALL_DEMO = ("data.demo.per_class=20",)  # the demo set (not with data=archives)


@pytest.fixture
def make_cfg(tmp_path: Path, cache_dir: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/config.yaml`` shrunk for tests (:data:`SMALL`, then the test's ``overrides``), with the
    MLflow/Optuna stores and outputs in ``tmp_path`` and the session's decode cache."""

    def _make(*overrides: str) -> DictConfig:
        demo = () if any(o.startswith("data=") for o in overrides) else SMALL_DEMO
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*SMALL, *demo, *overrides])
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.cache_dir = str(cache_dir)
            cfg.paths.output_dir = str(tmp_path / "output")
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


def run_sweep(
    tmp_path: Path, cache_dir: Path, *overrides: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a sweep to completion (with extra environment variables ``env``); on failure show its stderr."""
    proc = subprocess.run(
        sweep_cmd(tmp_path, cache_dir, *overrides),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"sweep failed:\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory, cache_dir) -> None:
    """The demo data and its decode cache exist before parallel sweep workers start (no worker races to make them)."""
    run_sweep(tmp_path_factory.mktemp("warm"), cache_dir, "hydra.sweeper.n_trials=1", "trainer.epochs=1")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """``COVERS_TEST_POSTGRES``: a PostgreSQL URL whose role may create databases (``.ci/run`` starts one)."""
    url = os.environ.get("COVERS_TEST_POSTGRES")
    if not url:
        skip_or_fail("COVERS_TEST_POSTGRES is not set (e.g. postgresql://covers:covers@127.0.0.1:5432/covers)")
    try:
        import psycopg
    except ImportError:
        skip_or_fail("psycopg is not installed (pip install -e '.[dev]')")
    try:
        psycopg.connect(_libpq_url(url)).close()
    except psycopg.OperationalError as e:
        pytest.fail(f"COVERS_TEST_POSTGRES={_libpq_url(url, hide_password=True)} does not answer: {e}")
    return url


def _libpq_url(url: str, database: str | None = None, hide_password: bool = False) -> str:
    """A SQLAlchemy/libpq PostgreSQL URL as libpq reads it (no ``+driver``), optionally for another database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=hide_password)


def postgres_execute(url: str, statement: str) -> list[tuple]:
    """Run one SQL statement on the database at ``url`` (autocommit, so CREATE DATABASE works); its rows, if any."""
    import psycopg

    with psycopg.connect(_libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def create_postgres_db(postgres_server: str) -> Iterator[Callable[[str], str]]:
    """Factory: ``create_postgres_db("optuna")`` → the URL of a new, empty database; all are dropped afterwards."""
    names: list[str] = []

    def _create(label: str = "db") -> str:
        name = f"covers_test_{label}_{uuid.uuid4().hex[:10]}"
        postgres_execute(postgres_server, f'CREATE DATABASE "{name}"')
        names.append(name)
        return _libpq_url(postgres_server, name)

    yield _create
    for name in names:
        postgres_execute(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(create_postgres_db: Callable[[str], str]) -> str:
    """A fresh PostgreSQL database for this test (dropped afterwards), as a ``postgresql://`` URL."""
    return create_postgres_db("db")
