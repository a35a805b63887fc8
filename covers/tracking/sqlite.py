"""SQLite files covers keeps its runs and studies in, switched to the WAL journal.

SQLite's default rollback journal syncs the disk several times per commit, and a sweep trial commits dozens of
times (Optuna's ask, MLflow's run, params, tags). In WAL mode readers and the writer do not block each other and a
commit needs fewer syncs (docs/benchmarks.md). The mode is stored in the database file: it is set once, with a
short connection of its own, before MLflow or Optuna opens the store; no connection hook, no process state.
WAL needs every process on one host (as SQLite does anyway: no network file systems) and leaves ``-wal``/``-shm``
files beside the database; copy the folder, not the ``.db`` alone. ``tracking.sqlite_wal=false`` /
``hydra.sweeper.sqlite_wal=false`` leave a new file in SQLite's default mode; a file once switched stays in WAL
mode until ``PRAGMA journal_mode=DELETE`` (e.g. with the ``sqlite3`` shell, before archiving to a read-only place).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import sqlalchemy

log = logging.getLogger(__name__)


def use_wal(url: str | None) -> None:
    """Switch the SQLite file of ``url`` to the WAL journal (created empty if missing); other URLs are left alone."""
    if not url:
        return
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with closing(sqlite3.connect(path, timeout=30)) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as e:  # e.g. another process holds a lock: the file keeps its mode
        log.debug("SQLite journal mode unchanged for %s: %s", path, e)
