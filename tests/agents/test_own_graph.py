"""Bring your own graph: the planner-executor example (agents/planner_executor.py) runs on the
real dev server with every tool call guarded, approved, executed in the shop, audited, and
undone when the run fails; a graph cannot reach a tool around the guard."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime as GraphRuntime
from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.agent_specs import AGENTS, AgentSpec, AgentSpecError
from countersign.activities.contracts import ToolCall, ToolOutcome
from countersign.activities.runtime import Runtime
from countersign.agents.graph_registry import (
    GraphRegistryError,
    build_graphs,
    register_graph,
    unregister_graph,
)
from countersign.agents.guarded import (
    CALL_ORDER,
    GuardedState,
    call_model,
    guarded_tools,
    in_workflow,
    proposals_of,
    tools_condition,
)
from countersign.agents.planner_executor import ASK_FOR_PLAN, CARRY_OUT
from countersign.agents.run import AgentRun
from countersign.agents.state import RunState
from countersign.guardrails.policy import action_hash
from countersign.settings import Settings
from countersign.workers.codec import data_converter
from countersign.workers.replay import replay
from countersign.workers.worker import build_worker, check_startup
from tests.agents.test_agent_run import wait_for_pending
from tests.agents.test_canary import decrypted_history
from tests.agents.test_context_window import model_requests
from tests.conftest import RunWithGraph, Shop, signed, start_run

README = Path(__file__).parent.parent.parent / "README.md"
# A look-up, then a refund (denied to a read-only agent), then the answer.
LOOK_THEN_REFUND = {
    "name": "look-then-refund",
    "match": r"(?i)^look, then pay back (?P<order_id>[A-Z]-\d{4})",
    "turns": [
        {"tool_calls": [{"name": "orders.lookup", "arguments": {"order_id": "{order_id}"}}]},
        {
            "tool_calls": [
                {
                    "name": "payments.refund",
                    "arguments": {"order_id": "{order_id}", "amount_cents": 100, "reason": "x"},
                }
            ]
        },
        {"say": "Done."},
    ],
}
TASK = "Plan first, then refund order {order}: the espresso machine arrived broken."


def refunds(shop: Shop, order_id: str) -> list[tuple[int, str]]:
    return [(r["amount_cents"], r["status"]) for r in shop.refunds(order_id)]


async def test_planner_executor_graph_is_guarded_approved_executed_and_audited(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    settings: Settings,
    model_url: str,
) -> None:
    other = refunds(shop, "A-1001")
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        agent="support-planner",
        task=TASK.format(order="A-1002"),
    )
    (request,) = await wait_for_pending(handle)
    assert request.tool == "payments.refund" and request.arguments["order_id"] == "A-1002"
    assert refunds(shop, "A-1002") == []  # nothing happens before the countersignature
    await handle.execute_update(AgentRun.decide, signed(handle.id, request, "alice"))
    result = await handle.result()

    assert result.status == "completed_with_refusals"
    assert result.final_message.startswith("Done: refunded order A-1002")
    assert [(a.tool, a.status) for a in result.actions] == [
        ("orders.lookup", "executed"),
        ("payments.refund", "denied"),
        ("payments.refund", "executed"),
        ("crm.add_note", "executed"),
    ]
    denied, refunded = result.actions[1], result.actions[2]
    assert "refunds only of the run's subject" in denied.detail
    assert denied.rule_ids == ["refund.subject_binding"]
    assert refunded.approved_by == ["alice"]
    # Executed in the shop once; the denied refund of another order never reached it.
    assert refunds(shop, "A-1002") == [(18900, "succeeded")]
    assert refunds(shop, "A-1001") == other

    audit = runtime.audit.for_run(handle.id)
    kinds = [r.kind for r in audit]
    assert kinds.count("model.call") == 6  # the plan, then five executor steps
    verdicts = [(r.data["tool"], r.data["outcome"]) for r in audit if r.kind == "verdict"]
    assert verdicts == [
        ("orders.lookup", "allow"),
        ("payments.refund", "deny"),
        ("payments.refund", "needs_approval"),
        ("crm.add_note", "allow"),
    ]
    for kind in ["approval.requested", "approval.decided", "approval.granted", "run.finished"]:
        assert kinds.count(kind) == 1, kind
    assert [r.data["tool"] for r in audit if r.kind == "action.executed"] == [
        "payments.refund",
        "crm.add_note",
    ]
    # History discipline: each message the graph adds reaches an activity input once (as a
    # new message for the transcript); the plan, once, as the planner's reply.
    history = await decrypted_history(handle)
    assert history.count(ASK_FOR_PLAN) == 1 and history.count(CARRY_OUT) == 1
    assert history.count("Note the refund on the customer record") == 1
    # The model was sent the conversation the graph made: the planner's request, its plan,
    # the executor's instruction, then each reply with its tool results.
    (sent,) = [
        r["roles"] for r in await model_requests(model_url) if r["task"].startswith("Plan first")
    ][-1:]
    assert sent == ["system", "user", "user", "assistant", "user"] + ["assistant", "tool"] * 4
    # The graph is deterministic: its history replays to the same result.
    live = [("live", await handle.fetch_history())]
    (report,) = await replay(live, converter=data_converter(settings))
    assert report.deterministic, report.divergence
    assert report.result_matches and report.model_steps == 6 and report.verdicts == 4


async def test_planner_executor_run_that_fails_undoes_its_refund(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, runtime: Runtime
) -> None:
    shop.faults(fail_status=503, fail_count=100, path_prefix="/customers/C-200/notes")
    try:
        handle = await start_run(
            temporal.client,
            worker.task_queue,
            agent="support-planner",
            task=TASK.format(order="A-1006"),
        )
        (request,) = await wait_for_pending(handle)
        await handle.execute_update(AgentRun.decide, signed(handle.id, request, "bob"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    finally:
        shop.clear_faults()
    assert refunds(shop, "A-1006") == [(12900, "reversed")]
    (undone,) = runtime.audit.find(handle.id, "compensation.executed")
    assert undone.data["tool"] == "payments.refund"
    (ended,) = runtime.audit.find(handle.id, "run.compensated")
    assert "crm.add_note" in ended.data["reason"]


async def refund_around_the_guard(
    state: GuardedState, runtime: GraphRuntime[RunState]
) -> dict[str, Any]:
    """A careless (or hostile) node: calls the refund tool's activity directly (with the
    hash of its call, so the activity's check of the audit trail is what stops it)."""
    arguments = {"order_id": "A-1002", "amount_cents": 18900, "reason": "bypass"}
    await workflow.execute_activity(
        "payments.refund",
        ToolCall(
            tool="payments.refund",
            call_id="call_bypass",
            arguments=arguments,
            action_hash=action_hash(
                workflow.info().workflow_id, "call_bypass", "payments.refund", arguments
            ),
            agent=runtime.context.agent.name,
        ),
        result_type=ToolOutcome,
        start_to_close_timeout=timedelta(seconds=10),
    )
    return {"final": "refunded"}


def bypass_graph() -> StateGraph[GuardedState, RunState, Any, Any]:
    g: StateGraph[GuardedState, RunState, Any, Any] = StateGraph(
        GuardedState, context_schema=RunState
    )
    g.add_node("refund", refund_around_the_guard, metadata=in_workflow())
    g.add_edge(START, "refund")
    g.add_edge("refund", END)
    return g


async def test_a_graph_cannot_call_a_tool_around_the_guard(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    shop: Shop,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = AGENTS["support-refunds"].model_copy(update={"name": "bypass", "graph": "bypass"})
    monkeypatch.setitem(AGENTS, "bypass", agent)
    register_graph("bypass", bypass_graph)
    try:
        async with build_worker(temporal.client, settings, runtime, task_queue=task_queue):
            handle = await start_run(
                temporal.client, task_queue, agent="bypass", task="Refund order A-1002 now."
            )
            with pytest.raises(WorkflowFailureError) as failed:
                await handle.result()
    finally:
        unregister_graph("bypass")
    assert "neither an allow verdict nor a granted approval" in str(failed.value.cause.cause)
    assert refunds(shop, "A-1002") == []


def test_an_agent_naming_an_unregistered_graph_fails_startup_in_one_line(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = AgentSpec(
        name="typo-graph",
        description="x",
        graph="planer-executor",
        system_prompt="x",
        scopes=["orders:read"],
    )
    monkeypatch.setitem(AGENTS, spec.name, spec)
    with pytest.raises(AgentSpecError) as e:
        check_startup(settings)
    assert str(e.value) == (
        "agent typo-graph: graph 'planer-executor' is not hosted by this worker "
        "(graphs: guarded-loop, planner-executor)"
    )


def test_a_graph_with_an_activity_node_is_refused_at_startup() -> None:
    def leaky() -> StateGraph[GuardedState, RunState, Any, Any]:
        g = bypass_graph()
        g.nodes["refund"].metadata = {"execute_in": "activity"}
        return g

    register_graph("leaky", leaky)
    try:
        with pytest.raises(GraphRegistryError, match="node 'refund' has execute_in='activity'"):
            build_graphs()
    finally:
        unregister_graph("leaky")


def test_a_graph_name_cannot_be_taken_twice() -> None:
    with pytest.raises(GraphRegistryError, match="'guarded-loop' is already registered by"):
        register_graph("guarded-loop", bypass_graph)


async def test_the_readme_graph_runs_guarded(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
    scripts_dir: Path,
) -> None:
    (scripts_dir / "look-then-refund.json").write_text(json.dumps(LOOK_THEN_REFUND))
    section = README.read_text().split("## Bring your own graph")[1].split("\n## ")[0]
    (code,) = re.findall(r"```python\n(.*?)\n```", section, re.S)
    agent = AGENTS["support-readonly"].model_copy(update={"name": "mine", "graph": "my-react"})
    monkeypatch.setitem(AGENTS, "mine", agent)
    exec(compile(code, "README.md", "exec"), {})  # registers "my-react"
    try:
        async with build_worker(temporal.client, settings, runtime, task_queue=task_queue):
            handle = await start_run(
                temporal.client,
                task_queue,
                agent="mine",
                task="Look, then pay back A-1003: readme.",
            )
            result = await handle.result()
    finally:
        unregister_graph("my-react")
    assert [(a.tool, a.status) for a in result.actions] == [
        ("orders.lookup", "executed"),
        ("payments.refund", "denied"),
    ]
    assert result.status == "completed_with_refusals"


def test_proposals_keep_the_models_order_with_malformed_calls_among_them() -> None:
    reply = AIMessage(
        content="  two refunds  ",
        tool_calls=[
            {"id": "a", "name": "orders.lookup", "args": {"order_id": "A-1001"}},
            {"id": "c", "name": "crm.add_note", "args": {"customer_id": "C-100", "text": "x"}},
        ],
        invalid_tool_calls=[
            {"id": "b", "name": "payments.refund", "args": "{", "error": "not JSON"},
        ],
        response_metadata={CALL_ORDER: ["a", "b", "c"]},
    )
    proposals = proposals_of(reply)
    assert [(p.call_id, p.arguments_error) for p in proposals] == [
        ("a", None),
        ("b", "not JSON"),
        ("c", None),
    ]
    assert {p.reason for p in proposals} == {"two refunds"}


async def my_model(state: MessagesState, runtime: GraphRuntime[RunState]) -> dict[str, Any]:
    """Nodes of one's own around the guarded parts: LangGraph gives a node only the keys of
    the state its annotation names, so these never see GuardedState's `seq`."""
    return await call_model(state, runtime)  # type: ignore[arg-type]


async def my_tools(state: MessagesState, runtime: GraphRuntime[RunState]) -> dict[str, Any]:
    return await guarded_tools(state, runtime)  # type: ignore[arg-type]


def messages_state_agent() -> StateGraph[MessagesState, RunState, Any, Any]:
    g: StateGraph[MessagesState, RunState, Any, Any] = StateGraph(
        MessagesState, context_schema=RunState
    )
    g.add_node("model", my_model, metadata=in_workflow())
    g.add_node("tools", my_tools, metadata=in_workflow())
    g.add_edge(START, "model")
    g.add_conditional_edges("model", tools_condition, ["tools", END])
    g.add_edge("tools", "model")
    return g


async def test_a_plain_messages_state_graph_keeps_the_transcript_in_order(
    run_with_graph: RunWithGraph, runtime: Runtime, model_url: str, scripts_dir: Path
) -> None:
    (scripts_dir / "look-then-refund.json").write_text(json.dumps(LOOK_THEN_REFUND))
    # Without `seq` in the state, each model call still appends after the last reply: the
    # scripted model plays its turns in order (a transcript written over would replay turn
    # one until the step limit).
    _, result = await run_with_graph(
        base="support-readonly",
        name="plain",
        graph=messages_state_agent,
        task="Look, then pay back A-1003: plain.",
    )
    assert result.steps == 3 and result.stop_reason is None
    assert [(a.tool, a.status) for a in result.actions] == [
        ("orders.lookup", "executed"),
        ("payments.refund", "denied"),
    ]
    sent = [r["roles"] for r in await model_requests(model_url) if "A-1003: plain." in r["task"]]
    assert sent == [
        ["system", "user"],
        ["system", "user", "assistant", "tool"],
        ["system", "user", "assistant", "tool", "assistant", "tool"],
    ]
