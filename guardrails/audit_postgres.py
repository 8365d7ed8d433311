"""The audit trail in PostgreSQL (`COUNTERSIGN_AUDIT_DSN=postgresql://…`): for workers on many
machines. Same schema and rules as SQLite; appends are serialized by a transaction-scoped
advisory lock, so concurrent writers extend one chain and never fork it.

The password never sits in the DSN: it comes from the keyring (or libpq's own PGPASSWORD or
~/.pgpass)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from guardrails.audit import SCHEMA, AuditError, AuditStore, Row
from guardrails.audit_signing import CheckpointSigner

# pg_advisory_xact_lock key for "the audit chain's head" (any fixed 64-bit number will do;
# this one is the first 8 bytes of SHA-256("countersign.audit.head")).
APPEND_LOCK = 0x2F0B_5C1E_6A41_9D37


class _PgTx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.cur = conn.cursor()

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        self.cur.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
        row = self.cur.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        self.cur.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
        return [tuple(r) for r in self.cur.fetchall()]

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.cur.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]


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
        self.dsn = dsn
        self.location = _without_secrets(dsn)
        self._password = password
        # One connection per thread: activities append from asyncio.to_thread workers.
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        with self._writer() as tx:
            for statement in SCHEMA:
                tx.run(statement)

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            extra: dict[str, Any] = {"password": self._password} if self._password else {}
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10, **extra)
            except psycopg.OperationalError as e:
                raise AuditError(
                    f"cannot connect to the audit database {self.location}: {e}"
                ) from e
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _transaction(self, lock: bool) -> Iterator[_PgTx]:
        conn = self._conn()
        try:
            with conn.transaction():
                tx = _PgTx(conn)
                if lock:
                    tx.run("SELECT pg_advisory_xact_lock(?)", (APPEND_LOCK,))
                yield tx
        except psycopg.OperationalError:
            # The connection is gone (server restart, network): the next call reconnects.
            conn.close()
            raise

    def _writer(self) -> Any:
        return self._transaction(lock=True)

    def _reader(self) -> Any:
        return self._transaction(lock=False)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _without_secrets(dsn: str) -> str:
    """The DSN for messages: user, host, port and database, never a password."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return (
        f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', '')}"
        f"/{info.get('dbname', '')}"
    )
