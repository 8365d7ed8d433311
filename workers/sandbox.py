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
    workflow task that parked it completes, the worker asks Temporal's core to evict it;
    when its decision (or its expiry timer) arrives the run is replayed from its history, as
    any run evicted by the cache's LRU is. Only runs whose history has at most `max_events`
    events are evicted, so that replay stays a few tens of milliseconds; longer ones stay in
    the cache (bounded by `max_cached_workflows`).

    A run is parked when its workflow says it waits on people (`waits_on_people()`) and the
    SDK has nothing of it in flight: no activity or local activity, no running handler,
    nothing ready to run; never after a replayed activation (the task is still in flight
    there: core would drop it, and it would time out). Eviction is invisible to the run: its
    history does not change."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.run_ids: set[str] = set()

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
        self.run_ids.add(act.run_id)

    def install(self, worker: Worker) -> None:
        """Evict the runs `check` found parked once their completion reached core."""
        bridge = getattr(worker, "_bridge_worker", None)
        if bridge is not None and hasattr(bridge, "request_workflow_eviction"):
            worker._bridge_worker = _EvictAfterCompletion(bridge, self.run_ids)  # type: ignore[assignment]


def _libc_malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


class _EvictAfterCompletion:
    """The SDK's bridge worker; after a parked run's completion, its eviction request.

    Memory an evicted run freed stays in the allocator's free lists (glibc keeps it mapped),
    so the worker's RSS would stay at its busiest; a few seconds after evictions it is handed
    back to the system (`malloc_trim`, at most once per `TRIM_AFTER_S`)."""

    TRIM_AFTER_S = 5.0

    def __init__(self, bridge: Any, run_ids: set[str]) -> None:
        self._bridge = bridge
        self._run_ids = run_ids
        self._trim = _libc_malloc_trim()
        self._trim_due = False

    async def complete_workflow_activation(self, completion: Any) -> None:
        await self._bridge.complete_workflow_activation(completion)
        if completion.run_id in self._run_ids:
            self._run_ids.discard(completion.run_id)
            self._bridge.request_workflow_eviction(completion.run_id)
            if self._trim is not None and not self._trim_due:
                self._trim_due = True
                asyncio.get_running_loop().call_later(self.TRIM_AFTER_S, self._trim_now)

    def _trim_now(self) -> None:
        self._trim_due = False
        # Off the event loop: it walks the whole heap (ctypes releases the GIL).
        asyncio.get_running_loop().run_in_executor(None, self._trim, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bridge, name)


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
