"""Optuna storages from a URL: SQLite/PostgreSQL/MySQL (RDB) or a journal file, with heartbeats."""

from __future__ import annotations

import hashlib
import logging
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from covers.tracking.runs import check_sqlite_store, file_lock, resolve_sqlite_uri
from covers.tracking.sqlite import use_wal

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:///"


@contextmanager
def optuna_experimental_quiet() -> Iterator[None]:
    """Optuna's ExperimentalWarning silenced: the heartbeat features covers relies on would print it in every sweep."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def normalise_storage_url(url: str | None) -> str | None:
    """Absolute SQLite/journal paths (trials and other workers may run elsewhere); other URLs unchanged."""
    if url and url.startswith(JOURNAL_PREFIX):
        path = Path(url.removeprefix(JOURNAL_PREFIX)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"{JOURNAL_PREFIX}{path}"
    return resolve_sqlite_uri(url)


def create_storage(
    url: str | None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    failed_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    sqlite_wal: bool = True,
) -> BaseStorage | None:
    """``sqlite:///…``, ``postgresql://…`` (RDB, with heartbeats for crash recovery) or ``journal:///file.log``.
    A SQLite file is used in WAL mode unless ``sqlite_wal`` is false (:mod:`covers.tracking.sqlite`)."""
    url = normalise_storage_url(url)
    if url is None:
        return None
    check_sqlite_store(url, what="Optuna storage")
    if sqlite_wal:
        use_wal(url)
    if url.startswith(JOURNAL_PREFIX):
        return JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL_PREFIX)))
    kwargs = {}
    if heartbeat_interval:
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": failed_trial_callback,
        }
    with optuna_experimental_quiet():  # "heartbeat_interval is experimental"
        return RDBStorage(url, **kwargs)


def open_storage(url: str | None, *args, attempts: int = 5, **kwargs) -> BaseStorage | None:
    """:func:`create_storage`, retried: workers starting together on a fresh database race to create its schema
    (the loser sees a duplicate-object error once, then finds the tables made)."""
    for attempt in range(attempts):
        try:
            return create_storage(url, *args, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt == attempts - 1:
                raise
            log.info("storage not ready (%s); retrying", type(e).__name__)
            time.sleep(0.5 + random.random())
    return None


class StudyLock:
    """One holder at a time among every worker of a study, on any machine that reaches its storage: for the
    decisions that read the study and then write to it (create it and enqueue or warm-start once; promote a
    configuration once). A file lock beside a SQLite or journal file, a PostgreSQL advisory lock keyed by the study
    name (held on its own connection for the block), and no lock for other databases."""

    def __init__(self, url: str | None, study_name: str) -> None:
        self.url, self.key = normalise_storage_url(url), study_name
        self.engine: sqlalchemy.engine.Engine | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        url = self.url or ""
        # SQLite: the lock the sweeper has always taken on a fresh file; a journal: not Optuna's own "<file>.lock"
        for prefix, suffix in (("sqlite:///", ".lock"), (JOURNAL_PREFIX, ".covers-lock")):
            if url.startswith(prefix):
                with file_lock(url.removeprefix(prefix), suffix):
                    yield
                return
        if not url.startswith("postgresql"):
            yield
            return
        if self.engine is None:
            self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        key = int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:8], "big", signed=True)
        with self.engine.connect() as con:
            con.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                con.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
