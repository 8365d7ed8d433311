"""Approval requests and decisions, and the rules a decision must pass.

Pure logic, used by the workflow's Update validator and signal handler: nothing here does I/O,
so every check replays identically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from countersign.guardrails.evidence import EvidencePack
from countersign.guardrails.identity import Envelope, Statement, Verified
from countersign.guardrails.money import describe_call, format_value
from countersign.guardrails.policy import ApprovalNeed, Verdict
from countersign.guardrails.redaction import redact

Channel = Literal["cli", "temporal-ui", "slack", "email", "webhook", "api"]
# "changed": approved with changes; the changed action is decided again (agents/changes.py).
Status = Literal["pending", "approved", "rejected", "expired", "changed"]
# How an approver may change an argument a tool declares changeable (`approver_may_change`):
# "decrease": a whole number, lowered, never below 1 (to refund nothing, reject).
ChangeBound = Literal["decrease"]


class DecisionRefused(Exception):
    """A decision that must not count. The message says why, for the person who sent it."""


class Decision(BaseModel):
    """An approver's answer to one approval request.

    Since signed identities, the run builds it from a verified signed statement (see
    `decision_from`): `approver` is the proven identity, never a typed name. Runs recorded
    before took it from the wire as it was.
    """

    request_id: str = Field(min_length=1)
    approver: str = Field(min_length=1)
    approve: bool
    channel: Channel = "api"
    comment: str = ""
    # When set, the decision only counts for exactly this action (see policy.action_hash).
    action_hash: str | None = None
    # How the approver was proven: the signed envelope itself (its key id names the key that
    # signed, theirs or the gateway's), checkable again by anyone with the directory.
    proof: Envelope | None = None
    directory_version: str | None = None
    # Approve with changes: the arguments the approver changed (signed, in the statement's
    # claims). The original action then does not run; the changed one is decided again.
    changes: dict[str, Any] = {}


class DecisionReceipt(Decision):
    """What the approver's client hears back."""

    status: str
    approvals: int
    quorum: int


class RecordedDecision(Decision):
    decided_at: datetime


class ApprovalRequest(BaseModel):
    """Who may decide one proposed action, how many must agree, until when."""

    request_id: str
    call_id: str
    tool: str
    arguments: dict[str, Any]
    reason: str
    rule_ids: list[str]
    action_hash: str
    requested_by: str
    # The run's requester as proven by a signed start request; None when only claimed (a run
    # started from the Temporal UI): separation of duties then has no one to exclude.
    requester: str | None = None
    agent: str
    need: ApprovalNeed
    expires_at: datetime
    status: Status = "pending"
    escalated: bool = False
    decisions: list[RecordedDecision] = []
    # Which arguments an approver may change, and how (from the tool's declaration).
    may_change: dict[str, ChangeBound] = {}
    # What the approver sees besides the action (guardrails/evidence.py).
    evidence: EvidencePack | None = None
    # The request this one replaces: its action, approved with changes, is this one.
    changed_from: str | None = None

    @property
    def approvers(self) -> list[str]:
        return [d.approver for d in self.decisions if d.approve]

    def summary(self) -> str:
        """Built from redacted arguments: sealed values show as [secret] / [personal], and
        the name-based nets apply (guardrails/redaction.py)."""
        return describe_call(self.tool, redact(self.arguments))  # money as money


def request_id_for(workflow_id: str, call_id: str) -> str:
    """Stable per run and call: a decision can never apply to another call."""
    return "apr_" + hashlib.sha256(f"{workflow_id}\x00{call_id}".encode()).hexdigest()[:16]


def new_request(
    *,
    workflow_id: str,
    verdict: Verdict,
    reason: str,
    requested_by: str,
    requester: str | None,
    agent: str,
    now: datetime,
) -> ApprovalRequest:
    assert verdict.approval is not None and verdict.arguments is not None
    assert verdict.action_hash is not None
    return ApprovalRequest(
        request_id=request_id_for(workflow_id, verdict.call_id),
        call_id=verdict.call_id,
        tool=verdict.tool,
        arguments=verdict.arguments,
        reason=reason,
        rule_ids=verdict.rule_ids,
        action_hash=verdict.action_hash,
        requested_by=requested_by,
        requester=requester,
        agent=agent,
        need=verdict.approval,
        expires_at=now + verdict.approval.timeout,
    )


def pending_request(requests: dict[str, ApprovalRequest], request_id: str) -> ApprovalRequest:
    """The pending request with this id, or DecisionRefused saying why there is none."""
    request = requests.get(request_id)
    if request is None:
        pending = [r for r, req in requests.items() if req.status == "pending"]
        raise DecisionRefused(
            f"unknown approval request {request_id!r}; "
            f"pending requests: {', '.join(pending) or 'none'}"
        )
    if request.status != "pending":
        raise DecisionRefused(f"approval request {request.request_id} is already {request.status}")
    return request


def check_statement(
    requests: dict[str, ApprovalRequest],
    statement: Statement,
    *,
    workflow_id: str,
    used_nonces: set[str],
) -> ApprovalRequest:
    """Bind a signed decision to this run, request and action (before its signature is even
    checked): an envelope for another run, request or action, or one seen before, is refused."""
    if statement.purpose != "decision" or statement.approve is None:
        raise DecisionRefused(f"a {statement.purpose!r} statement is not a decision")
    if statement.workflow_id != workflow_id:
        raise DecisionRefused(
            f"this decision is signed for run {statement.workflow_id!r}, not {workflow_id!r}"
        )
    request = pending_request(requests, statement.request_id)
    if statement.action_hash != request.action_hash:
        raise DecisionRefused(
            f"this decision is signed for action {statement.action_hash or '(none)'}, "
            f"but request {request.request_id} is for action {request.action_hash}"
        )
    if statement.nonce in used_nonces:
        raise DecisionRefused("this signed decision was already used (replayed nonce)")
    return request


def decision_from(envelope: Envelope, verified: Verified) -> Decision:
    """The decision a verified statement proves: the approver is whoever the signature proves."""
    statement = envelope.statement
    assert statement.approve is not None
    changes = statement.claims.get("changes") or {}
    if not isinstance(changes, dict):
        raise DecisionRefused("changes must be an object of argument names and new values")
    return Decision(
        request_id=statement.request_id,
        approver=verified.identity,
        approve=statement.approve,
        channel=verified.channel,
        comment=statement.comment,
        action_hash=statement.action_hash,
        proof=envelope,
        directory_version=verified.directory_version,
        changes=changes,
    )


def check_decision(requests: dict[str, ApprovalRequest], decision: Decision) -> ApprovalRequest:
    """Return the request a decision is for, or raise DecisionRefused saying why not."""
    request = pending_request(requests, decision.request_id)
    if decision.action_hash is not None and decision.action_hash != request.action_hash:
        raise DecisionRefused(
            f"this decision is for action {decision.action_hash}, "
            f"but request {request.request_id} is for action {request.action_hash}"
        )
    who = decision.approver
    if who == request.requester and not request.need.requester_may_approve:
        raise DecisionRefused(f"{who} requested this run and cannot approve its actions")
    if who == request.agent:
        raise DecisionRefused(f"the agent {who!r} cannot decide its own proposals")
    requester_confirms = who == request.requester and request.need.requester_may_approve
    if who not in request.need.eligible and not requester_confirms:
        raise DecisionRefused(
            f"{who} may not decide this request: it needs a member of "
            f"{', '.join(request.need.groups)}"
        )
    if any(d.approver == who for d in request.decisions):
        raise DecisionRefused(f"{who} has already decided request {request.request_id}")
    if decision.changes:
        check_changes(request, decision)
    return request


def check_changes(request: ApprovalRequest, decision: Decision) -> None:
    """Changes an approver may make: declared changeable by the tool, within their bound.
    Anything else is refused, naming the argument and what would be accepted."""
    if not decision.approve:
        raise DecisionRefused("changes come with an approval; to refuse the action, reject it")
    allowed = ", ".join(f"{k} ({v})" for k, v in request.may_change.items()) or "none"
    for name, value in decision.changes.items():
        bound = request.may_change.get(name)
        if bound is None:
            raise DecisionRefused(
                f"changes.{name}: an approver may not change {name!r} of {request.tool} "
                f"(changeable: {allowed})"
            )
        old = request.arguments.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not isinstance(old, int):
            raise DecisionRefused(f"changes.{name}: {value!r} is not a whole number")
        if value >= old:
            raise DecisionRefused(
                f"changes.{name}: {format_value(name, value)} is not below the proposed "
                f"{format_value(name, old)}: an approver may only lower it"
            )
        if value < 1:
            raise DecisionRefused(
                f"changes.{name}: {value} is below 1; to refuse the action, reject it"
            )


def need_met(need: ApprovalNeed, approvers: Iterable[str], requester: str | None) -> bool:
    """Whether these verified approvers meet the rule as the guard decided it: eligible people
    (escalation included), the quorum, the required group; the run's verified `requester`
    counts only where the rule lets them confirm, and never otherwise. A tool's activity asks it
    of the audited verdict, so a rule changed in workflow state (a forged activity result)
    approves nothing."""
    who = set(approvers)
    allowed = set(need.eligible) | set(need.escalate_members)
    counted = {a for a in who & allowed if a != requester}
    if need.requester_may_approve and requester is not None and requester in who:
        counted.add(requester)
    has_required = not need.required_group or bool(counted & set(need.required_members))
    return len(counted) >= need.quorum and has_required


def apply_decision(request: ApprovalRequest, decision: Decision, now: datetime) -> None:
    """Record a checked decision and settle the request when the rule is met."""
    request.decisions.append(RecordedDecision(**decision.model_dump(), decided_at=now))
    if not decision.approve:
        request.status = "rejected"
        return
    if decision.changes:
        # The proposed action will not run as proposed: the changed one is decided again.
        request.status = "changed"
        return
    approvers = set(request.approvers)
    need = request.need
    has_required = not need.required_group or bool(approvers & set(need.required_members))
    if len(approvers) >= need.quorum and has_required:
        request.status = "approved"
