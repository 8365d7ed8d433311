"""What a person reads in the Temporal UI's Current Details shows money as money."""

from __future__ import annotations

import asyncio

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.agents.run import AgentRun
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import signed, start_run


async def test_current_details_show_the_waiting_refund_in_money(
    temporal: WorkflowEnvironment, worker: Worker
) -> None:
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        task="Refund order A-1006: the glass kettle cracked.",
        context={"order_id": "A-1006"},
    )
    (request,) = await wait_for_pending(handle, 1)
    for _ in range(100):  # the details change once the request is announced
        metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        details = metadata.current_details
        if "Waiting for approval" in details:
            break
        await asyncio.sleep(0.1)
    assert (
        f"**Waiting for approval** `{request.request_id}`: "
        "`payments.refund(order_id=A-1006, amount=129.00 USD, reason=" in details
    ), details
    assert "amount_cents" not in details
    # Rejected, not terminated: the rejection releases what the guard reserved against the
    # customer's limits, which later tests in this session count on.
    await handle.execute_update(
        AgentRun.decide, signed(handle.id, request, "alice", approve=False, comment="seen")
    )
    await handle.result()
