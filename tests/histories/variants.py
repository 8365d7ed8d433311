"""Deliberately non-deterministic versions of the run, as a careless change would make them:
replaying the corpus against them must fail and say where."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from langgraph.graph import END, START, StateGraph
from temporalio import workflow

from countersign.agents.run import AgentRun

with workflow.unsafe.imports_passed_through():
    from countersign.agents.graph import LoopState, act, after_act, after_plan, guard, plan, stop
    from countersign.agents.state import AGENT_RUN, RunResult, RunState


@workflow.defn(name=AGENT_RUN)
class AgentRunThatChecksFirst(AgentRun):
    """Someone added a pre-flight activity before the run starts (same workflow name)."""

    @workflow.run
    async def run(self, input: Any) -> RunResult:
        await workflow.execute_activity(
            "policy.preflight", input, start_to_close_timeout=timedelta(seconds=10)
        )
        return await super().run(input)


@workflow.defn(name=AGENT_RUN)
class AgentRunThatReadsTheClock(AgentRun):
    """Someone read the wall clock in workflow code: the sandbox must refuse it."""

    @workflow.run
    async def run(self, input: Any) -> RunResult:
        workflow.logger.info("started at %s", datetime.now())
        return await super().run(input)


def graph_without_approvals() -> StateGraph[LoopState, RunState, LoopState, LoopState]:
    """Someone "simplified" the guarded loop: guard goes straight to act, skipping approvals."""
    g: StateGraph[LoopState, RunState, LoopState, LoopState] = StateGraph(
        LoopState, context_schema=RunState
    )
    for name, node in [("plan", plan), ("guard", guard), ("act", act), ("stop", stop)]:
        g.add_node(name, node, metadata={"execute_in": "workflow"})
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", after_plan, ["guard", END])
    g.add_edge("guard", "act")
    g.add_conditional_edges("act", after_act, ["plan", "stop"])
    g.add_edge("stop", END)
    return g
