"""The audit trail of real runs: every record names the Temporal event behind it, and the
PostgreSQL backend carries a whole approval flow exactly as SQLite does."""

from __future__ import annotations

import dataclasses

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.guardrails.audit_stores import open_store
from countersign.settings import Settings
from countersign.workers.replay import activities_in
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run, worker_for


async def test_every_record_names_the_activity_event_that_wrote_it(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1007: event ids."
    )
    await handle.result()
    history = await handle.fetch_history()
    written_by = {(a.local, a.activity_id): a for a in activities_in(history)}
    records = runtime.audit.for_run(handle.id)
    assert len(records) >= 10
    for r in records:
        assert r.run_id == history.run_id
        activity = written_by[r.event.get("local", False), r.event["activity_id"]]
        assert r.event["activity_type"] == activity.activity_type
        assert r.event["attempt"] >= 1
        assert activity.event_id > 0
    kinds_by_type = {
        (r.event["activity_type"], r.kind, r.event.get("local", False)) for r in records
    }
    # The model call decides its reply's proposals (GUARD_IN_MODEL) and executes the reads it
    # allowed (READS_IN_MODEL); a side effect is an ordinary activity.
    assert ("model.plan", "verdict", False) in kinds_by_type
    assert ("model.plan", "proposal", False) in kinds_by_type
    assert ("model.plan", "action.read", False) in kinds_by_type
    assert ("payments.refund", "action.executed", False) in kinds_by_type


async def test_an_approval_flow_on_the_postgres_audit_store(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    shop: Shop,
    task_queue: str,
    pg_dsn: str,
) -> None:
    """The tool activity's authorization check reads the granted approval back from
    PostgreSQL: without it the refund would be refused."""
    store = open_store(pg_dsn, signer=runtime.audit.signer, checkpoint_every=5)
    pg_runtime = dataclasses.replace(runtime, audit=store)
    before = len(shop.refunds("A-1017"))
    async with worker_for(temporal.client, settings, pg_runtime, task_queue):
        handle = await start_run(temporal.client, task_queue, task="Refund order A-1017: pg.")
        (request,) = await wait_for_pending(handle)
        await handle.execute_update(
            AgentRun.decide,
            signed(handle.id, request, "alice"),
        )
        result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed"
    assert len(shop.refunds("A-1017")) == before + 1
    kinds = [r.kind for r in store.for_run(handle.id)]
    assert "approval.granted" in kinds and "action.executed" in kinds
    assert runtime.audit.for_run(handle.id) == []  # nothing went to SQLite
    assert store.signer is not None
    report = store.verify(store.signer.public_key)
    assert report.ok and report.records == len(kinds)
    assert report.checkpoints == len(kinds) // 5
    store.close()
