"""Durability: workers die, decisions arrive while nobody runs, timers fire while nobody waits."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateStage
from temporalio.testing import WorkflowEnvironment

from countersign.activities.runtime import Runtime
from countersign.agents import search_attributes
from countersign.settings import Settings
from countersign.workers.codec import data_converter
from countersign.workers.devstack import Service, start_service
from countersign.workers.worker import build_worker, ensure_search_attributes
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run


def worker_process(temporal: WorkflowEnvironment, settings: Settings, queue: str) -> Service:
    """A real worker process, as ops would run it, against the test server."""
    target = temporal.client.service_client.config.target_host
    service = start_service(
        f"worker-{uuid.uuid4().hex[:6]}",
        [sys.executable, "-m", "countersign.workers", "worker"],
        settings.state_dir / "logs",
        env={
            "COUNTERSIGN_TEMPORAL_ADDRESS": target,
            "COUNTERSIGN_TASK_QUEUE": queue,
            "COUNTERSIGN_STATE_DIR": str(settings.state_dir),
            "COUNTERSIGN_OPENAI_BASE_URL": settings.openai_base_url,
            "COUNTERSIGN_SYSTEMS__SHOP__URL": settings.systems["shop"].url,
            "COUNTERSIGN_SYSTEMS__SHOP__CREDENTIAL": "shop",
            "COUNTERSIGN_TOOL_START_TO_CLOSE_SECONDS": "3",
            # as in-process test workers (activation: test_policy_activation)
            "COUNTERSIGN_REQUIRE_POLICY_ACTIVATION": "false",
        },
    )
    return service


async def wait_for(predicate, what: str, seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
async def test_killed_workers_lose_no_decision_and_refund_exactly_once(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    shop: Shop,
    task_queue: str,
) -> None:
    before = len(shop.refunds("A-1005"))
    first = worker_process(temporal, settings, task_queue)
    handle = await start_run(
        temporal.client, task_queue, task="Refund order A-1005: chair squeaks."
    )
    (request,) = await wait_for_pending(handle)
    assert request.need.quorum == 2  # 649.00: two approvers, one from finance

    # The worker dies while the run waits; decisions sent meanwhile are not lost.
    first.kill()
    updates = [
        asyncio.create_task(
            temporal.client.get_workflow_handle(handle.id).start_update(
                "decide",
                signed(handle.id, request, who),
                wait_for_stage=WorkflowUpdateStage.COMPLETED,
            )
        )
        for who in ("bob", "carol")
    ]
    # The refund will be committed by the shop, but its answer is held back long enough for
    # the next worker to die mid-call.
    shop.faults(latency_ms=4000, latency_after_commit=True, path_prefix="/refunds")
    second = worker_process(temporal, settings, task_queue)
    try:
        await asyncio.wait_for(asyncio.gather(*updates), timeout=30)
        await wait_for(lambda: len(shop.refunds("A-1005")) == before + 1, "the refund commit")
        second.kill()
    finally:
        second.stop()
        shop.clear_faults()

    async with build_worker(
        temporal.client,
        settings,
        runtime,
        task_queue=task_queue,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
    ):
        result = await asyncio.wait_for(handle.result(), timeout=60)
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed"
    assert sorted(refund.approved_by) == ["bob", "carol"]
    refunds = shop.refunds("A-1005")
    assert len(refunds) == before + 1
    assert refunds[-1]["refund_id"] == refund.result["refund_id"]


@pytest.fixture(scope="module")
async def time_skipping(settings: Settings) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
        data_converter=data_converter(settings),
    )
    # The test server has no flag for them; the worker's start-up check registers them.
    assert await ensure_search_attributes(env.client) == sorted(search_attributes.REGISTRATION)
    yield env
    await env.shutdown()


async def test_approval_timeout_ends_in_a_recorded_rejection(
    time_skipping: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    shop: Shop,
    task_queue: str,
) -> None:
    before = len(shop.refunds("A-1011"))
    async with build_worker(time_skipping.client, settings, runtime, task_queue=task_queue):
        handle = await start_run(
            time_skipping.client,
            task_queue,
            task="Refund order A-1011: nobody answers.",
            execution_timeout=None,
        )
        # Waiting for the result lets the test server skip the 4-hour approval timer.
        result = await asyncio.wait_for(handle.result(), timeout=60)
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "expired"
    assert "expired without a decision" in refund.detail
    assert len(shop.refunds("A-1011")) == before
    # Unanswered, the request escalated once to the duty managers, then expired.
    (escalated,) = runtime.audit.find(handle.id, "approval.escalated")
    assert escalated.data["to"] == "duty-managers" and "erin" in escalated.data["eligible"]
    (expired,) = runtime.audit.find(handle.id, "approval.expired")
    assert expired.data["request_id"] == refund.request_id
    assert expired.data["outcome"] == "rejected"
    assert runtime.audit.find(handle.id, "approval.granted") == []
