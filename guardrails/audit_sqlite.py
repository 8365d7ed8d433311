"""The audit trail in SQLite: the default, for one machine (several worker processes may share
the file; WAL mode, and `BEGIN IMMEDIATE` serializes appends).

Connections are kept, one per thread: closing the last connection to a WAL database
checkpoints and syncs it, which made every append cost milliseconds."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guardrails.audit import SCHEMA, AuditError, AuditStore, Row
from guardrails.audit_signing import CheckpointSigner


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        row = self.db.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return [tuple(r) for r in self.db.execute(sql, params).fetchall()]

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.db.execute(sql, params)


class SqliteAuditStore(AuditStore):
    def __init__(
        self,
        path: str | Path,
        *,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 100,
    ) -> None:
        super().__init__(signer=signer, checkpoint_every=checkpoint_every)
        self.path = Path(path)
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._writer() as tx:
            columns = {r[1] for r in tx.all("PRAGMA table_info(audit_records)")}
            if columns and "event" not in columns:
                raise AuditError(
                    f"{self.path} holds an audit trail in the old (v1) hash scheme, which this "
                    "version cannot extend; move it aside (it stays readable by the old version)"
                )
            for statement in SCHEMA:
                tx.run(statement)

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _writer(self) -> Iterator[_SqliteTx]:
        db = self._connect()
        # IMMEDIATE takes the write lock now, so reading the head and appending are atomic.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteTx(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def _reader(self) -> Iterator[_SqliteTx]:
        yield _SqliteTx(self._connect())

    def close(self) -> None:
        # Only this thread's connection can be closed here (sqlite3 binds a connection to the
        # thread that made it); the others close when their threads' objects are collected.
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
