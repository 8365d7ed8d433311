"""What people send to runs, signed with their own keys: decisions (the CLI, the demo, the
gateway's attestations), rollbacks, and signed starts."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from countersign.agents.state import RollbackRequest, RunInput, RunResult, RunStatus
from countersign.guardrails.approvals import ApprovalRequest, DecisionReceipt
from countersign.guardrails.identity import Channel, Envelope, Signer
from countersign.guardrails.policy import sha256_hex
from countersign.workers.identities import signer_for


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


def sign_decision(
    signer: Signer,
    workflow_id: str,
    request_id: str,
    action_hash: str,
    *,
    approve: bool,
    comment: str = "",
    channel: Channel = "cli",
    identity: str | None = None,
    lifetime: timedelta = timedelta(minutes=10),
    changes: dict[str, Any] | None = None,
) -> Envelope:
    """A decision on exactly this request and action, signed by `signer` (a person's own key;
    or the gateway's, attesting `identity` it verified on `channel`). `changes`: approve with
    these arguments changed (signed with the rest, as the statement's claims)."""
    return signer.sign(
        purpose="decision",
        channel=channel,
        now=datetime.now(UTC),
        lifetime=lifetime,
        identity=identity,
        workflow_id=workflow_id,
        request_id=request_id,
        action_hash=action_hash,
        approve=approve,
        comment=comment,
        claims={"changes": changes} if changes else {},
    )


def update_id(envelope: Envelope) -> str:
    # One decision per approver and request: a double click or a retried delivery is the same
    # Update, which Temporal accepts once.
    # A decision with changes is its own Update: a refused change, corrected, is sent anew.
    s = envelope.statement
    verb = "approve" if s.approve else "reject"
    changes = s.claims.get("changes")
    suffix = f":changes-{sha256_hex(changes)[:12]}" if changes else ""
    return f"{s.request_id}:{s.identity}:{verb}{suffix}"


async def send_decision(client: Client, workflow_id: str, envelope: Envelope) -> DecisionReceipt:
    """Send a signed decision as a Temporal Update; a refusal raises DecisionRefusedError.

    The run itself audits every refusal (and shows it in Current Details)."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        return await handle.execute_update(
            "decide", envelope, id=update_id(envelope), result_type=DecisionReceipt
        )
    except WorkflowUpdateFailedError as e:
        raise DecisionRefusedError(str(e.cause) if e.cause else str(e)) from e
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            settled = await _settled_in_result(client, workflow_id, envelope.statement.request_id)
            raise DecisionRefusedError(
                f"no open run {workflow_id!r}: {e.message}" + (f"; {settled}" if settled else "")
            ) from e
        raise


async def _settled_in_result(client: Client, workflow_id: str, request_id: str) -> str | None:
    """How an ended run settled `request_id`, from its result (the decision came too late:
    another approver's answer, or the expiry, ended it first); None if it does not say."""
    try:
        ended = client.get_workflow_handle(workflow_id, result_type=RunResult)
        result = await asyncio.wait_for(ended.result(), timeout=5)
    except Exception:  # failed, cancelled, continued, unreadable: the plain refusal stands
        return None
    for a in result.actions:
        if a.request_id == request_id:
            if a.status in ("rejected", "expired"):
                return f"approval request {request_id} is already {a.status}"
            if a.approved_by:
                by = ", ".join(a.approved_by)
                return f"approval request {request_id} is already approved (by {by})"
    return None


async def decide_as(
    client: Client,
    workflow_id: str,
    request: ApprovalRequest,
    identity: str,
    *,
    approve: bool = True,
    comment: str = "",
    changes: dict[str, Any] | None = None,
) -> DecisionReceipt:
    """Decide as `identity`, signing with its key in this keyring (the CLI's path)."""
    envelope = sign_decision(
        signer_for(identity),
        workflow_id,
        request.request_id,
        request.action_hash,
        approve=approve,
        comment=comment,
        changes=changes,
    )
    return await send_decision(client, workflow_id, envelope)


def rollback_request(signer: Signer, workflow_id: str, reason: str) -> RollbackRequest:
    """A rollback of `workflow_id` for `reason`, signed by the operator's own key."""
    proof = signer.sign(
        purpose="rollback",
        channel="cli",
        now=datetime.now(UTC),
        workflow_id=workflow_id,
        claims={"reason": reason},
    )
    return RollbackRequest(requested_by=signer.identity, reason=reason, proof=proof)


def signed_start(signer: Signer, workflow_id: str, run_input: RunInput) -> RunInput:
    """`run_input` with its requester's signed start statement, bound to this run and input
    (what `countersign start` sends; the run then knows its requester, not just a name)."""
    proof = signer.sign(
        purpose="start",
        channel="cli",
        now=datetime.now(UTC),
        workflow_id=workflow_id,
        claims={"input": run_input.digest()},
    )
    return run_input.model_copy(update={"requester_proof": proof})
