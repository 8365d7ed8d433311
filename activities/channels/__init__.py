"""Notification channels: how an approval request reaches people (Slack, email, webhook).

Each channel turns an ApprovalNotice into one transport's message. What every channel shows
is decided here once, so an approver sees the same facts wherever they look: the tool, its
arguments, the model's stated reason, the rules that asked for approval, who may decide and
until when.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from activities.contracts import ApprovalNotice
from guardrails.approvals import ApprovalRequest
from guardrails.money import argument_pairs, describe_call
from guardrails.tokens import RequestRef


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


def deciders(request: ApprovalRequest) -> list[str]:
    """Who may decide: eligible people, never the requester or the agent."""
    return [p for p in request.need.eligible if p not in (request.requested_by, request.agent)]


def who_may_decide(request: ApprovalRequest) -> str:
    need = request.need
    text = f"{need.quorum} of {', '.join(deciders(request))} ({', '.join(need.groups)})"
    if need.required_group:
        text += f", at least one from {need.required_group}"
    return text


def when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def outcome_line(request: ApprovalRequest) -> str:
    """The settled state of a request, in one line."""
    if request.status == "approved":
        return f"Approved by {', '.join(request.approvers)}"
    if request.status == "rejected":
        no = [d for d in request.decisions if not d.approve]
        if no:
            return f"Rejected by {no[-1].approver}" + (
                f": {no[-1].comment}" if no[-1].comment else ""
            )
        return "Rejected"
    if request.status == "expired":
        return f"Expired at {when(request.expires_at)} without a decision: rejected"
    return f"Waiting: {len(request.approvers)} of {request.need.quorum} approvals"
