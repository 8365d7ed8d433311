"""The approval link store: references, single-use tokens stored hashed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from countersign.guardrails.tokens import RequestRef, TokenRefusedError, TokenStore

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def store_with_request(tmp_path: Path) -> tuple[TokenStore, RequestRef]:
    store = TokenStore(tmp_path / "links.sqlite3")
    ref = store.reference("run-1", "apr_1", "hash-1", NOW + timedelta(hours=4), {"tool": "t"})
    return store, ref


def test_a_request_has_one_opaque_reference(tmp_path: Path) -> None:
    store, ref = store_with_request(tmp_path)
    again = store.reference("run-1", "apr_1", "hash-1", NOW + timedelta(hours=4))
    assert again == ref and again.ref.startswith("ref_")
    assert "run-1" not in again.ref and "apr_1" not in again.ref
    assert store.resolve(again.ref) == ref
    assert store.resolve("ref_nope") is None


def test_an_escalated_request_gets_links_that_live_as_long_as_it_does(tmp_path: Path) -> None:
    store, ref = store_with_request(tmp_path)
    # The request expired unanswered at NOW + 4h and escalated: it now runs to NOW + 8h.
    later = NOW + timedelta(hours=5)
    escalated = store.reference("run-1", "apr_1", "hash-1", NOW + timedelta(hours=8))
    assert escalated.ref == ref.ref and escalated.expires_at == NOW + timedelta(hours=8)
    fresh = store.issue(escalated, "erin", True, now=later)
    assert store.check(fresh, now=later).approver == "erin"


def test_a_token_is_stored_hashed_used_once_and_takes_its_sibling_along(tmp_path: Path) -> None:
    store, ref = store_with_request(tmp_path)
    approve = store.issue(ref, "alice", True, now=NOW)
    reject = store.issue(ref, "alice", False, now=NOW)
    bobs = store.issue(ref, "bob", True, now=NOW)
    raw = (tmp_path / "links.sqlite3").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("links.sqlite3-*")
    )
    assert approve.encode() not in raw and reject.encode() not in raw

    link = store.check(approve, now=NOW)
    assert (link.approver, link.approve, link.request.request_id) == ("alice", True, "apr_1")
    store.check(approve, now=NOW)  # checking changes nothing
    store.claim(approve, now=NOW)
    for used in (approve, reject):
        with pytest.raises(TokenRefusedError) as e:
            store.claim(used, now=NOW)
        assert e.value.reason == "used"
    assert store.check(bobs, now=NOW).approver == "bob"

    store.release(approve)  # the decision never reached the run
    assert store.check(reject, now=NOW).approve is False


def test_concurrent_claims_have_exactly_one_winner(tmp_path: Path) -> None:
    store, ref = store_with_request(tmp_path)
    token = store.issue(ref, "alice", True, now=NOW)

    def claim() -> str:
        try:
            store.claim(token, now=NOW)
            return "won"
        except TokenRefusedError as e:
            return e.reason

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: claim(), range(8)))
    assert sorted(outcomes) == ["used"] * 7 + ["won"]


def test_unknown_expired_and_revoked_tokens_are_refused(tmp_path: Path) -> None:
    store, ref = store_with_request(tmp_path)
    with pytest.raises(TokenRefusedError) as e:
        store.check("made-up", now=NOW)
    assert e.value.reason == "unknown" and e.value.link is None
    # A token never outlives its request, whatever it asks for.
    late = store.issue(ref, "alice", True, expires_at=NOW + timedelta(days=9))
    assert store.check(late, now=NOW).expires_at == NOW + timedelta(hours=4)
    with pytest.raises(TokenRefusedError) as e:
        store.check(late, now=NOW + timedelta(hours=4, seconds=1))
    assert e.value.reason == "expired" and e.value.link is not None
    assert store.revoke("run-1", "apr_1", now=NOW) == 1
    with pytest.raises(TokenRefusedError) as e:
        store.check(late, now=NOW)
    assert e.value.reason == "revoked"


def test_pending_follows_each_requests_latest_notice(tmp_path: Path) -> None:
    """The inbox's list: pending and unexpired, as the latest notice says (settled drops out)."""
    store = TokenStore(tmp_path / "links.sqlite3")
    store.reference("run-1", "apr_1", "h1", NOW + timedelta(hours=4), {"status": "pending"})
    store.reference("run-2", "apr_2", "h2", NOW + timedelta(hours=2), {"status": "pending"})
    store.reference("run-3", "apr_3", "h3", NOW - timedelta(minutes=1), {"status": "pending"})
    assert [r.request_id for r in store.pending(now=NOW)] == ["apr_2", "apr_1"]
    store.reference("run-2", "apr_2", "h2", NOW + timedelta(hours=2), {"status": "approved"})
    assert [r.request_id for r in store.pending(now=NOW)] == ["apr_1"]
    # A lookup without details keeps what the last notice said.
    assert store.reference("run-2", "apr_2", "h2", NOW).details == {"status": "approved"}
