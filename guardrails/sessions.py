"""Approver inbox sign-in: single-use emailed sign-in links and short-lived sessions, in the
shared database.

A sign-in link's token is random, sent only to the address the identity directory lists for
the person, and works once within minutes. Using it opens a session: another random token, held
by the browser in an HttpOnly, SameSite=Strict cookie. Only sha256 hashes of both are stored,
so a copy of this database signs nobody in. Kept in the same store as the approval links (one
SQLite file on one machine, the fleet's PostgreSQL otherwise), so any gateway instance honours
any link and any session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from countersign.guardrails.database import Database, open_database
from countersign.guardrails.tokens import token_hash, utc_iso

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS inbox_sign_ins (
    token_hash TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
)""",
    """CREATE TABLE IF NOT EXISTS inbox_sessions (
    session_hash TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    expires_at TEXT NOT NULL
)""",
]

SIGN_IN_LINK_LIFETIME = timedelta(minutes=15)
SESSION_LIFETIME = timedelta(hours=8)
# Sign-in links one person may have live at once: anyone can ask for a link in anyone's name,
# so without a cap the inbox page would mail an approver as often as a script asks.
MAX_LIVE_SIGN_IN_LINKS = 5

SignInRefusal = Literal["unknown", "used", "expired"]


class TooManySignInsError(Exception):
    """`identity` already has MAX_LIVE_SIGN_IN_LINKS live sign-in links: send no more."""


class SignInRefusedError(Exception):
    """A sign-in link that may not sign anyone in; `reason` is machine-readable."""

    def __init__(self, reason: SignInRefusal, message: str, identity: str | None = None) -> None:
        super().__init__(message)
        self.reason: SignInRefusal = reason
        self.identity = identity


@dataclass(frozen=True)
class Session:
    identity: str
    expires_at: datetime
    # Bound to the session: a form from another site cannot know it.
    csrf: str


def csrf_for(session_token: str) -> str:
    return token_hash("inbox-csrf:" + session_token)[:32]


class SessionStore:
    def __init__(self, db: Database | str | Path) -> None:
        """`db`: the shared database, a `postgresql://` DSN, or a SQLite file's path."""
        self.db = open_database(db, synchronous="FULL")
        self.db.create(_SCHEMA)

    def issue_sign_in(
        self, identity: str, now: datetime | None = None, lifetime: timedelta | None = None
    ) -> str:
        """A new single-use sign-in token for `identity` (to be sent to their address only), or
        TooManySignInsError while they already have MAX_LIVE_SIGN_IN_LINKS unused live ones."""
        token = secrets.token_urlsafe(32)
        now = now or datetime.now(UTC)
        expires = now + (lifetime or SIGN_IN_LINK_LIFETIME)
        with self.db.transaction() as tx:
            # Links expired a day ago are forgotten (until then, opening one says "expired").
            tx.run(
                "DELETE FROM inbox_sign_ins WHERE identity = ? AND expires_at <= ?",
                (identity, utc_iso(now - timedelta(days=1))),
            )
            live = tx.one(
                "SELECT COUNT(*) FROM inbox_sign_ins "
                "WHERE identity = ? AND used_at IS NULL AND expires_at > ?",
                (identity, utc_iso(now)),
            )
            if live is not None and live[0] >= MAX_LIVE_SIGN_IN_LINKS:
                raise TooManySignInsError(identity)
            tx.run(
                "INSERT INTO inbox_sign_ins (token_hash, identity, expires_at) VALUES (?, ?, ?)",
                (token_hash(token), identity, utc_iso(expires)),
            )
        return token

    def check_sign_in(self, token: str, now: datetime | None = None) -> str:
        """Whom the link would sign in, or SignInRefusedError. Changes nothing."""
        with self.db.reader() as tx:
            row = tx.one(
                "SELECT identity, expires_at, used_at FROM inbox_sign_ins WHERE token_hash = ?",
                (token_hash(token),),
            )
        return self._valid(row, now or datetime.now(UTC))

    def sign_in(self, token: str, now: datetime | None = None) -> tuple[str, Session]:
        """Use the link once and open a session; returns (session token, session)."""
        now = now or datetime.now(UTC)
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT identity, expires_at, used_at FROM inbox_sign_ins WHERE token_hash = ?",
                (token_hash(token),),
            )
            identity = self._valid(row, now)
            if not tx.run(
                "UPDATE inbox_sign_ins SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
                (utc_iso(now), token_hash(token)),
            ):
                raise SignInRefusedError("used", "This sign-in link was already used.", identity)
            session_token = secrets.token_urlsafe(32)
            expires = now + SESSION_LIFETIME
            tx.run(
                "INSERT INTO inbox_sessions VALUES (?, ?, ?)",
                (token_hash(session_token), identity, utc_iso(expires)),
            )
        return session_token, Session(identity, expires, csrf_for(session_token))

    def session(self, session_token: str, now: datetime | None = None) -> Session | None:
        """The live session this cookie value opens, or None."""
        if not session_token:
            return None
        with self.db.reader() as tx:
            row = tx.one(
                "SELECT identity, expires_at FROM inbox_sessions WHERE session_hash = ?",
                (token_hash(session_token),),
            )
        if row is None or datetime.fromisoformat(row[1]) <= (now or datetime.now(UTC)):
            return None
        return Session(row[0], datetime.fromisoformat(row[1]), csrf_for(session_token))

    def sign_out(self, session_token: str) -> None:
        with self.db.transaction() as tx:
            tx.run(
                "DELETE FROM inbox_sessions WHERE session_hash = ?", (token_hash(session_token),)
            )

    @staticmethod
    def _valid(row: tuple[str, str, str | None] | None, now: datetime) -> str:
        if row is None:
            raise SignInRefusedError(
                "unknown", "This sign-in link is not valid; ask for a new one on the inbox page."
            )
        identity, expires_at, used_at = row
        if used_at is not None:
            raise SignInRefusedError(
                "used", "This sign-in link was already used; ask for a new one.", identity
            )
        if datetime.fromisoformat(expires_at) <= now:
            raise SignInRefusedError(
                "expired", f"This sign-in link expired at {expires_at[:19]} UTC.", identity
            )
        return identity
