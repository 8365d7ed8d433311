"""Where Countersign keeps what must be one per deployment (limits ledger, transcripts, approval
links, kill switch): a SQLite file per store on one machine (the default), or one PostgreSQL
database shared by every host of a fleet.

Stores write portable SQL (`?` placeholders, `INSERT … ON CONFLICT`, quoted keywords) against
one small interface, `Database`, and never ask which backend they have. Writers that must not
interleave name what they lock: PostgreSQL takes a transaction-scoped advisory lock per name
(so two hosts reserving against the same limit serialize, and unrelated limits do not);
SQLite's `BEGIN IMMEDIATE` already serializes every writer of the file.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from countersign.guardrails.sqlite import SqliteFile

Row = tuple[Any, ...]


class DatabaseError(Exception):
    """The state database cannot be used as configured. The message says what to do."""


class Tx(Protocol):
    """One transaction. SQL uses `?` placeholders."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; returns the number of rows changed."""
        ...

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


class Database(Protocol):
    location: str  # for messages: a path, or a DSN without its password

    def transaction(self, locks: Iterable[str | int] = ()) -> AbstractContextManager[Tx]:
        """A write transaction holding `locks` (names or 64-bit numbers) until it ends."""
        ...

    def reader(self) -> AbstractContextManager[Tx]: ...

    def create(self, schema: Sequence[str]) -> None:
        """Create tables and indexes if missing (idempotent; safe from many hosts at once)."""
        ...

    def close(self) -> None: ...


def lock_key(name: str | int) -> int:
    """A 64-bit advisory lock key for a name (the first 8 bytes of its SHA-256)."""
    if isinstance(name, int):
        return name
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# --- SQLite ------------------------------------------------------------------------------------


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self.db.execute(sql, tuple(params)).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self.db.execute(sql, tuple(params)).fetchall()]

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.db.execute(sql, tuple(params)).rowcount

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.db.executemany(sql, [tuple(r) for r in rows])


class SqliteDatabase:
    """One SQLite file (WAL, a kept connection per thread; see guardrails.sqlite)."""

    def __init__(
        self, path: str | Path, *, synchronous: Literal["FULL", "NORMAL"] = "FULL"
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.file = SqliteFile(path, synchronous=synchronous)

    @contextmanager
    def transaction(self, locks: Iterable[str | int] = ()) -> Iterator[Tx]:
        with self.file.transaction() as db:  # BEGIN IMMEDIATE: one writer at a time
            yield _SqliteTx(db)

    @contextmanager
    def reader(self) -> Iterator[Tx]:
        yield _SqliteTx(self.file.connection())

    def create(self, schema: Sequence[str]) -> None:
        with self.transaction() as tx:
            for statement in schema:
                tx.run(statement)

    def close(self) -> None:
        self.file.close()


# --- PostgreSQL --------------------------------------------------------------------------------

# Held while creating tables: concurrent `CREATE TABLE IF NOT EXISTS` from two hosts can
# otherwise collide in PostgreSQL's catalog.
SCHEMA_LOCK = "countersign.schema"


class _PgTx:
    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self.cur.execute(_pg(sql), tuple(params))
        row = self.cur.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.cur.execute(_pg(sql), tuple(params))
        return [tuple(r) for r in self.cur.fetchall()]

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.cur.execute(_pg(sql), tuple(params))
        return int(self.cur.rowcount)

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.cur.executemany(_pg(sql), [tuple(r) for r in rows])


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresDatabase:
    """One PostgreSQL database; a connection per thread (stores reach it from
    `asyncio.to_thread` workers). The password never sits in the DSN: it is passed apart
    (from the keyring), or libpq finds it (PGPASSWORD, ~/.pgpass)."""

    def __init__(self, dsn: str, *, password: str | None = None) -> None:
        self.dsn = dsn
        self.location = without_secrets(dsn)
        self._password = password
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _conn(self) -> Any:
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            extra: dict[str, Any] = {"password": self._password} if self._password else {}
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10, **extra)
            except psycopg.OperationalError as e:
                raise DatabaseError(f"cannot connect to {self.location}: {e}") from e
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, locks: Iterable[str | int] = ()) -> Iterator[Tx]:
        import psycopg

        conn = self._conn()
        try:
            with conn.transaction(), conn.cursor() as cur:
                # Sorted: two writers wanting the same locks take them in the same order and
                # cannot deadlock.
                for key in sorted({lock_key(n) for n in locks}):
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                yield _PgTx(cur)
        except psycopg.OperationalError:
            # The connection is gone (server restart, network): the next call reconnects.
            conn.close()
            raise

    def reader(self) -> AbstractContextManager[Tx]:
        return self.transaction()

    def create(self, schema: Sequence[str]) -> None:
        with self.transaction([SCHEMA_LOCK]) as tx:
            for statement in schema:
                tx.run(statement)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def without_secrets(dsn: str) -> str:
    """The DSN for messages: user, host, port and database, never a password."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return (
        f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', '')}"
        f"/{info.get('dbname', '')}"
    )


def open_database(
    location: Database | str | Path,
    *,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
    password: str | None = None,
) -> Database:
    """A database given as itself, a `postgresql://` DSN, or a SQLite file path.

    `synchronous` applies to SQLite (see guardrails.sqlite); PostgreSQL commits durably."""
    if not isinstance(location, str | Path):
        return location
    if is_postgres(location):
        return PostgresDatabase(str(location), password=password)
    return SqliteDatabase(str(location).removeprefix("sqlite:///"), synchronous=synchronous)
