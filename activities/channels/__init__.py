"""Notification channels: how an approval request reaches people (Slack, email, webhook).

Each channel turns an ApprovalNotice into one transport's message. What every channel shows
is decided once (guardrails/rendering.py), so an approver sees the same facts wherever they
look: the action, its evidence pack, the rule, who may decide and until when.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from countersign.activities.contracts import ApprovalNotice
from countersign.guardrails.approvals import ApprovalRequest
from countersign.guardrails.money import argument_pairs, describe_call
from countersign.guardrails.rendering import (
    RequestView,
    deciders,
    outcome_line,
    request_view,
    when,
    who_may_decide,
)
from countersign.guardrails.tokens import RequestRef


class ChannelError(Exception):
    """A notification that did not go out. `retryable`: a transport problem worth retrying
    (timeouts, 5xx, rate limits); otherwise a configuration or content problem."""

    def __init__(self, channel: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{channel}: {message}")
        self.channel = channel
        self.retryable = retryable


class Channel(Protocol):
    name: str

    async def send(self, notice: ApprovalNotice, ref: RequestRef) -> dict[str, Any]:
        """Deliver the notice; return what was sent, for the audit trail (never a secret)."""
        ...


def argument_lines(request: ApprovalRequest) -> list[tuple[str, str]]:
    """Money is integer cents in arguments; people read 189.00 USD. Redacted, like every
    summary: sealed values read [secret] / [personal]."""
    return argument_pairs(request.arguments)


def action_text(request: ApprovalRequest) -> str:
    """The action in one line, money as money: payments.refund(…, amount=189.00 USD, …)."""
    return describe_call(request.tool, request.arguments)


def view_of(notice: ApprovalNotice) -> RequestView:
    """The one view of the notice's request that every channel lays out (guardrails/rendering)."""
    return request_view(
        notice.request,
        workflow_id=notice.workflow_id,
        agent=notice.agent,
        task=notice.task,
        now=datetime.now(UTC),
    )


__all__ = [
    "Channel",
    "ChannelError",
    "action_text",
    "argument_lines",
    "deciders",
    "outcome_line",
    "view_of",
    "when",
    "who_may_decide",
]
