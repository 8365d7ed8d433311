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
from guardrails.sqlite import SqliteFile


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
        self._file = SqliteFile(path, synchronous="NORMAL")
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
    def _writer(self) -> Iterator[_SqliteTx]:
        with self._file.transaction() as db:
            yield _SqliteTx(db)

    @contextmanager
    def _reader(self) -> Iterator[_SqliteTx]:
        yield _SqliteTx(self._file.connection())

    def close(self) -> None:
        self._file.close()
