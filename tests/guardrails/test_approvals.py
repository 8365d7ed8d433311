"""Approval rules: who may decide, quorum, separation of duties, one decision per call."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from countersign.guardrails.approvals import (
    Decision,
    DecisionRefused,
    apply_decision,
    check_decision,
    need_met,
    new_request,
    request_id_for,
)
from tests.guardrails.test_policy import ORDER, decision

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def request_for(amount: int, call_id: str = "call_1", requester: str | None = "dana"):
    v = decision(args={"amount_cents": amount}, facts={"order": ORDER})
    r = new_request(
        workflow_id="wf-1",
        verdict=v,
        reason="r",
        requested_by="dana",
        requester=requester,
        agent="support-refunds",
        now=NOW,
    )
    return {r.request_id: r}, r


def decide(r, who, approve=True, **kw) -> Decision:
    return Decision(request_id=r.request_id, approver=who, approve=approve, **kw)


def test_one_support_lead_approves_a_mid_refund() -> None:
    requests, r = request_for(18900)
    apply_decision(check_decision(requests, decide(r, "bob")), decide(r, "bob"), NOW)
    assert r.status == "approved" and r.approvers == ["bob"]


def test_two_approvers_including_finance_above_500() -> None:
    requests, r = request_for(89900)
    for who in ("alice", "bob"):
        apply_decision(check_decision(requests, decide(r, who)), decide(r, who), NOW)
    assert r.status == "pending"  # two leads, but nobody from finance yet
    apply_decision(check_decision(requests, decide(r, "carol")), decide(r, "carol"), NOW)
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
    apply_decision(r, decide(r, "alice"), NOW)
    with pytest.raises(DecisionRefused, match="already decided"):
        check_decision(requests, decide(r, "alice"))
    apply_decision(r, decide(r, "bob", approve=False), NOW)
    assert r.status == "rejected"
    with pytest.raises(DecisionRefused, match="already rejected"):
        check_decision(requests, decide(r, "carol"))


def test_request_ids_are_per_call() -> None:
    assert request_id_for("wf-1", "call_1") != request_id_for("wf-1", "call_2")
    assert request_id_for("wf-1", "call_1") == request_id_for("wf-1", "call_1")


def test_a_verified_requester_may_confirm_only_where_a_rule_opts_in() -> None:
    requests, r = request_for(18900, requester="alice")
    with pytest.raises(DecisionRefused, match="requested this run"):
        check_decision(requests, decide(r, "alice"))
    r.need.requester_may_approve = True
    apply_decision(check_decision(requests, decide(r, "alice")), decide(r, "alice"), NOW)
    assert r.status == "approved"


def test_a_claimed_requester_excludes_no_one_and_grants_nothing() -> None:
    requests, r = request_for(18900, requester=None)
    with pytest.raises(DecisionRefused, match="may not decide"):
        check_decision(requests, decide(r, "dana"))  # claimed, and in no approver group
    r.need.requester_may_approve = True
    with pytest.raises(DecisionRefused, match="may not decide"):
        check_decision(requests, decide(r, "dana"))  # the opt-in needs a proven requester
    apply_decision(check_decision(requests, decide(r, "bob")), decide(r, "bob"), NOW)


def test_the_guards_rule_is_met_only_by_eligible_people_and_the_required_group() -> None:
    """What a side effect's activity re-checks against the audited verdict."""
    _, mid = request_for(18900)
    assert need_met(mid.need, ["alice"], "dana")
    assert not need_met(mid.need, ["mallory"], "dana")  # outside the rule's groups
    assert not need_met(mid.need, [], "dana")
    # The duty manager the request escalates to counts once it has (as the run lets her).
    assert mid.need.escalate_members == ["erin"] and need_met(mid.need, ["erin"], "dana")
    # The verified requester never counts, even where a group lists them...
    assert not need_met(mid.need, ["alice"], "alice")
    # ...unless the rule lets them confirm; then only they do, not anyone outside the groups.
    confirm = mid.need.model_copy(update={"requester_may_approve": True})
    assert need_met(confirm, ["dana"], "dana")
    assert not need_met(confirm, ["mallory"], "dana")
    assert not need_met(confirm, ["mallory"], None)  # an unproven requester confirms nothing
    _, large = request_for(89900)
    assert large.need.required_group == "finance"
    assert not need_met(large.need, ["alice", "bob"], "dana")  # two, but nobody from finance
    assert need_met(large.need, ["alice", "carol"], "dana")
    assert not need_met(large.need, ["alice", "carol"], "carol")  # carol requested it
