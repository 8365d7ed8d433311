"""The guarded loop: plan → guard → (approvals) → act → plan …, the steps of every guarded
graph (agents/guarded.py adapts these nodes to messages; the built-in graph is built there).

The graph runs inside the AgentRun workflow through Temporal's LangGraph plugin, with every
node marked `execute_in="workflow"`: the nodes are deterministic workflow code and each I/O is
an activity they call with exactly what it needs. (Activity nodes would receive the whole
graph state as input, which copies the conversation into history on every step.)

Routers are `async def`: the plugin's workflow loop has no executor for sync routers.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, TypedDict

from langgraph.graph import END, StateGraph
from langgraph.runtime import Runtime
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, RetryState

from countersign.activities.agent_specs import GUARDED_LOOP
from countersign.activities.contracts import (
    DECIDE,
    NOTIFY,
    PLAN,
    RECONCILE,
    RELEASE,
    ApprovalNotice,
    GuardContext,
    GuardInput,
    GuardResult,
    ModelBounds,
    PlanInput,
    PlanOutput,
    Reconciliation,
    ToolCall,
    ToolOutcome,
    read_for,
    reserved_by,
    result_payload,
    sent_digest,
    tool_message,
    unused_reservations,
)
from countersign.activities.failures import cause_of
from countersign.agents.changes import decide_changed, gather_evidence, note_change
from countersign.agents.segments import segment_ends
from countersign.agents.state import (
    ATOMIC_TURNS,
    ActionRecord,
    RunState,
    model_bounds,
    patched,
    run_bookkeeping,
)
from countersign.guardrails.approvals import ApprovalRequest, new_request
from countersign.guardrails.policy import Proposal

GRAPH_NAME = GUARDED_LOOP

# Business failures the model should hear about; anything else fails the run.
_MODEL_VISIBLE_ERRORS = {"ToolRejected", "KillSwitch", "InvalidToolArguments"}


class LoopState(TypedDict, total=False):
    seq: int
    observations: list[dict[str, Any]]
    proposals: list[Proposal]
    guarded: list[GuardResult]
    final: str
    stop_reason: str | None


async def plan(state: LoopState, runtime: Runtime[RunState]) -> LoopState:
    run = runtime.context
    run.step += 1
    run.show("planning")
    taken = _take_ahead(run, state)
    # Verdicts of an earlier reply no node guarded: their actions will not run as decided.
    await release_undecided(run)
    if run.model_bounds is None:
        run.model_bounds = await model_bounds(run)
    bounds = run.model_bounds
    if taken is not None:
        out = taken
    else:
        await drop_ahead(run)
        try:
            out = await _plan(run, state, bounds)
        except ActivityError as e:
            run.failure = cause_of(e, max_attempts=bounds.max_attempts)
            raise
        run.ahead = list(out.ahead)
    run.tokens += out.usage.prompt_tokens + out.usage.completion_tokens
    if out.verdicts and len(out.verdicts) == len(out.proposals):
        run.decided = {p.call_id: (p, g) for p, g in zip(out.proposals, out.verdicts, strict=True)}
    # Reads of an earlier reply nothing took are dropped (they changed nothing).
    run.reads = out.reads if run.reads_in_model else {}
    if out.refused:
        # The model's replies were refused twice (activities/model.py): nothing executes.
        return {
            "seq": out.seq,
            "observations": [],
            "proposals": [],
            "final": f"stopped: the model's reply was refused: {out.refused}",
            "stop_reason": "model_reply_refused",
        }
    return {"seq": out.seq, "observations": [], "proposals": out.proposals, "final": out.content}


def _take_ahead(run: RunState, state: LoopState) -> PlanOutput | None:
    """The step the model call already took for this one (read-ahead), when this step sends
    the model exactly what that one sent; the steps after it stay queued."""
    if not run.ahead:
        return None
    step = run.ahead[0]
    sent = sent_digest(state.get("seq", 0), state.get("observations", []))
    if step.step != run.step or step.sent != sent:
        return None
    return run.ahead.pop(0)


async def drop_ahead(run: RunState) -> None:
    """Give back the limits of the steps taken ahead that the run does not use (a graph sent
    the model something else, or the run ended first)."""
    ahead, run.ahead = run.ahead, []
    for out in ahead:
        # The reads that ran keep theirs: they happened.
        for action_hash in unused_reservations(out.verdicts, out.reads):
            await release_limits(action_hash)


def _ahead_budget(run: RunState) -> int:
    """How many steps the model call may take ahead: the agent's steps_ahead, within the
    run's steps and this segment's (a long run continues as new at its boundary)."""
    if not (run.agent.steps_ahead and run.guards_in_model and run.reads_in_model):
        return 0
    budget = min(run.agent.steps_ahead, run.max_steps - run.step)
    if run.segmented and run.agent.segment_steps:
        budget = min(budget, run.segment_start + run.agent.segment_steps - run.step)
    return max(budget, 0)


async def _plan(run: RunState, state: LoopState, bounds: ModelBounds) -> PlanOutput:
    ahead = _ahead_budget(run)
    out: PlanOutput = await workflow.execute_activity(
        PLAN,
        PlanInput(
            agent=run.agent.name,
            task=run.input.task,
            # The model is told what the run is about; the guard holds it to that.
            context={**run.input.context, **run.input.subject},
            seq=state.get("seq", 0),
            new_messages=state.get("observations", []),
            step=run.step,
            guard=GuardContext(
                requested_mode=run.input.mode,
                requested_by=run.input.requested_by,
                subject=dict(run.input.subject),
                reads=run.reads_in_model,
            )
            if run.guards_in_model
            else None,
            ahead=ahead,
            tokens_left=run.agent.max_tokens - run.tokens if ahead else None,
        ),
        result_type=PlanOutput,
        start_to_close_timeout=timedelta(seconds=bounds.start_to_close_seconds),
        heartbeat_timeout=_seconds(bounds.heartbeat_seconds),
        retry_policy=RetryPolicy(
            maximum_attempts=bounds.max_attempts, maximum_interval=timedelta(seconds=20)
        ),
        summary=f"model: step {run.step}" + (f" (reads ahead: up to {ahead})" if ahead else ""),
    )
    return out


def _seconds(value: float | None) -> timedelta | None:
    return timedelta(seconds=value) if value else None


async def after_plan(state: LoopState, runtime: Runtime[RunState]) -> str:
    return "guard" if state.get("proposals") else END


async def decide_proposal(run: RunState, proposal: Proposal) -> GuardResult:
    """The guard's verdict on one proposal (an activity: the policy may change any time; its
    verdict is recorded in history)."""
    return await run_bookkeeping(
        DECIDE,
        GuardInput(
            agent=run.agent.name,
            proposal=proposal,
            requested_mode=run.input.mode,
            requested_by=run.input.requested_by,
            subject=dict(run.input.subject),
        ),
        result_type=GuardResult,
        summary=f"guard: {proposal.tool}",
    )


async def guard(state: LoopState, runtime: Runtime[RunState]) -> LoopState:
    run = runtime.context
    decided, run.decided = run.decided, {}
    ready = [_decided_for(p, decided) for p in state["proposals"]]
    if any(g is None for g in ready):
        # The stage is shown while the guard decides here. What the model call decided needs
        # no stage of its own (it would be a search-attribute upsert, an event, per step).
        run.show("guarding")
    guarded = await asyncio.gather(
        *[
            _ready(g) if g else decide_proposal(run, p)
            for p, g in zip(state["proposals"], ready, strict=True)
        ]
    )
    # What the model call decided and nothing here used (a graph changed or dropped the call)
    # gives its limits back; a changed call was decided again (and keeps what that reserved).
    held = {g.verdict.action_hash for g in guarded}
    for _, unused in decided.values():
        if reserved_by(unused) not in held:
            await release_limits(reserved_by(unused))
    return {"guarded": list(guarded)}


def _decided_for(
    proposal: Proposal, decided: dict[str, tuple[Proposal, GuardResult]]
) -> GuardResult | None:
    """The model call's verdict (taken out of `decided`) when it was decided on exactly this
    proposal: same call id, tool, arguments and reason (a graph may edit a reply's tool calls
    before this node). None: the guard must decide it now."""
    found = decided.get(proposal.call_id)
    if found is not None and found[0] == proposal and found[1].verdict.call_id == proposal.call_id:
        del decided[proposal.call_id]
        return found[1]
    return None


async def _ready(g: GuardResult) -> GuardResult:
    return g


async def release_undecided(run: RunState) -> None:
    """Give back the limits of verdicts the model call reserved that no guard node took."""
    decided, run.decided = run.decided, {}
    for _, g in decided.values():
        await release_limits(reserved_by(g))


async def after_guard(state: LoopState, runtime: Runtime[RunState]) -> str:
    needs = any(g.verdict.outcome == "needs_approval" for g in state["guarded"])
    return "approvals" if needs else "act"


async def approvals(state: LoopState, runtime: Runtime[RunState]) -> LoopState:
    """Open one approval request per proposal that needs one, and wait until all are settled.
    An action approved with changes is decided again, and may wait for approval again."""
    run = runtime.context
    info = workflow.info()
    reasons = {p.call_id: p.reason for p in state["proposals"]}
    guarded = list(state["guarded"])
    opened: list[ApprovalRequest] = []
    for g in guarded:
        if g.verdict.outcome != "needs_approval":
            continue
        request = new_request(
            workflow_id=info.workflow_id,
            verdict=g.verdict,
            reason=reasons[g.verdict.call_id],
            requested_by=run.input.requested_by,
            requester=run.requester,
            agent=run.agent.name,
            now=workflow.now(),
        )
        if run.gathers_evidence:
            request.may_change = dict(g.approver_may_change)
        opened.append(await _open(run, request, g.verdict.mode, announce=True))
    while opened:
        run.show("waiting for approval")
        await _wait_until_settled(run, opened)
        for request in opened:
            if request.request_id not in run.announced:
                await _notify(run, "settled", request)
            if request.status == "approved":
                await run.record(
                    "approval.granted",
                    {
                        "request_id": request.request_id,
                        "action_hash": request.action_hash,
                        "approvers": request.approvers,
                        "rule_ids": request.rule_ids,
                    },
                )
        changed = [r for r in opened if r.status == "changed"]
        opened = []
        for request in changed:
            g, follow = await decide_changed(run, request)
            guarded = [g if x.verdict.call_id == request.call_id else x for x in guarded]
            if follow is not None:
                # Not announced when the approver's own signature already settles it.
                announce = follow.status == "pending"
                opened.append(await _open(run, follow, g.verdict.mode, announce=announce))
    return {"guarded": guarded}


async def _open(
    run: RunState, request: ApprovalRequest, mode: str, *, announce: bool
) -> ApprovalRequest:
    """Gather the request's evidence, record it as requested and announce it."""
    info = workflow.info()
    if run.gathers_evidence:
        request.evidence = await gather_evidence(run, request)
    run.requests[request.request_id] = request
    # From here the run takes decisions on it and its status says pending: Current Details
    # says so too, while its record and notices are written (an email can take seconds).
    run.show("waiting for approval", upsert=False)
    await run.record(
        "approval.requested",
        {
            "request_id": request.request_id,
            "agent": run.agent.name,
            "mode": mode,
            "action": request.summary(),
            "action_hash": request.action_hash,
            "rule_ids": request.rule_ids,
            "eligible": request.need.eligible,
            "quorum": request.need.quorum,
            "expires_at": request.expires_at.isoformat(),
            "how_to_approve": f"countersign approve {info.workflow_id} "
            f"{request.request_id} --as NAME",
            **({"changed_from": request.changed_from} if request.changed_from else {}),
        },
    )
    if announce:
        await _notify(run, "requested", request)
    return request


async def _notify(run: RunState, event: str, request: ApprovalRequest) -> None:
    """Best effort: approvers can always answer from the CLI or the UI."""
    try:
        await workflow.execute_activity(
            NOTIFY,
            ApprovalNotice(
                event=event,  # type: ignore[arg-type]
                workflow_id=workflow.info().workflow_id,
                agent=run.agent.name,
                task=run.input.task,
                request=request,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
            result_type=list,
            summary=f"notify: {event} {request.request_id}",
        )
    except ActivityError as e:
        if isinstance(e.cause, CancelledError):
            raise  # the run is being cancelled: do not swallow it
        workflow.logger.warning("approval notice failed: %s", e.cause or e)


async def _wait_until_settled(run: RunState, requests: list[ApprovalRequest]) -> None:
    while True:
        await _record_decisions(run)
        if run.reminds:
            for r in requests:
                if r.status != "pending" and r.request_id not in run.announced:
                    run.announced.add(r.request_id)
                    await _notify(run, "settled", r)
        pending = [r for r in requests if r.status == "pending"]
        if not pending:
            return
        run.show("waiting for approval")
        wake = min(r.expires_at for r in pending)
        if run.reminds:
            wake = min([wake, *(at for r in pending if (at := _reminder_due(run, r)))])
        wait = wake - workflow.now()
        try:
            if wait <= timedelta(0):
                raise TimeoutError
            await workflow.wait_condition(lambda: bool(run.unrecorded or run.refused), timeout=wait)
        except TimeoutError:
            for r in pending:
                if r.expires_at <= workflow.now():
                    await _expire_or_escalate(run, r)
                elif run.reminds and (at := _reminder_due(run, r)) and at <= workflow.now():
                    await _remind(run, r)


def _reminder_due(run: RunState, r: ApprovalRequest) -> datetime | None:
    """When the request's reminder is due, or None: no reminder for it, or already sent."""
    if r.need.remind_before is None or f"{r.request_id}@{r.expires_at}" in run.reminded:
        return None
    return r.expires_at - r.need.remind_before


async def _remind(run: RunState, r: ApprovalRequest) -> None:
    """Remind those who may decide and have not, through the same notice as the request."""
    run.reminded.add(f"{r.request_id}@{r.expires_at}")
    not_them = {d.approver for d in r.decisions} | {r.requested_by, r.agent}
    await run.record(
        "approval.reminded",
        {
            "request_id": r.request_id,
            "to": [p for p in r.need.eligible if p not in not_them],
            "expires_at": r.expires_at.isoformat(),
        },
    )
    await _notify(run, "reminder", r)


async def _expire_or_escalate(run: RunState, r: ApprovalRequest) -> None:
    """On expiry a request escalates once, if its rule says to whom; otherwise it is rejected."""
    need = r.need
    if need.escalate_to and not r.escalated:
        r.escalated = True
        need.eligible = sorted(set(need.eligible) | set(need.escalate_members))
        r.expires_at = workflow.now() + need.timeout
        await run.record(
            "approval.escalated",
            {
                "request_id": r.request_id,
                "to": need.escalate_to,
                "eligible": need.eligible,
                "expires_at": r.expires_at.isoformat(),
            },
        )
        await _notify(run, "requested", r)
        return
    r.status = "expired"
    await run.record(
        "approval.expired",
        {
            "request_id": r.request_id,
            "action_hash": r.action_hash,
            "outcome": "rejected",
            "expired_at": workflow.now().isoformat(),
        },
    )


async def _record_decisions(run: RunState) -> None:
    while run.unrecorded:
        request_id, decision = run.unrecorded.pop(0)
        await run.record(
            "approval.decided",
            {"request_id": request_id, **decision.model_dump(mode="json")},
            actor=f"{decision.channel}:{decision.approver}",
        )
    while run.refused:
        await run.record("approval.refused", run.refused.pop(0))


async def act(state: LoopState, runtime: Runtime[RunState]) -> LoopState:
    """Execute what may be executed; every proposal gets exactly one observation back.

    The side effects proposed in one turn are a unit (agent spec `turn="atomic"`, the
    default): when one of them is denied, rejected, expires, fails or is blocked, the turn's
    other side effects are skipped, each saying why. Reads still run.
    """
    run = runtime.context
    run.show("acting")
    requests = {r.call_id: r for r in run.requests.values()}
    # Why this turn's remaining side effects must not run (None: nothing refused so far).
    refused = _refused_in_turn(run, state["guarded"], requests)
    observations = []
    for g in state["guarded"]:
        v = g.verdict
        record = ActionRecord(
            call_id=v.call_id,
            tool=v.tool,
            arguments=v.arguments,
            status="denied",
            rule_ids=v.rule_ids,
            detail=v.reason,
            read_only=v.read_only,
            action_hash=v.action_hash,
        )
        request = requests.get(v.call_id) if v.outcome == "needs_approval" else None
        if request is not None:
            record.request_id = request.request_id
            record.approved_by = request.approvers
        if v.outcome == "deny":
            payload = {"error": f"denied by the guard: {v.reason}", "rule_ids": v.rule_ids}
        elif v.outcome == "shadow":
            record.status = "shadow"
            payload = {"shadow": f"not executed (shadow mode): {v.tool} was recorded only"}
        elif request is not None and request.status != "approved":
            record.status = "expired" if request.status == "expired" else "rejected"
            record.detail = _refusal(request)
            payload = {"error": f"not approved: {record.detail}"}
        elif refused is not None and not g.tool_read_only:
            record.status = "skipped"
            record.detail = f"not executed: {refused}"
            payload = {"error": f"not executed, the turn's side effects are one unit: {refused}"}
        else:
            try:
                payload = await execute_action(run, g, record)
            except ActivityError as e:
                if not run.reconciles_unknown_outcomes:
                    # The run fails here; the action did not complete, so its limits go back.
                    await release_limits(v.action_hash)
                    raise
                payload = await settle_failed_action(run, g, record, e)
            if refused is None and record.status in ("failed", "blocked") and _atomic(run):
                refused = f"{v.tool} ({v.call_id}) in the same turn {record.status}: "
                refused += record.detail
        if record.status in ("rejected", "expired", "failed", "blocked", "skipped"):
            await release_limits(v.action_hash)
        payload = note_change(run, record, payload)
        run.actions.append(record)
        observations.append(tool_message(v.call_id, payload))
    run.show("acting")
    return {"observations": observations, "proposals": [], "guarded": []}


def _atomic(run: RunState) -> bool:
    # Runs recorded before atomic turns replay as they ran (each action on its own).
    return run.agent.turn == "atomic" and patched(ATOMIC_TURNS)


def _refused_in_turn(
    run: RunState, guarded: list[GuardResult], requests: dict[str, ApprovalRequest]
) -> str | None:
    """Why a turn's side effects are skipped before any runs: one was denied, rejected or
    expired. None when the turn is not atomic or nothing was refused."""
    side_effects = [g for g in guarded if not g.tool_read_only and g.verdict.outcome != "shadow"]
    if len(side_effects) < 2:
        return None
    for g in side_effects:
        v = g.verdict
        request = requests.get(v.call_id) if v.outcome == "needs_approval" else None
        if v.outcome == "deny":
            why = f"denied by the guard: {v.reason}"
        elif request is not None and request.status != "approved":
            why = f"{'expired' if request.status == 'expired' else 'rejected'}: {_refusal(request)}"
        else:
            continue
        return f"{v.tool} ({v.call_id}) in the same turn was {why}" if _atomic(run) else None
    return None


async def settle_failed_action(
    run: RunState, g: GuardResult, record: ActionRecord, error: ActivityError
) -> dict[str, Any]:
    """An action's activity failed for good. Before calling a side effect failed, ask its
    system of record (under the same idempotency key) whether it happened: a timeout or a
    lost answer says nothing about that.

    Happened: the action is executed (counted, undone if the run later fails) and the run
    goes on. Did not: it failed, its limits go back. Nobody can tell: it is recorded as
    unknown, keeps its limits, and needs a person. Either way but the first, the run fails.
    """
    v = g.verdict
    cause = cause_of(error, max_attempts=g.tool_max_attempts)
    record.status, record.detail = "failed", cause.describe()
    found = ""
    # A non-retryable failure is a definite answer, audited by the activity that raised it.
    definite = error.retry_state == RetryState.NON_RETRYABLE_FAILURE
    if not definite and not g.tool_read_only:
        reconciliation = await _reconcile(run, g, record)
        if reconciliation.status == "executed" and reconciliation.outcome is not None:
            record.detail = f"reconciled after: {cause.describe()}"
            return _executed(record, reconciliation.outcome)
        found = reconciliation.detail
        if reconciliation.status == "unknown":
            record.status = "unknown"
            record.detail = f"{cause.describe()}; whether it happened is unknown: {found}"
    run.failure = cause
    if record.status == "failed":
        await release_limits(v.action_hash)
    if not definite:
        await run.record(
            f"action.{record.status}",
            {
                "tool": v.tool,
                "call_id": v.call_id,
                "action_hash": v.action_hash,
                "arguments": v.arguments,
                "error": str(error.cause or error),
                "cause": cause.model_dump(),
                "reconciliation": found,
            },
        )
    run.actions.append(record)
    raise error


async def _reconcile(run: RunState, g: GuardResult, record: ActionRecord) -> Reconciliation:
    v = g.verdict
    assert v.arguments is not None and v.action_hash is not None
    try:
        return await workflow.execute_activity(
            RECONCILE,
            ToolCall(
                tool=v.tool,
                call_id=v.call_id,
                arguments=v.arguments,
                action_hash=v.action_hash,
                agent=run.agent.name,
            ),
            result_type=Reconciliation,
            start_to_close_timeout=timedelta(seconds=g.tool_timeout_seconds),
            heartbeat_timeout=_seconds(g.tool_heartbeat_seconds),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=10),
                maximum_attempts=g.tool_max_attempts,
            ),
            summary=f"reconcile {v.tool} {record.call_id}",
        )
    except ActivityError as e:
        if isinstance(e.cause, CancelledError):
            raise
        return Reconciliation(
            status="unknown",
            detail=f"asking failed too: {cause_of(e, max_attempts=g.tool_max_attempts).describe()}",
        )


def _executed(record: ActionRecord, outcome: ToolOutcome) -> dict[str, Any]:
    record.status = "executed"
    record.result = outcome.result
    record.idempotency_key = outcome.idempotency_key
    record.compensation = outcome.compensation
    return result_payload(outcome)


async def release_limits(action_hash: str | None) -> None:
    """An action that will not happen gives back the limits its verdict reserved."""
    if action_hash is None:
        return
    await run_bookkeeping(
        RELEASE, action_hash, result_type=int, summary=f"release limits {action_hash[:16]}"
    )


def _refusal(request: ApprovalRequest) -> str:
    if request.status == "expired":
        return f"approval request {request.request_id} expired without a decision"
    no = [d for d in request.decisions if not d.approve]
    who = no[-1] if no else None
    return f"rejected by {who.approver}: {who.comment or 'no comment'}" if who else "rejected"


async def execute_action(run: RunState, g: GuardResult, record: ActionRecord) -> dict[str, Any]:
    """Run an allowed action's tool activity; fills `record`, returns what the model sees."""
    v = g.verdict
    assert v.arguments is not None and v.action_hash is not None
    # A read the model call already executed, under this very verdict (a call a graph edited
    # was decided again: its hash differs, and it runs below).
    read = read_for(g, run.reads)
    if read is not None:
        del run.reads[v.action_hash]
        return _executed(record, read)
    # Reads (short, idempotent, no side effect) run as local activities, on this worker with
    # no round trip through the server's task queue; side effects stay ordinary activities,
    # visible and routed like any other.
    # (Summaries label ordinary activities only: see state.run_bookkeeping.)
    local = g.tool_read_only
    call = ToolCall(
        tool=v.tool,
        call_id=v.call_id,
        arguments=v.arguments,
        action_hash=v.action_hash,
        agent=run.agent.name,
    )
    options: dict[str, Any] = {
        "result_type": ToolOutcome,
        "start_to_close_timeout": timedelta(seconds=g.tool_timeout_seconds),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1),
            maximum_interval=timedelta(seconds=10),
            maximum_attempts=g.tool_max_attempts,
        ),
    }
    try:
        if local:
            outcome: ToolOutcome = await workflow.execute_local_activity(v.tool, call, **options)
        else:
            outcome = await workflow.execute_activity(
                v.tool,
                call,
                heartbeat_timeout=_seconds(g.tool_heartbeat_seconds),
                summary=f"{v.tool} {record.call_id}",
                **options,
            )
    except ActivityError as e:
        cause = e.cause
        if isinstance(cause, ApplicationError) and cause.type in _MODEL_VISIBLE_ERRORS:
            record.status = "blocked" if cause.type == "KillSwitch" else "failed"
            record.detail = cause.message
            return {"error": cause.message}
        raise
    return _executed(record, outcome)


async def after_act(state: LoopState, runtime: Runtime[RunState]) -> str:
    run = runtime.context
    if run.step >= run.max_steps or run.tokens >= run.agent.max_tokens:
        return "stop"
    return END if segment_ends(run) else "plan"


async def stop(state: LoopState, runtime: Runtime[RunState]) -> LoopState:
    run = runtime.context
    limit = "max_steps" if run.step >= run.max_steps else "max_tokens"
    return {"stop_reason": limit}


def build_graph() -> StateGraph[Any, RunState, Any, Any]:
    """The built-in guarded loop: the guarded agent of agents/guarded.py, whose nodes adapt
    this module's (a fresh graph: the plugin mutates the graph it is given, one per worker)."""
    from countersign.agents.guarded import create_guarded_agent  # it builds on this module's nodes

    return create_guarded_agent()
