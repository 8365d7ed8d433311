"""`countersign stats`: what the agents proposed, what the guard and the humans decided, what
it cost, over a time window, computed from the audit trail (the same facts the worker's
Prometheus metrics count as they happen)."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from datetime import datetime, timedelta

from pydantic import BaseModel

from countersign.activities.metrics import model_cost_usd
from countersign.guardrails.audit import AuditRecord
from countersign.guardrails.rollout import override_counts

_WINDOW = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_window(text: str) -> timedelta:
    """`30m`, `24h`, `7d`, `2w` → a timedelta; ValueError saying what is accepted."""
    m = _WINDOW.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"--since {text!r}: expected a positive number and m, h, d or w, e.g. 24h")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


class Stats(BaseModel):
    since: datetime
    until: datetime
    runs_started: int
    runs_finished: dict[str, int]
    proposals: int
    verdicts: dict[str, int]
    approvals_requested: int
    approvals_settled: dict[str, int]
    approvals_pending: int
    decisions: int
    rejections: int
    # How often humans override what the agent proposed: rejections (and approvals with
    # changes) / decisions.
    human_override_rate: float | None
    # The same by the mode the run was in when it asked (automate / augment, after rollout):
    # {"augment": {"decisions": 9, "rejections": 3, "rate": 0.33}}.
    override_by_mode: dict[str, dict[str, float | int | None]]
    time_to_decision_seconds: dict[str, float]
    tokens: int
    tokens_per_run: float | None
    cost_usd: float | None
    cost_per_run_usd: float | None
    unpriced_models: list[str]
    tool_calls: int
    tool_errors: int
    tool_error_rate: float | None
    # Runs that failed (not cancelled), and failures by cause (activities.failures kinds), for
    # failed actions and failed runs alike.
    runs_failed: int = 0
    failure_causes: dict[str, int] = {}
    # Side effects that may or may not have happened: each needs a person.
    actions_unknown: int = 0


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def compute_stats(
    records: list[AuditRecord],
    *,
    since: datetime,
    until: datetime,
    prices: dict[str, tuple[float, float]],
) -> Stats:
    kinds = Counter(r.kind for r in records)
    requested_at = {
        str(r.data.get("request_id")): r.at for r in records if r.kind == "approval.requested"
    }
    settled: dict[str, str] = {}
    waits: list[float] = []
    rejections = 0
    decisions = [r for r in records if r.kind == "approval.decided"]
    for r in decisions:
        request_id = str(r.data.get("request_id"))
        if not r.data.get("approve"):
            rejections += 1
            settled[request_id] = "rejected"
        elif r.data.get("changes"):
            # Approved with changes: a human overrode the agent's proposal.
            rejections += 1
            settled[request_id] = "changed"
        decided_at = r.data.get("decided_at")
        if request_id in requested_at and decided_at:
            waits.append(
                (datetime.fromisoformat(decided_at) - requested_at[request_id]).total_seconds()
            )
    for r in records:
        if r.kind == "approval.granted":
            settled[str(r.data.get("request_id"))] = "approved"
        elif r.kind == "approval.expired":
            settled[str(r.data.get("request_id"))] = "expired"

    by_mode: dict[str, list[int]] = {}
    for (_, mode), c in override_counts(records).items():
        totals = by_mode.setdefault(mode, [0, 0])
        totals[0] += c.decisions
        totals[1] += c.rejections
    finished = [r for r in records if r.kind == "run.finished"]
    model_calls = [r for r in records if r.kind == "model.call"]
    tokens = sum(sum(r.data.get("usage", {}).values()) for r in model_calls)
    costs = [
        (
            str(r.data.get("model")),
            model_cost_usd(prices, str(r.data.get("model")), r.data.get("usage", {})),
        )
        for r in model_calls
    ]
    unpriced = sorted({model for model, cost in costs if cost is None})
    cost = sum(c for _, c in costs if c is not None) if model_calls and not unpriced else None
    runs = len({r.workflow_id for r in model_calls}) or None
    unknown = kinds["action.unknown"]
    tool_calls = kinds["action.executed"] + kinds["action.read"] + kinds["action.failed"] + unknown
    ended = [r for r in records if r.kind == "run.compensated"]
    failed_runs = [r for r in ended if _cause(r) != "cancelled"]
    causes = Counter(
        _cause(r) for r in records if r.kind in ("action.failed", "action.unknown")
    ) + Counter(_cause(r) for r in failed_runs)
    waits.sort()
    return Stats(
        since=since,
        until=until,
        runs_started=kinds["run.started"],
        runs_finished=dict(Counter(str(r.data.get("status")) for r in finished)),
        proposals=kinds["proposal"],
        verdicts=dict(Counter(str(r.data.get("outcome")) for r in records if r.kind == "verdict")),
        approvals_requested=len(requested_at),
        approvals_settled=dict(Counter(settled.values())),
        approvals_pending=len(set(requested_at) - set(settled)),
        decisions=len(decisions),
        rejections=rejections,
        human_override_rate=_ratio(rejections, len(decisions)),
        override_by_mode={
            mode: {"decisions": d, "rejections": r, "rate": _ratio(r, d)}
            for mode, (d, r) in sorted(by_mode.items())
        },
        time_to_decision_seconds=(
            {
                "median": statistics.median(waits),
                "p90": waits[min(len(waits) - 1, int(0.9 * len(waits)))],
                "max": waits[-1],
            }
            if waits
            else {}
        ),
        tokens=tokens,
        tokens_per_run=tokens / runs if runs else None,
        cost_usd=cost,
        cost_per_run_usd=cost / runs if cost is not None and runs else None,
        unpriced_models=unpriced,
        tool_calls=tool_calls,
        tool_errors=kinds["action.failed"] + unknown,
        tool_error_rate=_ratio(kinds["action.failed"] + unknown, tool_calls),
        runs_failed=len(failed_runs),
        failure_causes=dict(causes),
        actions_unknown=unknown,
    )


def _cause(record: AuditRecord) -> str:
    """The failure's kind (activities.failures); records written before causes: "unclassified"."""
    cause = record.data.get("cause")
    if isinstance(cause, dict) and cause.get("kind"):
        return str(cause["kind"])
    return "cancelled" if record.data.get("reason") == "run cancelled" else "unclassified"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{100 * rate:.1f}%"


def _counts(counts: dict[str, int]) -> str:
    return " · ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def format_stats(s: Stats) -> str:
    ttd = s.time_to_decision_seconds
    cost = (
        f"${s.cost_usd:.4f} (per run ${s.cost_per_run_usd:.4f})"
        if s.cost_usd is not None and s.cost_per_run_usd is not None
        else "unknown"
        + (
            f" (no price for {', '.join(s.unpriced_models)}: COUNTERSIGN_MODEL_PRICES)"
            if s.unpriced_models
            else ""
        )
    )
    lines = [
        f"Countersign, {s.since:%Y-%m-%d %H:%M} → {s.until:%Y-%m-%d %H:%M} UTC",
        f"  runs              started {s.runs_started} · finished {_counts(s.runs_finished)}",
        f"  proposals         {s.proposals}",
        f"  verdicts          {_counts(s.verdicts)}",
        f"  approvals         requested {s.approvals_requested} · "
        f"{_counts(s.approvals_settled)} · pending {s.approvals_pending}",
        f"  decisions         {s.decisions} · human override rate {_pct(s.human_override_rate)}"
        f" ({s.rejections} rejected what the agent proposed)",
        "  override by mode  "
        + (
            " · ".join(
                f"{mode} {_pct(c['rate'])} ({c['rejections']}/{c['decisions']})"
                for mode, c in s.override_by_mode.items()
            )
            or "—"
        ),
        "  time to decision  "
        + (
            f"median {_duration(ttd['median'])} · p90 {_duration(ttd['p90'])} · "
            f"max {_duration(ttd['max'])}"
            if ttd
            else "—"
        ),
        f"  tokens            {s.tokens}"
        + (f" (per run {s.tokens_per_run:.0f})" if s.tokens_per_run is not None else ""),
        f"  cost              {cost}",
        f"  tool calls        {s.tool_calls} · failed {s.tool_errors} · "
        f"error rate {_pct(s.tool_error_rate)}",
        f"  runs failed       {s.runs_failed}",
        f"  failure causes    {_counts(s.failure_causes)}",
    ]
    if s.actions_unknown:
        lines.append(
            f"  NEEDS ATTENTION   {s.actions_unknown} action(s) whose outcome is unknown "
            "(audit kind action.unknown)"
        )
    return "\n".join(lines)
