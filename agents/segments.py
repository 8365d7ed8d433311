"""Long runs: a run continues as new at step boundaries, so each history segment stays bounded.

An agent opts in with `AgentSpec.segment_steps`. After a step that leaves no approval pending,
once its segment has run that many steps (or Temporal suggests it, its history growing large),
the graph stops and the run continues as new: same workflow id, a new run id, a fresh history,
and a `Carried` as its input. What is keyed by the workflow id goes on as it is: the
conversation in the transcript store (and its context-window summary), the audit trail, the
limits ledger and the facts the guard reads from the audit. What lived only in the workflow's
memory is carried: the input and subject, the proven requester, step and token counts, the used
nonces, the executed side effects (rollback undoes them across segments, newest first) and the
last action (Current Details and search attributes go on showing it).

Workflow code: deterministic, no I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from countersign.agents.state import REFUSED, ActionRecord, RunInput, RunState
from countersign.guardrails.errors import describe


class Carried(BaseModel):
    """What a run hands to its next segment (the continue-as-new input, under `continued`)."""

    input: RunInput
    # The segment this input starts: 2 for the first continuation.
    segment: int
    step: int
    tokens: int
    # The conversation's position in the transcript store, and the last step's tool results,
    # which the next model call writes there.
    seq: int
    observations: list[dict[str, Any]]
    requester: str | None
    nonces: list[str]
    # Executed side effects and those whose outcome is unknown (rollback and the result need
    # them; without their results), then the last action; reads before it and every result are
    # in the audit trail.
    actions: list[ActionRecord]
    # An earlier segment refused an action: the run ends completed_with_refusals.
    refused: bool
    refusals: list[str]
    customer_ref: str | None


def carried_in(raw: Any) -> Carried | None:
    """The carried state when this run was continued as new, else None (a fresh start)."""
    if not (isinstance(raw, dict) and "continued" in raw):
        return None
    if not workflow.info().continued_run_id:
        raise ApplicationError(
            "invalid run input: continued: only a run continuing as new carries state; "
            "start a run with the RunInput fields (agent, task, requested_by, …)",
            type="InvalidRunInput",
            non_retryable=True,
        )
    try:
        return Carried.model_validate(raw["continued"])
    except ValidationError as e:
        raise ApplicationError(
            f"invalid run input: continued: {describe(e)}",
            type="InvalidRunInput",
            non_retryable=True,
        ) from None


def restore(run: RunState, carried: Carried) -> dict[str, Any]:
    """Put the carried state back into a new segment's run; returns the graph's start state."""
    run.segment = carried.segment
    run.step = run.segment_start = carried.step
    run.tokens = carried.tokens
    run.requester = carried.requester
    run.nonces = set(carried.nonces)
    run.actions = list(carried.actions)
    run.refused_before = carried.refused
    run.refusals = list(carried.refusals)
    # The run keeps the order or customer it showed (only its subject's would replace it).
    run._refs["requests"] = (0, carried.customer_ref)
    return {"seq": carried.seq, "observations": carried.observations}


def segment_ends(run: RunState) -> bool:
    """Whether the run continues as new now, after a step (called between steps)."""
    every = run.agent.segment_steps
    if not (run.segmented and every) or run.pending() or run.unrecorded:
        return False
    due = run.step - run.segment_start >= every or workflow.info().is_continue_as_new_suggested()
    run.continue_due = due
    return due


def kept_actions(run: RunState) -> list[ActionRecord]:
    """The actions a long run keeps in its result and carries on: its executed side effects
    (and those whose outcome is unknown), then its last action. Reads before it, and refused
    proposals, are in the audit trail: a run of thousands of steps must not return them all (a
    payload is at most 2 MB). A run of an agent that keeps one history keeps every action."""
    if run.agent.segment_steps is None:
        return run.actions
    kept = [
        a
        for a in run.actions[:-1]
        if not a.read_only and a.status in ("executed", "unknown", "compensated")
    ]
    return kept + run.actions[-1:]


async def continue_as_new(run: RunState, loop: dict[str, Any]) -> None:
    """Hand the run to its next segment (raises ContinueAsNewError, never returns)."""
    # An Update still running (a decision being verified) finishes in this segment first.
    await workflow.wait_condition(workflow.all_handlers_finished)
    # Without their results (they are in the audit trail): a side effect carried on costs only
    # what undoing it needs, ~0.5 KB, so a run can carry a few thousand in one payload.
    kept = [a.model_copy(update={"result": None}) for a in kept_actions(run)]
    carried = Carried(
        input=run.input.model_copy(update={"requester_proof": None}),
        segment=run.segment + 1,
        step=run.step,
        tokens=run.tokens,
        seq=loop.get("seq", 0),
        observations=loop.get("observations", []),
        requester=run.requester,
        nonces=sorted(run.nonces),
        actions=kept,
        refused=run.refused_before or any(a.status in REFUSED for a in run.actions),
        refusals=run.refusals,
        customer_ref=run._customer_ref(),
    )
    await run.record(
        "run.continued",
        {"segment": run.segment + 1, "step": run.step, "carried_actions": len(kept)},
    )
    workflow.continue_as_new({"continued": carried.model_dump(mode="json")})
