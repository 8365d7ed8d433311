"""SQLite files shared by the worker's threads and processes: WAL, one kept connection per
thread.

Keeping connections matters: closing the last connection to a WAL database checkpoints and
syncs it, which made every short transaction cost milliseconds. sqlite3 binds a connection to
the thread that made it, hence one per thread (activities reach SQLite via `asyncio.to_thread`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal


class SqliteFile:
    def __init__(
        self, path: str | Path, *, synchronous: Literal["FULL", "NORMAL"] = "FULL"
    ) -> None:
        """`synchronous="NORMAL"`: a commit survives a crashed process but may be lost with
        the machine's power (WAL is synced at checkpoints only); for data a retry rewrites."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, in autocommit mode (transactions are explicit)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` takes the write lock at once, so what is read inside is still true
        when the writes commit."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close this thread's connection; the others close when their threads end."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
