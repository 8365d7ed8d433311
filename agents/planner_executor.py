"""Example of bringing your own graph: a planner writes a plan, then an executor carries it
out, every tool call guarded.

    START → ask_for_plan → planner ─┬─ (no tool calls) → keep_plan → executor ─┬→ END
                                    └─ (tool calls) ──→ tools ←────────────────┘
                                                        └→ executor … or stop (limits) → END

`planner` and `executor` are the guarded model call, `tools` the guarded tool node
(agents/guarded.py); `ask_for_plan` and `keep_plan` are this graph's own. Agent
`support-planner` (demo/plugin.py) runs it: `countersign start --agent support-planner ...`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from countersign.agents.graph_registry import guarded_graph
from countersign.agents.guarded import (
    GuardedState,
    call_model,
    guarded_tools,
    in_workflow,
    stop,
    tools_condition,
    within_limits,
)
from countersign.agents.state import RunState

GRAPH = "planner-executor"

ASK_FOR_PLAN = "Before you act, write a short numbered plan for this task. Call no tools yet."
CARRY_OUT = "Now carry out your plan, one step at a time."


class PlannerState(GuardedState, total=False):
    plan: str


async def ask_for_plan(state: PlannerState, runtime: Runtime[RunState]) -> dict[str, Any]:
    # Fixed message ids: add_messages would otherwise draw random ones in workflow code.
    return {"messages": [HumanMessage(ASK_FOR_PLAN, id="ask-for-plan")]}


async def keep_plan(state: PlannerState, runtime: Runtime[RunState]) -> dict[str, Any]:
    return {"plan": state.get("final", ""), "messages": [HumanMessage(CARRY_OUT, id="carry-out")]}


async def after_planner(state: PlannerState, runtime: Runtime[RunState]) -> str:
    if state.get("stop_reason"):
        return END  # the planner's reply was refused
    # A planner that calls tools anyway has them guarded like any other call.
    return "tools" if await tools_condition(state, runtime) == "tools" else "keep_plan"


async def after_tools(state: PlannerState, runtime: Runtime[RunState]) -> str:
    after = await within_limits(state, runtime)
    return "executor" if after == "model" else after


@guarded_graph(GRAPH)
def build() -> StateGraph[PlannerState, RunState, Any, Any]:
    g: StateGraph[PlannerState, RunState, Any, Any] = StateGraph(
        PlannerState, context_schema=RunState
    )
    for name, node in [
        ("ask_for_plan", ask_for_plan),
        ("planner", call_model),
        ("keep_plan", keep_plan),
        ("executor", call_model),
        ("tools", guarded_tools),
        ("stop", stop),
    ]:
        g.add_node(name, node, metadata=in_workflow())
    g.add_edge(START, "ask_for_plan")
    g.add_edge("ask_for_plan", "planner")
    g.add_conditional_edges("planner", after_planner, ["tools", "keep_plan", END])
    g.add_edge("keep_plan", "executor")
    g.add_conditional_edges("executor", tools_condition, ["tools", END])
    g.add_conditional_edges("tools", after_tools, ["executor", "stop", END])
    g.add_edge("stop", END)
    return g
