"""The stores that must be one per deployment, on both backends: SQLite files (one machine)
and one PostgreSQL database (a fleet). Two store objects on one location stand for two hosts."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from countersign.activities.transcript import Fold, TranscriptStore
from countersign.guardrails.controls import KillSwitch, KillSwitchTable
from countersign.guardrails.database import Database, open_database
from countersign.guardrails.ledger import Ledger
from countersign.guardrails.sessions import SessionStore, SignInRefusedError
from countersign.guardrails.tokens import TokenRefusedError, TokenStore
from countersign.settings import SettingsError, load_settings
from tests.guardrails.test_policy_properties import COUNTER, LIMIT, _today

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite3")
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def hosts(location: str) -> Iterator[tuple[Database, Database]]:
    """Two independent connections to one location: host A and host B."""
    a, b = open_database(location), open_database(location)
    yield a, b
    a.close()
    b.close()


def test_a_transcript_written_on_one_host_is_read_whole_on_another(
    hosts: tuple[Database, Database],
) -> None:
    a, b = TranscriptStore(hosts[0]), TranscriptStore(hosts[1])
    a.write_sync(
        "run-1", 0, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    )
    # A retried activity rewrites the same rows instead of adding new ones.
    b.write_sync("run-1", 1, [{"role": "assistant", "content": "refunded"}])
    assert b.read_sync("run-1", 2) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "refunded"},
    ]
    assert a.read_sync("run-1", 1) == [{"role": "user", "content": "hi"}]
    assert a.read_sync("run-2", 5) == []


def test_a_model_calls_first_kept_reply_is_what_a_retry_on_another_host_reads(
    hosts: tuple[Database, Database],
) -> None:
    """guard-in-model-call: a retried model call decides the reply its first attempt kept."""
    a, b = TranscriptStore(hosts[0]), TranscriptStore(hosts[1])
    reply = {"role": "assistant", "content": "first"}
    a.write_sync("run-1", 2, [reply], reply=("run-id/7", {"content": "first"}))
    # A later attempt that asked the model again rewrites the messages, never the kept reply.
    b.write_sync("run-1", 2, [{"role": "assistant", "content": "second"}], reply=("run-id/7", {}))
    assert b.reply_of_sync("run-1", "run-id/7") == {"content": "first"}
    assert a.reply_of_sync("run-1", "run-id/8") is None
    assert a.reply_of_sync("run-2", "run-id/7") is None
    # Once decided, the reply with its verdicts is what a retry reads; the first one stands.
    a.keep_decided_sync("run-1", "run-id/7", {"content": "first", "verdicts": [1]})
    b.keep_decided_sync("run-1", "run-id/7", {"content": "first", "verdicts": [2]})
    assert b.reply_of_sync("run-1", "run-id/7") == {"content": "first", "verdicts": [1]}


def test_a_fold_made_on_one_host_is_used_on_another_until_the_transcript_is_rewritten(
    hosts: tuple[Database, Database],
) -> None:
    """Context windows (activities/context.py): a reset workflow rewrites its transcript from
    an earlier seq, voiding folds made in the old continuation."""
    a, b = TranscriptStore(hosts[0]), TranscriptStore(hosts[1])
    a.write_sync("run-1", 0, [{"role": "assistant", "content": str(i)} for i in range(10)])
    a.write_fold_sync("run-1", Fold(covers_seq=4, replies=4, summary="first four"))
    a.write_fold_sync("run-1", Fold(covers_seq=8, replies=8, summary=None))
    assert b.fold_sync("run-1", 10) == Fold(8, 8, None)
    assert b.fold_sync("run-1", 7) == Fold(4, 4, "first four")
    assert b.fold_sync("run-2", 10) is None
    assert [m["content"] for m in b.read_sync("run-1", 7, from_seq=4)] == ["4", "5", "6"]
    b.write_sync("run-1", 6, [{"role": "assistant", "content": "after reset"}])
    assert a.fold_sync("run-1", 10) == Fold(4, 4, "first four")
    assert len(a.read_sync("run-1", 10)) == 10


def test_a_link_issued_on_one_host_is_honoured_once_on_another(
    hosts: tuple[Database, Database],
) -> None:
    a, b = TokenStore(hosts[0]), TokenStore(hosts[1])
    ref = a.reference("run-1", "apr_1", "hash-1", NOW + timedelta(hours=4), {"tool": "t"})
    assert b.reference("run-1", "apr_1", "hash-1", NOW + timedelta(hours=4)) == ref
    assert b.resolve(ref.ref) == ref and b.find_reference("run-1", "apr_1") == ref
    token = a.issue(ref, "alice", True, now=NOW)
    assert b.check(token, now=NOW).approver == "alice"
    assert b.claim(token, now=NOW).request == ref
    with pytest.raises(TokenRefusedError) as e:
        a.claim(token, now=NOW)
    assert e.value.reason == "used"
    assert a.revoke("run-1", "apr_1", now=NOW) == 0  # used, so nothing left to revoke


def test_an_inbox_sign_in_and_its_session_work_on_any_host(
    hosts: tuple[Database, Database],
) -> None:
    """The approver inbox behind several gateway hosts: the link from host A's email signs in
    on host B, once; the session opened there is good on A; the pending list is shared."""
    a, b = SessionStore(hosts[0]), SessionStore(hosts[1])
    token = a.issue_sign_in("alice", now=NOW)
    cookie, session = b.sign_in(token, now=NOW)
    assert a.session(cookie, now=NOW) == session
    with pytest.raises(SignInRefusedError):
        a.sign_in(token, now=NOW)
    a.sign_out(cookie)
    assert b.session(cookie, now=NOW) is None
    links_a, links_b = TokenStore(hosts[0]), TokenStore(hosts[1])
    links_a.reference("run-1", "apr_1", "h", NOW + timedelta(hours=1), {"status": "pending"})
    assert [r.request_id for r in links_b.pending(now=NOW)] == ["apr_1"]
    links_a.reference("run-1", "apr_1", "h", NOW + timedelta(hours=1), {"status": "approved"})
    assert links_b.pending(now=NOW) == []


def test_concurrent_claims_from_many_hosts_have_exactly_one_winner(location: str) -> None:
    stores = [TokenStore(open_database(location)) for _ in range(4)]
    ref = stores[0].reference("run-1", "apr_1", "hash-1", NOW + timedelta(hours=4))
    token = stores[0].issue(ref, "alice", True, now=NOW)

    def claim(store: TokenStore) -> str:
        try:
            store.claim(token, now=NOW)
            return "won"
        except TokenRefusedError as e:
            return e.reason

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(claim, stores * 2))
    assert sorted(outcomes) == ["used"] * 7 + ["won"]


def test_the_kill_switch_flipped_on_one_host_stops_the_other(
    hosts: tuple[Database, Database],
) -> None:
    a, b = KillSwitchTable(hosts[0]), KillSwitchTable(hosts[1])
    assert not b.read().stops("payments.refund", "support-refunds")
    a.write(KillSwitch(tools=["payments.refund"]))
    assert b.read().stops("payments.refund", "support-refunds")
    assert not b.read().stops("crm.add_note", "support-refunds")
    b.write(KillSwitch())
    assert a.read() == KillSwitch()


def test_a_reservation_made_on_one_host_counts_on_the_other_until_released(
    hosts: tuple[Database, Database],
) -> None:
    a, b = Ledger(hosts[0]), Ledger(hosts[1])
    assert b.total(COUNTER.id, "support-refunds", _today()) == 0
    _reserve_into(a, "act_1", 15_000)
    assert b.total(COUNTER.id, "support-refunds", _today()) == 15_000
    assert not _reserve_into(b, "act_2", 6_000)  # 21,000 would cross the 20,000 limit
    assert _reserve_into(b, "act_3", 5_000)
    assert a.release("act_1", "wf-other") == 0  # another run's release frees nothing
    assert b.total(COUNTER.id, "support-refunds", _today()) == 20_000
    assert a.release("act_1", "wf-act_1") == 1
    assert b.total(COUNTER.id, "support-refunds", _today()) == 5_000


def _reserve_into(ledger: Ledger, action_hash: str, amount: int, think: float = 0) -> bool:
    from countersign.activities.tools import REGISTRY
    from countersign.guardrails.policy import DecisionInput, Proposal, Verdict
    from tests.guardrails.test_policy import decision

    spec = REGISTRY["payments.refund"]
    args = {"order_id": "A-1003", "amount_cents": amount, "reason": "r"}
    d = DecisionInput(
        proposal=Proposal(call_id=action_hash, tool=spec.name, arguments=args),
        agent="support-refunds",
        granted_scopes=[spec.scope],
        tool=spec.facts,
        arguments=args,
        arguments_error=None,
        requested_mode=None,
        workflow_id=f"wf-{action_hash}",
        requested_by="dana",
    )

    def limited(d: DecisionInput) -> Verdict:
        time.sleep(think)  # a slower policy widens any window between reading and reserving
        v = decision(args={"amount_cents": amount})
        if d.usage[COUNTER.id] + amount > LIMIT:
            return v.model_copy(update={"outcome": "deny"})
        return v.model_copy(update={"action_hash": action_hash})

    verdict, _ = ledger.decide_and_reserve(d, [COUNTER], limited)
    return verdict.outcome != "deny"


def _reserve_from_host(dsn: str, host: int, ready: Any, results: Any) -> None:
    """One host: once both are ready, reserve 1,000 thirty times, slowly deciding each."""
    ledger = Ledger(dsn)
    ready.wait()
    results.put(
        sum(_reserve_into(ledger, f"act_{host}_{i}", 1_000, think=0.003) for i in range(30))
    )


def test_the_budget_holds_with_two_hosts_reserving_at_once_on_postgres(pg_dsn: str) -> None:
    """Two processes with their own connections, as two hosts would have, deciding at the same
    moment: the advisory lock per (counter, key, window) serializes them, so the limit is met
    exactly, never crossed."""
    Ledger(pg_dsn)
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Barrier(2), ctx.Queue()
    hosts = [
        ctx.Process(target=_reserve_from_host, args=(pg_dsn, n, ready, results)) for n in (1, 2)
    ]
    for p in hosts:
        p.start()
    allowed = [results.get(timeout=120) for _ in hosts]
    for p in hosts:
        p.join(timeout=30)
    assert sum(allowed) * 1_000 == LIMIT
    assert Ledger(pg_dsn).total(COUNTER.id, "support-refunds", _today()) == LIMIT


def test_one_setting_moves_all_state_and_the_audit_to_postgres() -> None:
    settings = load_settings(state_dsn="postgresql://countersign@db:5432/countersign")
    assert settings.audit_location == "postgresql://countersign@db:5432/countersign"
    # The audit can still live elsewhere (deployments that set only COUNTERSIGN_AUDIT_DSN).
    both = load_settings(
        state_dsn="postgresql://countersign@db:5432/state",
        audit_dsn="postgresql://audit@db2:5432/audit",
        state_password_credential="state-db",
    )
    assert both.audit_location == "postgresql://audit@db2:5432/audit"
    assert both.audit_credential == "state-db"
    assert load_settings().audit_location.endswith("audit.sqlite3")


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://app:hunter22@db:5432/state", "COUNTERSIGN_STATE_PASSWORD_CREDENTIAL"),
        ("sqlite:///state.sqlite3", "leave it unset for SQLite"),
        ("mysql://db/state", "expected postgresql://"),
    ],
)
def test_a_bad_state_dsn_is_refused_naming_the_setting(dsn: str, message: str) -> None:
    with pytest.raises(SettingsError, match="COUNTERSIGN_STATE_DSN") as e:
        load_settings(state_dsn=dsn)
    assert message in str(e.value) and "hunter22" not in str(e.value)
