"""The AgentRun workflow: one agent, one task, hosted durably.

It validates the input, hosts the agent's LangGraph graph, and takes approvers' decisions
(as a validated Update, or as a signal for people in the Temporal UI). Everything that touches
the world is an activity the graph's nodes call.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

# The graph's nodes are registered with the plugin by the worker, outside the sandbox, so the
# models they build are the worker's. The workflow must use the very same classes: pass our
# (pure, deterministic) modules through instead of re-importing them in the sandbox. The
# sandbox re-executes this module for every run, so it defines no models of its own (building
# a pydantic class costs milliseconds).
with workflow.unsafe.imports_passed_through():
    from temporalio.langgraph import graph

    from agents.rollback import compensate
    from agents.state import (
        AGENT_RUN,
        RollbackRequest,
        RunResult,
        RunState,
        RunStatus,
        finished_status,
        parse_run_input,
    )
    from guardrails.approvals import (
        Decision,
        DecisionReceipt,
        DecisionRefused,
        apply_decision,
        check_decision,
    )


@workflow.defn(name=AGENT_RUN)
class AgentRun:
    def __init__(self) -> None:
        self._run: RunState | None = None
        self._undo_until: datetime | None = None
        self._rollback: RollbackRequest | None = None
        self._rolled_back = False

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
        try:
            final = await app.ainvoke(
                {"seq": 0, "observations": []},
                context=run,
                # Each step is at most four super-steps (plan, guard, approvals, act).
                config={"recursion_limit": 4 * run.max_steps + 10},
            )
        except (asyncio.CancelledError, Exception) as e:
            # Failed or cancelled part-way: undo what was done, newest first, then end as such.
            reason = (
                "run cancelled" if isinstance(e, asyncio.CancelledError) else f"run failed: {e}"
            )
            irreversible = await compensate(run, reason)
            await run.record("run.compensated", {"reason": reason, "irreversible": irreversible})
            raise
        result = RunResult(
            agent=run.agent.name,
            # Runs recorded before refusals were reported replay to the result they returned.
            status=finished_status(
                run.actions, final.get("stop_reason"), workflow.patched("run-refusals")
            ),
            stop_reason=final.get("stop_reason"),
            final_message=final.get("final", ""),
            steps=run.step,
            tokens=run.tokens,
            actions=run.actions,
        )
        if run_input.undo_window_seconds:
            result = await self._undo_window(run, result)
        run.show(result.status)
        await run.record("run.finished", result.model_dump(mode="json"))
        return result

    async def _undo_window(self, run: RunState, result: RunResult) -> RunResult:
        """Stay open for the undo window; a rollback Update inside it undoes the run."""
        window = timedelta(seconds=run.input.undo_window_seconds)
        self._undo_until = workflow.now() + window
        run.show("completed · undo window open")
        try:
            await workflow.wait_condition(lambda: self._rollback is not None, timeout=window)
        except TimeoutError:
            return result
        finally:
            self._undo_until = None
        assert self._rollback is not None
        reason = f"rollback by {self._rollback.requested_by}: {self._rollback.reason}"
        await run.record("rollback.requested", self._rollback.model_dump())
        irreversible = await compensate(run, reason)
        self._rolled_back = True
        return result.model_copy(
            update={"status": "rolled_back", "actions": run.actions, "irreversible": irreversible}
        )

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

    @workflow.update(name="rollback")
    async def rollback(self, request: RollbackRequest) -> None:
        """Undo a completed run inside its undo window; returns when the undo is done."""
        self._rollback = request
        await workflow.wait_condition(lambda: self._rolled_back)

    @rollback.validator
    def _validate_rollback(self, request: RollbackRequest) -> None:
        run = self._state()
        if self._rollback is not None:
            raise ApplicationError("this run is already being rolled back", non_retryable=True)
        if self._undo_until is None or workflow.now() >= self._undo_until:
            raise ApplicationError(
                "this run's undo window is not open (it opens when the run completes, "
                f"for {run.input.undo_window_seconds}s)",
                type="UndoWindowClosed",
                non_retryable=True,
            )
        if request.requested_by == run.agent.name:
            raise ApplicationError("the agent cannot roll back its own run", non_retryable=True)

    @workflow.query(name="status")
    def status(self) -> RunStatus:
        return self._state().status()
