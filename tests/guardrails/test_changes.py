"""Approve with changes and per-call reasons: the pure rules (no Temporal)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from countersign.activities.model import proposals_from
from countersign.activities.tools import REGISTRY, ToolContext, ToolDeclarationError, guarded_tool
from countersign.guardrails.approvals import (
    ApprovalRequest,
    Decision,
    DecisionRefused,
    check_decision,
)
from countersign.guardrails.policy import ApprovalNeed
from countersign.guardrails.rendering import as_text, expiry_words, request_view

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def a_request(**update: Any) -> ApprovalRequest:
    update.setdefault("may_change", {"amount_cents": "decrease"})
    return ApprovalRequest(
        request_id="apr_1",
        call_id="call_1",
        tool="payments.refund",
        arguments={"order_id": "A-1002", "amount_cents": 18900, "reason": "broken"},
        reason="the customer says so",
        rule_ids=["refund.over_50"],
        action_hash="act_1",
        requested_by="dana",
        agent="support-refunds",
        need=ApprovalNeed(
            rule_id="refund.over_50",
            groups=["support-leads"],
            eligible=["alice", "bob"],
            quorum=1,
            timeout=timedelta(hours=4),
        ),
        expires_at=NOW + timedelta(hours=4),
        **update,
    )


def decision(changes: dict[str, Any], approve: bool = True) -> Decision:
    return Decision(request_id="apr_1", approver="alice", approve=approve, changes=changes)


def test_an_approver_may_lower_a_declared_amount() -> None:
    assert check_decision({"apr_1": a_request()}, decision({"amount_cents": 12000}))


@pytest.mark.parametrize(
    ("changes", "approve", "why"),
    [
        ({"amount_cents": 20000}, True, "amount_cents: 200.00 USD is not below the proposed"),
        ({"amount_cents": 0}, True, "is below 1"),
        ({"amount_cents": True}, True, "is not a whole number"),
        ({"order_id": "A-1"}, True, "may not change 'order_id' of payments.refund"),
        ({"amount_cents": 100}, False, "changes come with an approval"),
    ],
)
def test_changes_beyond_the_declaration_are_refused(
    changes: dict[str, Any], approve: bool, why: str
) -> None:
    with pytest.raises(DecisionRefused, match=why):
        check_decision({"apr_1": a_request()}, decision(changes, approve))


def test_a_tool_without_changeable_arguments_takes_no_changes() -> None:
    with pytest.raises(DecisionRefused, match=r"changeable: none"):
        check_decision({"apr_1": a_request(may_change={})}, decision({"amount_cents": 1}))


def call(name: str, arguments: str, id: str) -> Any:
    return SimpleNamespace(id=id, function=SimpleNamespace(name=name, arguments=arguments))


def test_each_proposal_carries_its_own_calls_reason() -> None:
    message = SimpleNamespace(
        content="Refunding now.\ncrm__add_note: keep the record up to date",
        tool_calls=[
            call(
                "payments__refund",
                '{"order_id": "A-1002", "amount_cents": 100, "reason": "x", '
                '"call_reason": "the machine leaks"}',
                "c1",
            ),
            call("crm__add_note", '{"customer_id": "C-200", "text": "t"}', "c2"),
            call("orders__lookup", '{"order_id": "A-1002"}', "c3"),
        ],
    )
    refund, note, lookup = proposals_from(message)
    assert refund.reason == "the machine leaks"
    assert refund.arguments is not None and "call_reason" not in refund.arguments
    assert note.reason == "keep the record up to date"  # its own line of the content
    assert lookup.reason == message.content  # nothing of its own: the whole content


class Args(BaseModel):
    amount_cents: int
    note: str


class Out(BaseModel):
    ok: bool


def test_changeable_arguments_are_checked_when_the_tool_is_declared() -> None:
    async def tool(args: Args, ctx: ToolContext) -> Out:
        """A test tool."""
        return Out(ok=True)

    with pytest.raises(ToolDeclarationError, match="'note', which is not an integer argument"):
        guarded_tool("test.note", scope="test:write", approver_may_change={"note": "decrease"})(
            tool
        )
    with pytest.raises(ToolDeclarationError, match="accepted: decrease"):
        guarded_tool(
            "test.raise",
            scope="test:write",
            approver_may_change={"amount_cents": "increase"},  # type: ignore[dict-item]
        )(tool)
    assert "test.note" not in REGISTRY and "test.raise" not in REGISTRY


def test_expiry_reads_in_words_and_iso() -> None:
    assert expiry_words(NOW + timedelta(hours=3, minutes=59, seconds=30), NOW) == (
        "in 3 h 59 min (2026-11-30 11:59 UTC, 2026-11-30T11:59:30+00:00)"
    )
    assert expiry_words(NOW - timedelta(days=1, minutes=5), NOW).startswith("1 d 5 min ago")


def test_the_view_shows_money_with_currency_and_the_claim_apart() -> None:
    view = request_view(
        a_request(), workflow_id="run-1", agent="support-refunds", task="t", now=NOW
    )
    assert view.title == (
        "Approval needed: payments.refund(order_id=A-1002, amount=189.00 USD, reason=broken)"
    )
    text = as_text(view)
    assert "amount_cents" not in text and "amount (lower only)" in text
    assert "THE AGENT'S CLAIM (NOT VERIFIED)\n  Reason: the customer says so" in text
