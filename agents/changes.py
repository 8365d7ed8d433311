"""Approve with changes, and the evidence pack of every request. Workflow code.

An approver who approves with changes (e.g. a lower amount) does not grant the changed action
by saying so: the original action gives back its limits, the changed one gets its own action
hash and is decided again by the guard. If the changed action needs approval again, the
approver's signed decision counts for it only if they may decide it (a change that lands in a
tier needing finance still waits for finance). The model hears what was changed and why.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

from countersign.activities.contracts import (
    DECIDE,
    EVIDENCE,
    RELEASE,
    EvidenceInput,
    GuardInput,
    GuardResult,
)
from countersign.agents.state import ActionRecord, ChangedAction, RunState, run_bookkeeping
from countersign.guardrails.approvals import (
    ApprovalRequest,
    Decision,
    DecisionRefused,
    apply_decision,
    check_decision,
    new_request,
    request_id_for,
)
from countersign.guardrails.evidence import EvidencePack
from countersign.guardrails.policy import Proposal
from countersign.guardrails.rendering import change_words


async def gather_evidence(run: RunState, request: ApprovalRequest) -> EvidencePack | None:
    """The request's evidence pack, from the evidence activity (its result lands in history).
    Best effort: without it the request still shows the action, rule and reason."""
    try:
        pack: EvidencePack = await workflow.execute_local_activity(
            EVIDENCE,
            EvidenceInput(
                request_id=request.request_id,
                call_id=request.call_id,
                action_hash=request.action_hash,
                rule_id=request.need.rule_id,
                subject=dict(run.input.subject),
                reason=request.reason,
            ),
            result_type=EvidencePack,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
    except ActivityError as e:
        if isinstance(e.cause, CancelledError):
            raise
        workflow.logger.warning("evidence pack not gathered: %s", e.cause or e)
        return None
    return pack


async def decide_changed(
    run: RunState, request: ApprovalRequest
) -> tuple[GuardResult, ApprovalRequest | None]:
    """The guard's verdict on the action as the approver changed it, and the approval request
    it needs (None when the guard allows or denies it outright)."""
    decision = next(d for d in reversed(request.decisions) if d.changes)
    arguments = {**request.arguments, **decision.changes}
    # The proposed action will not run: its limits go back before the changed one counts.
    await run_bookkeeping(
        RELEASE, request.action_hash, result_type=int, summary="release limits (changed)"
    )
    guarded: GuardResult = await run_bookkeeping(
        DECIDE,
        GuardInput(
            agent=run.agent.name,
            proposal=Proposal(
                call_id=request.call_id,
                tool=request.tool,
                arguments=arguments,
                reason=request.reason,
            ),
            requested_mode=run.input.mode,
            requested_by=run.input.requested_by,
            subject=dict(run.input.subject),
        ),
        result_type=GuardResult,
        summary=f"guard: {request.tool} (changed)",
    )
    v = guarded.verdict
    run.changed[request.call_id] = ChangedAction(
        request_id=request.request_id,
        approver=decision.approver,
        channel=decision.channel,
        comment=decision.comment,
        changes=decision.changes,
        original_arguments=request.arguments,
        original_hash=request.action_hash,
    )
    await run.record(
        "approval.changed",
        {
            "request_id": request.request_id,
            "approver": decision.approver,
            "comment": decision.comment,
            "changes": decision.changes,
            "original": {"arguments": request.arguments, "action_hash": request.action_hash},
            "changed": {
                "arguments": v.arguments,
                "action_hash": v.action_hash,
                "outcome": v.outcome,
                "rule_ids": v.rule_ids,
                "reason": v.reason,
            },
        },
        actor=f"{decision.channel}:{decision.approver}",
    )
    if v.outcome != "needs_approval":
        return guarded, None
    assert v.action_hash is not None
    info = workflow.info()
    follow = new_request(
        workflow_id=info.workflow_id,
        verdict=v,
        reason=request.reason,
        requested_by=run.input.requested_by,
        requester=run.requester,
        agent=run.agent.name,
        now=workflow.now(),
    ).model_copy(
        update={
            "request_id": request_id_for(info.workflow_id, f"{request.call_id}\x00{v.action_hash}"),
            "changed_from": request.request_id,
        }
    )
    # The approver's signed approval of the change counts for the changed action only if
    # they may decide it: a support lead's signature alone never grants a finance tier.
    carried = Decision(
        **decision.model_dump(exclude={"decided_at", "request_id", "action_hash", "changes"}),
        request_id=follow.request_id,
        action_hash=follow.action_hash,
    )
    try:
        check_decision({follow.request_id: follow}, carried)
    except DecisionRefused:
        return guarded, follow
    apply_decision(follow, carried, workflow.now())
    run.unrecorded.append((follow.request_id, follow.decisions[-1]))
    return guarded, follow


def note_change(run: RunState, record: ActionRecord, payload: dict[str, Any]) -> dict[str, Any]:
    """What an action approved with changes records, and what the model hears about it."""
    change = run.changed.get(record.call_id)
    if change is None:
        return payload
    record.changed_from = change.original_arguments
    record.request_id = record.request_id or change.request_id
    record.approved_by = list(dict.fromkeys([change.approver, *record.approved_by]))
    words = change_words(change.original_arguments, change.changes)
    said = f"approved with changes by {change.approver}: {words}" + (
        f" ({change.comment})" if change.comment else ""
    )
    record.detail = f"{said}; {record.detail}" if record.detail else said
    return {
        **payload,
        "approved_with_changes": {
            "by": change.approver,
            "changed": {
                k: {"proposed": change.original_arguments.get(k), "approved": v}
                for k, v in change.changes.items()
            },
            "comment": change.comment,
        },
    }
