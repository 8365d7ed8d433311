"""The audit trail: append-only, hash-chained records with signed checkpoints.

Records are appended only from activities (never from workflow code). Each record has a
deterministic `record_id` derived from the activity that wrote it, so a retried activity does
not write a record twice, and names the Temporal activity that wrote it (`event`).

Hashing follows RFC 6962/9162's domain separation:

    leaf_n  = SHA-256(0x00 || canonical JSON of record n, including its seq)
    head_n  = SHA-256(0x01 || head_{n-1} || leaf_n),   head_0 = 32 zero bytes

Every record stores `prev_hash` (head_{n-1}) and `hash` (head_n). The chain is a left-leaning
hash tree: head_n commits to records 1..n and their order, so an edited, deleted, inserted or
reordered record breaks it at that record (`verify` names it). A chain alone cannot see a
deleted tail or a trail rewritten with recomputed hashes; signed checkpoints over the head can
(`guardrails.audit_signing`). We sign the chain head rather than a balanced Merkle root because
the head is O(1) to produce on every append and the verifier walks the whole trail anyway; a
Merkle root would only add inclusion proofs for parties that never see the trail.

Storage is one small interface, `AuditStore`, with a SQLite backend (default, one machine) and
a PostgreSQL backend (`postgresql://…`); `guardrails.audit_stores.open_store` picks one. Both
serialize appends (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock),
so concurrent workers on many machines extend one chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel

from countersign.guardrails.audit_signing import (
    Checkpoint,
    CheckpointSigner,
    key_id,
    signature_valid,
)
from countersign.guardrails.database import Row, Tx
from countersign.guardrails.policy import canonical_json
from countersign.guardrails.redaction import redact

GENESIS = "0" * 64
DEFAULT_CHECKPOINT_EVERY = 100

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_records (
        seq BIGINT PRIMARY KEY,
        record_id TEXT NOT NULL UNIQUE,
        at TEXT NOT NULL,
        workflow_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_by_workflow ON audit_records (workflow_id, seq)",
    "CREATE INDEX IF NOT EXISTS audit_by_workflow_kind ON audit_records (workflow_id, kind, seq)",
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        size BIGINT PRIMARY KEY,
        head TEXT NOT NULL,
        at TEXT NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL
    )""",
]
COLUMNS = "seq, record_id, at, workflow_id, run_id, kind, actor, event, data, prev_hash, hash"
_PAGE = 1000
# Longer values are matched in Python only (SQLite caps LIKE patterns at 50,000 bytes).
_MAX_PREFILTER = 1000


class AuditError(Exception):
    """The audit store cannot be used as configured. The message says what to do."""


class AuditRecord(BaseModel):
    seq: int
    record_id: str
    at: datetime
    workflow_id: str
    run_id: str
    kind: str
    actor: str
    # Which Temporal activity wrote it: activity_id (its ActivityTaskScheduled event in the
    # run's history carries the same id), activity_type, attempt. Empty outside activities.
    event: dict[str, Any]
    data: dict[str, Any]
    prev_hash: str
    hash: str


def leaf_hash(fields: dict[str, Any]) -> bytes:
    """SHA-256(0x00 || record): a leaf can never collide with an interior node."""
    return hashlib.sha256(b"\x00" + canonical_json(fields).encode()).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): an interior node of the hash tree."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def chain_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    return node_hash(bytes.fromhex(prev_hash), leaf_hash(fields)).hex()


def _leaf_fields(row: Row) -> dict[str, Any]:
    """The hashed content of a stored row, exactly as stored (no re-formatting of times)."""
    seq, record_id, at, workflow_id, run_id, kind, actor, event, data = row[:9]
    return {
        "seq": seq,
        "record_id": record_id,
        "at": at,
        "workflow_id": workflow_id,
        "run_id": run_id,
        "kind": kind,
        "actor": actor,
        "event": json.loads(event),
        "data": json.loads(data),
    }


def _to_record(row: Row) -> AuditRecord:
    fields = _leaf_fields(row)
    return AuditRecord(**fields, prev_hash=row[9], hash=row[10])


class VerifyReport(BaseModel):
    """What `verify` found. `ok` only if the chain and every checkpoint hold."""

    records: int
    first_broken: str | None = None
    problem: str | None = None
    checkpoints: int = 0
    checkpoint_problems: list[str] = []
    signatures_checked: bool = False

    @property
    def ok(self) -> bool:
        return self.first_broken is None and not self.checkpoint_problems


class AuditStore(ABC):
    """The audit trail's storage. Backends supply transactions; the trail's rules live here."""

    location: str

    def __init__(
        self,
        *,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        if checkpoint_every < 1:
            raise AuditError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
        self.signer = signer
        self.checkpoint_every = checkpoint_every

    # -- backend ---------------------------------------------------------------------------

    @abstractmethod
    def _writer(self) -> AbstractContextManager[Tx]:
        """A transaction that holds the trail's append lock until it ends."""

    @abstractmethod
    def _reader(self) -> AbstractContextManager[Tx]:
        """A transaction for reading."""

    def close(self) -> None:  # noqa: B027 (optional: only backends that keep connections)
        """Release connections (backends that keep some)."""

    # -- writing ---------------------------------------------------------------------------

    def append_sync(
        self,
        *,
        record_id: str,
        workflow_id: str,
        run_id: str,
        kind: str,
        actor: str,
        data: dict[str, Any],
        event: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record; a second append with the same record_id returns the first."""
        return self.append_many_sync(
            [
                {
                    "record_id": record_id,
                    "workflow_id": workflow_id,
                    "run_id": run_id,
                    "kind": kind,
                    "actor": actor,
                    "data": data,
                    "event": event,
                }
            ]
        )[0]

    def append_many_sync(self, records: list[dict[str, Any]]) -> list[AuditRecord]:
        """Append records (append_sync's arguments each) in this order, in one transaction:
        one lock and one commit for the records an activity writes together."""
        # Redacted before the chain's lock is taken: other writers wait only for the writes.
        records = [{**r, "data": redact(r["data"])} for r in records]
        with self._writer() as tx:
            rows = [self._append(tx, r) for r in records]
        return [_to_record(row) for row in rows]

    def _append(self, tx: Tx, r: dict[str, Any]) -> Row:
        """One record (append_sync's arguments, data redacted) at the chain's head."""
        record_id = r["record_id"]
        row = tx.one(f"SELECT {COLUMNS} FROM audit_records WHERE record_id = ?", (record_id,))
        if row is not None:
            return row
        last = tx.one("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
        seq, prev = (int(last[0]) + 1, last[1]) if last else (1, GENESIS)
        partial: Row = (
            seq,
            record_id,
            datetime.now(UTC).isoformat(),
            r["workflow_id"],
            r["run_id"],
            r["kind"],
            r["actor"],
            canonical_json(r.get("event") or {}),
            canonical_json(r["data"]),
        )
        row = (*partial, prev, chain_hash(prev, _leaf_fields(partial)))
        placeholders = ", ".join("?" * len(row))
        tx.run(f"INSERT INTO audit_records ({COLUMNS}) VALUES ({placeholders})", row)
        if self.signer is not None:
            covered = tx.one("SELECT MAX(size) FROM audit_checkpoints")
            if seq - int((covered and covered[0]) or 0) >= self.checkpoint_every:
                self._write_checkpoint(tx, self.signer, seq, row[10])
        return row

    async def append(self, **kwargs: Any) -> AuditRecord:
        return await asyncio.to_thread(lambda: self.append_sync(**kwargs))

    def checkpoint(self) -> Checkpoint:
        """Sign the current head now (`countersign audit checkpoint`)."""
        if self.signer is None:
            raise AuditError("this audit store has no signing key; it cannot sign checkpoints")
        with self._writer() as tx:
            last = tx.one("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            if last is None:
                raise AuditError(f"the audit trail in {self.location} is empty: nothing to sign")
            existing = tx.one(
                "SELECT size, head, at, key_id, signature FROM audit_checkpoints WHERE size = ?",
                (last[0],),
            )
            if existing is not None:
                return _to_checkpoint(existing)
            return self._write_checkpoint(tx, self.signer, int(last[0]), last[1])

    @staticmethod
    def _write_checkpoint(tx: Tx, signer: CheckpointSigner, size: int, head: str) -> Checkpoint:
        cp = signer.sign(size, head, datetime.now(UTC))
        tx.run(
            "INSERT INTO audit_checkpoints (size, head, at, key_id, signature)"
            " VALUES (?, ?, ?, ?, ?)",
            (cp.size, cp.head, cp.at.isoformat(), cp.key_id, cp.signature),
        )
        return cp

    # -- reading ---------------------------------------------------------------------------

    def for_run(self, workflow_id: str) -> list[AuditRecord]:
        with self._reader() as tx:
            rows = tx.all(
                f"SELECT {COLUMNS} FROM audit_records WHERE workflow_id = ? ORDER BY seq",
                (workflow_id,),
            )
        return [_to_record(r) for r in rows]

    def of_kind(self, kind: str) -> list[AuditRecord]:
        """Every record of one kind, across runs, in order."""
        with self._reader() as tx:
            rows = tx.all(
                f"SELECT {COLUMNS} FROM audit_records WHERE kind = ? ORDER BY seq", (kind,)
            )
        return [_to_record(r) for r in rows]

    def get(self, record_id: str) -> AuditRecord | None:
        with self._reader() as tx:
            row = tx.one(f"SELECT {COLUMNS} FROM audit_records WHERE record_id = ?", (record_id,))
        return _to_record(row) if row else None

    def between(self, since: datetime, until: datetime | None = None) -> list[AuditRecord]:
        """Records appended in [since, until), oldest first (`at` is UTC ISO text: it sorts)."""
        until = until or datetime.now(UTC)
        with self._reader() as tx:
            rows = tx.all(
                f"SELECT {COLUMNS} FROM audit_records WHERE at >= ? AND at < ? ORDER BY seq",
                (since.astimezone(UTC).isoformat(), until.astimezone(UTC).isoformat()),
            )
        return [_to_record(r) for r in rows]

    def find(self, workflow_id: str, kind: str, **data_matches: Any) -> list[AuditRecord]:
        """Records of one kind in a run whose data has the given top-level values."""
        # Only rows whose stored text holds `"key":"value"` for each string match are parsed
        # and checked: a record's data is canonical JSON, so an equal top-level string is
        # always such a substring. (Parsing every verdict of a long run cost O(run) a call.)
        where, params = "", [workflow_id, kind]
        for k, v in data_matches.items():
            text = canonical_json({k: v})[1:-1]
            if isinstance(v, str) and len(text) <= _MAX_PREFILTER:
                where += " AND data LIKE ? ESCAPE '\\'"
                params.append("%" + re.sub(r"([\\%_])", r"\\\1", text) + "%")
        with self._reader() as tx:
            rows = tx.all(
                f"SELECT {COLUMNS} FROM audit_records WHERE workflow_id = ? AND kind = ?{where}"
                " ORDER BY seq",
                params,
            )
        records = (_to_record(r) for r in rows)
        return [r for r in records if all(r.data.get(k) == v for k, v in data_matches.items())]

    def count(self) -> int:
        with self._reader() as tx:
            row = tx.one("SELECT COUNT(*) FROM audit_records")
        return int(row[0]) if row else 0

    def _rows(self) -> Iterator[Row]:
        """Every stored row in seq order, a page at a time (the trail may be large)."""
        after: int | None = None
        while True:
            with self._reader() as tx:
                if after is None:
                    sql = f"SELECT {COLUMNS} FROM audit_records ORDER BY seq LIMIT {_PAGE}"
                    page = tx.all(sql)
                else:
                    sql = (
                        f"SELECT {COLUMNS} FROM audit_records WHERE seq > ?"
                        f" ORDER BY seq LIMIT {_PAGE}"
                    )
                    page = tx.all(sql, (after,))
            yield from page
            if len(page) < _PAGE:
                return
            after = int(page[-1][0])

    def checkpoints(self) -> list[Checkpoint]:
        with self._reader() as tx:
            rows = tx.all(
                "SELECT size, head, at, key_id, signature FROM audit_checkpoints ORDER BY size"
            )
        return [_to_checkpoint(r) for r in rows]

    # -- verifying -------------------------------------------------------------------------

    def verify(self, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
        """Check the chain and every checkpoint; name the first record where the chain breaks.

        Without a public key the checkpoints' heads are still compared, but their signatures
        are not checked (`signatures_checked` is False).
        """
        checkpoints = self.checkpoints()
        wanted = {cp.size for cp in checkpoints}
        heads: dict[int, str] = {}
        report = VerifyReport(records=0, checkpoints=len(checkpoints))
        head = GENESIS
        for row in self._rows():
            position = report.records + 1
            fields = _leaf_fields(row)
            # The head recomputed from content, so checkpoints compare against what is there.
            computed = chain_hash(head, fields)
            if report.first_broken is None:
                problem = None
                if int(row[0]) != position:
                    problem = (
                        f"it has seq {row[0]} where seq {position} belongs: a record before it "
                        "was deleted, or records were reordered"
                    )
                elif row[9] != head:
                    problem = "its prev_hash does not match the record before it"
                elif row[10] != computed:
                    problem = "its contents do not match its hash: it was edited"
                if problem:
                    report.first_broken = str(row[1])
                    report.problem = f"record {row[1]} (position {position}): {problem}"
            head = computed
            report.records = position
            if position in wanted:
                heads[position] = head
        report.checkpoint_problems = _check_checkpoints(checkpoints, heads, report, public_key)
        report.signatures_checked = public_key is not None
        return report


def _check_checkpoints(
    checkpoints: list[Checkpoint],
    heads: dict[int, str],
    report: VerifyReport,
    public_key: Ed25519PublicKey | None,
) -> list[str]:
    problems = []
    expected_key = key_id(public_key) if public_key is not None else None
    last_good = 0
    for cp in checkpoints:
        where = f"checkpoint at record {cp.size} ({cp.at.isoformat()})"
        if expected_key is not None:
            if cp.key_id != expected_key:
                problems.append(f"{where}: signed by {cp.key_id}, not by {expected_key}")
                continue
            if not signature_valid(cp, public_key):  # type: ignore[arg-type]
                problems.append(f"{where}: signature does not match its contents")
                continue
        if cp.size > report.records:
            problems.append(
                f"{where}: covers {cp.size} records but the trail has {report.records}: "
                f"records after {report.records} were deleted"
            )
        elif heads.get(cp.size) != cp.head:
            problems.append(
                f"{where}: the signed head does not match records 1..{cp.size}: a record "
                f"between {last_good + 1} and {cp.size} was changed"
            )
        else:
            last_good = cp.size
    return problems


def _to_checkpoint(row: Row) -> Checkpoint:
    size, head, at, kid, signature = row
    return Checkpoint(
        size=int(size), head=head, at=datetime.fromisoformat(at), key_id=kid, signature=signature
    )
