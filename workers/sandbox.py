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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
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


@dataclass(frozen=True)
class WorkflowSandbox(SandboxedWorkflowRunner):
    """`SandboxedWorkflowRunner` (same restrictions, passthrough modules and options)."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        if _SandboxInstance is None:  # pragma: no cover
            return super().create_instance(det)
        return _Instance(det, self.runner_class, self.restrictions)
