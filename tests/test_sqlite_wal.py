"""covers' SQLite stores in WAL mode with synchronous=NORMAL; other SQLite files keep SQLite's defaults."""

from __future__ import annotations

import sqlite3

import sqlalchemy

from covers.tracking.runs import setup_tracking
from covers.tracking.sqlite import use_wal


def _modes(url: str) -> tuple[str, int]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    finally:
        engine.dispose()
    return mode, sync


def test_registered_files_get_wal_and_normal_sync_others_keep_defaults(tmp_path):
    ours, other = f"sqlite:///{tmp_path}/ours.db", f"sqlite:///{tmp_path}/other.db"
    use_wal(ours)
    use_wal("postgresql://user@host/db")  # not SQLite: ignored
    assert _modes(ours) == ("wal", 1)  # 1 = NORMAL
    assert _modes(other) == ("delete", 2)  # SQLite's defaults: rollback journal, FULL
    assert sqlite3.connect(tmp_path / "ours.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent


def test_mlflow_store_uses_wal_unless_turned_off(tmp_path):
    setup_tracking(f"sqlite:///{tmp_path}/a/mlflow.db", "e")
    setup_tracking(f"sqlite:///{tmp_path}/b/mlflow.db", "e", sqlite_wal=False)
    journal = [sqlite3.connect(tmp_path / d / "mlflow.db").execute("PRAGMA journal_mode").fetchone()[0] for d in "ab"]
    assert journal == ["wal", "delete"]
