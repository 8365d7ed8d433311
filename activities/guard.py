"""The guard activity: gather what a decision depends on, decide, reserve limits, audit.

What it gathers it checks itself: arguments validated strictly, and the facts a side effect is
decided on fetched from the system of record (activities/facts.py), never taken from what the
model looked up. Anything that goes wrong is a recorded deny, never a retry loop.

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

from countersign.activities.agent_specs import AGENTS
from countersign.activities.contracts import DECIDE, RELEASE, GuardInput, GuardResult
from countersign.activities.facts import FactUnavailable, resolve_facts
from countersign.activities.runtime import (
    Runtime,
    activity_record,
    audit_from_activity,
    current_workflow_id,
    observe,
)
from countersign.activities.sealing import SealError, keep_sealed, seal_fields, sealer_for
from countersign.activities.tools import ToolSpec, lookup_tool, validate_arguments
from countersign.guardrails.audit import AuditRecord, AuditStore
from countersign.guardrails.errors import describe
from countersign.guardrails.policy import DecisionInput, PolicyBundle, PolicyError, Verdict, decide
from countersign.guardrails.redaction import Kind
from countersign.guardrails.rollout import OverrideCount, Rollout, override_counts

log = structlog.get_logger(__name__)


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
            # No valid policy at all: every proposal is denied until one is deployed.
            raise ApplicationError(str(e), type="NoValidPolicy") from e
        if source.last_error:
            log.error(
                "policy.invalid_kept_previous", error=str(source.last_error), active=policy.version
            )
        return policy

    @activity.defn(name=DECIDE)
    async def decide(self, input: GuardInput) -> GuardResult:
        return await self.decide_in_activity(input)

    async def decide_in_activity(self, input: GuardInput, n: int = 0) -> GuardResult:
        """Decide one proposal from inside the running activity (this one, or the model call
        that decides its reply's proposals: PlanInput.guard). Its audit records are keyed by
        the activity and `n` (the proposal's place in the reply), and its reservations by the
        action hash, so a retried attempt writes and counts nothing twice."""
        agent = AGENTS.get(input.agent)
        if agent is None:
            raise ApplicationError(
                f"unknown agent {input.agent!r}", type="UnknownAgent", non_retryable=True
            )
        workflow_id = current_workflow_id()
        proposal = input.proposal
        spec = lookup_tool(proposal.tool)
        settings = self.runtime.settings
        d = DecisionInput(
            proposal=proposal,
            agent=agent.name,
            granted_scopes=agent.scopes,
            tool=spec.facts if spec else None,
            arguments=None,
            arguments_error=proposal.arguments_error,
            requested_mode=input.requested_mode,
            workflow_id=workflow_id,
            requested_by=input.requested_by,
            subject=input.subject,
        )
        policy: PolicyBundle | None = None
        failed: Verdict | None = None
        try:
            policy = active = self._policy()
            # The kill switch and the override counts in one thread hop.
            stored, overrides = await asyncio.to_thread(
                lambda: (
                    self.runtime.kill_switch.read(),
                    overrides_for(
                        self.runtime.audit, active.settings.rollout.get(agent.name), agent.name
                    ),
                )
            )
            switch = self.runtime.kill_switch_as(stored)
            d = d.model_copy(
                update={"killed": switch.stops(proposal.tool, agent.name), "overrides": overrides}
            )
            d = await self._gather(d, spec)
        except Exception as e:
            failed = self._error_verdict(e, input, agent.name, policy, workflow_id)
        candidate = self._candidate_policy()  # read here: a PolicySource is not thread-safe
        proposal_record = activity_record(
            "proposal", proposal.model_dump(mode="json"), actor=f"agent:{agent.name}", n=n
        )
        verdict_record = activity_record("verdict", {}, n=n)

        def settle() -> tuple[Verdict, list[AuditRecord]]:
            """Decide and reserve, then audit the proposal and its verdict: one thread hop,
            and one audit transaction for the two records."""
            nonlocal d
            verdict = failed
            if verdict is None:
                assert policy is not None
                bundle = policy
                try:
                    verdict, d = self.runtime.ledger.decide_and_reserve(
                        d, bundle.settings.counters, lambda x: decide(x, bundle)
                    )
                except Exception as e:
                    verdict = self._error_verdict(e, input, agent.name, policy, workflow_id)
            data = {
                **verdict.model_dump(mode="json"),
                "input": d.model_dump(mode="json"),
                **self._candidate(d, verdict, candidate),
            }
            records = self.runtime.audit.append_many_sync(
                [proposal_record, {**verdict_record, "data": data}]
            )
            return verdict, records

        verdict, records = await asyncio.to_thread(settle)
        await observe(self.runtime, records)
        return GuardResult(
            verdict=verdict,
            tool_timeout_seconds=settings.tool_start_to_close_seconds,
            tool_max_attempts=settings.tool_max_attempts,
            tool_heartbeat_seconds=settings.tool_heartbeat_seconds,
            tool_read_only=spec is not None and spec.read_only,
            approver_may_change=dict(spec.approver_may_change) if spec else {},
        )

    async def _gather(self, d: DecisionInput, spec: ToolSpec | None) -> DecisionInput:
        """Validate the arguments strictly; fetch the facts a side effect is decided on."""
        proposal = d.proposal
        if spec is None or proposal.arguments is None:
            return d
        try:
            # Validated strictly and in clear; the verdict keeps secret and personal values
            # sealed (activities/sealing.py).
            sealer = sealer_for(self.runtime.settings)
            known: dict[str, Kind] = {}
            clear = validate_arguments(spec, sealer.unseal(proposal.arguments, known))
            arguments = keep_sealed(
                proposal.arguments, clear.model_dump(mode="json"), spec.args_model
            )
            arguments = sealer.seal_known(seal_fields(sealer, arguments, spec.args_model), known)
        except ValidationError as e:
            return d.model_copy(update={"arguments_error": describe(e, "(arguments)")})
        except (SealError, ValueError) as e:  # e.g. a token the model forged, a NaN
            return d.model_copy(update={"arguments_error": f"(arguments): {e}"})
        d = d.model_copy(update={"arguments": arguments, "arguments_error": None})
        if spec.read_only or spec.scope not in d.granted_scopes or d.killed:
            return d  # decided on scope or the kill switch alone: nothing to fetch
        update: dict[str, Any] = {}
        try:
            keys = clear.model_dump(mode="json")  # a fact's key in clear, to fetch it by
            update["facts"] = await resolve_facts(self.runtime, d.workflow_id, keys)
            update["subject_facts"] = await resolve_facts(self.runtime, d.workflow_id, d.subject)
        except FactUnavailable as e:
            update["facts_error"] = str(e)
        return d.model_copy(update=update)

    @staticmethod
    def _error_verdict(
        e: Exception,
        input: GuardInput,
        agent: str,
        policy: PolicyBundle | None,
        workflow_id: str,
    ) -> Verdict:
        """Whatever went wrong, the answer is a recorded deny now, never a retry loop that
        leaves the run hanging with no verdict. (Called while handling `e`.)"""
        proposal = input.proposal
        log.exception("guard.error", tool=proposal.tool, call_id=proposal.call_id)
        return Verdict(
            call_id=proposal.call_id,
            tool=proposal.tool,
            outcome="deny",
            rule_ids=["guard.error"],
            policy_version=policy.version if policy else "none",
            reason=f"the guard could not decide: {type(e).__name__}: {e}"[:500],
            mode=policy.mode_for(agent, input.requested_mode, workflow_id)[0]
            if policy
            else "shadow",
        )

    def _candidate_policy(self) -> PolicyBundle | PolicyError | None:
        """The candidate policy to decide beside the active one (or why there is none)."""
        if self.runtime.candidate is None:
            return None
        try:
            return self.runtime.candidate.current()
        except PolicyError as e:
            return e

    @staticmethod
    def _candidate(
        d: DecisionInput, active: Verdict, policy: PolicyBundle | PolicyError | None
    ) -> dict[str, Any]:
        """The candidate policy's verdict on the same input, recorded beside the active one."""
        if policy is None:
            return {}
        if isinstance(policy, PolicyError):
            return {"candidate": {"error": str(policy)}}
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
        released = await asyncio.to_thread(
            self.runtime.ledger.release, action_hash, current_workflow_id()
        )
        await audit_from_activity(
            self.runtime, "limits.released", {"action_hash": action_hash, "counters": released}
        )
        return released
