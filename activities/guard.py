"""The guard activity: load the active policy, decide a proposal, record both in the audit.

Deciding here (not in workflow code) lets the policy change at any time: the verdict, with the
policy version that produced it, lands in history and replays exactly.
"""

from __future__ import annotations

import structlog
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import DECIDE, GuardInput, GuardResult
from activities.runtime import Runtime, audit_from_activity, current_workflow_id
from activities.tools import lookup_tool
from agents.specs import AGENTS
from guardrails.policy import PolicyError, decide

log = structlog.get_logger(__name__)


def _errors(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}"
        for err in e.errors()
    )


class GuardActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @activity.defn(name=DECIDE)
    async def decide(self, input: GuardInput) -> GuardResult:
        agent = AGENTS.get(input.agent)
        if agent is None:
            raise ApplicationError(
                f"unknown agent {input.agent!r}", type="UnknownAgent", non_retryable=True
            )
        try:
            policy = self.runtime.policy.current()
        except PolicyError as e:
            # No valid policy at all: wait (retry) until one is deployed, decide nothing.
            raise ApplicationError(str(e), type="NoValidPolicy") from e
        if self.runtime.policy.last_error:
            log.error("policy.invalid_kept_previous", error=str(self.runtime.policy.last_error))

        proposal = input.proposal
        spec = lookup_tool(proposal.tool)
        arguments, error = None, proposal.arguments_error
        if spec is not None and proposal.arguments is not None:
            try:
                args = spec.args_model.model_validate(proposal.arguments)
                arguments = args.model_dump(mode="json")
            except ValidationError as e:
                error = _errors(e)
        verdict = decide(
            proposal=proposal,
            agent=agent.name,
            granted_scopes=agent.scopes,
            tool=spec.facts if spec else None,
            arguments=arguments,
            arguments_error=error,
            policy=policy,
            requested_mode=input.requested_mode,
            workflow_id=current_workflow_id(),
        )
        await audit_from_activity(
            self.runtime, "proposal", proposal.model_dump(mode="json"), actor=f"agent:{agent.name}"
        )
        await audit_from_activity(self.runtime, "verdict", verdict.model_dump(mode="json"))
        settings = self.runtime.settings
        return GuardResult(
            verdict=verdict,
            tool_timeout_seconds=settings.tool_start_to_close_seconds,
            tool_max_attempts=settings.tool_max_attempts,
        )
