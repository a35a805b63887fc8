"""covers' SQLite stores are switched to the WAL journal (a mode stored in the file); other files keep SQLite's."""

from __future__ import annotations

import sqlite3

from covers.tracking.runs import setup_tracking
from covers.tracking.sqlite import use_wal


def _mode(path) -> str:
    return sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]


def test_switched_files_are_in_wal_mode_others_keep_the_default(tmp_path):
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    use_wal(f"sqlite:///{tmp_path}/ours.db")
    use_wal("postgresql://user@host/db")  # not SQLite: ignored
    assert _mode(tmp_path / "ours.db") == "wal"
    assert _mode(tmp_path / "other.db") == "delete"


def test_mlflow_store_uses_wal_unless_turned_off(tmp_path):
    setup_tracking(f"sqlite:///{tmp_path}/a/mlflow.db", "e")
    setup_tracking(f"sqlite:///{tmp_path}/b/mlflow.db", "e", sqlite_wal=False)
    assert [_mode(tmp_path / d / "mlflow.db") for d in "ab"] == ["wal", "delete"]
