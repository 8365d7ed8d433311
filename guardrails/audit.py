"""The audit trail: append-only, hash-chained records in SQLite.

Records are appended only from activities (never from workflow code). Each record has a
deterministic `record_id` derived from the activity that wrote it, so a retried activity does
not write a record twice. Every record carries the hash of the one before it, so an edited,
deleted or reordered record breaks the chain (`verify`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from guardrails.policy import canonical_json
from guardrails.redaction import redact

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    at TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_workflow ON audit_records (workflow_id, seq);
"""


class AuditRecord(BaseModel):
    seq: int
    record_id: str
    at: datetime
    workflow_id: str
    run_id: str
    kind: str
    actor: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


def record_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    # Domain-separated leaf hash (0x00 prefix, as in RFC 6962) over the previous hash and fields.
    body = canonical_json({"prev": prev_hash, **fields}).encode()
    return hashlib.sha256(b"\x00" + body).hexdigest()


class AuditStore:
    """SQLite-backed audit trail. Safe for several worker processes on one machine."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def append_sync(
        self,
        *,
        record_id: str,
        workflow_id: str,
        run_id: str,
        kind: str,
        actor: str,
        data: dict[str, Any],
    ) -> AuditRecord:
        """Append one record; a second append with the same record_id returns the first."""
        data = redact(data)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT * FROM audit_records WHERE record_id = ?", (record_id,)
                ).fetchone()
                if row is None:
                    last = db.execute(
                        "SELECT hash FROM audit_records ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                    prev = last[0] if last else GENESIS
                    fields = {
                        "record_id": record_id,
                        "at": datetime.now(UTC).isoformat(),
                        "workflow_id": workflow_id,
                        "run_id": run_id,
                        "kind": kind,
                        "actor": actor,
                        "data": data,
                    }
                    digest = record_hash(prev, fields)
                    db.execute(
                        "INSERT INTO audit_records"
                        " (record_id, at, workflow_id, run_id, kind, actor, data, prev_hash, hash)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            record_id,
                            fields["at"],
                            workflow_id,
                            run_id,
                            kind,
                            actor,
                            canonical_json(data),
                            prev,
                            digest,
                        ),
                    )
                    row = db.execute(
                        "SELECT * FROM audit_records WHERE record_id = ?", (record_id,)
                    ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return _to_record(row)

    async def append(self, **kwargs: Any) -> AuditRecord:
        return await asyncio.to_thread(lambda: self.append_sync(**kwargs))

    def for_run(self, workflow_id: str) -> list[AuditRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM audit_records WHERE workflow_id = ? ORDER BY seq", (workflow_id,)
            ).fetchall()
        return [_to_record(r) for r in rows]

    def between(self, since: datetime, until: datetime | None = None) -> list[AuditRecord]:
        """Records appended in [since, until), oldest first (`at` is UTC ISO text: it sorts)."""
        until = until or datetime.now(UTC)
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM audit_records WHERE at >= ? AND at < ? ORDER BY seq",
                (since.astimezone(UTC).isoformat(), until.astimezone(UTC).isoformat()),
            ).fetchall()
        return [_to_record(r) for r in rows]

    def find(self, workflow_id: str, kind: str, **data_matches: Any) -> list[AuditRecord]:
        """Records of one kind in a run whose data has the given top-level values."""
        return [
            r
            for r in self.for_run(workflow_id)
            if r.kind == kind and all(r.data.get(k) == v for k, v in data_matches.items())
        ]

    def verify(self) -> tuple[int, str | None]:
        """Check the whole chain: (records checked, first broken record_id or None)."""
        prev = GENESIS
        count = 0
        with self._connect() as db:
            for row in db.execute("SELECT * FROM audit_records ORDER BY seq"):
                rec = _to_record(row)
                fields = {
                    "record_id": rec.record_id,
                    "at": row[2],
                    "workflow_id": rec.workflow_id,
                    "run_id": rec.run_id,
                    "kind": rec.kind,
                    "actor": rec.actor,
                    "data": rec.data,
                }
                if rec.prev_hash != prev or record_hash(prev, fields) != rec.hash:
                    return count, rec.record_id
                prev = rec.hash
                count += 1
        return count, None


def _to_record(row: tuple[Any, ...]) -> AuditRecord:
    seq, record_id, at, workflow_id, run_id, kind, actor, data, prev_hash, digest = row
    return AuditRecord(
        seq=seq,
        record_id=record_id,
        at=datetime.fromisoformat(at),
        workflow_id=workflow_id,
        run_id=run_id,
        kind=kind,
        actor=actor,
        data=json.loads(data),
        prev_hash=prev_hash,
        hash=digest,
    )
