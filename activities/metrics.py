"""Countersign's own metrics, beside the Temporal SDK's, on the worker's one Prometheus
endpoint (COUNTERSIGN_METRICS_ADDRESS; Temporal's runtime serves both).

Every fact worth counting is already an audit record written from an activity, so the metrics
are derived from records as they are appended (`observe`), through the activity's Temporal
metric meter (a no-op when metrics are off). `countersign stats` computes the same figures from
the audit store for any time window.

PromQL for the rates: human override rate =
`sum(rate(countersign_decisions{decision="reject"}[1h])) / sum(rate(countersign_decisions[1h]))`;
approvals pending = `sum(countersign_approvals_requested) - sum(countersign_approvals_settled)`;
tool error rate = `sum(rate(countersign_actions{status="failed"}[1h])) /
sum(rate(countersign_actions[1h]))`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import activity
from temporalio.common import MetricMeter

from countersign.guardrails.audit import AuditRecord


def model_cost_usd(
    prices: dict[str, tuple[float, float]], model: str, usage: dict[str, int]
) -> float | None:
    """USD for one model call from the per-million-token price table; None if unpriced."""
    price = prices.get(model)
    if price is None:
        return None
    prompt, completion = price
    return (
        usage.get("prompt_tokens", 0) * prompt + usage.get("completion_tokens", 0) * completion
    ) / 1_000_000


def _count(meter: MetricMeter, name: str, description: str, **labels: str) -> None:
    meter.create_counter(name, description).add(1, labels)


_ACTION_KINDS = (
    "action.executed",
    "action.read",
    "action.failed",
    "action.blocked",
    "action.unknown",
)


def _count_failure(meter: MetricMeter, what: str, data: dict[str, Any]) -> None:
    cause = data.get("cause") or {}
    kind = str(cause.get("kind", "unclassified")) if isinstance(cause, dict) else "unclassified"
    if what == "run" and kind == "cancelled":
        return
    _count(meter, "countersign_failures", "failed actions and runs by cause", what=what, cause=kind)


def observe(
    record: AuditRecord,
    *,
    prices: dict[str, tuple[float, float]],
    requested_at: datetime | None = None,
    run_model_calls: list[AuditRecord] | None = None,
) -> None:
    """Update the metrics for one appended record (inside an activity)."""
    meter = activity.metric_meter()
    d: dict[str, Any] = record.data
    kind = record.kind
    if kind == "proposal":
        _count(meter, "countersign_proposals", "tool calls the model proposed", tool=d["tool"])
    elif kind == "verdict":
        _count(
            meter,
            "countersign_verdicts",
            "guard verdicts by outcome",
            tool=d["tool"],
            outcome=d["outcome"],
        )
    elif kind == "approval.requested":
        _count(meter, "countersign_approvals_requested", "approval requests opened")
    elif kind == "approval.granted":
        _count(meter, "countersign_approvals_settled", "requests settled", outcome="approved")
    elif kind == "approval.expired":
        _count(meter, "countersign_approvals_settled", "requests settled", outcome="expired")
    elif kind == "approval.decided":
        decision = "approve" if d.get("approve") else "reject"
        _count(
            meter,
            "countersign_decisions",
            "approvers' decisions",
            decision=decision,
            channel=str(d.get("channel")),
        )
        if decision == "reject":
            _count(meter, "countersign_approvals_settled", "requests settled", outcome="rejected")
        if requested_at is not None and d.get("decided_at"):
            waited = datetime.fromisoformat(d["decided_at"]) - requested_at
            meter.create_histogram_float(
                "countersign_time_to_decision", "from approval request to decision", "s"
            ).record(max(waited.total_seconds(), 0.0), {"decision": decision})
    elif kind == "model.call":
        usage = d.get("usage", {})
        tokens = meter.create_counter("countersign_model_tokens", "model tokens", "tokens")
        for part in ("prompt", "completion"):
            tokens.add(usage.get(f"{part}_tokens", 0), {"model": str(d.get("model")), "part": part})
    elif kind in (
        "action.executed",
        "action.read",
        "action.failed",
        "action.blocked",
        "action.unknown",
    ):
        _count(
            meter,
            "countersign_actions",
            "tool calls executed, by status",
            tool=d["tool"],
            status=kind.removeprefix("action."),
        )
        if kind in ("action.failed", "action.unknown"):
            _count_failure(meter, "action", d)
    elif kind == "run.compensated":
        _count_failure(meter, "run", d)
    elif kind == "run.finished":
        agent = str(d.get("agent"))
        _count(meter, "countersign_runs_finished", "runs finished", status=str(d.get("status")))
        meter.create_histogram("countersign_run_tokens", "tokens per run", "tokens").record(
            int(d.get("tokens", 0)), {"agent": agent}
        )
        costs = [
            model_cost_usd(prices, str(r.data.get("model")), r.data.get("usage", {}))
            for r in run_model_calls or []
        ]
        if costs and None not in costs:
            meter.create_histogram_float(
                "countersign_run_cost", "model cost per run", "usd"
            ).record(sum(c for c in costs if c is not None), {"agent": agent})
