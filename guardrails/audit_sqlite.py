"""The audit trail in SQLite: the default, for one machine (several worker processes may share
the file; WAL mode, and `BEGIN IMMEDIATE` serializes appends)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from countersign.guardrails.audit import SCHEMA, AuditError, AuditStore
from countersign.guardrails.audit_signing import CheckpointSigner
from countersign.guardrails.database import SqliteDatabase, Tx


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
        self.db = SqliteDatabase(path, synchronous="NORMAL")
        with self._writer() as tx:
            columns = {r[1] for r in tx.all("PRAGMA table_info(audit_records)")}
            if columns and "event" not in columns:
                raise AuditError(
                    f"{self.path} holds an audit trail in the old (v1) hash scheme, which this "
                    "version cannot extend; move it aside (it stays readable by the old version)"
                )
            for statement in SCHEMA:
                tx.run(statement)

    def _writer(self) -> AbstractContextManager[Tx]:
        return self.db.transaction()

    def _reader(self) -> AbstractContextManager[Tx]:
        return self.db.reader()

    def close(self) -> None:
        self.db.close()
