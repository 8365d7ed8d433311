"""Unknown outcomes: when a side effect's activity fails without a definite answer, the run asks
the system of record under the same idempotency key before calling the action failed, and
every failure is audited with its cause."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.settings import Settings
from countersign.workers.stats import Stats, compute_stats, format_stats
from countersign.workers.worker import build_worker
from tests.conftest import Shop, start_run
from tests.e2e.test_cli import countersign


@pytest.fixture
async def impatient_worker(
    temporal: WorkflowEnvironment, settings: Settings, task_queue: str
) -> AsyncIterator[tuple[Worker, Runtime]]:
    """A worker whose tool calls give up quickly: 2 attempts of 2 s each."""
    impatient = settings.model_copy(
        update={"tool_start_to_close_seconds": 2, "tool_max_attempts": 2}
    )
    runtime = Runtime.from_settings(impatient)
    async with build_worker(temporal.client, impatient, runtime, task_queue=task_queue) as w:
        yield w, runtime


def run_stats(runtime: Runtime, workflow_id: str) -> Stats:
    trail = runtime.audit.for_run(workflow_id)
    return compute_stats(trail, since=trail[0].at, until=trail[-1].at, prices={})


def records(runtime: Runtime, workflow_id: str, kind: str, tool: str | None = None) -> list[dict]:
    return [
        r.data
        for r in runtime.audit.for_run(workflow_id)
        if r.kind == kind and tool in (None, r.data.get("tool"))
    ]


async def test_a_refund_committed_after_its_timeout_is_reconciled_as_executed(
    temporal: WorkflowEnvironment, impatient_worker: tuple[Worker, Runtime], shop: Shop
) -> None:
    worker, runtime = impatient_worker
    # The shop commits every refund but answers only after the tool has given up.
    shop.faults(latency_ms=6000, latency_after_commit=True, path_prefix="/refunds", method="POST")
    try:
        handle = await start_run(
            temporal.client, worker.task_queue, task="Refund order A-1004: the sampler was stale."
        )
        result = await handle.result()
    finally:
        shop.clear_faults()
    assert result.status == "completed"
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    (made,) = shop.refunds("A-1004")
    assert refund.status == "executed" and refund.result["refund_id"] == made["refund_id"]
    assert refund.compensation is not None  # undoable, like any executed refund
    assert "reconciled after: timed out after 2 attempts" in refund.detail
    (executed,) = records(runtime, handle.id, "action.executed", "payments.refund")
    assert executed["reconciled"] is True and executed["result"]["refund_id"] == made["refund_id"]
    # Counted: the reservation stays.
    assert not records(runtime, handle.id, "limits.released")


async def test_a_refund_the_shop_never_made_fails_with_its_cause_and_gives_back_its_limits(
    temporal: WorkflowEnvironment, impatient_worker: tuple[Worker, Runtime], shop: Shop
) -> None:
    worker, runtime = impatient_worker
    shop.faults(fail_status=503, fail_count=100, path_prefix="/refunds", method="POST")
    try:
        handle = await start_run(
            temporal.client, worker.task_queue, task="Refund order A-1004: the sampler was stale."
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    finally:
        shop.clear_faults()
    assert shop.refunds("A-1004") == []
    (failed,) = records(runtime, handle.id, "action.failed")
    assert failed["tool"] == "payments.refund"
    assert failed["cause"]["kind"] == "system_unavailable" and failed["cause"]["attempts"] == 2
    assert "no action under" in failed["reconciliation"]
    (released,) = records(runtime, handle.id, "limits.released")
    assert released["action_hash"] == failed["action_hash"]
    (ended,) = records(runtime, handle.id, "run.compensated")
    assert ended["cause"]["kind"] == "system_unavailable"
    assert ended["reason"].startswith(
        "run failed: system unavailable after 2 attempts (payments.refund): "
    )
    assert "503" in ended["reason"]
    # `stats` groups by the same causes.
    stats = run_stats(runtime, handle.id)
    assert stats.runs_failed == 1 and stats.failure_causes == {"system_unavailable": 2}


async def test_a_refund_nobody_can_account_for_stays_unknown_and_keeps_its_limits(
    temporal: WorkflowEnvironment, impatient_worker: tuple[Worker, Runtime], shop: Shop
) -> None:
    worker, runtime = impatient_worker
    # The shop is down for refunds: the refund and the question about it both fail.
    shop.faults(fail_status=503, fail_count=100, path_prefix="/refunds")
    try:
        handle = await start_run(
            temporal.client, worker.task_queue, task="Refund order A-1004: the sampler was stale."
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    finally:
        shop.clear_faults()
    (unknown,) = records(runtime, handle.id, "action.unknown")
    assert unknown["tool"] == "payments.refund" and "asking failed too" in unknown["reconciliation"]
    assert not records(runtime, handle.id, "action.failed")
    assert not records(runtime, handle.id, "limits.released")  # may be money that left
    (ended,) = records(runtime, handle.id, "run.compensated")
    assert any("outcome unknown" in item for item in ended["irreversible"])
    status = await handle.query(AgentRun.status)
    refund = next(a for a in status.actions if a.tool == "payments.refund")
    assert refund.status == "unknown" and "whether it happened is unknown" in refund.detail
    stats = run_stats(runtime, handle.id)
    assert stats.actions_unknown == 1 and "NEEDS ATTENTION   1 action(s)" in format_stats(stats)
    assert stats.failure_causes == {"system_unavailable": 2}

    # `countersign status` says the same (the worker answers the query meanwhile).
    shown = await asyncio.to_thread(
        countersign,
        {
            "COUNTERSIGN_STATE_DIR": str(runtime.settings.state_dir),
            "COUNTERSIGN_TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
        },
        "status",
        handle.id,
    )
    assert shown.returncode == 0, shown.stderr
    assert "unknown   payments.refund" in shown.stdout and "NEEDS ATTENTION: 1" in shown.stdout
    assert "FAILED: run failed: system unavailable after 2 attempts" in shown.stdout
