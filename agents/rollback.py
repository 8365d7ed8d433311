"""Rollback: undo a run's executed actions, newest first (saga compensation).

Each compensation is itself a proposal: the guard decides it (the policy must permit the
compensating tool), the tool activity executes it with its own idempotency key, and both are
audited. Actions without a compensating tool are irreversible: reported, never skipped quietly.
Workflow code: deterministic, every I/O an activity.
"""

from __future__ import annotations

from temporalio.exceptions import ActivityError

from countersign.agents.graph import decide_proposal, execute_action, release_limits
from countersign.agents.state import ActionRecord, RunState
from countersign.guardrails.policy import Proposal


async def compensate(run: RunState, reason: str) -> list[str]:
    """Undo every executed, reversible action in reverse order; return the irreversible ones.

    Requests still waiting for a decision will never be acted on: their limits go back.
    """
    irreversible = []
    run.show("compensating")
    for request in run.pending():
        request.status = "rejected"
        await release_limits(request.action_hash)
    for action in reversed(run.actions):
        if action.status == "unknown":
            # Nothing to undo that anyone can name: a person must look (see its audit record).
            irreversible.append(f"{action.tool} {action.call_id} (outcome unknown)")
            continue
        if action.status != "executed" or action.read_only:
            continue
        if action.compensation is None:
            irreversible.append(f"{action.tool} {action.call_id}")
            await run.record(
                "compensation.impossible",
                {"call_id": action.call_id, "tool": action.tool, "reason": reason},
            )
            continue
        undo = action.compensation
        proposal = Proposal(
            call_id=f"undo-{action.call_id}",
            tool=undo.tool,
            arguments=undo.arguments,
            reason=f"compensation for {action.tool} {action.call_id}: {reason}",
        )
        g = await decide_proposal(run, proposal)
        record = ActionRecord(
            call_id=proposal.call_id,
            tool=undo.tool,
            arguments=undo.arguments,
            status="denied",
            rule_ids=g.verdict.rule_ids,
            detail=g.verdict.reason,
        )
        if g.verdict.outcome == "allow":
            try:
                await execute_action(run, g, record)
            except ActivityError as e:
                # Keep undoing the rest; this one is reported as not undone.
                record.status = "failed"
                record.detail = str(e.cause or e)
        await run.record(
            "compensation.executed" if record.status == "executed" else "compensation.blocked",
            {
                "call_id": action.call_id,
                "tool": action.tool,
                "undo": undo.model_dump(),
                "outcome": record.status,
                "detail": record.detail,
                "reason": reason,
            },
        )
        if record.status == "executed":
            # An undone action no longer counts against the limits it used.
            await release_limits(action.action_hash)
            action.status = "compensated"
            action.detail = f"undone by {undo.tool}: {reason}"
        else:
            irreversible.append(f"{action.tool} {action.call_id} (undo {record.status})")
    return irreversible
