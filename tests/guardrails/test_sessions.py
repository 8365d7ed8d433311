"""Inbox sign-in links and sessions: single use, short-lived, stored only as hashes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from countersign.guardrails.sessions import (
    MAX_LIVE_SIGN_IN_LINKS,
    SESSION_LIFETIME,
    SessionStore,
    SignInRefusedError,
    TooManySignInsError,
)

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


def test_one_person_has_at_most_a_few_live_sign_in_links(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "inbox.sqlite3")
    tokens = [store.issue_sign_in("alice", now=NOW) for _ in range(MAX_LIVE_SIGN_IN_LINKS)]
    with pytest.raises(TooManySignInsError):
        store.issue_sign_in("alice", now=NOW + timedelta(minutes=1))
    store.issue_sign_in("bob", now=NOW)  # the cap is per person
    store.sign_in(tokens[0], now=NOW)  # a used link no longer counts
    last = store.issue_sign_in("alice", now=NOW + timedelta(minutes=1))
    with pytest.raises(TooManySignInsError):
        store.issue_sign_in("alice", now=NOW + timedelta(minutes=2))
    # Once they expire, new ones may be sent; an expired one still says so when opened.
    later = NOW + timedelta(minutes=17)
    store.issue_sign_in("alice", now=later)
    with pytest.raises(SignInRefusedError) as expired:
        store.check_sign_in(last, now=later)
    assert expired.value.reason == "expired"
