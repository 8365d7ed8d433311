"""The audit trail in SQLite: the default, for one machine (several worker processes may share
the file; WAL mode, and `BEGIN IMMEDIATE` serializes appends)."""

from __future__ import annotations

import sqlite3
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
        with self._writer() as tx:
            columns = {r[1] for r in tx.all("PRAGMA table_info(audit_records)")}
            if columns and "event" not in columns:
                raise AuditError(
                    f"{self.path} holds an audit trail in the old (v1) hash scheme, which this "
                    "version cannot extend; move it aside (it stays readable by the old version)"
                )
            for statement in SCHEMA:
                tx.run(statement)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _writer(self) -> Iterator[_SqliteTx]:
        with self._connect() as db:
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
        with self._connect() as db:
            yield _SqliteTx(db)
