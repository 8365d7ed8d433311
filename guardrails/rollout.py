"""Rollout by share of runs (a canary), and demotion when humans keep overriding the agent.

    [rollout."support-refunds"]
    automate_share = 0.2                    # automate for a stable 20% of runs, augment the rest
    demote_when_override_rate_above = 0.3   # ... and augment for all while humans reject > 30%
    window_hours = 24                       # of their decisions in the last 24 hours,
    min_decisions = 10                      # once there are at least 10 decisions to judge by

A run's share is a hash of its workflow id, so every proposal of a run (and its replay) lands
on the same side. The override rate is rejections / decisions in the audit trail for the agent
over the window; the guard activity counts them (`OverrideCount`) and puts the count in the
decision input, so the verdict, replay and `policy backtest` see exactly what the guard saw.
Pure logic: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from countersign.guardrails.audit import AuditRecord

Mode = Literal["shadow", "augment", "automate"]


class Rollout(BaseModel):
    """`[rollout."<agent>"]` in policy.toml."""

    model_config = ConfigDict(extra="forbid")

    automate_share: float = Field(default=1.0, ge=0.0, le=1.0)
    demote_when_override_rate_above: float | None = Field(default=None, ge=0.0, le=1.0)
    window_hours: int = Field(default=24, ge=1, le=24 * 90)
    min_decisions: int = Field(default=10, ge=1)


class OverrideCount(BaseModel):
    """Human decisions on an agent's proposals over a window, and how many were rejections."""

    decisions: int = 0
    rejections: int = 0
    window_hours: int = 24

    @property
    def rate(self) -> float | None:
        return self.rejections / self.decisions if self.decisions else None


def share_of(workflow_id: str) -> float:
    """A stable number in [0, 1) for a run."""
    digest = hashlib.sha256(f"rollout\x00{workflow_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def rollout_mode(
    configured: Mode, rollout: Rollout | None, workflow_id: str, overrides: OverrideCount | None
) -> tuple[Mode, str | None]:
    """The mode a rollout gives this run, and why (None when no rollout applies)."""
    if rollout is None or configured != "automate":
        return configured, None
    threshold = rollout.demote_when_override_rate_above
    if threshold is not None and overrides is not None:
        rate = overrides.rate
        if rate is not None and overrides.decisions >= rollout.min_decisions and rate > threshold:
            return "augment", (
                f"demoted to augment: humans overrode {overrides.rejections} of "
                f"{overrides.decisions} decisions in the last {overrides.window_hours}h "
                f"({rate:.0%}, above {threshold:.0%})"
            )
    if rollout.automate_share >= 1.0:
        return "automate", None
    share = share_of(workflow_id)
    if share < rollout.automate_share:
        return "automate", f"in the automate share ({share:.3f} < {rollout.automate_share})"
    return "augment", f"outside the automate share ({share:.3f} >= {rollout.automate_share})"


def override_counts(
    records: Iterable[AuditRecord],
    requested: Callable[[AuditRecord], dict[str, Any] | None] | None = None,
) -> dict[tuple[str, str], OverrideCount]:
    """Decisions and rejections by (agent, mode) of the request they decided.

    A decision's request is found among `records`; `requested` looks up one that is not (a
    request opened before the window). Unknown agent or mode count as "unknown".
    """
    records = list(records)
    requests = {
        str(r.data.get("request_id")): r.data for r in records if r.kind == "approval.requested"
    }
    counts: dict[tuple[str, str], OverrideCount] = {}
    for r in records:
        if r.kind != "approval.decided":
            continue
        request = requests.get(str(r.data.get("request_id")))
        if request is None and requested is not None:
            request = requested(r)
        key = (
            str((request or {}).get("agent") or "unknown"),
            str((request or {}).get("mode") or "unknown"),
        )
        c = counts.setdefault(key, OverrideCount())
        c.decisions += 1
        # Approving with changes overrides the agent too: it proposed the wrong action.
        c.rejections += 0 if r.data.get("approve") and not r.data.get("changes") else 1
    return counts
