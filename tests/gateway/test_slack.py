"""Deciding from Slack: the interactive message, signed interactions, duplicates, identities."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.workers.gateway import Gateway
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, start_run
from tests.gateway.conftest import (
    SLACK_CHANNEL,
    FakeSlack,
    click,
    gateway_http,
    slack_request,
    wait_until,
)


async def _request_message(fake: FakeSlack, workflow_id: str) -> dict[str, Any]:
    messages = await wait_until(lambda: fake.posted(workflow_id), "the Slack approval message")
    return messages[0]


def _all_text(message: dict[str, Any]) -> str:
    return json.dumps(message["blocks"])


async def test_slack_message_shows_the_action_and_a_click_decides(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    fake_slack: FakeSlack,
    shop: Shop,
    channel_runtime: Runtime,
) -> None:
    before = len(shop.refunds("A-1051"))
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1051: the lamp flickers."
    )
    (request,) = await wait_for_pending(handle)
    message = await _request_message(fake_slack, handle.id)

    # What the agent wants to do and why, who may decide, until when.
    assert message["channel"] == SLACK_CHANNEL
    text = _all_text(message)
    for fact in (
        "payments.refund",
        "A-1051",
        "79.00",
        "the lamp flickers",
        "refund.over_50",
        "alice, bob",
        "<@U0ALICE>",
        request.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
    ):
        assert fact in text, fact
    # The buttons carry an opaque reference only: no identity, no amount, no ids.
    buttons = next(b for b in message["blocks"] if b["type"] == "actions")["elements"]
    assert [b["action_id"] for b in buttons] == [
        "countersign.approve",
        "countersign.reject",
        "countersign.change",
    ]
    # Approve with changes opens the request in the approver inbox (Slack has no field for it).
    change = buttons[2]
    assert change["url"] == f"{gateway.settings.gateway_url}/inbox#{request.request_id}"
    assert "value" not in change
    values = {b["value"] for b in buttons[:2]}
    (ref,) = values
    assert ref.startswith("ref_")
    for leak in ("alice", "dana", "7900", "A-1051", request.request_id, handle.id):
        assert leak not in ref

    # Slack reports the link's click too: it decides nothing.
    body, headers = slack_request(
        {**click(message, fake_slack, "U0ALICE", "approve"), "actions": [change]}
    )
    async with gateway_http(gateway) as http:
        assert (await http.post("/slack/interactions", content=body, headers=headers)).is_success
    assert channel_runtime.audit.find(handle.id, "approval.decided") == []

    body, headers = slack_request(click(message, fake_slack, "U0ALICE", "approve"))
    async with gateway_http(gateway) as http:
        started = time.monotonic()
        r = await http.post("/slack/interactions", content=body, headers=headers)
        acked_in = time.monotonic() - started
    assert r.status_code == 200
    assert acked_in < 3  # Slack's deadline: the Update happens after the answer

    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.approved_by == ["alice"]
    assert len(shop.refunds("A-1051")) == before + 1
    (decided,) = channel_runtime.audit.find(handle.id, "approval.decided")
    assert decided.actor == "slack:alice"
    assert decided.data["action_hash"] == request.action_hash

    # The gateway rewrote the message (who decided, no buttons), and so did the settled notice.
    updates = await wait_until(
        lambda: len(fake_slack.updates(message["ts"])) >= 2 and fake_slack.updates(message["ts"]),
        "two chat.update calls",
    )
    for update in updates:
        assert update["channel"] == SLACK_CHANNEL
        assert "Approved by alice" in json.dumps(update["blocks"])
        assert not any(b["type"] == "actions" for b in update["blocks"])
    sent = channel_runtime.audit.find(handle.id, "notify.sent", channel="slack")
    assert [s.data["event"] for s in sent] == ["requested", "settled"]


async def test_stale_tampered_or_wrong_secret_requests_decide_nothing(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    fake_slack: FakeSlack,
    channel_runtime: Runtime,
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1009: slack forgery test."
    )
    await wait_for_pending(handle)
    message = await _request_message(fake_slack, handle.id)
    payload = click(message, fake_slack, "U0ALICE", "approve")

    stale = slack_request(payload, age=301)
    wrong_secret = slack_request(payload, secret="not-the-signing-secret-at-all")
    body, headers = slack_request(payload)
    tampered = (body.replace(b"U0ALICE", b"U0BOB"), headers)
    no_signature = (body, {"Content-Type": "application/x-www-form-urlencoded"})
    bad_timestamp = (body, {**headers, "X-Slack-Request-Timestamp": "yesterday"})
    async with gateway_http(gateway) as http:
        for name, (b, h) in {
            "stale": stale,
            "wrong secret": wrong_secret,
            "tampered": tampered,
            "unsigned": no_signature,
            "bad timestamp": bad_timestamp,
        }.items():
            r = await http.post("/slack/interactions", content=b, headers=h)
            assert r.status_code == 401, name
    await asyncio.sleep(0.5)
    assert (await handle.query(AgentRun.status)).pending_approvals
    assert channel_runtime.audit.find(handle.id, "approval.decided") == []
    assert not fake_slack.updates(message["ts"])
    # The same click, properly signed, is taken: bob rejects.
    await _click_and_finish(gateway, fake_slack, message, "U0BOB", "reject")
    result = await handle.result()
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["rejected"]


async def _click_and_finish(
    gateway: Gateway, fake: FakeSlack, message: dict[str, Any], user: str, verb: str
) -> None:
    body, headers = slack_request(click(message, fake, user, verb))
    async with gateway_http(gateway) as http:
        r = await http.post("/slack/interactions", content=body, headers=headers)
    assert r.status_code == 200


async def test_a_retried_delivery_and_a_double_click_decide_once(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    fake_slack: FakeSlack,
    shop: Shop,
    channel_runtime: Runtime,
) -> None:
    before = len(shop.refunds("A-1052"))
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1052: the grinder jams."
    )
    await wait_for_pending(handle)
    message = await _request_message(fake_slack, handle.id)
    payload = click(message, fake_slack, "U0BOB", "approve")
    body, headers = slack_request(payload)
    second_click, second_headers = slack_request(payload)  # a new request, freshly signed
    async with gateway_http(gateway) as http:
        # Slack redelivers the same request; bob clicks twice.
        deliveries = [
            http.post("/slack/interactions", content=body, headers=headers),
            http.post(
                "/slack/interactions", content=body, headers={**headers, "X-Slack-Retry-Num": "1"}
            ),
            http.post("/slack/interactions", content=second_click, headers=second_headers),
        ]
        responses = await asyncio.gather(*deliveries)
    assert [r.status_code for r in responses] == [200, 200, 200]
    result = await handle.result()
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["executed"]
    assert len(shop.refunds("A-1052")) == before + 1
    assert len(channel_runtime.audit.find(handle.id, "approval.decided")) == 1
    assert channel_runtime.audit.find(handle.id, "approval.refused") == []


async def test_unmapped_users_and_the_requester_are_refused(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    fake_slack: FakeSlack,
    channel_runtime: Runtime,
) -> None:
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        task="Refund order A-1009: slack identity test.",
        signed_requester=True,
    )
    await wait_for_pending(handle)
    message = await _request_message(fake_slack, handle.id)
    async with gateway_http(gateway) as http:
        for user in ("U0STRANGER", "U0DANA"):
            payload = click(message, fake_slack, user, "approve")
            body, headers = slack_request(payload)
            r = await http.post("/slack/interactions", content=body, headers=headers)
            assert r.status_code == 200  # acknowledged; the refusal follows in Slack
    refused = await wait_until(
        lambda: (
            len(channel_runtime.audit.find(handle.id, "approval.refused")) >= 2
            and channel_runtime.audit.find(handle.id, "approval.refused")
        ),
        "two refusals in the audit trail",
    )
    reasons = sorted(r.data["reason"] for r in refused)
    assert "Slack user U0STRANGER is not mapped to an approver identity" in reasons
    assert any("dana requested this run and cannot approve" in r for r in reasons)
    assert {r.actor for r in refused} == {"slack:U0STRANGER", "slack:dana"}
    # Each clicker hears why, privately; the channel's message is unchanged.
    answers = await wait_until(
        lambda: len(fake_slack.responses) >= 2 and fake_slack.responses, "two ephemeral answers"
    )
    assert all(a["response_type"] == "ephemeral" for a in answers[-2:])
    assert any("not mapped" in a["text"] for a in answers[-2:])
    assert not fake_slack.updates(message["ts"])
    assert (await handle.query(AgentRun.status)).pending_approvals
    await _click_and_finish(gateway, fake_slack, message, "U0ALICE", "reject")
    result = await handle.result()
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["rejected"]
