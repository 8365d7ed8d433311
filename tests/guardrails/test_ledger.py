"""Counters kept per any argument, fact or subject field, and what they add up to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from countersign.activities.tools import REGISTRY
from countersign.guardrails.ledger import NO_KEY, Ledger, key_of
from countersign.guardrails.policy import Counter, DecisionInput, Proposal, Verdict
from countersign.guardrails.policy import decide as policy_decide
from countersign.workers.plugins import load
from tests.guardrails.test_policy import ORDER, POLICY

# The demo's tools and agents, as a worker finds them (here too in spawned processes,
# which never run tests/conftest.py).
load(["demo"])

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def call(order_id: str, amount: int, customer: str, run: str = "wf-1", **kw: Any):
    spec = REGISTRY["payments.refund"]
    args = {"order_id": order_id, "amount_cents": amount, "reason": "r"}
    return DecisionInput(
        proposal=Proposal(call_id=f"{run}-{order_id}-{amount}", tool=spec.name, arguments=args),
        agent="support-refunds",
        granted_scopes=[spec.scope],
        tool=spec.facts,
        arguments=args,
        arguments_error=None,
        requested_mode=None,
        workflow_id=run,
        requested_by="dana",
        subject=kw.pop("subject", {"order_id": order_id}),
        facts={"order": {**ORDER, "order_id": order_id, "customer_id": customer}},
        **kw,
    )


@pytest.mark.parametrize(
    ("per", "key"),
    [
        ("agent", "support-refunds"),
        ("run", "wf-1"),
        ("customer", "C-300"),
        ("args.order_id", "A-1003"),
        ("args.amount_cents", "4200"),
        ("facts.order.customer_id", "C-300"),
        ("subject.order_id", "A-1003"),
        ("subject.customer_id", NO_KEY),
        ("facts.payee.known", NO_KEY),
    ],
)
def test_a_counter_is_kept_per_any_argument_fact_or_subject_field(per: str, key: str) -> None:
    counter = Counter(id="c", tool="payments.refund", per=per)
    assert key_of(counter, call("A-1003", 4200, "C-300")) == key


@pytest.mark.parametrize("per", ["customer_id", "args", "facts.", "args.order-id", "policy.x"])
def test_a_counter_per_something_unknown_is_refused(per: str) -> None:
    with pytest.raises(ValidationError, match="per"):
        Counter(id="c", tool="payments.refund", per=per)


def test_tiers_count_every_run_for_the_same_customer_this_week(tmp_path: Path) -> None:
    """Two runs split refunds across two orders of one customer: the week's total decides."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    counters = POLICY.settings.counters

    def decide(d: DecisionInput) -> Verdict:
        return policy_decide(d, POLICY)

    outcomes = []
    for run, order in [("wf-1", "A-1003"), ("wf-2", "A-1005"), ("wf-3", "A-1003")]:
        v, d = ledger.decide_and_reserve(call(order, 2000, "C-300", run), counters, decide, NOW)
        outcomes.append((v.outcome, d.usage["customer_refunded_week_cents"]))
    assert outcomes == [("allow", 0), ("allow", 2000), ("needs_approval", 4000)]
    # Another customer's refunds are counted apart.
    v, d = ledger.decide_and_reserve(call("A-1001", 2000, "C-100", "wf-4"), counters, decide, NOW)
    assert (v.outcome, d.usage["customer_refunded_week_cents"]) == ("allow", 0)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_at(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "sqlite":
        return Ledger(tmp_path / "ledger.sqlite3")
    return Ledger(str(request.getfixturevalue("pg_dsn")))


def test_an_action_given_back_then_decided_again_counts_again(ledger_at: Ledger) -> None:
    """A verdict's limits are given back (its step was dropped, its request rejected), then
    the same action (same hash: same run, call id, tool and arguments) is decided again: it
    counts again, for the next call's total, instead of staying given back."""
    counters = POLICY.settings.counters
    run = f"wf-{uuid.uuid4().hex[:8]}"

    def decide(d: DecisionInput) -> Verdict:
        return policy_decide(d, POLICY)

    def used_by_another() -> int:
        _, d = ledger_at.decide_and_reserve(call("A-1005", 1, "C-301", run), counters, decide, NOW)
        return d.usage["customer_refunded_week_cents"]

    first, _ = ledger_at.decide_and_reserve(
        call("A-1003", 2000, "C-301", run), counters, decide, NOW
    )
    assert first.outcome == "allow" and first.action_hash
    assert used_by_another() == 2000
    assert ledger_at.release(first.action_hash, run) >= 1
    assert used_by_another() == 0
    again, _ = ledger_at.decide_and_reserve(
        call("A-1003", 2000, "C-301", run), counters, decide, NOW
    )
    assert again.action_hash == first.action_hash
    assert used_by_another() == 2000
    # Decided again while it holds its reservation (a retried decision): counted once.
    ledger_at.decide_and_reserve(call("A-1003", 2000, "C-301", run), counters, decide, NOW)
    assert used_by_another() == 2000
