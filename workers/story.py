"""How a run is told to people: audit records as sentences, and where to see the run.

Used by the CLI (`countersign audit`, `start`) and the demo scenario, below both."""

from __future__ import annotations

import json

from countersign.guardrails.audit import AuditRecord
from countersign.guardrails.knowledge import Citation
from countersign.guardrails.money import describe_call
from countersign.guardrails.rendering import run_url
from countersign.settings import Settings


def story_line(r: AuditRecord) -> str:
    """One audit record as a sentence a person can read."""
    d = r.data
    when = r.at.strftime("%H:%M:%S")

    def call() -> str:  # money as money; `-o json` has the exact arguments
        args = d.get("arguments")
        if isinstance(args, dict):
            return describe_call(str(d.get("tool")), args)
        return f"{d.get('tool')} {json.dumps(args)}"

    text = {
        "run.started": lambda: (
            f"run started by {d.get('requested_by')}"
            + (" (claimed, not signed)" if d.get("requester") == {"verified": False} else "")
            + f": {d.get('task')!r}"
        ),
        "run.refused": lambda: f"run REFUSED: {d.get('reason')}",
        "model.call": lambda: (
            f"model {d.get('model')} step {d.get('step')}: "
            f"{d.get('tool_calls')} tool call(s), {sum(d.get('usage', {}).values())} tokens"
            + (f" — {d['content']!r}" if d.get("content") else "")
            + (f" REFUSED: {d['refused']}" if d.get("refused") else "")
        ),
        "proposal": lambda: f"proposal {call()}",
        "verdict": lambda: (
            f"verdict {str(d.get('outcome')).upper()} {d.get('tool')} "
            f"[{', '.join(d.get('rule_ids', []))}] {d.get('reason')} ({d.get('policy_version')})"
        ),
        "approval.requested": lambda: (
            f"approval requested {d.get('request_id')} for "
            f"{d.get('action')} from {', '.join(d.get('eligible', []))}"
        ),
        "approval.decided": lambda: (
            f"{'APPROVED' if d.get('approve') else 'REJECTED'} by "
            f"{d.get('approver')} via {d.get('channel')} ({d.get('request_id')})"
            + (f": {d['comment']}" if d.get("comment") else "")
        ),
        "approval.citations": lambda: (
            f"cited for {d.get('request_id')}: "
            + "; ".join(Citation.model_validate(c).line() for c in d.get("citations", []))
        ),
        "approval.changed": lambda: (
            f"approval {d.get('request_id')} APPROVED WITH CHANGES by {d.get('approver')}: "
            f"{describe_call('', (d.get('original') or {}).get('arguments'))} → "
            f"{describe_call('', (d.get('changed') or {}).get('arguments'))}, decided again: "
            f"{str((d.get('changed') or {}).get('outcome')).upper()}"
            + (f": {d['comment']}" if d.get("comment") else "")
        ),
        "approval.granted": lambda: (
            f"approval granted {d.get('request_id')} by {', '.join(d.get('approvers', []))}"
        ),
        "approval.refused": lambda: (
            f"decision refused ({d.get('claimed') or d.get('approver') or '?'}): {d.get('reason')}"
        ),
        "rollback.refused": lambda: f"rollback refused ({d.get('claimed')}): {d.get('reason')}",
        "notify.sent": lambda: (
            f"notified via {d.get('channel')}: {d.get('event')} {d.get('request_id')}"
            + (f" to {', '.join(d['to'])}" if d.get("to") else "")
        ),
        "notify.failed": lambda: f"notice via {d.get('channel')} FAILED: {d.get('error')}",
        "approval.expired": lambda: f"approval {d.get('request_id')} expired: rejected",
        "action.read": lambda: f"read {call()}",
        "action.executed": lambda: (
            f"EXECUTED {call()}"
            f" → {json.dumps(d.get('result'))} (idempotency key {d.get('idempotency_key')})"
        ),
        "action.failed": lambda: f"FAILED {d.get('tool')}: {d.get('error')}",
        "action.blocked": lambda: f"BLOCKED {d.get('tool')} by the {d.get('reason')}",
        "run.finished": lambda: f"run {d.get('status')}: {d.get('final_message')!r}",
    }.get(r.kind, lambda: f"{r.kind} {json.dumps(d)}")()
    return f"  {when}  #{r.seq:<5} {text}"


def ui_link(settings: Settings, workflow_id: str) -> str:
    """The run in the Temporal UI."""
    return run_url(settings.temporal_ui_url, settings.temporal_namespace, workflow_id)
