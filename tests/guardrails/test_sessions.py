"""Inbox sign-in links and sessions: single use, short-lived, stored only as hashes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from countersign.guardrails.sessions import SESSION_LIFETIME, SessionStore, SignInRefusedError

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_a_sign_in_link_opens_one_session_once(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "inbox.sqlite3")
    token = store.issue_sign_in("alice", now=NOW)
    assert store.check_sign_in(token, now=NOW) == "alice"  # opening it changes nothing
    cookie, session = store.sign_in(token, now=NOW)
    assert session.identity == "alice" and session.expires_at == NOW + SESSION_LIFETIME
    assert store.session(cookie, now=NOW + timedelta(hours=1)) == session
    assert store.session(cookie, now=NOW + SESSION_LIFETIME) is None  # short-lived
    assert store.session("forged", now=NOW) is None
    with pytest.raises(SignInRefusedError) as used:
        store.sign_in(token, now=NOW)
    assert used.value.reason == "used" and used.value.identity == "alice"
    # Only hashes are kept: the database holds neither the link's token nor the cookie.
    dump = "\n".join(sqlite3.connect(tmp_path / "inbox.sqlite3").iterdump())
    assert token not in dump and cookie not in dump
    store.sign_out(cookie)
    assert store.session(cookie, now=NOW) is None


def test_expired_and_unknown_sign_in_links_are_refused(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "inbox.sqlite3")
    token = store.issue_sign_in("bob", now=NOW)
    with pytest.raises(SignInRefusedError) as expired:
        store.sign_in(token, now=NOW + timedelta(minutes=16))
    assert expired.value.reason == "expired"
    with pytest.raises(SignInRefusedError) as unknown:
        store.check_sign_in("not-a-token", now=NOW)
    assert unknown.value.reason == "unknown"
