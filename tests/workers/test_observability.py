"""Observability: one Prometheus endpoint for Temporal's SDK metrics and ours, OpenTelemetry
spans for runs, and `countersign stats` from the audit trail."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.guardrails.audit import AuditStore
from countersign.guardrails.audit_stores import open_store
from countersign.settings import Settings, SettingsError
from countersign.workers.devstack import free_port
from countersign.workers.stats import compute_stats, format_stats, parse_window
from countersign.workers.telemetry import temporal_runtime
from countersign.workers.worker import build_worker, connect
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import signed, start_run


def metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in metric_lines(text, name + "{"):
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_worker_serves_sdk_and_countersign_metrics_on_one_endpoint(
    temporal: WorkflowEnvironment, settings: Settings, task_queue: str
) -> None:
    address = f"127.0.0.1:{free_port()}"
    observed = settings.model_copy(
        update={
            "temporal_address": temporal.client.service_client.config.target_host,
            "metrics_address": address,
            "model_prices": {"scripted:refund": (0.4, 1.6)},
        }
    )
    client = await connect(observed, serve_metrics=True)
    queue = task_queue
    async with build_worker(client, observed, Runtime.from_settings(observed), task_queue=queue):
        auto = await start_run(client, queue, task="Refund order A-1007: mugs chipped.")
        rejected = await start_run(client, queue, task="Refund order A-1002: not convinced.")
        (request,) = await wait_for_pending(rejected)
        await asyncio.sleep(0.3)  # a measurable wait before the decision
        await rejected.execute_update(
            AgentRun.decide,
            signed(rejected.id, request, "bob", approve=False, comment="no"),
        )
        await asyncio.gather(auto.result(), rejected.result())
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://{address}/metrics")).text

    # Temporal's own metrics…
    assert value(text, "temporal_workflow_completed_total", task_queue=queue) == 2
    assert metric_lines(text, "temporal_activity_execution_latency")
    # …and ours, beside them.
    assert value(text, "countersign_proposals_total", tool="payments.refund") == 2
    assert value(text, "countersign_verdicts_total", outcome="allow", tool="payments.refund") == 1
    assert value(text, "countersign_verdicts_total", outcome="needs_approval") == 1
    assert value(text, "countersign_approvals_requested_total") == 1
    assert value(text, "countersign_decisions_total", decision="reject", channel="cli") == 1
    assert value(text, "countersign_approvals_settled_total", outcome="rejected") == 1
    assert value(text, "countersign_time_to_decision_count", decision="reject") == 1
    assert 0.3 <= value(text, "countersign_time_to_decision_sum") < 30
    assert value(text, "countersign_model_tokens_total", part="prompt") > 0
    assert value(text, "countersign_actions_total", tool="payments.refund", status="executed") == 1
    assert value(text, "countersign_runs_finished_total", status="completed") == 1
    assert value(text, "countersign_runs_finished_total", status="completed_with_refusals") == 1
    assert value(text, "countersign_run_tokens_count") == 2
    assert value(text, "countersign_run_cost_sum") > 0


def append(store: AuditStore, run: str, kind: str, **data: object) -> None:
    store.append_sync(
        record_id=f"{run}/{kind}/{uuid.uuid4().hex}",
        workflow_id=run,
        run_id="r",
        kind=kind,
        actor="test",
        data=data,
    )


@pytest.fixture
def filled_store(tmp_path: Path) -> AuditStore:
    """Two runs: one approved after 60 s, one rejected after 120 s; one failed tool call."""
    store = open_store(tmp_path / "audit.sqlite3")
    now = datetime.now(UTC)
    for run, approve, wait in (("run-a", True, 60), ("run-b", False, 120)):
        append(store, run, "run.started", task="t", requested_by="dana")
        append(
            store,
            run,
            "model.call",
            model="gpt-4.1-mini",
            usage={"prompt_tokens": 1000, "completion_tokens": 500},
        )
        append(store, run, "proposal", tool="payments.refund", call_id="c1")
        append(store, run, "verdict", tool="payments.refund", outcome="needs_approval")
        append(store, run, "approval.requested", request_id=f"apr_{run}")
        append(
            store,
            run,
            "approval.decided",
            request_id=f"apr_{run}",
            approver="alice",
            approve=approve,
            channel="cli",
            # The request was appended just now; the decision came `wait` seconds later.
            decided_at=(now + timedelta(seconds=wait)).isoformat(),
        )
        if approve:
            append(store, run, "approval.granted", request_id=f"apr_{run}")
            append(store, run, "action.executed", tool="payments.refund")
        append(store, run, "proposal", tool="orders.lookup", call_id="c2")
        append(store, run, "verdict", tool="orders.lookup", outcome="allow")
        append(store, run, "run.finished", status="completed", tokens=1500, agent="support-refunds")
    append(store, "run-a", "action.failed", tool="crm.add_note", error="boom")
    append(store, "run-c", "approval.requested", request_id="apr_open")
    return store


def test_stats_from_the_audit_trail(filled_store: AuditStore) -> None:
    until = datetime.now(UTC) + timedelta(seconds=1)
    since = until - timedelta(hours=1)
    stats = compute_stats(
        filled_store.between(since, until),
        since=since,
        until=until,
        prices={"gpt-4.1-mini": (0.4, 1.6)},
    )
    assert stats.runs_started == 2 and stats.runs_finished == {"completed": 2}
    assert stats.proposals == 4
    assert stats.verdicts == {"needs_approval": 2, "allow": 2}
    assert stats.approvals_requested == 3
    assert stats.approvals_settled == {"approved": 1, "rejected": 1}
    assert stats.approvals_pending == 1
    assert stats.decisions == 2 and stats.human_override_rate == 0.5
    assert 55 < stats.time_to_decision_seconds["median"] < 95
    assert 115 < stats.time_to_decision_seconds["max"] < 125
    assert stats.tokens == 3000 and stats.tokens_per_run == 1500
    # 1000 * 0.40 + 500 * 1.60 USD per million tokens = 0.0012 USD per run.
    assert stats.cost_usd == pytest.approx(0.0024) and stats.cost_per_run_usd == pytest.approx(
        0.0012
    )
    assert stats.tool_calls == 2 and stats.tool_errors == 1 and stats.tool_error_rate == 0.5
    text = format_stats(stats)
    assert "human override rate 50.0%" in text and "error rate 50.0%" in text

    # A window that ends before the records were written sees none of them.
    empty = compute_stats(
        filled_store.between(since - timedelta(hours=2), since), since=since, until=until, prices={}
    )
    assert empty.proposals == 0 and empty.human_override_rate is None


def test_stats_command_prints_the_window(filled_store: AuditStore) -> None:
    env = {**os.environ, "COUNTERSIGN_STATE_DIR": str(filled_store.path.parent)}
    out = subprocess.run(
        [sys.executable, "-m", "countersign.workers", "stats", "--since", "2h"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "decisions         2 · human override rate 50.0% (1 rejected" in out.stdout
    assert "no price for gpt-4.1-mini" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "countersign.workers", "stats", "--since", "yesterday"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "expected a positive number and m, h, d or w" in bad.stderr


def test_window_parsing() -> None:
    assert parse_window("24h") == timedelta(hours=24)
    assert parse_window("7d") == timedelta(days=7)
    with pytest.raises(ValueError, match=r"e\.g\. 24h"):
        parse_window("0h")


async def test_tracing_gives_spans_for_the_run_and_its_activities(
    temporal: WorkflowEnvironment, settings: Settings, runtime: Runtime
) -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the deployment's choice; here: in memory

    traced = settings.model_copy(
        update={
            "temporal_address": temporal.client.service_client.config.target_host,
            "tracing": True,
        }
    )
    client = await connect(traced)
    queue = f"traced-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, traced, runtime, task_queue=queue):
        handle = await start_run(client, queue, task="Refund order A-1008: filters torn.")
        await handle.result()
    names = {s.name for s in exporter.get_finished_spans()}
    assert {"StartWorkflow:AgentRun", "RunWorkflow:AgentRun"} <= names
    # (The guard decides inside the model call's activity: GUARD_IN_MODEL.)
    assert {"RunActivity:model.plan", "RunActivity:payments.refund"} <= names
    # One trace: the run's activities hang under the start of the workflow.
    assert len({s.context.trace_id for s in exporter.get_finished_spans()}) == 1


def test_a_taken_metrics_port_is_a_clear_settings_error(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(SettingsError, match=f"COUNTERSIGN_METRICS_ADDRESS={address}: .*in use"):
            temporal_runtime(settings.model_copy(update={"metrics_address": address}))
