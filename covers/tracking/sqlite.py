"""Faster commits for the SQLite files covers keeps its runs and studies in: WAL journal, ``synchronous=NORMAL``.

SQLite's default (rollback journal, ``synchronous=FULL``) syncs the disk several times per commit. A sweep trial
commits dozens of times before its first epoch (Optuna's ask, MLflow's run, params, tags): with WAL and
``synchronous=NORMAL`` each commit measured about half as long (docs/benchmarks.md). SQLite's documentation on
this mode: a committed transaction survives a crash of the application; after a power loss or an operating-system
crash the last transactions may roll back, and the database stays intact. WAL needs every process on one host
(as SQLite does anyway: no network file systems) and leaves ``-wal``/``-shm`` files beside the database; copy the
folder, not the ``.db`` alone. ``tracking.sqlite_wal=false`` / ``hydra.sweeper.sqlite_wal=false``: covers leaves
the journal mode and ``synchronous`` alone, but a file once switched stays in WAL mode (the mode is stored in the
file) until ``PRAGMA journal_mode=DELETE`` (e.g. with the ``sqlite3`` shell, before archiving to a read-only
place).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import sqlalchemy

log = logging.getLogger(__name__)

_paths: set[str] = set()
_lock = threading.Lock()


def use_wal(url: str | None) -> None:
    """Connections that SQLAlchemy opens to the SQLite file of ``url`` from now on use WAL and
    ``synchronous=NORMAL``; other URLs are left alone."""
    if not url:
        return
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = str(Path(parsed.database).resolve())
    with _lock:
        if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _on_connect):
            sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _on_connect)
        _paths.add(path)


def _on_connect(dbapi_connection, connection_record) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    row = dbapi_connection.execute("PRAGMA database_list").fetchone()
    if not row or row[2] not in _paths:
        return
    try:
        mode = dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.OperationalError as e:  # another process holds a lock at this moment: keep the default
        log.debug("SQLite journal mode unchanged for %s: %s", row[2], e)
        return
    if mode == "wal":  # NORMAL is safe in WAL mode only
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
