"""Invariants of the guard, over many generated calls (Hypothesis), and of the limits ledger
under concurrent writers in separate processes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from hypothesis import given, settings
from hypothesis import strategies as st

from countersign.activities.tools import REGISTRY
from countersign.guardrails.ledger import Ledger
from countersign.guardrails.policy import Counter, DecisionInput, Proposal, Verdict
from tests.guardrails.test_policy import ORDER, decision

ALL_SCOPES = sorted({t.scope for t in REGISTRY.values()})
amounts = st.integers(min_value=1, max_value=500_000)


@settings(max_examples=300, deadline=None)
@given(
    tool=st.sampled_from(sorted(REGISTRY)),
    scopes=st.sets(st.sampled_from(ALL_SCOPES)),
    amount=amounts,
    mode=st.sampled_from([None, "shadow", "augment", "automate"]),
)
def test_nothing_outside_the_agents_scopes_is_ever_allowed(tool, scopes, amount, mode) -> None:
    args = {"order_id": "A-1003", "amount_cents": amount, "reason": "r"}
    v = decision(tool, args, scopes=sorted(scopes), mode=mode)
    if REGISTRY[tool].scope not in scopes:
        assert v.outcome == "deny" and "scope.not_granted" in v.rule_ids


@settings(max_examples=300, deadline=None)
@given(
    amount=amounts,
    refunded=st.integers(0, 89900),
    usage=st.integers(0, 300_000),
    mode=st.sampled_from([None, "augment", "automate"]),
)
def test_no_refund_above_a_tier_runs_without_its_approvals(amount, refunded, usage, mode) -> None:
    v = decision(
        args={"amount_cents": amount},
        facts={"order": {**ORDER, "refunded_cents": refunded}},
        usage={"agent_refunded_today_cents": usage, "customer_refunds_this_week": 0},
        mode=mode,
    )
    if amount > 5000:
        assert v.outcome != "allow"
    if v.outcome == "needs_approval" and amount > 50000:
        assert v.approval and v.approval.quorum >= 2 and v.approval.required_members == ["carol"]


@settings(max_examples=200, deadline=None)
@given(
    amount=amounts,
    killed=st.booleans(),
    subject=st.sampled_from(
        [{"order_id": "A-1003"}, {"customer_id": "C-300"}, {"order_id": "A-1001"}, {}]
    ),
    usage=st.integers(0, 300_000),
)
def test_a_matching_forbid_always_beats_every_permit(amount, killed, subject, usage) -> None:
    v = decision(
        args={"amount_cents": amount},
        subject=subject,
        usage={"agent_refunded_today_cents": usage},
        killed=killed,
    )
    about_this_order = subject.get("order_id") == "A-1003" or subject.get("customer_id") == "C-300"
    forbidden = (
        killed
        or not about_this_order
        or amount > ORDER["captured_cents"]
        or usage + amount > 200_000
    )
    assert (v.outcome == "deny") == forbidden


@settings(max_examples=300, deadline=None)
@given(amounts=st.lists(st.integers(1, 5000), min_size=2, max_size=8))
def test_splitting_a_refund_never_lowers_its_tier(amounts) -> None:
    """Each part is decided on what the customer already had this week plus itself: the parts
    run without a human only as long as their total would have."""
    refunded = 0
    for amount in amounts:
        v = decision(
            args={"amount_cents": amount}, usage={"customer_refunded_week_cents": refunded}
        )
        if refunded + amount > 5000:
            assert v.outcome == "needs_approval"
        refunded += amount


LIMIT = 20_000
COUNTER = Counter(id="agent_refunded_today_cents", tool="payments.refund", sum="amount_cents")


def _reserve_many(path: str, worker: int, amounts: list[int]) -> list[int]:
    """One 'worker process': decide-and-reserve each amount; return the amounts let through."""
    ledger = Ledger(path)
    spec = REGISTRY["payments.refund"]
    allowed = []
    for i, amount in enumerate(amounts):
        args = {"order_id": "A-1003", "amount_cents": amount, "reason": "r"}
        d = DecisionInput(
            proposal=Proposal(call_id=f"w{worker}-{i}", tool=spec.name, arguments=args),
            agent="support-refunds",
            granted_scopes=[spec.scope],
            tool=spec.facts,
            arguments=args,
            arguments_error=None,
            requested_mode=None,
            workflow_id=f"wf-{worker}-{i}",
            requested_by="dana",
        )

        def limited(d: DecisionInput, amount: int = amount, i: int = i) -> Verdict:
            v = decision(
                args={"amount_cents": amount},
                usage={"agent_refunded_today_cents": 0, "customer_refunds_this_week": 0},
            )
            over = d.usage[COUNTER.id] + amount > LIMIT
            return (
                v.model_copy(update={"outcome": "deny"})
                if over
                else v.model_copy(update={"action_hash": f"act_w{worker}_{i}"})
            )

        verdict, _ = ledger.decide_and_reserve(d, [COUNTER], limited)
        if verdict.outcome != "deny":
            allowed.append(amount)
    return allowed


@settings(max_examples=3, deadline=None)
@given(
    st.lists(st.integers(100, 5000), min_size=10, max_size=30),
    st.lists(st.integers(100, 5000), min_size=10, max_size=30),
)
def test_budget_is_never_exceeded_by_two_concurrent_workers(tmp_path_factory, a, b) -> None:
    path = str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite3")
    Ledger(path)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        results = list(pool.map(_reserve_many, [path, path], [1, 2], [a, b]))
    allowed = results[0] + results[1]
    assert sum(allowed) <= LIMIT
    assert Ledger(path).total(COUNTER.id, "support-refunds", _today()) == sum(allowed)
    # Tight: whatever was refused would have crossed the budget at the time it was decided.
    if sum(a) + sum(b) <= LIMIT:
        assert sorted(allowed) == sorted(a + b)


def _today() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).date().isoformat()
