"""The AgentRun workflow: one agent, one task, hosted durably.

It validates the input, hosts the agent's LangGraph graph, and takes approvers' decisions
(as a validated Update, or as a signal for people in the Temporal UI). Everything that touches
the world is an activity the graph's nodes call.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

# The graph's nodes are registered with the plugin by the worker, outside the sandbox, so the
# models they build are the worker's. The workflow must use the very same classes: pass our
# (pure, deterministic) modules through instead of re-importing them in the sandbox. The
# sandbox re-executes this module for every run, so it defines no models of its own (building
# a pydantic class costs milliseconds).
with workflow.unsafe.imports_passed_through():
    from temporalio.langgraph import graph

    from countersign.activities.failures import cause_of
    from countersign.agents.graph import drop_ahead, release_undecided
    from countersign.agents.graph_registry import compiled
    from countersign.agents.rollback import compensate
    from countersign.agents.segments import carried_in, continue_as_new, kept_actions, restore
    from countersign.agents.state import (
        AGENT_RUN,
        RUN_REFUSALS,
        RollbackRequest,
        RunResult,
        RunState,
        RunStatus,
        StatementRefusedError,
        finished_status,
        parse_run_input,
        patched,
        verify_statement,
    )
    from countersign.guardrails.approvals import (
        ApprovalRequest,
        Decision,
        DecisionReceipt,
        DecisionRefused,
        apply_decision,
        check_decision,
        check_statement,
        decision_from,
    )
    from countersign.guardrails.errors import describe
    from countersign.guardrails.identity import Envelope
    from countersign.guardrails.policy import canonical_json


@workflow.defn(name=AGENT_RUN)
class AgentRun:
    def __init__(self) -> None:
        self._run: RunState | None = None
        self._signed = False
        self._undo_until: datetime | None = None
        self._rollback: RollbackRequest | None = None
        self._rolled_back = False

    @workflow.run
    async def run(self, input: Any) -> RunResult:
        """Typed `Any` on purpose: a payload that failed to decode would fail the workflow task
        in a retry loop; validating here fails the run at once, naming the bad field."""
        carried = carried_in(input)  # a long run's next segment (agents/segments.py)
        run_input = carried.input if carried else parse_run_input(input)
        run = self._run = RunState(run_input)
        self._signed = run.signed  # every patch is decided as the run state is made
        start: dict[str, Any] = {"seq": 0, "observations": []}
        if carried:
            start = restore(run, carried)
        else:
            await self._start(run)
        app = compiled(graph(run.agent.graph))
        try:
            final = await app.ainvoke(
                start,
                context=run,
                # Each step is at most four super-steps (plan, guard, approvals, act).
                config={"recursion_limit": 4 * run.max_steps + 10},
            )
        except (asyncio.CancelledError, Exception) as e:
            # Failed or cancelled part-way: undo what was done, newest first, then end as such.
            cancelled = isinstance(e, asyncio.CancelledError)
            cause = cause_of(e) if cancelled else run.failure or cause_of(e)
            reason = "run cancelled" if cancelled else f"run failed: {cause.describe()}"
            irreversible = await compensate(run, reason)
            await run.record(
                "run.compensated",
                {"reason": reason, "irreversible": irreversible, "cause": cause.model_dump()},
            )
            raise
        # Verdicts the model call decided for a reply that no node guarded (a custom graph
        # that ended there): their limits go back.
        await release_undecided(run)
        await drop_ahead(run)
        if run.continue_due:
            await continue_as_new(run, final)
        result = RunResult(
            agent=run.agent.name,
            # Runs recorded before refusals were reported replay to the result they returned.
            status=finished_status(
                run.actions,
                final.get("stop_reason"),
                patched(RUN_REFUSALS),
                run.refused_before,
            ),
            stop_reason=final.get("stop_reason"),
            final_message=final.get("final", ""),
            steps=run.step,
            tokens=run.tokens,
            actions=kept_actions(run),
        )
        if run_input.undo_window_seconds:
            result = await self._undo_window(run, result)
        run.show(result.status)
        await run.record("run.finished", result.model_dump(mode="json"))
        return result

    async def _start(self, run: RunState) -> None:
        """The requester (proven by a signed start statement, or only claimed) and the audit
        record of the start."""
        run_input = run.input
        if not self._signed:
            run.requester = run_input.requested_by  # as runs recorded before took it
        elif run_input.requester_proof is not None:
            run.requester = await self._verify_requester(run_input)
        proven = run.requester is not None and self._signed
        await run.record(
            "run.started",
            {
                **run_input.model_dump(mode="json", exclude={"requester_proof"}),
                **({"requester": {"verified": proven}} if self._signed else {}),
            },
            actor=f"requester:{run_input.requested_by}"
            + ("" if proven or not self._signed else " (claimed)"),
        )

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
        await run.record(
            "rollback.requested",
            self._rollback.model_dump(mode="json"),
            actor=f"operator:{self._rollback.requested_by}",
        )
        irreversible = await compensate(run, reason)
        self._rolled_back = True
        return result.model_copy(
            update={
                "status": "rolled_back",
                "actions": kept_actions(run),
                "irreversible": irreversible,
            }
        )

    def _state(self) -> RunState:
        if self._run is None:
            raise ApplicationError("the run has not started yet", type="RunNotStarted")
        return self._run

    async def _verify_requester(self, run_input: Any) -> str:
        """The requester a signed start statement proves; a bad proof fails the run at once."""
        proof: Envelope = run_input.requester_proof
        s = proof.statement
        try:
            if s.purpose != "start" or s.workflow_id != workflow.info().workflow_id:
                raise StatementRefusedError("the start statement is signed for another run")
            if s.claims.get("input") != run_input.digest():
                raise StatementRefusedError("the start statement is signed for another input")
            if s.nonce in self._state().nonces:
                raise StatementRefusedError("this signed statement was already used")
            self._state().nonces.add(s.nonce)
            verified = await verify_statement(proof)
            if verified.identity != run_input.requested_by:
                raise StatementRefusedError(
                    f"requested_by is {run_input.requested_by!r} but the start request is "
                    f"signed by {verified.identity!r}"
                )
        except StatementRefusedError as e:
            await self._state().record(
                "run.refused", {"reason": str(e)}, actor=f"requester:{s.identity} (claimed)"
            )
            raise ApplicationError(
                f"invalid run input: requester_proof: {e}",
                type="InvalidRunInput",
                non_retryable=True,
            ) from None
        return verified.identity

    async def _accept_decision(self, payload: Any, via: str) -> ApprovalRequest:
        """Apply a signed decision, or record why not (in the audit, and in Current Details)
        and raise DecisionRefused."""
        run = self._state()
        typed = payload.get("approver") if isinstance(payload, dict) else None
        claimed = str(typed)[:100] if typed is not None else None  # bounded: it is shown
        channel, proven = via, False
        try:
            envelope = _envelope_of(payload)
            claimed, channel = envelope.statement.identity, envelope.statement.channel
            check_statement(
                run.requests,
                envelope.statement,
                workflow_id=workflow.info().workflow_id,
                used_nonces=run.nonces,
            )
            try:
                verified = await verify_statement(envelope)
            except StatementRefusedError as e:
                raise DecisionRefused(str(e)) from None
            proven = True
            # Checked again after the signature: the same envelope (or another decision) may
            # have been accepted meanwhile. Only a proven envelope uses up its nonce, so a
            # forged copy cannot burn the real one.
            check_statement(
                run.requests,
                envelope.statement,
                workflow_id=workflow.info().workflow_id,
                used_nonces=run.nonces,
            )
            run.nonces.add(envelope.statement.nonce)
            decision = decision_from(envelope, verified)
            request = check_decision(run.requests, decision)
        except DecisionRefused as e:
            who = f"{channel}:{claimed or '?'}" + ("" if proven else " (unverified)")
            # Only the latest few are shown: a flood of bad signals must not grow the state.
            run.refusals = [*run.refusals[-4:], f"{who}: {e}"]
            await run.record(
                "approval.refused",
                {"reason": str(e), "channel": via, "claimed": claimed, "payload": _shown(payload)},
                actor=who,
            )
            run.show(run.stage)
            raise
        apply_decision(request, decision, workflow.now())
        run.unrecorded.append((request.request_id, request.decisions[-1]))
        return request

    @workflow.update(name="decide")
    async def decide(self, payload: Any) -> DecisionReceipt:
        """An approver's decision: a signed envelope (CLI, gateway). Refusals are audited and
        returned to the sender as the Update's failure."""
        run = self._state()
        if not self._signed:
            return self._legacy_decide(Decision.model_validate(payload))
        try:
            request = await self._accept_decision(payload, via="update")
        except DecisionRefused as e:
            raise ApplicationError(str(e), type="DecisionRefused", non_retryable=True) from None
        decision = request.decisions[-1]
        return DecisionReceipt(
            **decision.model_dump(exclude={"decided_at", "proof"}),
            status=request.status,
            approvals=len(request.approvers),
            quorum=run.requests[request.request_id].need.quorum,
        )

    def _legacy_decide(self, decision: Decision) -> DecisionReceipt:
        """Runs recorded before signed identities: the typed name, checked as it was."""
        run = self._state()
        try:
            request = check_decision(run.requests, decision)
        except DecisionRefused as e:
            raise ApplicationError(str(e), type="DecisionRefused", non_retryable=True) from None
        apply_decision(request, decision, workflow.now())
        run.unrecorded.append((request.request_id, request.decisions[-1]))
        return DecisionReceipt(
            **decision.model_dump(),
            status=request.status,
            approvals=len(request.approvers),
            quorum=request.need.quorum,
        )

    @workflow.signal(name="decision")
    async def decision_signal(self, payload: Any) -> None:
        """The same decision, for people using the Temporal UI's "Send a Signal": paste the
        envelope `countersign approve … --print` prints. Signals cannot be refused, so a bad
        one is audited and shown under Current Details instead."""
        run = self._state()
        if not self._signed:
            self._legacy_signal(run, payload)
            return
        with contextlib.suppress(DecisionRefused):
            await self._accept_decision(payload, via="temporal-ui")

    def _legacy_signal(self, run: RunState, payload: Any) -> None:
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
        """Undo a completed run inside its undo window; returns when the undo is done.

        The rollback must be signed by a verified identity in a group the policy's
        `[authority] rollback` names; every refusal is audited."""
        if self._signed:
            try:
                request = await self._verified_rollback(request)
            except StatementRefusedError as e:
                await self._state().record(
                    "rollback.refused",
                    {"reason": str(e), "claimed": request.requested_by},
                    actor=f"operator:{request.requested_by} (unverified)",
                )
                raise ApplicationError(
                    f"rollback refused: {e}", type="RollbackRefused", non_retryable=True
                ) from None
        self._rollback = request
        await workflow.wait_condition(lambda: self._rolled_back)

    async def _verified_rollback(self, request: RollbackRequest) -> RollbackRequest:
        run = self._state()
        try:
            self._check_rollback_window(request)
        except ApplicationError as e:
            raise StatementRefusedError(e.message) from None
        proof = request.proof
        if proof is None:
            raise StatementRefusedError(
                "a rollback must be signed by the operator (countersign rollback signs it); "
                "a typed name proves nothing"
            )
        s = proof.statement
        if s.purpose != "rollback" or s.workflow_id != workflow.info().workflow_id:
            raise StatementRefusedError("the rollback statement is signed for another run")
        if s.claims.get("reason") != request.reason:
            raise StatementRefusedError("the rollback statement is signed for another reason")
        if s.nonce in run.nonces:
            raise StatementRefusedError("this signed statement was already used")
        run.nonces.add(s.nonce)
        verified = await verify_statement(proof, authority="rollback")
        if verified.identity == run.agent.name:
            raise StatementRefusedError("the agent cannot roll back its own run")
        # The window may have closed while the signature was checked.
        self._check_rollback_window(request)
        return request.model_copy(update={"requested_by": verified.identity})

    @rollback.validator
    def _validate_rollback(self, request: RollbackRequest) -> None:
        if not self._signed:
            self._check_rollback_window(request)

    def _check_rollback_window(self, request: RollbackRequest) -> None:
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

    def waits_on_people(self) -> bool:
        """Parked: waiting only for approvers (the worker may evict the run from its cache
        until a decision arrives; workers/sandbox.py Parking). Reads state, changes nothing."""
        run = self._run
        return run is not None and run.stage == "waiting for approval" and bool(run.pending())


def _envelope_of(payload: Any) -> Envelope:
    """The signed envelope in an Update or signal payload; a bare name is refused."""
    if isinstance(payload, dict) and "envelope" in payload:
        payload = payload["envelope"]
    if not (isinstance(payload, dict) and "statement" in payload and "signature" in payload):
        raise DecisionRefused(
            "a decision must be a signed envelope: a typed name proves nothing. Sign it with "
            "your key: `countersign approve RUN REQUEST --as NAME` (or `--print` to paste it "
            "here), or answer from Slack or your email link"
        )
    try:
        return Envelope.model_validate(payload)
    except ValidationError as e:
        raise DecisionRefused(f"malformed envelope: {describe(e)}") from None


def _shown(payload: Any) -> Any:
    """A bounded copy of a refused payload for the audit (a flood must not bloat it)."""
    text = canonical_json(payload) if isinstance(payload, dict | list) else repr(payload)
    return text if len(text) <= 2000 else text[:2000] + "…"
