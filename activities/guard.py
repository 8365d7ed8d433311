"""The guard activity: gather what a decision depends on, decide, reserve limits, audit.

Deciding here (not in workflow code) lets the policy and the kill switch change at any time:
the verdict, with the policy version and rule ids that produced it, lands in history and
replays exactly. The full decision input is audited too, so a candidate policy can be
backtested against what really happened.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import DECIDE, RELEASE, GuardInput, GuardResult
from activities.runtime import Runtime, audit_from_activity, current_workflow_id
from activities.sealing import SealError, keep_sealed, seal_fields, sealer_for
from activities.tools import REGISTRY, lookup_tool
from agents.specs import AGENTS
from guardrails.audit import AuditRecord, AuditStore
from guardrails.errors import describe
from guardrails.policy import DecisionInput, PolicyBundle, PolicyError, Verdict, decide
from guardrails.redaction import Kind
from guardrails.rollout import OverrideCount, Rollout, override_counts

log = structlog.get_logger(__name__)


def facts_for(audit: AuditStore, workflow_id: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The latest looked-up record of each fact that this call concerns.

    A lookup concerns the call when every argument they share has the same value (an order
    looked up by `order_id` is a fact for a refund of that `order_id`).
    """
    facts: dict[str, Any] = {}
    for record in audit.find(workflow_id, "action.read"):
        spec = REGISTRY.get(record.data.get("tool", ""))
        if spec is None or spec.fact is None:
            continue
        looked_up = record.data.get("arguments") or {}
        shared = set(looked_up) & set(arguments)
        if shared and all(looked_up[k] == arguments[k] for k in shared):
            facts[spec.fact] = record.data.get("result") or {}
    return facts


def overrides_for(audit: AuditStore, rollout: Rollout | None, agent: str) -> OverrideCount | None:
    """Human decisions on the agent's proposals over the rollout's window, from the audit
    trail; None when the agent's rollout does not demote on overrides."""
    if rollout is None or rollout.demote_when_override_rate_above is None:
        return None
    since = datetime.now(UTC) - timedelta(hours=rollout.window_hours)

    def requested(decided: AuditRecord) -> dict[str, Any] | None:
        found = audit.find(
            decided.workflow_id, "approval.requested", request_id=decided.data.get("request_id")
        )
        return found[0].data if found else None

    counts = override_counts(audit.between(since), requested)
    mine = [c for (a, _), c in counts.items() if a == agent]
    return OverrideCount(
        decisions=sum(c.decisions for c in mine),
        rejections=sum(c.rejections for c in mine),
        window_hours=rollout.window_hours,
    )


class GuardActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _policy(self) -> PolicyBundle:
        source = self.runtime.policy
        try:
            policy = source.current()
        except PolicyError as e:
            # No valid policy at all: wait (retry) until one is deployed, decide nothing.
            raise ApplicationError(str(e), type="NoValidPolicy") from e
        if source.last_error:
            log.error(
                "policy.invalid_kept_previous", error=str(source.last_error), active=policy.version
            )
        return policy

    @activity.defn(name=DECIDE)
    async def decide(self, input: GuardInput) -> GuardResult:
        agent = AGENTS.get(input.agent)
        if agent is None:
            raise ApplicationError(
                f"unknown agent {input.agent!r}", type="UnknownAgent", non_retryable=True
            )
        policy = self._policy()
        workflow_id = current_workflow_id()
        proposal = input.proposal
        spec = lookup_tool(proposal.tool)
        arguments, error = None, proposal.arguments_error
        if spec is not None and proposal.arguments is not None:
            try:
                # Validated in clear; the verdict keeps secret and personal values sealed.
                sealer = sealer_for(self.runtime.settings)
                known: dict[str, Kind] = {}
                clear = sealer.unseal(proposal.arguments, known)
                arguments = spec.args_model.model_validate(clear).model_dump(mode="json")
                arguments = keep_sealed(proposal.arguments, arguments, spec.args_model)
                arguments = sealer.seal_known(
                    seal_fields(sealer, arguments, spec.args_model), known
                )
            except ValidationError as e:
                error = describe(e, "(arguments)")
            except SealError as e:  # e.g. a token the model forged
                error = f"(arguments): {e}"
        settings = self.runtime.settings
        d = DecisionInput(
            proposal=proposal,
            agent=agent.name,
            granted_scopes=agent.scopes,
            tool=spec.facts if spec else None,
            arguments=arguments,
            arguments_error=error,
            requested_mode=input.requested_mode,
            workflow_id=workflow_id,
            requested_by=input.requested_by,
            run_context=input.run_context,
            facts=await asyncio.to_thread(
                facts_for, self.runtime.audit, workflow_id, arguments or {}
            ),
            killed=(await self.runtime.kill_switch_now()).stops(proposal.tool, agent.name),
            overrides=await asyncio.to_thread(
                overrides_for,
                self.runtime.audit,
                policy.settings.rollout.get(agent.name),
                agent.name,
            ),
        )
        verdict, d = await asyncio.to_thread(
            self.runtime.ledger.decide_and_reserve,
            d,
            policy.settings.counters,
            lambda x: decide(x, policy),
        )
        await audit_from_activity(
            self.runtime, "proposal", proposal.model_dump(mode="json"), actor=f"agent:{agent.name}"
        )
        await audit_from_activity(
            self.runtime,
            "verdict",
            {
                **verdict.model_dump(mode="json"),
                "input": d.model_dump(mode="json"),
                **self._candidate(d, verdict),
            },
        )
        return GuardResult(
            verdict=verdict,
            tool_timeout_seconds=settings.tool_start_to_close_seconds,
            tool_max_attempts=settings.tool_max_attempts,
            tool_heartbeat_seconds=settings.tool_heartbeat_seconds,
            tool_read_only=spec is not None and spec.read_only,
        )

    def _candidate(self, d: DecisionInput, active: Verdict) -> dict[str, Any]:
        """The candidate policy's verdict on the same input, recorded beside the active one."""
        if self.runtime.candidate is None:
            return {}
        try:
            policy = self.runtime.candidate.current()
        except PolicyError as e:
            return {"candidate": {"error": str(e)}}
        other = decide(d, policy) if d.tool is not None else active
        return {
            "candidate": {
                "policy_version": policy.version,
                "outcome": other.outcome,
                "rule_ids": other.rule_ids,
                "flipped": other.outcome != active.outcome,
            }
        }

    @activity.defn(name=RELEASE)
    async def release(self, action_hash: str) -> int:
        """Give back the limits reserved for an action that will not be executed."""
        released = await asyncio.to_thread(self.runtime.ledger.release, action_hash)
        await audit_from_activity(
            self.runtime, "limits.released", {"action_hash": action_hash, "counters": released}
        )
        return released
