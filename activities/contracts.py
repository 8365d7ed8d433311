"""Inputs and outputs of the activities, as workflow code sees them.

Pure pydantic models with no I/O imports, so the workflow imports them inside its sandbox
and calls activities by name. The activity modules (which import httpx, openai, sqlite)
never enter workflow code.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from countersign.guardrails.approvals import ApprovalRequest, ChangeBound
from countersign.guardrails.identity import Envelope, Verified
from countersign.guardrails.policy import Authority, Mode, Proposal, Verdict

# Activity names, the one place they are spelled.
PLAN = "model.plan"
DECIDE = "guard.decide"
RECORD = "audit.record"
NOTIFY = "notify.approval"
RELEASE = "guard.release"
VERIFY = "identity.verify"
MODEL_BOUNDS = "model.bounds"
RECONCILE = "tool.reconcile"
EVIDENCE = "evidence.gather"


class GuardContext(BaseModel):
    """What the guard decides a run's proposals with, besides the proposal itself."""

    requested_mode: Mode | None
    requested_by: str
    # The run's validated subject (fields declared by the agent).
    subject: dict[str, str] = {}
    # Set (since the reads-in-model-call patch): the model call also executes the reads the
    # guard allows (PlanOutput.reads). Left out when False, so earlier inputs encode the same.
    reads: bool = Field(default=False, exclude_if=lambda v: not v)


class PlanInput(BaseModel):
    agent: str
    task: str
    context: dict[str, Any]
    # Messages already in the run's transcript; `new_messages` are appended from there.
    seq: int
    new_messages: list[dict[str, Any]]
    step: int
    # Set (since the guard-in-model-call patch): the activity also decides every proposal of
    # the reply with the guard's own code and returns the verdicts (PlanOutput.verdicts), so
    # they land in history without a guard activity of their own. Left out when None, so
    # inputs recorded before it existed encode as they did.
    guard: GuardContext | None = Field(default=None, exclude_if=lambda v: v is None)
    # Read-ahead (AgentSpec.read_ahead): after a reply whose every call is a read the guard
    # allowed and this call executed, take up to this many more steps here (PlanOutput.ahead),
    # within `tokens_left`. Left out when 0, so inputs recorded before it encode the same.
    ahead: int = Field(default=0, ge=0, exclude_if=lambda v: not v)
    tokens_left: int | None = Field(default=None, exclude_if=lambda v: v is None)


def tool_message(call_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A tool call's result as the transcript keeps it and the model is sent it.

    What a step sends is compared by digest with what a step taken ahead sent (sent_digest):
    a change to this format, to result_payload, or to what a graph sends (agents/guarded.py
    `_openai_message`) turns recorded steps taken ahead into model calls on replay. It needs
    a patch, like any change to the commands a run makes."""
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(payload)}


def sent_digest(seq: int, new_messages: list[dict[str, Any]]) -> str:
    """What a step sent the model on top of the transcript: where it appended, and what."""
    body = json.dumps([seq, new_messages], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


class ModelBounds(BaseModel):
    """How the model activity may run, from worker settings (workflow code reads none).
    The defaults are what runs used before these were settings."""

    start_to_close_seconds: float = 120.0
    # The activity heartbeats while the call runs: a dead worker is noticed after this long.
    heartbeat_seconds: float | None = None
    max_attempts: int = 4


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class PlanOutput(BaseModel):
    content: str
    proposals: list[Proposal]
    finish_reason: str
    model: str
    usage: Usage
    seq: int
    # Set when the model's replies were refused (cut off, filtered, oversized, duplicate call
    # ids ...) even after one more try: nothing of them executes and the run stops, saying why.
    refused: str | None = None
    # The guard's result on each proposal, in the same order, when PlanInput.guard was set
    # (else empty). Left out when empty, so results recorded before it decode as they were.
    verdicts: list[GuardResult] = Field(default_factory=list, exclude_if=lambda v: not v)
    # The allowed reads the model call executed (GuardContext.reads), by action hash; a read
    # it could not execute is not here (the workflow runs it). Left out when empty, too.
    reads: dict[str, ToolOutcome] = Field(default_factory=dict, exclude_if=lambda v: not v)
    # Read-ahead (PlanInput.ahead): the steps this call took after this one, in order, each
    # with its step number and `sent` (sent_digest of what it appended to the transcript). The
    # workflow takes each one only if its own step would send exactly that.
    ahead: list[PlanOutput] = Field(default_factory=list, exclude_if=lambda v: not v)
    step: int | None = Field(default=None, exclude_if=lambda v: v is None)
    sent: str | None = Field(default=None, exclude_if=lambda v: v is None)


class GuardInput(BaseModel):
    agent: str
    proposal: Proposal
    requested_mode: Mode | None
    requested_by: str
    # The run's validated subject (fields declared by the agent).
    subject: dict[str, str] = {}


class GuardResult(BaseModel):
    verdict: Verdict
    # How the tool activity may run, from worker settings (so workflow code reads none).
    tool_timeout_seconds: float
    tool_max_attempts: int
    # Side effects heartbeat while they run, so a dead worker is noticed after this long
    # rather than after the whole timeout (None: runs decided before this was a setting).
    tool_heartbeat_seconds: float | None = None
    # A read-only tool runs as a local activity (see agents.graph.execute_action). Recorded
    # here, not looked up by the workflow, so replay follows what the run did.
    tool_read_only: bool = False
    # Arguments an approver may change, and how (the tool's declaration, recorded here).
    approver_may_change: dict[str, ChangeBound] = {}


class EvidenceInput(BaseModel):
    """What the evidence activity needs to gather one request's pack (guardrails/evidence)."""

    request_id: str
    call_id: str
    action_hash: str
    rule_id: str
    subject: dict[str, str]
    # This call's own stated reason (the agent's claim).
    reason: str


class RecordInput(BaseModel):
    """An audit record for something that happened in workflow code."""

    kind: str
    actor: str
    data: dict[str, Any]
    # Distinguishes several records of one kind written by one activity.
    n: int = 0


class ApprovalNotice(BaseModel):
    """Tell approvers about a request: it opened, it still waits (a reminder), or it settled."""

    event: Literal["requested", "reminder", "settled"]
    workflow_id: str
    agent: str
    task: str
    request: ApprovalRequest


class ToolCall(BaseModel):
    """The input of every tool activity: one authorized action."""

    tool: str
    call_id: str
    arguments: dict[str, Any]
    action_hash: str
    agent: str


class Compensation(BaseModel):
    """The call that undoes an executed action, computed when the action ran."""

    tool: str
    arguments: dict[str, Any]


class ToolOutcome(BaseModel):
    tool: str
    call_id: str
    idempotency_key: str
    result: dict[str, Any]
    compensation: Compensation | None = None


class Reconciliation(BaseModel):
    """What the system of record says, asked under the action's idempotency key, about a side
    effect whose activity failed without a definite answer (timeout, lost answer, retries
    exhausted): it happened (with its result), it did not, or nobody can tell."""

    status: Literal["executed", "not_executed", "unknown"]
    outcome: ToolOutcome | None = None
    detail: str = ""


class VerifyInput(BaseModel):
    """A signed statement to check against the live identity directory; with `authority`,
    the proven identity must also be in a group the active policy names for it."""

    envelope: Envelope
    authority: Authority | None = None


class VerifyResult(BaseModel):
    """Who the statement proves (recorded in history, so replay needs no directory), or why
    it proves nothing."""

    verified: Verified | None = None
    refused: str | None = None


PlanOutput.model_rebuild()  # its verdicts and reads are defined after it


def result_payload(outcome: ToolOutcome) -> dict[str, Any]:
    """What the model is sent of an executed tool call's outcome."""
    return {"result": outcome.result}


def reserved_by(g: GuardResult) -> str | None:
    """The action hash whose limits a verdict reserved, or None (denied, shadow: nothing)."""
    v = g.verdict
    return v.action_hash if v.outcome in ("allow", "needs_approval") else None


def unused_reservations(
    verdicts: list[GuardResult], reads: dict[str, ToolOutcome] | None
) -> list[str]:
    """What `verdicts` reserved for actions that will not happen as decided: all but the
    reads that ran (in `reads`; None: not known, so every read keeps its reservation)."""
    return [
        h
        for g in verdicts
        if (h := reserved_by(g))
        and not (g.tool_read_only and (reads is None or read_for(g, reads) is not None))
    ]


def read_for(g: GuardResult, reads: dict[str, ToolOutcome]) -> ToolOutcome | None:
    """The outcome of the read the model call executed under exactly this allow verdict, or
    None (the workflow runs the call itself). A read undoes nothing: an outcome with a
    compensation is no read's."""
    v = g.verdict
    if not (g.tool_read_only and v.outcome == "allow" and v.action_hash):
        return None
    read = reads.get(v.action_hash)
    if read is None or (read.call_id, read.tool, read.compensation) != (v.call_id, v.tool, None):
        return None
    return read


def read_results(out: PlanOutput) -> list[dict[str, Any]] | None:
    """The tool messages the workflow sends the model after `out` when every call of it is a
    read the guard allowed and the model call executed; None when it has anything else to do
    (a side effect, a denial, a failed read, the answer)."""
    if out.refused or not out.proposals or len(out.verdicts) != len(out.proposals):
        return None
    results = []
    for p, g in zip(out.proposals, out.verdicts, strict=True):
        read = read_for(g, out.reads)
        if read is None or g.verdict.call_id != p.call_id:
            return None
        results.append(tool_message(p.call_id, result_payload(read)))
    return results
