"""The SQLite files the worker keeps open: one connection per thread, all-or-nothing
transactions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from countersign.guardrails.sqlite import SqliteFile


def test_a_failed_transaction_leaves_nothing_and_the_connection_usable(tmp_path: Path) -> None:
    db = SqliteFile(tmp_path / "x.sqlite3")
    db.connection().execute("CREATE TABLE t (v INTEGER)")
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("the decision failed half-way")
    with db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (2)")
    assert db.connection().execute("SELECT v FROM t").fetchall() == [(2,)]
    # Another connection (another worker process) sees the committed row.
    assert SqliteFile(tmp_path / "x.sqlite3").connection().execute(
        "SELECT COUNT(*) FROM t"
    ).fetchone() == (1,)


def test_each_thread_keeps_its_own_connection(tmp_path: Path) -> None:
    db = SqliteFile(tmp_path / "x.sqlite3", synchronous="NORMAL")
    mine = db.connection()
    assert db.connection() is mine
    theirs: list[object] = []
    thread = threading.Thread(target=lambda: theirs.append(db.connection()))
    thread.start()
    thread.join()
    assert theirs[0] is not mine
    assert mine.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert mine.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    db.close()
    assert db.connection() is not mine
