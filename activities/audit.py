"""The audit activity: records for things that happen in workflow code (run started, approval
requested, decided, granted, expired, run finished). Workflow code never writes them itself."""

from __future__ import annotations

from temporalio import activity

from countersign.activities.contracts import RECORD, RecordInput
from countersign.activities.runtime import Runtime, audit_from_activity


class AuditActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @activity.defn(name=RECORD)
    async def record(self, input: RecordInput) -> int:
        rec = await audit_from_activity(
            self.runtime, input.kind, input.data, actor=input.actor, n=input.n
        )
        return rec.seq
