"""Deterministic replay: run recorded histories against the current workflow code.

Temporal's `Replayer` feeds a history's events to the workflow code: every activity result —
each model output, each verdict, each tool result — and every signal, update and timer comes
from the history, so nothing is called (the replayer has no activities and no client). If the
code now issues different commands than the history recorded (another activity, one fewer, a
different order), replay fails with the exact divergence (a `NondeterminismError`).

The replayer is built from the worker's own pieces (`WORKFLOWS`, `plugins()`, the pydantic data
converter), so it replays exactly what a worker would run.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.graph import StateGraph
from pydantic import BaseModel
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    Replayer,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from countersign.activities.contracts import DECIDE, NOTIFY, PLAN, RECORD
from countersign.workers.codec import pydantic_data_converter
from countersign.workers.sandbox import WorkflowSandbox
from countersign.workers.worker import WORKFLOWS, plugins

# The SDK core's marker for a completed local activity.
LOCAL_ACTIVITY_MARKER = "core_local_activity"

GraphFactory = Callable[[], StateGraph[Any, Any, Any, Any]]

# Results the workflow code returned during replay, by workflow id (filled by the interceptor).
_replayed_results: dict[str, Any] = {}


class _KeepResult(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        result = await self.next.execute_workflow(input)
        _replayed_results[workflow.info().workflow_id] = result
        return result


class _KeepResults(Interceptor):
    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _KeepResult


class ReplayReport(BaseModel):
    """What replaying one history showed."""

    workflow_id: str
    run_id: str
    source: str
    deterministic: bool
    divergence: str | None = None
    events: int
    # Protobuf bytes: what the server stores and limits (warns at 10 MB, fails at 50 MB).
    history_bytes: int
    model_steps: int
    verdicts: int
    tool_calls: int
    # The result the current code computed from the history, and whether it equals the one
    # the original run recorded (None: the run had not completed, or replay diverged).
    result: dict[str, Any] | None = None
    result_matches: bool | None = None

    def line(self) -> str:
        where = f"{self.workflow_id} ({self.source}, {self.events} events)"
        if not self.deterministic:
            return f"DIVERGED      {where}\n  {self.divergence}"
        rebuilt = (
            f"{self.model_steps} model steps, {self.verdicts} verdicts, "
            f"{self.tool_calls} tool results from history"
        )
        same = {True: "; result identical", False: "; RESULT DIFFERS", None: ""}
        return f"deterministic {where}: {rebuilt}{same[self.result_matches]}"


def load_history(path: Path, workflow_id: str | None = None) -> WorkflowHistory:
    """A history JSON file (`fetch_history().to_json()`, or the Temporal UI's/CLI's export)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable history JSON file: {e}") from None
    history = WorkflowHistory.from_json(workflow_id or path.stem, raw)
    if not history.events:
        raise ValueError(f"{path}: the history has no events")
    started = history.events[0].workflow_execution_started_event_attributes
    if workflow_id is None and started.workflow_id:
        history = WorkflowHistory(started.workflow_id, history.events)
    return history


def load_histories(paths: Sequence[str | Path]) -> list[tuple[str, WorkflowHistory]]:
    """(source, history) for each file, or each *.json in each folder, in name order."""
    found = []
    for given in paths:
        path = Path(given)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise ValueError(f"{given}: no history JSON file there")
        found += [(str(f), load_history(f)) for f in files]
    return found


async def fetch_segments(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """The histories of a run, first to last: one, or one per segment of a long run that
    continued as new (agents/segments.py)."""
    info = (await client.get_workflow_handle(workflow_id).describe()).raw_description
    run_id: str | None = info.workflow_execution_info.first_run_id or None
    if run_id is None:  # a server that does not say: the latest segment only
        return [await client.get_workflow_handle(workflow_id).fetch_history()]
    histories = []
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1]
        run_id = None
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return histories


def save_history(path: str | Path, history: WorkflowHistory) -> None:
    Path(path).write_text(history.to_json() + "\n")


def readable_text(history_json: Any) -> str:
    """A history's JSON with every payload's base64 data decoded, for secret scans: a scan of
    the raw JSON would miss a secret inside a payload."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and isinstance(node.get("metadata"), dict):
                parts.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            parts.append(node)

    walk(history_json)
    return "\n".join(parts)


async def _recorded_result(
    history: WorkflowHistory, converter: DataConverter
) -> dict[str, Any] | None:
    last = history.events[-1]
    if not last.HasField("workflow_execution_completed_event_attributes"):
        return None
    payloads = last.workflow_execution_completed_event_attributes.result.payloads
    if not payloads:
        return None
    (value,) = await converter.decode(payloads)
    return value if isinstance(value, dict) else None


async def _model_steps(history: WorkflowHistory, converter: DataConverter) -> tuple[int, int]:
    """Model steps, and the verdicts decided with their replies (PlanOutput.verdicts, since
    the guard-in-model-call patch), counted in the model calls' recorded results: a call that
    read ahead (PlanOutput.ahead) took several steps."""
    plans = {
        e.event_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == PLAN
    }
    steps = verdicts = 0
    for e in history.events:
        if not e.HasField("activity_task_completed_event_attributes"):
            continue
        done = e.activity_task_completed_event_attributes
        if done.scheduled_event_id not in plans or not done.result.payloads:
            continue
        (value,) = await converter.decode(done.result.payloads)
        outputs = [value, *(value.get("ahead") or [])] if isinstance(value, dict) else [{}]
        steps += len(outputs)
        verdicts += sum(len(o.get("verdicts") or []) for o in outputs)
    return steps, verdicts


@dataclass(frozen=True)
class ActivityEvent:
    """An activity in a history: its ActivityTaskScheduled event, or for a local activity the
    MarkerRecorded event that holds its result (local ones are numbered apart: `local`)."""

    event_id: int
    activity_id: str
    activity_type: str
    local: bool


def activities_in(history: WorkflowHistory) -> list[ActivityEvent]:
    found = []
    for e in history.events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            attrs = e.activity_task_scheduled_event_attributes
            found.append(
                ActivityEvent(e.event_id, attrs.activity_id, attrs.activity_type.name, False)
            )
        elif e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER:
            # The SDK core's own record of the local activity: plain JSON, no user data.
            data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
            marker = json.loads(data)
            found.append(
                ActivityEvent(e.event_id, marker["activity_id"], marker["activity_type"], True)
            )
    return found


def _activity_counts(history: WorkflowHistory) -> Counter[str]:
    return Counter(a.activity_type for a in activities_in(history))


def _divergence(failure: Exception) -> str:
    """The SDK core's message (e.g. "[TMPRL1100] Nondeterminism error: Activity type of
    scheduled event 'audit.record' does not match activity type of activity command
    'payments.refund'"), without the Rust struct dump around it."""
    text = str(failure)
    found = re.search(r'message: "((?:[^"\\]|\\.)*)"', text)
    return f"{type(failure).__name__}: {found.group(1) if found else text}"


def replayer(
    workflows: Sequence[type] | None = None,
    graph: GraphFactory | None = None,
    converter: DataConverter = pydantic_data_converter,
) -> Replayer:
    """The worker's workflows, plugin and data converter, and no activities at all.
    `workflows` and `graph` replace the real ones (to prove a changed version diverges);
    `converter` is the deployment's (it decrypts payloads when they are encrypted)."""
    return Replayer(
        workflows=list(workflows or WORKFLOWS),
        plugins=plugins(graph() if graph else None),
        data_converter=converter,
        interceptors=[_KeepResults()],
        workflow_runner=WorkflowSandbox(),
    )


async def replay(
    histories: Sequence[tuple[str, WorkflowHistory]],
    workflows: Sequence[type] | None = None,
    graph: GraphFactory | None = None,
    converter: DataConverter = pydantic_data_converter,
) -> list[ReplayReport]:
    """Replay each (source, history); never raises for a divergence, reports it."""
    reports = []
    # One replayer for all of them: its plugin's graphs are built, and compiled, once.
    the_replayer = replayer(workflows, graph, converter)
    for source, history in histories:
        _replayed_results.pop(history.workflow_id, None)
        result = await the_replayer.replay_workflow(history, raise_on_replay_failure=False)
        failure = result.replay_failure
        counts = _activity_counts(history)
        replayed = _replayed_results.pop(history.workflow_id, None)
        replayed_json = (
            replayed.model_dump(mode="json") if isinstance(replayed, BaseModel) else replayed
        )
        recorded = await _recorded_result(history, converter)
        steps, decided_with_replies = await _model_steps(history, converter)
        reports.append(
            ReplayReport(
                workflow_id=history.workflow_id,
                run_id=history.run_id,
                source=source,
                deterministic=failure is None,
                divergence=_divergence(failure) if failure else None,
                events=len(history.events),
                history_bytes=sum(e.ByteSize() for e in history.events),
                model_steps=steps,
                verdicts=counts[DECIDE] + decided_with_replies,
                tool_calls=sum(
                    n for name, n in counts.items() if name not in (PLAN, DECIDE, RECORD, NOTIFY)
                ),
                result=replayed_json if failure is None else None,
                result_matches=(
                    replayed_json == recorded if failure is None and recorded is not None else None
                ),
            )
        )
    return reports
