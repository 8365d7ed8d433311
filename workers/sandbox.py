"""The workflow sandbox a worker and the replayer run workflows in: Temporal's own, with every
restriction, and one round trip less per payload.

Around every workflow activation the SDK converts each payload of the activation and of its
commands in three passes each way, and for each it asks the workflow instance which
serialization context applies (the workflow's, or the activity's the command schedules). The
stock sandbox answers by re-entering the sandbox for it: it compiles and runs a line of code
with the sandbox's module table, `__import__` and every restricted builtin swapped in and out
again, ~70 µs, seven times per activation (~20% of a replay's CPU time). The answer is a
lookup in the SDK's own instance (which activity a command schedules); no workflow code runs
and nothing is imported, so it is asked directly here.

Workflow code itself still runs only inside the sandbox, with the same restrictions and
passthrough modules: `datetime.now()`, I/O and non-deterministic modules stay refused. If a
later SDK renames what this relies on, the stock runner is used (same behaviour, slower).

The sandbox re-executes the workflow module (agents/run.py and its parent packages) for every
run it creates, cached or replayed, to isolate the run's module state. Executing it is the
isolation; loading its code again is not: Python compiles it from source every time
(PYTHONDONTWRITEBYTECODE, as in our image: ~7 ms per run) or unmarshals it from its .pyc,
and either way each run held its own copy of every code object (~37 KB of heap measured).
Code objects are immutable, so the modules the sandbox imports load their code once per
process (`_SharedCode`) and each run still executes it in a fresh module of its own.

Runs parked on an approval leave the worker's cache (`Parking`, below).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import CodeType, ModuleType
from typing import Any

from temporalio import workflow
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.worker import Worker, WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

try:
    from temporalio.worker.workflow_sandbox._runner import _Instance as _SandboxInstance
except ImportError:  # pragma: no cover - a later SDK: the stock runner
    _SandboxInstance = None  # type: ignore[assignment,misc]

# Where the stock sandbox keeps the instance it created inside the sandbox.
_INSIDE = "__temporal_in_sandbox"


def _direct(instance: Any) -> Any:
    """The SDK's instance inside the sandbox, or None (not created yet, or an unknown SDK)."""
    return getattr(instance, "globals_and_locals", {}).get(_INSIDE)


if _SandboxInstance is not None:

    class _Instance(_SandboxInstance):
        parking: Parking | None = None

        def get_serialization_context(self, command_info: Any) -> Any:
            inside = _direct(self)
            if inside is None:
                return super().get_serialization_context(command_info)
            return inside.get_serialization_context(command_info)

        def get_external_store_context(self, command_info: Any) -> Any:
            inside = _direct(self)
            if inside is None:
                return super().get_external_store_context(command_info)
            return inside.get_external_store_context(command_info)

        def activate(self, act: Any) -> Any:
            completion = super().activate(act)
            if self.parking is not None and completion.HasField("successful"):
                self.parking.check(act, _direct(self))
            return completion


class Parking:
    """Runs that wait only on people leave the worker's workflow cache.

    A run parked on an approval waits minutes to days, and kept in the cache it holds
    ~400 KB of the worker's memory all that time (BENCHMARKS.md, section 5). Once the
    workflow task that parked it completes and the run stays quiet for `QUIET_S`, the worker
    asks Temporal's core to evict it; when its decision (or its expiry timer) arrives the run
    is replayed from its history, as any run evicted by the cache's LRU is. Only runs whose
    history has at most `max_events` events are evicted, so that replay stays a few tens of
    milliseconds; longer ones stay in the cache (bounded by `max_cached_workflows`).

    A run is parked when its workflow says it waits on people (`waits_on_people()`) and the
    SDK has nothing of it in flight: no activity or local activity, no running handler,
    nothing ready to run; never after a replayed activation (the task is still in flight
    there: core would drop it, and it would time out). Eviction is invisible to the run: its
    history does not change (except in the narrow race `_EvictAfterCompletion` repairs).

    Why the quiet period: core must have no workflow task of the run in hand when the
    eviction request reaches it. A task that arrives after the request waits in core's buffer
    and runs, replayed, once the run is evicted. A task already in hand is lost: core evicts
    the run as soon as its activation is answered, cancels the local activity that activation
    scheduled (every audit record is one) and never answers the task, so the server retries
    it only after the workflow-task timeout (10 s). Such a task comes often right after the
    parking task: the server hands the next one back in its reply to the completion when a
    signal or Update arrived meanwhile (a race seen in CI, then in tests/workers/
    test_parking_race.py with core's debug log). Left to core, for any eviction: a query and
    an event that both arrive during the few milliseconds of an eviction are both buffered,
    and core rebuilds the run from the query's task and drops the other (it times out)."""

    # Seconds a parked run must stay without any activation before it is evicted.
    QUIET_S = 0.5

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        # Run id -> the number of its latest activation (`seen`) when `check` found it parked.
        self.parked: dict[str, int] = {}
        # Run id -> the number of its latest activation, counted across runs, never reused.
        self.seen: dict[str, int] = {}
        self.count = 0

    def check(self, act: Any, inside: Any) -> None:
        sdk: Any = getattr(inside, "instance", None)
        waits = getattr(getattr(sdk, "_object", None), "waits_on_people", None)
        if (
            waits is None
            # Mid-replay is mid-task: core would evict the run before the task completes. (A
            # query's activation also says replaying; after it the run is parked as before.)
            or (act.is_replaying and not all(j.HasField("query_workflow") for j in act.jobs))
            or any(job.HasField("remove_from_cache") for job in act.jobs)
            or act.history_length > self.max_events
            or getattr(sdk, "_pending_activities", True)
            or getattr(sdk, "_ready", True)
            or not sdk.workflow_all_handlers_finished()
            or not waits()
        ):
            return
        self.parked[act.run_id] = self.seen.get(act.run_id, 0)

    def install(self, worker: Worker) -> None:
        """Evict the runs `check` found parked once their completion reached core."""
        bridge = getattr(worker, "_bridge_worker", None)
        if bridge is not None and hasattr(bridge, "request_workflow_eviction"):
            worker._bridge_worker = _EvictAfterCompletion(bridge, self)  # type: ignore[assignment]


def _libc_malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _schedules_local_activity(completion: Any) -> bool:
    return completion.HasField("successful") and any(
        c.HasField("schedule_local_activity") for c in completion.successful.commands
    )


class _EvictAfterCompletion:
    """The SDK's bridge worker; after a parked run's completion and `Parking.QUIET_S` without
    any activation of it, its eviction request.

    An activation the SDK receives is counted (`Parking.seen`) before the SDK sees it, so a
    run that got work again is not evicted. That leaves one narrow window: a task core took
    and started just before the request, whose activation had not reached this loop yet.
    Such an activation arrives after the request and before the run's eviction (core issues
    nothing else of a run it evicts), so it is known; if its completion schedules a local
    activity, core would cancel it and drop the task, so the completion is sent as the
    task's failure instead: the server retries the task at once (one WorkflowTaskFailed
    event in the run's history), instead of after its timeout.

    Memory an evicted run freed stays in the allocator's free lists (glibc keeps it mapped),
    so the worker's RSS would stay at its busiest; a few seconds after evictions it is handed
    back to the system (`malloc_trim`, at most once per `TRIM_AFTER_S`)."""

    TRIM_AFTER_S = 5.0

    def __init__(self, bridge: Any, parking: Parking) -> None:
        self._bridge = bridge
        self._parking = parking
        # Runs whose eviction was requested, until their eviction activation arrives.
        self._evicting: set[str] = set()
        # Of those, runs that got an activation meanwhile: a task core had in hand.
        self._at_risk: set[str] = set()
        self._trim = _libc_malloc_trim()
        self._trim_due = False
        # Eviction requests sent, and completions sent as failures (tests read them).
        self.evictions = 0
        self.repairs = 0

    async def poll_workflow_activation(self) -> Any:
        act = await self._bridge.poll_workflow_activation()
        run_id = act.run_id
        if any(job.HasField("remove_from_cache") for job in act.jobs):
            self._parking.seen.pop(run_id, None)
            self._evicting.discard(run_id)
            self._at_risk.discard(run_id)
        else:
            self._parking.count += 1
            self._parking.seen[run_id] = self._parking.count
            if run_id in self._evicting:
                self._at_risk.add(run_id)
        return act

    async def complete_workflow_activation(self, completion: Any) -> None:
        run_id = completion.run_id
        if run_id in self._at_risk and _schedules_local_activity(completion):
            completion = _task_failure(run_id)
            self.repairs += 1
        await self._bridge.complete_workflow_activation(completion)
        seen = self._parking.parked.pop(run_id, None)
        if seen is not None and seen == self._parking.seen.get(run_id):
            asyncio.get_running_loop().call_later(
                self._parking.QUIET_S, self._evict_if_quiet, run_id, seen
            )

    def _evict_if_quiet(self, run_id: str, seen: int) -> None:
        if self._parking.seen.get(run_id) != seen:
            return  # an activation came since it parked: it is evicted when it parks again
        try:
            self._bridge.request_workflow_eviction(run_id)
        except Exception:  # the worker shut down meanwhile: nothing left to evict
            return
        self._evicting.add(run_id)
        self.evictions += 1
        if self._trim is not None and not self._trim_due:
            self._trim_due = True
            asyncio.get_running_loop().call_later(self.TRIM_AFTER_S, self._trim_now)

    def _trim_now(self) -> None:
        self._trim_due = False
        # Off the event loop: it walks the whole heap (ctypes releases the GIL).
        asyncio.get_running_loop().run_in_executor(None, self._trim, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bridge, name)


def _task_failure(run_id: str) -> Any:
    completion = WorkflowActivationCompletion(run_id=run_id)
    completion.failed.failure.message = (
        "a parked run's eviction met this task; retried at once (workers/sandbox.py Parking)"
    )
    return completion


class _SharedCodeLoader(importlib.machinery.SourceFileLoader):
    """A source module's loader whose code is compiled (or read from its .pyc) once."""

    codes: dict[str, CodeType] = {}

    def get_code(self, fullname: str) -> CodeType | None:
        code = self.codes.get(self.path)
        if code is None:
            code = super().get_code(fullname)
            if code is not None:
                self.codes[self.path] = code
        return code


class _SharedCode(importlib.abc.MetaPathFinder):
    """Inside a workflow sandbox only, source modules load through `_SharedCodeLoader`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not workflow.unsafe.in_sandbox():
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = _SharedCodeLoader(spec.loader.name, spec.loader.path)
        return spec


def _share_code() -> None:
    if not any(isinstance(f, _SharedCode) for f in sys.meta_path):
        sys.meta_path.insert(0, _SharedCode())


@dataclass(frozen=True)
class WorkflowSandbox(SandboxedWorkflowRunner):
    """`SandboxedWorkflowRunner` (same restrictions, passthrough modules and options)."""

    # The worker's `Parking`, if it evicts parked runs; None in the replayer.
    parking: Parking | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _share_code()

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        if _SandboxInstance is None:  # pragma: no cover
            return super().create_instance(det)
        instance = _Instance(det, self.runner_class, self.restrictions)
        instance.parking = self.parking
        return instance
