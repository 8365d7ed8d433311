"""The identity activity: check a signed statement against the live directory.

It runs as a local activity from the run's Update and signal handlers. The directory can
change at any time (a key revoked, a person added), so workflow code never reads it: the
result — who is proven, with which key, by which directory version — lands in history and
replays exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from countersign.activities.contracts import VERIFY, VerifyInput, VerifyResult
from countersign.activities.runtime import Runtime
from countersign.guardrails.identity import IdentityError, StatementRefused, verify


class IdentityActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @activity.defn(name=VERIFY)
    async def verify(self, input: VerifyInput) -> VerifyResult:
        try:
            verified = verify(input.envelope, self.runtime.directory.current(), datetime.now(UTC))
        except (StatementRefused, IdentityError) as e:
            return VerifyResult(refused=str(e))
        if input.authority is not None:
            policy = self.runtime.policy.current()
            if not policy.has_authority(verified.identity, input.authority):
                groups = ", ".join(policy.settings.authority.get(input.authority, [])) or (
                    f"(none: policy.toml [authority] {input.authority} names no group)"
                )
                return VerifyResult(
                    refused=f"{verified.identity} may not {input.authority.replace('_', ' ')}: "
                    f"that needs a member of {groups}"
                )
        return VerifyResult(verified=verified)
