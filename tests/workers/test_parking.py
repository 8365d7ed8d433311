"""Runs parked on an approval leave the worker's workflow cache (workers/sandbox.py Parking),
and act when their decision arrives, replayed from history."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.settings import Settings
from countersign.workers.worker import build_worker
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run, worker_for


def cached(worker: Worker) -> set[str]:
    """Run ids in the worker's workflow cache (the SDK's own table)."""
    return set(worker._workflow_worker._running_workflows)  # type: ignore[union-attr]


async def until_evicted(worker: Worker, run_id: str) -> None:
    for _ in range(100):
        if run_id not in cached(worker):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} is still cached")


async def test_a_parked_run_is_evicted_and_acts_on_its_decision(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    task_queue: str,
    shop: Shop,
) -> None:
    before = len(shop.refunds("A-1002"))
    evicting = settings.model_copy(update={"evict_parked_max_events": 100})
    async with build_worker(temporal.client, evicting, runtime, task_queue=task_queue) as worker:
        handle = await start_run(
            temporal.client, task_queue, task="Refund order A-1002: machine leaks."
        )
        (request,) = await wait_for_pending(handle)
        run_id = (await handle.describe()).run_id
        await until_evicted(worker, run_id)
        # A query replays it and it leaves again.
        assert (await handle.query(AgentRun.status)).stage == "waiting for approval"
        await until_evicted(worker, run_id)

        receipt = await handle.execute_update(AgentRun.decide, signed(handle.id, request, "alice"))
        assert receipt.status == "approved"
        result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.approved_by == ["alice"]
    assert len(shop.refunds("A-1002")) == before + 1


@pytest.mark.parametrize("max_events", [0, 10], ids=["off", "history-too-long"])
async def test_parked_runs_stay_cached(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    task_queue: str,
    max_events: int,
) -> None:
    kept = settings.model_copy(update={"evict_parked_max_events": max_events})
    async with worker_for(temporal.client, kept, runtime, task_queue) as worker:
        handle = await start_run(
            temporal.client, task_queue, task="Refund order A-1002: machine leaks."
        )
        await wait_for_pending(handle)
        await asyncio.sleep(0.5)
        assert (await handle.describe()).run_id in cached(worker)
        await handle.terminate("test done")
