"""The AgentRun workflow: one agent, one task, hosted durably.

It validates the input, hosts the agent's LangGraph graph, and takes approvers' decisions
(as a validated Update, or as a signal for people in the Temporal UI). Everything that touches
the world is an activity the graph's nodes call.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

# The graph's nodes are registered with the plugin by the worker, outside the sandbox, so the
# models they build are the worker's. The workflow must use the very same classes: pass our
# (pure, deterministic) modules through instead of re-importing them in the sandbox.
with workflow.unsafe.imports_passed_through():
    from temporalio.langgraph import graph

    from agents.state import (
        AGENT_RUN,
        RunResult,
        RunState,
        RunStatus,
        parse_run_input,
    )
    from guardrails.approvals import Decision, DecisionRefused, apply_decision, check_decision


class DecisionReceipt(Decision):
    """What the approver's client hears back."""

    status: str
    approvals: int
    quorum: int


@workflow.defn(name=AGENT_RUN)
class AgentRun:
    def __init__(self) -> None:
        self._run: RunState | None = None

    @workflow.run
    async def run(self, input: Any) -> RunResult:
        """Typed `Any` on purpose: a payload that failed to decode would fail the workflow task
        in a retry loop; validating here fails the run at once, naming the bad field."""
        run_input = parse_run_input(input)
        run = self._run = RunState(run_input)
        await run.record(
            "run.started",
            run_input.model_dump(mode="json"),
            actor=f"requester:{run_input.requested_by}",
        )
        app = graph(run.agent.graph).compile()
        final = await app.ainvoke(
            {"seq": 0, "observations": []},
            context=run,
            # Each step is at most four super-steps (plan, guard, approvals, act).
            config={"recursion_limit": 4 * run.max_steps + 10},
        )
        result = RunResult(
            agent=run.agent.name,
            status="stopped" if final.get("stop_reason") else "completed",
            stop_reason=final.get("stop_reason"),
            final_message=final.get("final", ""),
            steps=run.step,
            tokens=run.tokens,
            actions=run.actions,
        )
        run.show(result.status)
        await run.record("run.finished", result.model_dump(mode="json"))
        return result

    def _state(self) -> RunState:
        if self._run is None:
            raise ApplicationError("the run has not started yet", type="RunNotStarted")
        return self._run

    @workflow.update(name="decide")
    async def decide(self, decision: Decision) -> DecisionReceipt:
        """An approver's decision. The validator refuses bad ones before they touch history."""
        run = self._state()
        request = run.requests[decision.request_id]
        apply_decision(request, decision, workflow.now())
        run.unrecorded.append((request.request_id, request.decisions[-1]))
        return DecisionReceipt(
            **decision.model_dump(),
            status=request.status,
            approvals=len(request.approvers),
            quorum=request.need.quorum,
        )

    @decide.validator
    def _validate_decide(self, decision: Decision) -> None:
        try:
            check_decision(self._state().requests, decision)
        except DecisionRefused as e:
            raise ApplicationError(str(e), type="DecisionRefused", non_retryable=True) from None

    @workflow.signal(name="decision")
    def decision_signal(self, payload: Any) -> None:
        """The same decision, for people using the Temporal UI's "Send a Signal".

        Signals cannot be refused, so a bad one is recorded in the audit as refused instead.
        """
        run = self._state()
        try:
            decision = Decision.model_validate({"channel": "temporal-ui", **payload})
            check_decision(run.requests, decision)
        except (DecisionRefused, ValueError, TypeError) as e:
            run.refused.append({"payload": payload, "reason": str(e), "channel": "temporal-ui"})
            return
        request = run.requests[decision.request_id]
        apply_decision(request, decision, workflow.now())
        run.unrecorded.append((request.request_id, request.decisions[-1]))

    @workflow.query(name="status")
    def status(self) -> RunStatus:
        return self._state().status()
