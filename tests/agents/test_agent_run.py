"""AgentRun on the real dev server: the guarded loop, approvals, and bad input."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput, parse_run_input
from countersign.workers.decisions import wait_for_requests
from tests.conftest import Shop, signed, start_run


async def wait_for_pending(handle, count: int = 1):
    return await wait_for_requests(handle, count)


async def test_small_refund_is_automatic(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1004: the sampler was stale."
    )
    result = await handle.result()
    assert result.status == "completed"
    executed = {a.tool: a for a in result.actions if a.status == "executed"}
    assert set(executed) == {"orders.lookup", "knowledge.search", "payments.refund", "crm.add_note"}
    assert executed["payments.refund"].arguments["amount_cents"] == 2500
    refunds = shop.refunds("A-1004")
    assert [r["amount_cents"] for r in refunds] == [2500]
    assert refunds[0]["refund_id"] == executed["payments.refund"].result["refund_id"]


async def test_refund_above_threshold_waits_for_approval_then_executes(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop
) -> None:
    before = len(shop.refunds("A-1002"))
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: machine leaks."
    )
    (request,) = await wait_for_pending(handle)
    assert request.tool == "payments.refund"
    assert request.arguments["amount_cents"] == 18900
    assert request.rule_ids == ["refund.over_50"]
    # Nothing is executed while the request waits.
    await asyncio.sleep(0.5)
    assert len(shop.refunds("A-1002")) == before

    receipt = await handle.execute_update(
        AgentRun.decide,
        signed(handle.id, request, "alice"),
    )
    assert receipt.status == "approved"
    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed"
    assert refund.approved_by == ["alice"]
    assert len(shop.refunds("A-1002")) == before + 1


async def test_agent_without_refund_scope_can_never_refund(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop
) -> None:
    before = len(shop.refunds("A-1001"))
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        agent="support-readonly",
        task="Refund order A-1001: teapot cracked.",
    )
    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "denied"
    assert refund.rule_ids == ["scope.not_granted"]
    assert len(shop.refunds("A-1001")) == before


async def test_hallucinated_tool_and_malformed_arguments_go_back_to_the_model(
    temporal: WorkflowEnvironment, worker: Worker
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Please hallucinate a wire transfer."
    )
    result = await handle.result()
    assert result.status == "completed_with_refusals"
    assert [(a.tool, a.status, a.rule_ids) for a in result.actions] == [
        ("payments.wire_transfer", "denied", ["tool.unknown"]),
        ("payments.refund", "denied", ["arguments.invalid"]),
    ]
    assert "not valid JSON" in result.actions[1].detail


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"agent": "support-refunds", "requested_by": "dana"}, "task"),
        ({"agent": "nobody", "task": "Refund A-1001", "requested_by": "dana"}, "agent"),
        (
            {"agent": "support-refunds", "task": "Refund", "requested_by": "dana", "mode": "yolo"},
            "mode",
        ),
        ("just a string", "(input)"),
        (
            {
                "agent": "crm-updates",
                "task": "Fix C-100",
                "requested_by": "dana",
                "subject": {"order_id": "A-1001"},
            },
            "subject.order_id: agent 'crm-updates' takes no subject field",
        ),
        (
            {
                "agent": "support-refunds",
                "task": "Refund",
                "requested_by": "dana",
                "subject": {"order_id": "A1001"},
            },
            "subject.order_id: 'A1001' does not match",
        ),
        (
            {
                "agent": "support-refunds",
                "task": "Refund",
                "requested_by": "dana",
                "subject": {"order_id": "A-1001"},
                "context": {"order_id": "A-1002"},
            },
            "subject.order_id: 'A-1001' differs from context.order_id 'A-1002'",
        ),
    ],
)
async def test_invalid_run_input_fails_fast_naming_the_field(
    temporal: WorkflowEnvironment, worker: Worker, payload, field: str
) -> None:
    handle = await temporal.client.start_workflow(
        "AgentRun",
        payload,
        id=f"bad-{uuid.uuid4().hex}",
        task_queue=worker.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as e:
        await asyncio.wait_for(handle.result(), timeout=10)
    message = str(e.value.cause)
    assert "invalid run input" in message and field in message


def test_subject_fields_in_context_count_as_the_subject_and_sign_the_same() -> None:
    """Older inputs name the order in `context`: it becomes the subject at validation, so the
    digest a requester signs (countersign start) is the one the run checks."""
    typed = RunInput(
        agent="support-refunds",
        task="Refund A-1001",
        requested_by="dana",
        context={"order_id": "A-1001", "note": "vip"},
    )
    assert typed.subject == {"order_id": "A-1001"}
    parsed = parse_run_input(typed.model_dump(mode="json"))
    assert parsed.subject == {"order_id": "A-1001"} and parsed.digest() == typed.digest()
