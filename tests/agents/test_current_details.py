"""What a person reads in the Temporal UI's Current Details shows money as money."""

from __future__ import annotations

from typing import Any

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.agents.run import AgentRun
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import signed, start_run


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


async def test_current_details_name_a_request_as_soon_as_the_run_reports_it_pending(
    temporal: WorkflowEnvironment, worker: Worker
) -> None:
    """The status query lists a request as pending (and the run takes decisions on it) before
    its audit record and its notices are written, which can take seconds: Current Details says
    the same from that moment, not only once the notices are out."""
    for n in range(8):
        handle = await start_run(
            temporal.client, worker.task_queue, task=f"Refund order A-1002: leak {n}."
        )
        (request,) = await wait_for_pending(handle)
        details = await current_details(handle)
        assert "stage **waiting for approval**" in details, details
        assert f"**Waiting for approval** `{request.request_id}`" in details, details
        # Rejected, not terminated: what the guard reserved goes back (see below).
        await handle.execute_update(
            AgentRun.decide, signed(handle.id, request, "alice", approve=False, comment="seen")
        )
        await handle.result()


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
    details = await current_details(handle)
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
