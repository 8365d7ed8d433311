"""Search attributes: ops find waiting runs by agent, stage, tool and order in the list page."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.converter import decode_typed_search_attributes
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.agents import search_attributes as sa
from countersign.agents.run import AgentRun
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import signed, start_run


async def find_ids(client: Client, query: str, expect: str, seconds: float = 10) -> list[str]:
    """Visibility is eventually consistent: poll until `expect` shows up (or give up)."""
    ids: list[str] = []
    for _ in range(int(seconds / 0.1)):
        ids = [w.id async for w in client.list_workflows(query)]
        if expect in ids:
            return ids
        await asyncio.sleep(0.1)
    return ids


async def test_waiting_run_is_found_by_its_search_attributes_until_decided(
    temporal: WorkflowEnvironment, worker: Worker
) -> None:
    client = temporal.client
    handle = await start_run(client, worker.task_queue, task="Refund order A-1002: it leaks.")
    (request,) = await wait_for_pending(handle)
    waiting = (
        'CountersignWaiting = true AND CountersignAgent = "support-refunds" '
        'AND CountersignTool = "payments.refund" AND CountersignCustomerRef = "A-1002" '
        f'AND WorkflowId = "{handle.id}"'
    )
    assert await find_ids(client, waiting, handle.id) == [handle.id]
    described = (await handle.describe()).typed_search_attributes
    assert described.get(sa.STAGE) == "waiting for approval"

    await handle.execute_update(AgentRun.decide, signed(handle.id, request, "alice"))
    await handle.result()
    done = (
        'CountersignWaiting = false AND CountersignStage = "completed" '
        f'AND WorkflowId = "{handle.id}"'
    )
    assert await find_ids(client, done, handle.id) == [handle.id]
    final = (await handle.describe()).typed_search_attributes
    # The last thing the run did was note the refund in the CRM.
    assert final.get(sa.TOOL) == "crm.add_note"
    assert final.get(sa.CUSTOMER_REF) == "A-1002"

    # The stage as upserted, in order: planning and acting (each within milliseconds, twice a
    # step) are "working"; each change is one history event, and only changes are upserted.
    stages = [
        stage
        async for e in handle.fetch_history_events()
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
        and (
            stage := decode_typed_search_attributes(
                e.upsert_workflow_search_attributes_event_attributes.search_attributes
            ).get(sa.STAGE)
        )
    ]
    assert stages == ["working", "waiting for approval", "working", "completed"]


def test_registration_names_every_key_with_its_type() -> None:
    assert sa.REGISTRATION == {
        "CountersignAgent": "Keyword",
        "CountersignStage": "Keyword",
        "CountersignWaiting": "Bool",
        "CountersignTool": "Keyword",
        "CountersignCustomerRef": "Keyword",
    }
    assert sa.dev_server_args()[:2] == ["--search-attribute", "CountersignAgent=Keyword"]


def test_customer_ref_is_a_business_id_never_contact_data() -> None:
    assert sa.customer_ref(None, {"order_id": "A-1002", "customer_id": "C-200"}) == "A-1002"
    assert sa.customer_ref({}, {"customer_id": "C-200", "fields": {"email": "x@y"}}) == "C-200"
    assert sa.customer_ref({"email": "grace@example.com", "name": "Grace"}) is None
