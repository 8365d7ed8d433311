"""Approval links: opaque request references and single-use email decision tokens, in SQLite.

A chat button or a webhook carries only a *reference* (`ref_…`): it names an approval request
without revealing the run, the action or anyone's identity; the signed request around it says
who clicked. An email link carries a *token*: a random secret that alone authorizes one
decision (one verb, one named approver, one action) until the request expires. Only its sha256
is stored, so a copy of this database cannot decide anything.

The notify activity writes here and every approval gateway reads, so all of them use the same
store: one SQLite file on one machine, or the shared database of a fleet
(COUNTERSIGN_STATE_DSN), so that any gateway instance honours any link.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from countersign.guardrails.database import Database, Tx, open_database

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS refs (
    ref TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    action_hash TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    -- what the approver is shown (tool, arguments, reason, rules, ...), as sent in the notice
    details TEXT NOT NULL,
    UNIQUE (workflow_id, request_id)
)""",
    """CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    ref TEXT NOT NULL REFERENCES refs (ref),
    approver TEXT NOT NULL,
    approve INTEGER NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    -- set when this token or its sibling (same request and approver) was used
    used_at TEXT,
    used_via TEXT,
    revoked_at TEXT
)""",
    "CREATE INDEX IF NOT EXISTS tokens_by_ref ON tokens (ref, approver)",
]

Refusal = Literal["unknown", "used", "expired", "revoked"]


class TokenRefusedError(Exception):
    """A link that may not decide. `reason` is machine-readable; the message is for people."""

    def __init__(self, reason: Refusal, message: str, link: DecisionLink | None = None) -> None:
        super().__init__(message)
        self.reason: Refusal = reason
        self.link = link


@dataclass(frozen=True)
class RequestRef:
    ref: str
    workflow_id: str
    request_id: str
    action_hash: str
    expires_at: datetime
    details: dict[str, Any]


@dataclass(frozen=True)
class DecisionLink:
    """What a valid email token authorizes."""

    link_id: str  # a prefix of the token's hash: safe to log and audit
    request: RequestRef
    approver: str
    approve: bool
    expires_at: datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def link_id(token: str) -> str:
    return "lnk_" + token_hash(token)[:12]


class TokenStore:
    def __init__(self, db: Database | str | Path) -> None:
        """`db`: the shared database, a `postgresql://` DSN, or a SQLite file's path."""
        self.db = open_database(db, synchronous="FULL")
        self.db.create(_SCHEMA)

    # --- references (chat buttons, webhooks) -------------------------------------------------

    def reference(
        self,
        workflow_id: str,
        request_id: str,
        action_hash: str,
        expires_at: datetime,
        details: dict[str, Any] | None = None,
    ) -> RequestRef:
        """The reference of a request: the same one every time it is asked for. Its expiry and
        details follow the request's latest notice: an escalated request's fresh links live as
        long as it does, and the inbox sees who may decide now and whether it settled."""
        with self.db.transaction() as tx:
            tx.run(
                "INSERT INTO refs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (workflow_id, request_id)"
                " DO UPDATE SET expires_at = excluded.expires_at",
                (
                    "ref_" + secrets.token_urlsafe(12),
                    workflow_id,
                    request_id,
                    action_hash,
                    utc_iso(expires_at),
                    json.dumps(details or {}),
                ),
            )
            if details is not None:
                tx.run(
                    "UPDATE refs SET details = ? WHERE workflow_id = ? AND request_id = ?",
                    (json.dumps(details), workflow_id, request_id),
                )
            row = tx.one(
                f"SELECT {_REF_COLUMNS} FROM refs WHERE workflow_id = ? AND request_id = ?",
                (workflow_id, request_id),
            )
        assert row is not None  # inserted above, or there already
        return _ref(row)

    def resolve(self, ref: str) -> RequestRef | None:
        with self.db.reader() as tx:
            row = tx.one(f"SELECT {_REF_COLUMNS} FROM refs WHERE ref = ?", (ref,))
        return _ref(row) if row else None

    def find_reference(self, workflow_id: str, request_id: str) -> RequestRef | None:
        with self.db.reader() as tx:
            row = tx.one(
                f"SELECT {_REF_COLUMNS} FROM refs WHERE workflow_id = ? AND request_id = ?",
                (workflow_id, request_id),
            )
        return _ref(row) if row else None

    def pending(self, now: datetime | None = None) -> list[RequestRef]:
        """Requests whose latest notice says pending and which have not expired, oldest expiry
        first (the approver inbox filters them by who may decide)."""
        with self.db.reader() as tx:
            rows = tx.all(
                f"SELECT {_REF_COLUMNS} FROM refs WHERE expires_at > ? ORDER BY expires_at",
                (utc_iso(now or datetime.now(UTC)),),
            )
        refs = [_ref(row) for row in rows]
        return [r for r in refs if r.details.get("status", "pending") == "pending"]

    # --- email decision tokens ---------------------------------------------------------------

    def issue(
        self,
        request: RequestRef,
        approver: str,
        approve: bool,
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> str:
        """A new single-use token; it expires no later than the request does."""
        expires = min(expires_at or request.expires_at, request.expires_at)
        token = secrets.token_urlsafe(32)
        with self.db.transaction() as tx:
            tx.run(
                "INSERT INTO tokens (token_hash, ref, approver, approve, expires_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token_hash(token),
                    request.ref,
                    approver,
                    int(approve),
                    utc_iso(expires),
                    utc_iso(now or datetime.now(UTC)),
                ),
            )
        return token

    def check(self, token: str, now: datetime | None = None) -> DecisionLink:
        """What the token authorizes, or TokenRefusedError. Changes nothing."""
        with self.db.reader() as tx:
            return self._check(tx, token, now or datetime.now(UTC))

    def claim(self, token: str, now: datetime | None = None) -> DecisionLink:
        """Use the token (and its sibling for the other verb) once; TokenRefusedError if it
        cannot be used. Two concurrent claims: exactly one wins."""
        now = now or datetime.now(UTC)
        digest = token_hash(token)
        with self.db.transaction() as tx:
            link = self._check(tx, token, now)
            claimed = tx.run(
                "UPDATE tokens SET used_at = ?, used_via = ?"
                " WHERE ref = ? AND approver = ? AND used_at IS NULL AND revoked_at IS NULL",
                (utc_iso(now), digest, link.request.ref, link.approver),
            )
            if not claimed:
                # Another gateway claimed or revoked it between our check and this update
                # (PostgreSQL re-checks the condition on the row it waited for): say why.
                self._check(tx, token, now)
                raise TokenRefusedError("used", "This link was already used. Links work once.")
        return link

    def release(self, token: str) -> None:
        """Undo a claim whose decision never reached the run (Temporal unreachable)."""
        with self.db.transaction() as tx:
            tx.run(
                "UPDATE tokens SET used_at = NULL, used_via = NULL WHERE used_via = ?",
                (token_hash(token),),
            )

    def revoke(self, workflow_id: str, request_id: str, now: datetime | None = None) -> int:
        """Revoke every unused token of a settled request; returns how many."""
        with self.db.transaction() as tx:
            return tx.run(
                "UPDATE tokens SET revoked_at = ? WHERE used_at IS NULL AND revoked_at IS NULL"
                " AND ref IN (SELECT ref FROM refs WHERE workflow_id = ? AND request_id = ?)",
                (utc_iso(now or datetime.now(UTC)), workflow_id, request_id),
            )

    def _check(self, tx: Tx, token: str, now: datetime) -> DecisionLink:
        row = tx.one(
            "SELECT t.approver, t.approve, t.expires_at, t.used_at, t.revoked_at,"
            " r.ref, r.workflow_id, r.request_id, r.action_hash, r.expires_at, r.details"
            " FROM tokens t JOIN refs r ON r.ref = t.ref WHERE t.token_hash = ?",
            (token_hash(token),),
        )
        if row is None:
            raise TokenRefusedError(
                "unknown",
                "This link is not valid. It may have been mistyped or altered; use the link "
                "from the approval email.",
            )
        approver, approve, expires_at, used_at, revoked_at, *ref_row = row
        link = DecisionLink(
            link_id=link_id(token),
            request=_ref(tuple(ref_row)),
            approver=approver,
            approve=bool(approve),
            expires_at=datetime.fromisoformat(expires_at),
        )
        if used_at is not None:
            raise TokenRefusedError(
                "used", f"This link was already used ({used_at[:19]} UTC). Links work once.", link
            )
        if revoked_at is not None:
            raise TokenRefusedError(
                "revoked",
                "This approval request is already settled; the link no longer works.",
                link,
            )
        if link.expires_at <= now:
            raise TokenRefusedError("expired", f"This link expired at {expires_at[:19]} UTC.", link)
        return link


def utc_iso(at: datetime) -> str:
    """How the stores keep times: ISO 8601 in UTC (sorts as text)."""
    return at.astimezone(UTC).isoformat()


_REF_COLUMNS = "ref, workflow_id, request_id, action_hash, expires_at, details"


def _ref(row: tuple[Any, ...]) -> RequestRef:
    ref, workflow_id, request_id, action_hash, expires_at, details = row
    return RequestRef(
        ref,
        workflow_id,
        request_id,
        action_hash,
        datetime.fromisoformat(expires_at),
        json.loads(details),
    )
