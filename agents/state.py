"""A run's input, result and in-workflow state. Workflow code: deterministic, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import islice
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from countersign.activities.agent_specs import AGENTS, MAX_LONG_RUN_STEPS, MAX_RUN_STEPS, AgentSpec
from countersign.activities.contracts import (
    MODEL_BOUNDS,
    RECORD,
    VERIFY,
    Compensation,
    GuardResult,
    ModelBounds,
    PlanOutput,
    RecordInput,
    ToolOutcome,
    VerifyInput,
    VerifyResult,
)
from countersign.activities.failures import FailureCause
from countersign.agents import search_attributes as sa
from countersign.guardrails.approvals import ApprovalRequest, RecordedDecision
from countersign.guardrails.errors import describe
from countersign.guardrails.identity import Envelope, Verified
from countersign.guardrails.money import describe_call
from countersign.guardrails.policy import Authority, Mode, Proposal, sha256_hex
from countersign.guardrails.rendering import as_markdown, request_view

AGENT_RUN = "AgentRun"
DEFAULT_TASK_QUEUE = "countersign"

# Since this patch, the guard, limit releases and audit records run as local activities.
LOCAL_BOOKKEEPING = "local-guard-and-audit"
# Since this patch, model calls take their timeouts from settings and heartbeat.
MODEL_BOUNDS_FROM_SETTINGS = "model-bounds-from-settings"
# Since this patch, a side effect that failed without a definite answer is reconciled with
# its system of record, and every failed action is audited with its cause.
RECONCILE_UNKNOWN_OUTCOMES = "reconcile-unknown-outcomes"
# Since these patches: a turn's side effects are one unit, and a run that refused an action
# ends `completed_with_refusals`.
ATOMIC_TURNS = "atomic-turns"
RUN_REFUSALS = "run-refusals"
# Since this patch, decisions, rollbacks and requesters count only when a signed statement
# proves who is behind them (guardrails/identity.py); runs recorded before replay as they were.
SIGNED_IDENTITIES = "signed-identities"
# Since this patch, approvers who have not decided are reminded before a request expires, and
# each request's outcome is announced as soon as it settles (links and the inbox follow).
APPROVAL_REMINDERS = "approval-reminders"
# Since this patch, every approval request carries an evidence pack (an activity gathers it)
# and an approver may approve with changes (the changed action is decided again).
APPROVAL_EVIDENCE = "approval-evidence-and-changes"
# Since this patch, a run of an agent with `segment_steps` continues as new at step boundaries
# (agents/segments.py).
CONTINUE_AS_NEW = "continue-as-new"
# Since this patch, the model activity also decides its reply's proposals with the guard's
# code and returns the verdicts with the reply (no guard activity per proposal); a verdict is
# used only for the exact proposal it was decided on (agents/graph.py guard).
GUARD_IN_MODEL = "guard-in-model-call"
# Since this patch, every run's `CountersignStage` search attribute says "working" while the
# run plans, guards and acts (as long runs always did): those stages change within
# milliseconds, twice a step, and each change was an upsert, one history event in four.
# Current Details still names the stage; waiting, compensating and the end show as before.
WORKING_STAGE = "working-stage"
# Since this patch, the model call also executes the reads the guard allowed in it and returns
# their outcomes (no local activity, no workflow activation, per read); a read is used only for
# the exact verdict it was executed under (agents/graph.py execute_action).
READS_IN_MODEL = "reads-in-model-call"
# Every patch above in one marker. A run that starts now records this one instead of one per
# patch, each with its own search-attribute upsert (TemporalChangeVersion): 22 history events
# fewer, in the first workflow task of every run and every segment. Runs recorded before it
# have no such marker and ask each patch, as they did.
ALL_PATCHES_2026_11 = "patches-2026-11"
_IN_ALL_PATCHES = frozenset(
    {
        LOCAL_BOOKKEEPING,
        MODEL_BOUNDS_FROM_SETTINGS,
        RECONCILE_UNKNOWN_OUTCOMES,
        ATOMIC_TURNS,
        RUN_REFUSALS,
        SIGNED_IDENTITIES,
        APPROVAL_REMINDERS,
        APPROVAL_EVIDENCE,
        CONTINUE_AS_NEW,
        GUARD_IN_MODEL,
        WORKING_STAGE,
        READS_IN_MODEL,
    }
)


def patched(patch: str) -> bool:
    """Whether this run has `patch` (workflow code asks here, never `workflow.patched`): a run
    that started with ALL_PATCHES_2026_11 has each of them without a marker of its own."""
    if patch in _IN_ALL_PATCHES and workflow.patched(ALL_PATCHES_2026_11):
        return True
    return workflow.patched(patch)


class StatementRefusedError(Exception):
    """A signed statement the run does not accept; the message says why."""


async def verify_statement(envelope: Envelope, authority: Authority | None = None) -> Verified:
    """Who a signed statement proves, checked by the identity activity against the live
    directory (its answer lands in history), or StatementRefusedError saying why not."""
    result: VerifyResult = await workflow.execute_local_activity(
        VERIFY,
        VerifyInput(envelope=envelope, authority=authority),
        result_type=VerifyResult,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
    )
    if result.verified is None:
        raise StatementRefusedError(result.refused or "not verified")
    return result.verified


async def run_bookkeeping(
    activity: str, arg: Any, *, summary: str, result_type: type | None = None
) -> Any:
    """Run one of our own short activities: the guard, a limit release, an audit append.

    They take a millisecond and touch only the worker's own stores, so they run as local
    activities: on the worker that holds the workflow task, with the result recorded in history
    as a marker, and no round trip through the server's task queue (two task dispatches
    each). Runs recorded before the patch replay with the ordinary activities they used.
    """
    options: dict[str, Any] = {
        "result_type": result_type,
        "start_to_close_timeout": timedelta(seconds=30),
        "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10)),
    }
    if patched(LOCAL_BOOKKEEPING):
        # No summary: the Web UI shows a local activity by its type only, and every summary is
        # one more payload the SDK converts on every workflow task and every replay.
        return await workflow.execute_local_activity(activity, arg, **options)
    return await workflow.execute_activity(activity, arg, summary=summary, **options)


async def model_bounds(run: RunState) -> ModelBounds:
    """The model call's timeouts from settings, read once per run by a local activity (its
    result lands in history). Runs started before the patch keep the constants they used."""
    if not patched(MODEL_BOUNDS_FROM_SETTINGS):
        return ModelBounds()
    return await workflow.execute_local_activity(
        MODEL_BOUNDS,
        result_type=ModelBounds,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
    )


def _refused(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_subject", message)


class RunInput(BaseModel):
    """What an ops person types to start a run (Temporal UI "Start Workflow", or the CLI)."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(description="Agent name, e.g. support-refunds")
    task: str = Field(min_length=3, max_length=4000, description="What to do, in plain words")
    subject: dict[str, str] = Field(
        default_factory=dict,
        description="What the run is about, e.g. {'order_id': 'A-1001'}: the agent's subject "
        "fields. Side effects are bound to it; without it a run can read but not act.",
    )
    context: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Structured facts for the model; an agent's subject fields given here "
        "count as the subject (older inputs)",
    )
    requested_by: str = Field(
        min_length=1,
        description="Who asks. Only a name unless `requester_proof` proves it (countersign "
        "start signs it); a proven requester can never approve this run",
    )
    mode: Mode | None = Field(default=None, description="shadow | augment | automate")
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_LONG_RUN_STEPS,
        description=f"At most {MAX_RUN_STEPS}, unless the agent continues as new (long runs)",
    )
    undo_window_seconds: int = Field(
        default=0,
        ge=0,
        le=30 * 24 * 3600,
        description="Keep the run open this long after it completes, for `countersign rollback`",
    )
    requester_proof: Envelope | None = Field(
        default=None, description="The requester's signed start statement (countersign start)"
    )

    @model_validator(mode="after")
    def _validated_subject(self) -> RunInput:
        """The subject, checked against the agent's subject fields. Subject fields in `context`
        (inputs written before `subject` existed) count as the subject too; given in both with
        different values, the input is refused. (An unknown agent is refused by
        parse_run_input.)"""
        spec = AGENTS.get(self.agent)
        if spec is None:
            return self
        if self.max_steps and self.max_steps > MAX_RUN_STEPS and spec.segment_steps is None:
            raise PydanticCustomError(
                "invalid_max_steps",
                f"max_steps: at most {MAX_RUN_STEPS} for agent {self.agent!r}, which keeps one "
                "history (an agent with segment_steps continues as new and may run longer)",
            )
        fields = spec.subject
        for name, value in self.context.items():
            if name not in fields or not isinstance(value, str):
                continue
            given = self.subject.setdefault(name, value)
            if given != value:
                raise _refused(f"subject.{name}: {given!r} differs from context.{name} {value!r}")
        for name, value in self.subject.items():
            if name not in fields:
                raise _refused(
                    f"subject.{name}: agent {self.agent!r} takes no subject field {name!r} "
                    f"(accepted: {', '.join(sorted(fields)) or 'none'})"
                )
            if not re.fullmatch(fields[name].strip("^$"), value):
                raise _refused(f"subject.{name}: {value!r} does not match {fields[name]}")
        return self

    def digest(self) -> str:
        """What a requester's start statement signs: the input without the proof."""
        return sha256_hex(self.model_dump(mode="json", exclude={"requester_proof"}))


def parse_run_input(raw: Any) -> RunInput:
    """Validate raw input; fail the run at once (never retry) naming every bad field."""
    try:
        run_input = RunInput.model_validate(raw)
    except ValidationError as e:
        raise ApplicationError(
            f"invalid run input: {describe(e)}", type="InvalidRunInput", non_retryable=True
        ) from None
    if run_input.agent not in AGENTS:
        raise ApplicationError(
            f"invalid run input: agent: unknown agent {run_input.agent!r} "
            f"(known: {', '.join(sorted(AGENTS))})",
            type="InvalidRunInput",
            non_retryable=True,
        )
    return run_input


# "unknown": a side effect that may or may not have happened (its system could not say):
# it keeps its limits and needs a person's attention.
ActionStatus = Literal[
    "executed",
    "failed",
    "unknown",
    "shadow",
    "denied",
    "rejected",
    "expired",
    "compensated",
    # Approved (or allowed), then stopped by the kill switch when it was about to execute.
    "blocked",
    # Not executed because another side effect of the same turn was refused (atomic turns).
    "skipped",
]
# What the guard, a human or the kill switch refused: a run with any ends
# "completed_with_refusals", never plain "completed".
REFUSED: frozenset[str] = frozenset({"denied", "rejected", "expired", "blocked", "skipped"})


class ActionRecord(BaseModel):
    """What became of one proposal."""

    call_id: str
    tool: str
    arguments: dict[str, Any] | None
    status: ActionStatus
    rule_ids: list[str] = []
    detail: str = ""
    result: dict[str, Any] | None = None
    idempotency_key: str | None = None
    request_id: str | None = None
    approved_by: list[str] = []
    read_only: bool = False
    action_hash: str | None = None
    # How to undo it (None for reads and irreversible actions).
    compensation: Compensation | None = None
    # Approved with changes: the arguments the agent proposed (`arguments` are the approved).
    # Left out when None, so results recorded before it existed replay to the same result.
    changed_from: dict[str, Any] | None = Field(default=None, exclude_if=lambda v: v is None)


class ChangedAction(BaseModel):
    """An action an approver approved with changes: who, what, why, and the original."""

    request_id: str
    approver: str
    channel: str
    comment: str
    changes: dict[str, Any]
    original_arguments: dict[str, Any]
    original_hash: str


class RollbackRequest(BaseModel):
    """Undo a completed run. Since signed identities, `proof` (a signed `rollback` statement
    for this run and reason) says who asks; `requested_by` is then whoever it proves."""

    requested_by: str = Field(min_length=1)
    reason: str = Field(min_length=3)
    proof: Envelope | None = None


RunOutcome = Literal["completed", "completed_with_refusals", "stopped", "rolled_back"]


def finished_status(
    actions: list[ActionRecord],
    stop_reason: str | None,
    report_refusals: bool = True,
    refused_before: bool = False,
) -> RunOutcome:
    """How a run that was not rolled back ended (`refused_before`: in an earlier segment)."""
    if stop_reason:
        return "stopped"
    refused = report_refusals and (refused_before or any(a.status in REFUSED for a in actions))
    return "completed_with_refusals" if refused else "completed"


class RunResult(BaseModel):
    agent: str
    # completed_with_refusals: the run finished, and at least one proposed action was refused
    # (denied, rejected, expired, blocked by the kill switch, or skipped with its turn).
    status: RunOutcome
    stop_reason: str | None = None
    final_message: str
    steps: int
    tokens: int
    actions: list[ActionRecord]
    # Executed actions that nothing can undo, reported when the run was rolled back.
    irreversible: list[str] = []


class RunStatus(BaseModel):
    """The `status` query: where the run is and what it waits for."""

    stage: str
    step: int
    pending_approvals: list[ApprovalRequest]
    actions: list[ActionRecord]
    task: str = ""


@dataclass
class RunState:
    """Mutable state of one run, shared by the workflow's handlers and the graph's nodes
    (the graph's LangGraph context)."""

    input: RunInput
    stage: str = "starting"
    step: int = 0
    tokens: int = 0
    requests: dict[str, ApprovalRequest] = field(default_factory=dict)
    actions: list[ActionRecord] = field(default_factory=list)
    # Decisions accepted by handlers, waiting to be written to the audit by an activity.
    unrecorded: list[tuple[str, RecordedDecision]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    # The requester proven by a signed start statement (None: only claimed). Runs recorded
    # before signed identities take the claimed name, as they did.
    requester: str | None = None
    # Nonces of signed statements this run has seen: a replayed envelope is refused.
    nonces: set[str] = field(default_factory=set)
    # The latest refused decisions, shown to people in Current Details (signals cannot answer).
    refusals: list[str] = field(default_factory=list)
    # Read at the first model call (see model_bounds).
    model_bounds: ModelBounds | None = None
    reconciles_unknown_outcomes: bool = False
    # Decisions, rollbacks and requesters are signed (runs recorded before took typed names).
    signed: bool = False
    # Why the run is failing, named where it is best known (the failed action or model call).
    failure: FailureCause | None = None
    # Reminders are sent, and outcomes announced as each request settles (APPROVAL_REMINDERS).
    reminds: bool = False
    # Reminders sent, by request and expiry (an escalated request is reminded again).
    reminded: set[str] = field(default_factory=set)
    # Requests whose outcome was announced.
    announced: set[str] = field(default_factory=set)
    # Approval requests carry evidence packs; approvers may approve with changes.
    gathers_evidence: bool = False
    # Actions approved with changes, by call id.
    changed: dict[str, ChangedAction] = field(default_factory=dict)
    # Long runs (agents/segments.py): whether this run may continue as new, its segment (1:
    # the first) and the step that segment started after, whether the graph stopped to
    # continue as new, and whether an earlier segment refused an action (the run then ends
    # completed_with_refusals).
    segmented: bool = False
    segment: int = 1
    segment_start: int = 0
    continue_due: bool = False
    refused_before: bool = False
    # The model call decides its reply's proposals (GUARD_IN_MODEL); its verdicts wait here,
    # by call id with the proposal each was decided on, until the guard node takes them.
    guards_in_model: bool = False
    # The search attribute shows "working" for the transient stages (WORKING_STAGE).
    working_stage: bool = False
    decided: dict[str, tuple[Proposal, GuardResult]] = field(default_factory=dict)
    # The model call executes the reads it allowed (READS_IN_MODEL); their outcomes wait here,
    # by action hash, until the act node takes them.
    reads_in_model: bool = False
    reads: dict[str, ToolOutcome] = field(default_factory=dict)
    # The steps the model call took ahead (AgentSpec.read_ahead), until the plan node takes
    # each one whose input matches its own (agents/graph.py _take_ahead).
    ahead: list[PlanOutput] = field(default_factory=list)
    # The customer ref found so far in the requests' and the actions' arguments, and how many
    # of each were looked at: both lists only grow, so `show` never walks them again.
    _refs: dict[str, tuple[int, str | None]] = field(
        default_factory=lambda: {"requests": (0, None), "actions": (0, None)}, repr=False
    )

    def __post_init__(self) -> None:
        # Every patch is decided here, when the run starts, before its first command: a patch
        # asked first after a local activity's result can have its marker land in another
        # workflow task on replay (seen as flaky live-run replays). Where a patch applies, it
        # is asked again and answers the same (the SDK memoizes it).
        self.reconciles_unknown_outcomes = patched(RECONCILE_UNKNOWN_OUTCOMES)
        self.signed = patched(SIGNED_IDENTITIES)
        self.reminds = patched(APPROVAL_REMINDERS)
        self.gathers_evidence = patched(APPROVAL_EVIDENCE)
        self.segmented = patched(CONTINUE_AS_NEW)
        for later in (LOCAL_BOOKKEEPING, MODEL_BOUNDS_FROM_SETTINGS, ATOMIC_TURNS, RUN_REFUSALS):
            patched(later)
        self.guards_in_model = patched(GUARD_IN_MODEL)
        self.working_stage = patched(WORKING_STAGE) or self.agent.segment_steps is not None
        self.reads_in_model = patched(READS_IN_MODEL)

    @property
    def agent(self) -> AgentSpec:
        return AGENTS[self.input.agent]

    @property
    def max_steps(self) -> int:
        return self.input.max_steps or self.agent.max_steps

    def _customer_ref(self) -> str | None:
        """The subject's order or customer id, else the first one in the requests' arguments,
        else in the actions' (the same answer as sa.customer_ref over all of them in that
        order, so runs recorded before replay the same upserts)."""
        return (
            sa.customer_ref(self.input.subject)
            or self._first_ref("requests", self.requests.values(), len(self.requests))
            or self._first_ref("actions", self.actions, len(self.actions))
        )

    def _first_ref(self, kind: str, items: Iterable[Any], count: int) -> str | None:
        seen, ref = self._refs[kind]
        if ref is None and count > seen:
            for item in islice(items, seen, None):
                if ref := sa.customer_ref(item.arguments):
                    break
            self._refs[kind] = (count, ref)
        return ref

    def pending(self) -> list[ApprovalRequest]:
        return [r for r in self.requests.values() if r.status == "pending"]

    def status(self) -> RunStatus:
        return RunStatus(
            stage=self.stage,
            step=self.step,
            pending_approvals=self.pending(),
            actions=self.actions,
            task=self.input.task,
        )

    async def record(self, kind: str, data: dict[str, Any], actor: str = "countersign") -> None:
        """Write an audit record through the audit activity (workflow code never writes)."""
        await run_bookkeeping(RECORD, RecordInput(kind=kind, actor=actor, data=data), summary=kind)

    def show(self, stage: str, *, upsert: bool = True) -> None:
        """Update the stage: the markdown the Temporal UI shows under Current Details, and the
        search attributes its list page filters by. `upsert=False`: the stage and Current
        Details only (no command, so no history event), for a change the search attributes
        catch up with where they always did."""
        self.stage = stage
        info = workflow.info()
        pending = self.pending()
        last_tool = pending[-1].tool if pending else self.actions[-1].tool if self.actions else None
        if upsert:
            sa.upsert(
                {
                    sa.AGENT: self.agent.name,
                    sa.STAGE: sa.stage_value(stage, working=self.working_stage),
                    sa.WAITING: bool(pending),
                    sa.TOOL: last_tool,
                    sa.CUSTOMER_REF: self._customer_ref(),
                }
            )
        lines = [
            f"**{self.agent.name}** · step {self.step}/{self.max_steps} · stage **{stage}**"
            + (f" · segment {self.segment}" if self.segment > 1 else ""),
            "",
            f"Task: {self.input.task}",
        ]
        for r in pending:
            view = request_view(
                r,
                workflow_id=info.workflow_id,
                agent=self.agent.name,
                task=self.input.task,
                now=workflow.now(),
            )
            lines += [
                "",
                f"**Waiting for approval** `{r.request_id}`: "
                f"`{describe_call(r.tool, r.arguments)}`",
                "",
                as_markdown(view, title=False),
                "",
                f"- CLI: `countersign show {info.workflow_id} {r.request_id}`, then "
                f"`countersign approve {info.workflow_id} {r.request_id} --as NAME` "
                "(signs with your key)"
                + (" with `--change ARG=VALUE` to approve with changes" if r.may_change else ""),
                "- UI: run `countersign approve "
                f"{info.workflow_id} {r.request_id} --as NAME --print`, then More Actions → "
                "Send a Signal → `decision` with the printed JSON (a typed name is refused)",
            ]
        if self.actions:
            last = self.actions[-1]
            lines += ["", f"Last action: `{last.tool}` → {last.status}"]
        if self.refusals:
            lines += ["", "**Refused decisions** (they changed nothing):"]
            lines += [f"- {r}" for r in self.refusals]
        workflow.set_current_details("\n".join(lines))
