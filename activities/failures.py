"""Why an action or a run failed, in words people and `countersign stats` can group by.

Temporal reports a failed activity as "Activity task failed" with the real cause nested
inside; this module names it (system unavailable after N attempts, timeout, not authorized,
model unavailable, …) so the audit trail, `countersign status` and `stats` say why.
Pure and deterministic: workflow code calls it.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    RetryState,
    TimeoutError,
)

from countersign.activities.contracts import PLAN

FailureKind = Literal[
    "system_unavailable",  # the system of record answered 5xx/429 or could not be reached
    "timeout",  # no answer in time (start-to-close), or the worker stopped heartbeating
    "outcome_unknown",  # a side effect that may or may not have happened
    "tool_rejected",  # the system of record refused the request (4xx)
    "not_authorized",  # the tool activity found no allow verdict or approval
    "kill_switch",
    "model_unavailable",  # the model endpoint failed, timed out or could not be reached
    "model_refused",  # the model endpoint rejected the request or the API key
    "invalid_input",
    "cancelled",
    "error",  # anything else (a bug, a misconfiguration): see the detail
]

_BY_TYPE: dict[str, FailureKind] = {
    "SystemUnavailable": "system_unavailable",
    "ToolRejected": "tool_rejected",
    "ActionNotAuthorized": "not_authorized",
    "KillSwitch": "kill_switch",
    "InvalidToolArguments": "invalid_input",
    "InvalidRunInput": "invalid_input",
    "ModelRejected": "model_refused",
    "ModelAuthentication": "model_refused",
}

_WORDS: dict[FailureKind, str] = {
    "system_unavailable": "system unavailable",
    "timeout": "timed out",
    "outcome_unknown": "outcome unknown",
    "tool_rejected": "rejected by the system of record",
    "not_authorized": "not authorized",
    "kill_switch": "stopped by the kill switch",
    "model_unavailable": "model unavailable",
    "model_refused": "model refused the request",
    "invalid_input": "invalid input",
    "cancelled": "cancelled",
    "error": "error",
}


class FailureCause(BaseModel):
    kind: FailureKind
    detail: str
    activity: str | None = None
    # Set when Temporal gave up because every allowed attempt failed.
    attempts: int | None = None

    def describe(self) -> str:
        """E.g. "system unavailable after 3 attempts (payments.refund): … answered 503 …"."""
        words = _WORDS[self.kind]
        if self.attempts:
            words += f" after {self.attempts} attempts"
        if self.activity:
            words += f" ({self.activity})"
        return f"{words}: {self.detail}" if self.detail else words


def cause_of(error: BaseException, *, max_attempts: int | None = None) -> FailureCause:
    """Name the cause of `error`. `max_attempts`: the activity's retry limit, when known."""
    if isinstance(error, asyncio.CancelledError | CancelledError):
        return FailureCause(kind="cancelled", detail="")
    while not isinstance(error, ActivityError | ApplicationError) and error.__cause__:
        error = error.__cause__  # unwrap what a framework wrapped
    if not isinstance(error, ActivityError):
        if isinstance(error, ApplicationError):
            return FailureCause(kind=_BY_TYPE.get(error.type or "", "error"), detail=error.message)
        return FailureCause(kind="error", detail=f"{type(error).__name__}: {error}")
    activity = error.activity_type
    exhausted = error.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
    attempts = max_attempts if exhausted else None
    cause = error.cause
    if isinstance(cause, CancelledError):
        return FailureCause(kind="cancelled", detail="", activity=activity)
    if isinstance(cause, TimeoutError):
        kind: FailureKind = "model_unavailable" if activity == PLAN else "timeout"
        what = cause.type.name.lower().replace("_", "-") if cause.type else "activity"
        detail = f"no {'heartbeat' if what == 'heartbeat' else 'answer'} in time ({what})"
        return FailureCause(kind=kind, detail=detail, activity=activity, attempts=attempts)
    if isinstance(cause, ApplicationError):
        kind = _BY_TYPE.get(cause.type or "", "error")
        if activity == PLAN and kind == "error":
            kind = "model_unavailable"  # connection errors, 5xx, rate limits, empty replies
        return FailureCause(kind=kind, detail=cause.message, activity=activity, attempts=attempts)
    return FailureCause(kind="error", detail=str(cause or error), activity=activity)
