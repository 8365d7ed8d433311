"""What every activity needs, built once per worker: settings, the audit trail, transcripts,
the policy (active and candidate), the limits ledger, the kill switch and pooled HTTP clients.
The stores are SQLite files or one shared PostgreSQL database, as configured
(activities/stores.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from temporalio import activity

from countersign.activities import metrics
from countersign.activities.http import HttpClients
from countersign.activities.stores import (
    open_audit_store,
    open_kill_switch,
    open_ledger,
    open_transcripts,
)
from countersign.activities.transcript import TranscriptStore
from countersign.guardrails.activation import activation_gate
from countersign.guardrails.audit import AuditRecord, AuditStore
from countersign.guardrails.cedar_schema import PolicySurface
from countersign.guardrails.controls import KillSwitch, KillSwitchStore
from countersign.guardrails.identity import DirectorySource
from countersign.guardrails.ledger import Ledger
from countersign.guardrails.policy import PolicySource
from countersign.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    settings: Settings
    audit: AuditStore
    transcripts: TranscriptStore
    policy: PolicySource
    candidate: PolicySource | None
    ledger: Ledger
    directory: DirectorySource
    kill_switch: KillSwitchStore
    http: HttpClients = field(default_factory=HttpClients)
    # The last stored switch folded, by what it was folded from (see kill_switch_now).
    _kill_switch_folded: tuple[tuple[str, str, str], KillSwitch] | None = field(
        default=None, repr=False
    )

    @classmethod
    def from_settings(cls, settings: Settings, tools: PolicySurface | None = None) -> Runtime:
        """`tools`: the registered tools, to type-check policies against."""
        candidate = settings.candidate_policy_path
        audit = open_audit_store(settings, signing=True)
        directory = settings.directory()
        gate = (
            activation_gate(audit, directory.current)
            if settings.require_policy_activation
            else None
        )
        return cls(
            settings=settings,
            audit=audit,
            transcripts=open_transcripts(settings),
            policy=PolicySource(settings.policy_path, tools, gate),
            candidate=PolicySource(candidate, tools) if candidate else None,
            ledger=open_ledger(settings),
            kill_switch=open_kill_switch(settings),
            directory=directory,
        )

    async def kill_switch_now(self) -> KillSwitch:
        """The kill switch as the signed changes of operators with the authority set it.

        Read on every proposal and execution: the signatures are checked again only when the
        stored switch, the directory or the policy changed (and a refusal is logged once)."""
        return self.kill_switch_as(await asyncio.to_thread(self.kill_switch.read))

    def kill_switch_as(self, stored: KillSwitch) -> KillSwitch:
        """The switch `stored` (as just read from `kill_switch`), folded as kill_switch_now
        folds it: for callers that read it in a thread hop they make anyway."""
        policy, directory = self.policy.current(), self.directory.current()
        key = (stored.model_dump_json(), directory.version, policy.version)
        if self._kill_switch_folded is None or self._kill_switch_folded[0] != key:
            switch, ignored = stored.effective(
                directory, lambda who: policy.has_authority(who, "kill_switch")
            )
            if ignored:
                log.warning("kill_switch.unverified_changes_ignored", changes=ignored)
            self._kill_switch_folded = (key, switch)
        return self._kill_switch_folded[1]

    async def audit_find(self, workflow_id: str, kind: str, **matches: Any) -> list[AuditRecord]:
        return await asyncio.to_thread(self.audit.find, workflow_id, kind, **matches)


def current_workflow_id() -> str:
    """The workflow that scheduled the running activity (ours are never standalone)."""
    workflow_id = activity.info().workflow_id
    if workflow_id is None:
        raise RuntimeError("this activity must be scheduled by a workflow")
    return workflow_id


@asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the block runs (a model call, a side effect waiting on its system).

    Temporal then notices a dead worker after the activity's heartbeat timeout instead of its
    whole start-to-close, and an attempt that timed out is cancelled here instead of running
    on unseen. Nothing to do for activities without a heartbeat timeout (local ones)."""
    info = activity.info()
    timeout = info.heartbeat_timeout
    if info.is_local or not timeout:
        yield
        return
    interval = max(timeout.total_seconds() / 3, 0.05)

    async def beat() -> None:
        # Not at once: a heartbeat is a server write, and Temporal's heartbeat timeout counts
        # from the attempt's start, so a call shorter than `interval` needs none.
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


def activity_record_id(kind: str, n: int = 0) -> str:
    """The audit record id the running activity writes for `kind` and `n`, on every attempt."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}/{_activity_ref(info)}/{kind}/{n}"


def activity_key() -> str:
    """The running activity's identity in its workflow, the same on every attempt."""
    info = activity.info()
    return f"{info.workflow_run_id}/{_activity_ref(info)}"


def _activity_ref(info: activity.Info) -> str:
    """Local activities are numbered apart from ordinary ones: keep the two apart."""
    return f"local-{info.activity_id}" if info.is_local else info.activity_id


async def audit_from_activity(
    runtime: Runtime, kind: str, data: dict[str, Any], *, actor: str = "countersign", n: int = 0
) -> AuditRecord:
    """Append a record for the running activity; a retried attempt writes no duplicate.

    The record id is the activity's identity in its run (stable across attempts), the kind and
    `n` (for activities that write several records of one kind).

    The record names the Temporal event behind it. An activity cannot see its
    ActivityTaskScheduled event id (the SDK's `activity.info()` has no such field), but the
    activity id is unique within the run and the scheduled event in history carries it: the
    event is identified by (workflow id, run id, activity id), and `attempt` says which try
    wrote the record. A local activity's result is the MarkerRecorded event carrying its
    activity id; `local` says so.
    """
    record = await runtime.audit.append(**activity_record(kind, data, actor=actor, n=n))
    await observe(runtime, [record])
    return record


def activity_record(
    kind: str, data: dict[str, Any], *, actor: str = "countersign", n: int = 0
) -> dict[str, Any]:
    """The running activity's record as AuditStore.append_sync takes it (audit_from_activity
    says how it is keyed), for callers that append it in a thread hop they make anyway; they
    pass what was appended to `observe`."""
    info = activity.info()
    return {
        "record_id": activity_record_id(kind, n),
        "workflow_id": info.workflow_id or "",
        "run_id": info.workflow_run_id or "",
        "kind": kind,
        "actor": actor,
        "data": data,
        "event": {
            "activity_id": info.activity_id,
            "activity_type": info.activity_type,
            "attempt": info.attempt,
            **({"local": True} if info.is_local else {}),
        },
    }


async def observe(runtime: Runtime, records: list[AuditRecord]) -> None:
    """Metrics from appended records; never let a metrics problem fail the activity."""
    for record in records:
        await _observe(runtime, record)


async def _observe(runtime: Runtime, record: AuditRecord) -> None:
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
