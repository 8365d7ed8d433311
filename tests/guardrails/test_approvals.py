"""Approval rules: who may decide, quorum, separation of duties, one decision per call."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from guardrails.approvals import (
    Decision,
    DecisionRefused,
    apply_decision,
    check_decision,
    new_request,
    request_id_for,
)
from guardrails.policy import Proposal, ToolFacts, decide, load_policy

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
REFUND = ToolFacts(
    name="payments.refund", scope="payments:refund", read_only=False, risk="high", compensate=None
)


def request_for(amount: int, call_id: str = "call_1"):
    v = decide(
        proposal=Proposal(call_id=call_id, tool="payments.refund"),
        agent="support-refunds",
        granted_scopes=["payments:refund"],
        tool=REFUND,
        arguments={"order_id": "A-1003", "amount_cents": amount, "reason": "wobbly"},
        arguments_error=None,
        policy=load_policy(),
        requested_mode=None,
        workflow_id="wf-1",
    )
    r = new_request(
        workflow_id="wf-1",
        verdict=v,
        reason="r",
        requested_by="dana",
        agent="support-refunds",
        now=NOW,
    )
    return {r.request_id: r}, r


def decision(r, who, approve=True, **kw) -> Decision:
    return Decision(request_id=r.request_id, approver=who, approve=approve, **kw)


def test_one_support_lead_approves_a_mid_refund() -> None:
    requests, r = request_for(18900)
    apply_decision(check_decision(requests, decision(r, "bob")), decision(r, "bob"), NOW)
    assert r.status == "approved" and r.approvers == ["bob"]


def test_two_approvers_including_finance_above_500() -> None:
    requests, r = request_for(89900)
    for who in ("alice", "bob"):
        apply_decision(check_decision(requests, decision(r, who)), decision(r, who), NOW)
    assert r.status == "pending"  # two leads, but nobody from finance yet
    apply_decision(check_decision(requests, decision(r, "carol")), decision(r, "carol"), NOW)
    assert r.status == "approved"


@pytest.mark.parametrize(
    ("who", "fields", "reason"),
    [
        ("dana", {}, "requested this run"),
        ("support-refunds", {}, "cannot decide its own"),
        ("mallory", {}, "may not decide"),
        ("bob", {"request_id": "apr_unknown"}, "unknown approval request"),
        ("bob", {"action_hash": "act_something_else"}, "for action"),
    ],
)
def test_refused_decisions_say_why(who, fields, reason) -> None:
    requests, r = request_for(18900)
    d = Decision(**{"request_id": r.request_id, "approver": who, "approve": True, **fields})
    with pytest.raises(DecisionRefused, match=reason):
        check_decision(requests, d)


def test_second_decision_and_repeat_approver_are_refused() -> None:
    requests, r = request_for(89900)
    apply_decision(r, decision(r, "alice"), NOW)
    with pytest.raises(DecisionRefused, match="already decided"):
        check_decision(requests, decision(r, "alice"))
    apply_decision(r, decision(r, "bob", approve=False), NOW)
    assert r.status == "rejected"
    with pytest.raises(DecisionRefused, match="already rejected"):
        check_decision(requests, decision(r, "carol"))


def test_request_ids_are_per_call() -> None:
    assert request_id_for("wf-1", "call_1") != request_id_for("wf-1", "call_2")
    assert request_id_for("wf-1", "call_1") == request_id_for("wf-1", "call_1")
