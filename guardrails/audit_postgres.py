"""The audit trail in PostgreSQL (`COUNTERSIGN_STATE_DSN` or `COUNTERSIGN_AUDIT_DSN`): for
workers on many machines. Same schema and rules as SQLite; appends are serialized by a
transaction-scoped advisory lock, so concurrent writers extend one chain and never fork it.

The password never sits in the DSN: it comes from the keyring (or libpq's own PGPASSWORD or
~/.pgpass)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from countersign.guardrails.audit import SCHEMA, AuditError, AuditStore
from countersign.guardrails.audit_signing import CheckpointSigner
from countersign.guardrails.database import DatabaseError, PostgresDatabase, Tx

# pg_advisory_xact_lock key for "the audit chain's head" (any fixed 64-bit number will do;
# this one is the first 8 bytes of SHA-256("countersign.audit.head")).
APPEND_LOCK = 0x2F0B_5C1E_6A41_9D37


class PostgresAuditStore(AuditStore):
    def __init__(
        self,
        dsn: str,
        *,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 100,
        password: str | None = None,
    ) -> None:
        super().__init__(signer=signer, checkpoint_every=checkpoint_every)
        self.db = PostgresDatabase(dsn, password=password)
        self.dsn = dsn
        self.location = self.db.location
        with self._writer() as tx:
            for statement in SCHEMA:
                tx.run(statement)

    @contextmanager
    def _transaction(self, locks: list[int]) -> Iterator[Tx]:
        try:
            with self.db.transaction(locks) as tx:
                yield tx
        except DatabaseError as e:
            raise AuditError(f"the audit database: {e}") from e

    def _writer(self) -> AbstractContextManager[Tx]:
        return self._transaction([APPEND_LOCK])

    def _reader(self) -> AbstractContextManager[Tx]:
        return self._transaction([])

    def close(self) -> None:
        self.db.close()
