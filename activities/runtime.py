"""What every activity needs, built once per worker: settings, the audit trail, transcripts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog
from temporalio import activity

from activities import metrics
from activities.transcript import TranscriptStore
from guardrails.audit import AuditRecord, AuditStore
from guardrails.policy import PolicySource
from workers.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    settings: Settings
    audit: AuditStore
    transcripts: TranscriptStore
    policy: PolicySource

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(
            settings=settings,
            audit=AuditStore(settings.audit_path),
            transcripts=TranscriptStore(settings.transcript_path),
            policy=PolicySource(settings.policy_path),
        )

    async def audit_find(self, workflow_id: str, kind: str, **matches: Any) -> list[AuditRecord]:
        return await asyncio.to_thread(self.audit.find, workflow_id, kind, **matches)


def current_workflow_id() -> str:
    """The workflow that scheduled the running activity (ours are never standalone)."""
    workflow_id = activity.info().workflow_id
    if workflow_id is None:
        raise RuntimeError("this activity must be scheduled by a workflow")
    return workflow_id


async def audit_from_activity(
    runtime: Runtime, kind: str, data: dict[str, Any], *, actor: str = "countersign", n: int = 0
) -> AuditRecord:
    """Append a record for the running activity; a retried attempt writes no duplicate.

    The record id is the activity's identity in its run (stable across attempts), the kind and
    `n` (for activities that write several records of one kind).
    """
    info = activity.info()
    record = await runtime.audit.append(
        record_id=f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}/{kind}/{n}",
        workflow_id=info.workflow_id or "",
        run_id=info.workflow_run_id or "",
        kind=kind,
        actor=actor,
        data=data,
    )
    await _observe(runtime, record)
    return record


async def _observe(runtime: Runtime, record: AuditRecord) -> None:
    """Metrics from the record; never let a metrics problem fail the activity."""
    try:
        requested_at = None
        model_calls = None
        if record.kind == "approval.decided":
            requested = await runtime.audit_find(
                record.workflow_id, "approval.requested", request_id=record.data.get("request_id")
            )
            requested_at = requested[0].at if requested else None
        elif record.kind == "run.finished" and runtime.settings.model_prices:
            model_calls = await runtime.audit_find(record.workflow_id, "model.call")
        metrics.observe(
            record,
            prices=runtime.settings.model_prices,
            requested_at=requested_at,
            run_model_calls=model_calls,
        )
    except Exception:
        log.exception("metrics.failed", kind=record.kind)
