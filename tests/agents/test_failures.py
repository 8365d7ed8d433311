"""Failure causes: what Temporal reports as "Activity task failed", named."""

from __future__ import annotations

import asyncio

from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    RetryState,
    TimeoutError,
    TimeoutType,
)

from countersign.activities.failures import cause_of


def failed(activity: str, cause: BaseException, retry_state: RetryState) -> ActivityError:
    error = ActivityError(
        "Activity task failed",
        scheduled_event_id=9,
        started_event_id=10,
        identity="123@host",
        activity_type=activity,
        activity_id="9",
        retry_state=retry_state,
    )
    error.__cause__ = cause
    return error


def test_a_system_down_on_every_attempt_says_so_and_how_often() -> None:
    e = failed(
        "payments.refund",
        ApplicationError("POST /refunds answered 503", type="SystemUnavailable"),
        RetryState.MAXIMUM_ATTEMPTS_REACHED,
    )
    cause = cause_of(e, max_attempts=5)
    assert (cause.kind, cause.attempts) == ("system_unavailable", 5)
    assert cause.describe() == (
        "system unavailable after 5 attempts (payments.refund): POST /refunds answered 503"
    )


def test_timeouts_and_model_failures_are_told_apart() -> None:
    hung = failed(
        "payments.refund",
        TimeoutError("timed out", type=TimeoutType.HEARTBEAT, last_heartbeat_details=[]),
        RetryState.TIMEOUT,
    )
    assert cause_of(hung).kind == "timeout" and "no heartbeat in time" in cause_of(hung).detail
    model_down = failed(
        "model.plan",
        ApplicationError("Connection error.", type="APIConnectionError"),
        RetryState.MAXIMUM_ATTEMPTS_REACHED,
    )
    assert (
        cause_of(model_down, max_attempts=4)
        .describe()
        .startswith("model unavailable after 4 attempts (model.plan)")
    )
    refused = failed(
        "model.plan",
        ApplicationError("the model endpoint refused the API key", type="ModelAuthentication"),
        RetryState.NON_RETRYABLE_FAILURE,
    )
    assert cause_of(refused).kind == "model_refused" and cause_of(refused).attempts is None


def test_refusals_by_the_boundary_and_cancellation() -> None:
    e = failed(
        "payments.refund",
        ApplicationError("no allow verdict", type="ActionNotAuthorized", non_retryable=True),
        RetryState.NON_RETRYABLE_FAILURE,
    )
    assert cause_of(e).kind == "not_authorized"
    assert cause_of(asyncio.CancelledError()).kind == "cancelled"
    assert cause_of(RuntimeError("boom")).describe() == "error: RuntimeError: boom"
