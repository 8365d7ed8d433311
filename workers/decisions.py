"""Sending an approver's decision to a run: one path for the CLI, the demo, and later the
chat and email gateway."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from agents.state import RunStatus
from guardrails.approvals import ApprovalRequest, Decision, DecisionReceipt
from guardrails.audit import AuditStore


async def wait_for_requests(
    handle: WorkflowHandle[Any, Any], count: int = 1, seconds: float = 30
) -> list[ApprovalRequest]:
    """Poll the run's `status` query until `count` approval requests are pending."""
    deadline = time.monotonic() + seconds
    stage = "unknown"
    while time.monotonic() < deadline:
        try:
            status = await handle.query("status", result_type=RunStatus)
        except RPCError:  # under load a query can time out behind the run's tasks: ask again
            await asyncio.sleep(0.2)
            continue
        if len(status.pending_approvals) >= count:
            return status.pending_approvals
        stage = status.stage
        await asyncio.sleep(0.05)
    raise TimeoutError(
        f"{handle.id}: {count} pending approval request(s) expected after {seconds:.0f}s "
        f"(stage {stage})"
    )


class DecisionRefusedError(Exception):
    """The run refused the decision; the message says why."""


def update_id(decision: Decision) -> str:
    # One decision per approver and request: a double click or a retried delivery is the same
    # Update, which Temporal accepts once.
    return (
        f"{decision.request_id}:{decision.approver}:{'approve' if decision.approve else 'reject'}"
    )


async def send_decision(
    client: Client, workflow_id: str, decision: Decision, audit: AuditStore | None = None
) -> DecisionReceipt:
    """Send a decision as a Temporal Update; a refusal raises and, given a store, is audited.

    A refused Update leaves nothing in workflow history, so the sender records it.
    """
    handle = client.get_workflow_handle(workflow_id)
    try:
        return await handle.execute_update(
            "decide", decision, id=update_id(decision), result_type=DecisionReceipt
        )
    except WorkflowUpdateFailedError as e:
        reason = str(e.cause) if e.cause else str(e)
        if audit is not None:
            await audit.append(
                record_id=f"refused/{uuid.uuid4().hex}",
                workflow_id=workflow_id,
                run_id="",
                kind="approval.refused",
                actor=f"{decision.channel}:{decision.approver}",
                data={
                    **decision.model_dump(mode="json"),
                    "reason": reason,
                    "at": datetime.now(UTC).isoformat(),
                },
            )
        raise DecisionRefusedError(reason) from e
