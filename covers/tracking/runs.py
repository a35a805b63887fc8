"""MLflow tracking: store set-up, run life cycle (FAILED/KILLED with traceback), params, metrics, artifacts."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import mlflow
from hydra.errors import CompactHydraException
from mlflow.entities import RunStatus

from covers.tracking.sqlite import use_wal

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000
# MLflow metric names: a run's page groups metrics by the prefix before "/" into sections sorted by name (unprefixed
# ones last), so the per-epoch curves ("epoch/val_acc") open the page and the single values ("summary/best_val_acc")
# follow; chart titles drop the prefix
EPOCH_PREFIX = "epoch/"
SUMMARY_PREFIX = "summary/"


def resolve_sqlite_uri(uri: str | None) -> str | None:
    """``sqlite:///relative.db`` → an absolute ``sqlite:////…`` URL whose folder exists; other URLs unchanged."""
    if not uri or not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.removeprefix("sqlite:///")).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class StoreError(CompactHydraException, ValueError):
    """A store (MLflow's or Optuna's) that cannot be used: Hydra prints the message alone, the CLI one line."""


def check_sqlite_store(uri: str | None, write: bool = True, what: str = "MLflow store") -> None:
    """Fail at once, in one line, on an existing SQLite store that cannot be used (before MLflow's or Optuna's
    retries): not a SQLite database (a corrupt file), or read-only where ``write``. Other URLs and a store not made
    yet pass. Raises :class:`StoreError`."""
    if not uri or not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        return
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)  # SQLite writes journals beside it
    if write and not writable:
        raise StoreError(f"the {what} {path} is read-only: runs cannot be written (make it writable)")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as con:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header and the schema
    except sqlite3.DatabaseError as e:
        if not writable:  # a WAL-mode store cannot be read without writing beside it
            raise StoreError(f"the {what} {path} is read-only and cannot be opened so: {e}") from None
        raise StoreError(f"the {what} {path} is not a SQLite database (a corrupt file?): {e}") from None


@contextmanager
def file_lock(path: str | Path, suffix: str = ".lock") -> Iterator[None]:
    """An exclusive lock among processes on one machine (or a shared file system with ``flock``) on the file
    ``path`` + ``suffix``."""
    with open(f"{path}{suffix}", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def sqlite_init_lock(uri: str | None) -> Iterator[None]:
    """Serialise first-time creation of a SQLite store across processes (parallel workers on a fresh store race
    on schema migrations); a no-op for other URLs."""
    uri = resolve_sqlite_uri(uri)
    if not uri or not uri.startswith("sqlite:///"):
        yield
        return
    with file_lock(uri.removeprefix("sqlite:///")):
        yield


def setup_tracking(uri: str, experiment: str, artifact_root: str | None = None, sqlite_wal: bool = True) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment`` (created with ``artifact_root`` if new).
    A SQLite store is used in WAL mode unless ``sqlite_wal`` is false (:mod:`covers.tracking.sqlite`)."""
    uri = resolve_sqlite_uri(uri)
    check_sqlite_store(uri)
    with sqlite_init_lock(uri):
        if sqlite_wal:
            use_wal(uri)
        return _setup_tracking(uri, experiment, artifact_root)


def _setup_tracking(uri: str, experiment: str, artifact_root: str | None) -> str:
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        location = None
        if artifact_root:
            root = Path(artifact_root)
            location = root.resolve().as_uri() if "://" not in artifact_root else artifact_root
        try:
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel trial
            exp_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def log_params(params: Mapping[str, Any]) -> None:
    """Log params (values stringified, over-long values truncated with a marker)."""
    clean = {}
    for k, v in params.items():
        s = json.dumps(v) if isinstance(v, list | tuple) else str(v)
        clean[k[:250]] = s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."
    mlflow.log_params(clean)


def log_files(files: Mapping[str, str | bytes | Path]) -> None:
    """Log ``{artifact path: content}`` in one upload; a :class:`~pathlib.Path` value is copied from that file."""
    with artifact_dir(None) as tmp:
        for name, content in files.items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, p)
            else:
                p.write_bytes(content if isinstance(content, bytes) else content.encode())


@contextmanager
def start_run(
    run_name: str,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    ended_early: tuple[type[BaseException], ...] = (),
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that always ends: FINISHED (also when one of the ``ended_early`` exceptions, such as a pruned
    trial's, stops it: its message becomes tag ``stopped``), FAILED (traceback logged as ``error/traceback.txt``)
    or KILLED (Ctrl-C, SIGTERM). With ``run_id``, that existing run is reopened (renamed, ``tags`` added) and
    continued; it keeps its parent."""
    # tag values as strings: a tracking server's REST API rejects other types (a local SQLite store converts them)
    tags = {k: str(v) for k, v in (tags or {}).items()}
    parent = None if run_id else parent_run_id
    run = mlflow.start_run(run_id=run_id, run_name=run_name, parent_run_id=parent, tags=tags)
    status = RunStatus.to_string(RunStatus.FINISHED)
    try:
        yield run
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        mlflow.set_tag("stopped", "interrupted")
        raise
    except ended_early as e:  # e.g. a pruned trial: a result, not a crash
        mlflow.set_tag("stopped", str(e) or type(e).__name__)
        raise
    except BaseException as e:
        status = RunStatus.to_string(RunStatus.FAILED)
        try:
            mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
            mlflow.log_text(traceback.format_exc(), "error/traceback.txt")
        except Exception:  # never hide the original error
            log.exception("could not log the failure to MLflow")
        raise
    finally:
        mlflow.end_run(status=status)


def log_figure(fig: Any, artifact_file: str, run_id: str | None = None, client: Any = None) -> None:
    """Log a matplotlib figure as an image artifact (to ``run_id`` through ``client``, else to the active run),
    then close it."""
    import matplotlib.pyplot as plt

    try:
        if run_id is None:
            mlflow.log_figure(fig, artifact_file)
        else:
            (client or mlflow.MlflowClient()).log_figure(run_id, fig, artifact_file)
    finally:
        plt.close(fig)


def epoch_logger(
    *callbacks: Callable[[int, dict], None] | None, prefix: str = EPOCH_PREFIX
) -> Callable[[int, dict], None]:
    """An ``on_epoch_end`` that logs the epoch's metrics to the active run as ``epoch/<name>`` (step = epoch, from
    1; see :data:`EPOCH_PREFIX`; another ``prefix``, e.g. a fold's ``fold_2/epoch/``), then calls each
    callback given (the pruning reporter, a user's hook; ``None`` entries are skipped)."""

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        mlflow.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=epoch)
        for callback in callbacks:
            if callback is not None:
                callback(epoch, metrics)

    return on_epoch_end


@contextmanager
def artifact_dir(artifact_path: str | None) -> Iterator[Path]:
    """A temporary folder whose contents are logged under ``artifact_path`` when the block ends."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
        mlflow.log_artifacts(tmp, artifact_path)
