"""The model call executes the reads its guard allowed (patch reads-in-model-call): a lookup
step is one workflow activation, with no local activity; the read goes through the tool
activity's own checks and audit; a read is used only under the exact verdict it ran under, and
one that fails in the model call runs as the local activity it was before."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime as GraphRuntime
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.agent_specs import AGENTS
from countersign.activities.contracts import DECIDE, PLAN, ToolCall
from countersign.activities.runtime import Runtime
from countersign.activities.tools import REGISTRY, execute_tool
from countersign.agents.guarded import (
    GuardedState,
)
from countersign.agents.state import RunState
from countersign.guardrails.policy import Verdict, action_hash
from countersign.settings import Settings
from countersign.workers.replay import activities_in
from countersign.workers.worker import build_worker
from tests.agents.test_context_window import model_requests
from tests.agents.test_guard_in_model import (
    LoseFirstDecidedReply,
    edited_graph,
    guard_activities,
    only_first_attempts,
)
from tests.conftest import RunWithGraph, Shop, start_run

READS = {"orders.lookup", "knowledge.search"}


async def local_reads(handle: WorkflowHandle[Any, Any]) -> list[str]:
    history = await handle.fetch_history()
    return [a.activity_type for a in activities_in(history) if a.local and a.activity_type in READS]


def reads_audited(runtime: Runtime, workflow_id: str, tool: str) -> list[Any]:
    return runtime.audit.find(workflow_id, "action.read", tool=tool)


def shop_requests(shop: Shop) -> dict[str, int]:
    """The shop's request counts by method and route (its /_stats, not itself counted)."""
    with shop.client() as c:
        counts = dict(c.get("/_stats").json()["requests"])
    counts.pop("GET /_stats", None)
    return counts


def shop_gets(shop: Shop, path: str) -> int:
    return int(shop_requests(shop).get(f"GET {path}", 0))


async def test_a_lookup_step_is_one_workflow_task_with_no_local_activity(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    model_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One model call per step (read-ahead, off here, takes the refund's step in the same call).
    stepwise = AGENTS["support-refunds"].model_copy(update={"read_ahead": 0})
    monkeypatch.setitem(AGENTS, "support-refunds", stepwise)
    task = "Refund order A-1004: the reads ran in the model call."
    handle = await start_run(temporal.client, worker.task_queue, task=task)
    result = await handle.result()
    assert result.status == "completed"
    # The refund's amount is the lookup's captured amount: the model saw the lookup's result.
    assert [r["amount_cents"] for r in shop.refunds("A-1004")] == [2500]
    (asked,) = [r for r in await model_requests(model_url) if r["task"].startswith(task)][1:2]
    assert asked["roles"][-2:] == ["tool", "tool"]
    assert await local_reads(handle) == []
    # Executed by the first model call, through the tool's own audited path.
    for tool in READS:
        (read,) = reads_audited(runtime, handle.id, tool)
        assert read.event["activity_type"] == PLAN
        (action,) = [a for a in result.actions if a.tool == tool]
        assert action.status == "executed" and action.action_hash == read.data["action_hash"]
    # The refund the guard allowed outright (25.00) is a side effect: never run by the model
    # call, only by its own ordinary activity.
    (refund,) = runtime.audit.find(handle.id, "action.executed", tool="payments.refund")
    assert refund.event["activity_type"] == "payments.refund" and not refund.event.get("local")
    (allowed,) = [
        v
        for v in runtime.audit.find(handle.id, "verdict", tool="payments.refund")
        if v.data["outcome"] == "allow"
    ]
    assert allowed.event["activity_type"] == PLAN
    # From the first model call's result to the second's start: one workflow task, no marker.
    events = (await handle.fetch_history()).events
    plans = [
        e.event_id
        for e in events
        if e.activity_task_scheduled_event_attributes.activity_type.name == PLAN
    ]
    between = [e for e in events if plans[0] < e.event_id < plans[1]]
    assert sum(e.HasField("workflow_task_completed_event_attributes") for e in between) == 1
    assert not any(e.HasField("marker_recorded_event_attributes") for e in between)


async def fewer_passages(state: GuardedState, runtime: GraphRuntime[RunState]) -> dict[str, Any]:
    """Edits the model's knowledge search between the model and the tools (same call id)."""
    last = state["messages"][-1]
    assert isinstance(last, AIMessage)
    calls = [
        {**c, "args": {**c["args"], "limit": 1}} if c["name"] == "knowledge.search" else c
        for c in last.tool_calls
    ]
    return {"messages": [last.model_copy(update={"tool_calls": calls})]}


def editing_reads_graph() -> StateGraph[GuardedState, RunState, Any, Any]:
    return edited_graph(fewer_passages)


async def test_a_read_a_graph_edited_runs_as_edited_not_as_read_in_the_model_call(
    run_with_graph: RunWithGraph, runtime: Runtime
) -> None:
    handle, result = await run_with_graph(
        base="support-refunds",
        name="read-editor",
        graph=editing_reads_graph,
        task="Refund order A-1004: the search was edited.",
    )
    assert result.status == "completed"
    # The model call read what the model asked for (3 passages); the run used the edited
    # call, decided again and run by its local activity, and the model saw its one passage.
    before, edited = reads_audited(runtime, handle.id, "knowledge.search")
    assert before.event["activity_type"] == PLAN
    assert before.data["arguments"]["limit"] == 3
    assert edited.event.get("local") and edited.data["arguments"]["limit"] == 1
    (search,) = [a for a in result.actions if a.tool == "knowledge.search"]
    assert search.arguments is not None and search.arguments["limit"] == 1
    assert search.action_hash == edited.data["action_hash"] != before.data["action_hash"]
    assert search.result is not None and len(search.result["passages"]) == 1
    assert await guard_activities(handle) == [DECIDE]
    assert await local_reads(handle) == ["knowledge.search"]
    # The unedited lookup was taken from the model call.
    (lookup,) = reads_audited(runtime, handle.id, "orders.lookup")
    assert lookup.event["activity_type"] == PLAN


async def test_an_out_of_scope_lookup_is_not_executed_in_the_model_call(
    temporal: WorkflowEnvironment,
    worker: Worker,
    runtime: Runtime,
    shop: Shop,
    scripts_dir: Path,
) -> None:
    (scripts_dir / "peek-denied.json").write_text(
        json.dumps(
            {
                "name": "peek-denied",
                "match": r"(?i)denied: peek",
                "turns": [
                    {
                        "tool_calls": [
                            {"name": "orders.lookup", "arguments": {"order_id": "A-1003"}}
                        ]
                    },
                    {"say": "done"},
                ],
            }
        )
    )
    gets = shop_gets(shop, "/orders/{order_id}")
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        agent="crm-updates",
        task="denied: peek at A-1003",
        subject={"customer_id": "C-100"},
    )
    result = await handle.result()
    (verdict,) = [r.data for r in runtime.audit.find(handle.id, "verdict", tool="orders.lookup")]
    assert verdict["outcome"] == "deny"
    assert [a.status for a in result.actions] == ["denied"]
    assert reads_audited(runtime, handle.id, "orders.lookup") == []
    assert shop_gets(shop, "/orders/{order_id}") == gets


async def test_a_read_that_fails_in_the_model_call_runs_as_a_local_activity(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    # The first order lookup (the model call's read) fails; the local activity's succeeds.
    shop.faults(fail_status=503, fail_count=1, path_prefix="/orders", method="GET")
    try:
        handle = await start_run(
            temporal.client, worker.task_queue, task="Refund order A-1004: the read failed once."
        )
        result = await handle.result()
    finally:
        shop.clear_faults()
    assert result.status == "completed"
    assert [r["amount_cents"] for r in shop.refunds("A-1004")] == [2500]
    assert await local_reads(handle) == ["orders.lookup"]
    (lookup,) = reads_audited(runtime, handle.id, "orders.lookup")
    assert lookup.event.get("local") and lookup.event["activity_type"] == "orders.lookup"
    (search,) = reads_audited(runtime, handle.id, "knowledge.search")
    assert search.event["activity_type"] == PLAN


@pytest.mark.parametrize("midway", [False, True], ids=["after-keeping", "before-keeping"])
async def test_a_retried_model_call_reads_once_or_again_under_one_record(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    shop: Shop,
    task_queue: str,
    midway: bool,
) -> None:
    """The first attempt's result is lost after it read: the retry returns the reads it kept
    (or, had it stopped before keeping them, reads again); each read is audited once, and none
    runs as a local activity."""
    async with build_worker(
        temporal.client,
        settings,
        runtime,
        task_queue=task_queue,
        interceptors=[LoseFirstDecidedReply(runtime, midway)],
    ):
        handle = await start_run(
            temporal.client, task_queue, task="Refund order A-1004: the reads were retried."
        )
        result = await handle.result()
    assert result.status == "completed"
    assert [r["amount_cents"] for r in shop.refunds("A-1004")] == [2500]
    for tool in READS:
        (read,) = reads_audited(runtime, handle.id, tool)
        assert read.event["activity_type"] == PLAN and read.event["attempt"] == 1
    assert await local_reads(handle) == []


LOOKUP = {"order_id": "A-1001"}
REFUND = {"order_id": "A-1001", "amount_cents": 100, "reason": "test"}
# What the model call's read carries against the verdict it was decided with: (verdict's
# outcome, verdict's tool and arguments, the call's tool, call id and arguments).
NOT_THAT_ALLOW = {
    "needs-approval": ("needs_approval", "orders.lookup", LOOKUP, "orders.lookup", "c1", LOOKUP),
    "denied": ("deny", "orders.lookup", LOOKUP, "orders.lookup", "c1", LOOKUP),
    "shadow": ("shadow", "orders.lookup", LOOKUP, "orders.lookup", "c1", LOOKUP),
    "other-arguments": (
        "allow",
        "orders.lookup",
        LOOKUP,
        "orders.lookup",
        "c1",
        {"order_id": "A-1002"},
    ),
    "other-call": ("allow", "orders.lookup", LOOKUP, "orders.lookup", "c2", LOOKUP),
    "other-tool": (
        "allow",
        "orders.lookup",
        LOOKUP,
        "customers.lookup",
        "c1",
        {"customer_id": "C-100"},
    ),
    "side-effect": ("allow", "payments.refund", REFUND, "payments.refund", "c1", REFUND),
}


@pytest.mark.parametrize("case", list(NOT_THAT_ALLOW))
async def test_a_read_runs_in_the_model_call_only_under_the_allow_it_was_decided_with(
    runtime: Runtime, shop: Shop, case: str
) -> None:
    """The model call's reads skip reading the audit back because their verdict was decided
    in that same attempt; anything but that very allow, for that very read, is refused before
    the system is called, and nothing is audited as read or executed. The call always carries
    the verdict's own hash (the hash of another call, it is refused either way)."""
    outcome, tool, arguments, call_tool, call_id, sent = NOT_THAT_ALLOW[case]
    env = ActivityEnvironment()
    run = f"read-decided-{uuid.uuid4().hex[:8]}"
    env.info = dataclasses.replace(env.info, workflow_id=run)
    verdict = Verdict(
        call_id="c1",
        tool=tool,
        outcome=outcome,
        rule_ids=[],
        policy_version="test",
        reason="test",
        mode="automate",
        arguments=arguments,
        action_hash=action_hash(run, "c1", tool, arguments),
        read_only=tool != "payments.refund",
    )
    call = ToolCall(
        tool=call_tool,
        call_id=call_id,
        arguments=sent,
        action_hash=verdict.action_hash or "",
        agent="support",
    )
    refunds = len(shop.refunds("A-1001"))
    requests = shop_requests(shop)
    with pytest.raises(ApplicationError) as refused:
        await env.run(execute_tool, REGISTRY[call_tool], call, runtime, 0, verdict)
    assert refused.value.type == "ActionNotAuthorized"
    assert shop_requests(shop) == requests  # the shop was not called at all
    assert len(shop.refunds("A-1001")) == refunds
    assert runtime.audit.find(run, "action.read") == []
    assert runtime.audit.find(run, "action.executed") == []

    # The read under its own allow runs (and the shop's count sees it).
    own = ToolCall(
        tool="orders.lookup",
        call_id="c1",
        arguments=LOOKUP,
        action_hash=action_hash(run, "c1", "orders.lookup", LOOKUP),
        agent="support",
    )
    allow = verdict.model_copy(
        update={
            "outcome": "allow",
            "tool": "orders.lookup",
            "arguments": LOOKUP,
            "action_hash": own.action_hash,
            "read_only": True,
        }
    )
    read = await env.run(execute_tool, REGISTRY["orders.lookup"], own, runtime, 0, allow)
    assert read.result["order_id"] == "A-1001"
    assert shop_gets(shop, "/orders/{order_id}") == requests.get("GET /orders/{order_id}", 0) + 1
    assert len(runtime.audit.find(run, "action.read")) == 1


async def test_a_read_that_fails_for_good_is_audited_once(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    """The model call's read is refused for good (a 404: not worth retrying); the workflow
    runs it again as its local activity, which is refused the same way. One failure happened
    to the run, so the audit says it once (the model call's attempt is only logged)."""
    shop.faults(fail_status=404, fail_count=100, path_prefix="/orders", method="GET")
    try:
        handle = await start_run(
            temporal.client, worker.task_queue, task="Refund order A-1004: the order is gone."
        )
        with pytest.raises(WorkflowFailureError):  # a read refused for good fails the run
            await handle.result()
    finally:
        shop.clear_faults()
    failed = runtime.audit.find(handle.id, "action.failed", tool="orders.lookup")
    assert len(failed) == 1, [f.data for f in failed]
    assert "answered 404" in failed[0].data["error"]
    assert failed[0].event.get("local")
    assert await local_reads(handle) == ["orders.lookup"]


async def test_a_read_that_runs_out_of_time_in_the_model_call_runs_as_a_local_activity(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    shop: Shop,
    scripts_dir: Path,
    task_queue: str,
) -> None:
    """The shop is slow for the model call's read (past the tool's 1 s timeout): the model
    call gives up on it, is not timed out itself, and the workflow reads again as its local
    activity, which gets an answer."""
    (scripts_dir / "slow-read.json").write_text(
        json.dumps(
            {
                "name": "slow-read",
                "match": r"(?i)slow read",
                "turns": [
                    {
                        "tool_calls": [
                            {"name": "orders.lookup", "arguments": {"order_id": "A-1001"}}
                        ]
                    },
                    {"say": "done"},
                ],
            }
        )
    )
    quick = settings.model_copy(update={"tool_start_to_close_seconds": 1})
    gets = shop_gets(shop, "/orders/{order_id}")
    shop.faults(latency_ms=3000, path_prefix="/orders", method="GET")
    try:
        quick_runtime = dataclasses.replace(runtime, settings=quick)
        async with build_worker(temporal.client, quick, quick_runtime, task_queue=task_queue):
            handle = await start_run(temporal.client, task_queue, task="A slow read of A-1001")
            # Once the model call's read is at the shop, the shop is quick again.
            for _ in range(200):
                if shop_gets(shop, "/orders/{order_id}") > gets:
                    break
                await asyncio.sleep(0.02)
            shop.clear_faults()
            result = await handle.result()
    finally:
        shop.clear_faults()
    assert result.status == "completed"
    assert await local_reads(handle) == ["orders.lookup"]
    (lookup,) = reads_audited(runtime, handle.id, "orders.lookup")
    assert lookup.event.get("local")
    assert runtime.audit.find(handle.id, "action.failed") == []
    assert await only_first_attempts(handle)  # no model call was timed out or retried
