"""The notify activity on its own (ActivityEnvironment): channels, retries, reminders; the dev
mail catcher; and the gateway's updates-only Temporal client."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosmtplib
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from countersign.activities.channels.mail import build_message
from countersign.activities.contracts import ApprovalNotice
from countersign.activities.notify import NotifyActivities
from countersign.activities.runtime import Runtime
from countersign.guardrails.approvals import ApprovalRequest
from countersign.guardrails.policy import ApprovalNeed
from countersign.settings import EmailSettings, Settings, SlackSettings
from countersign.workers.devstack import free_port
from countersign.workers.gateway import Gateway, GatewayPermissionError
from countersign.workers.mailcatcher import start as start_mail_catcher
from tests.gateway.conftest import FakeSlack, Mailbox


def notice(workflow_id: str, event: str = "requested") -> ApprovalNotice:
    return ApprovalNotice(
        event=event,  # type: ignore[arg-type]
        workflow_id=workflow_id,
        agent="support-refunds",
        task="Refund order A-1006: the kettle cracked.",
        request=ApprovalRequest(
            request_id=f"apr_{uuid.uuid4().hex[:16]}",
            call_id="call_1",
            tool="payments.refund",
            arguments={"order_id": "A-1006", "amount_cents": 12900, "reason": "cracked"},
            reason="The kettle cracked; refunding in full.",
            rule_ids=["refund.over_50"],
            action_hash="a" * 64,
            requested_by="dana",
            agent="support-refunds",
            need=ApprovalNeed(
                rule_id="refund.over_50",
                groups=["support-leads"],
                eligible=["alice", "bob"],
                quorum=1,
                timeout=timedelta(hours=4),
            ),
            expires_at=datetime.now(UTC) + timedelta(hours=4),
        ),
    )


def env_for(workflow_id: str, activity_id: str, attempt: int = 1) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        workflow_id=workflow_id,
        workflow_run_id="run-1",
        activity_id=activity_id,
        attempt=attempt,
    )
    return env


def mails_for(box: Mailbox, order: str = "A-1006") -> list[str]:
    return [m["Subject"] for m in box.messages if order in m["Subject"]]


async def test_unconfigured_channels_are_skipped(runtime: Runtime) -> None:
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    used = await env_for(wf, "1").run(NotifyActivities(runtime).notify, notice(wf))
    assert used == ["log"]
    assert runtime.audit.for_run(wf) == []


async def test_a_transport_error_retries_without_resending_what_was_delivered(
    channel_runtime: Runtime, fake_slack: FakeSlack, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    n = notice(wf)
    activities = NotifyActivities(channel_runtime)
    mails_before = len(mails_for(box))
    fake_slack.fail_with = 503
    try:
        with pytest.raises(ApplicationError) as raised:
            await env_for(wf, "1").run(activities.notify, n)
    finally:
        fake_slack.fail_with = None
    assert not raised.value.non_retryable  # Temporal retries it
    assert "slack" in str(raised.value)
    sent = channel_runtime.audit.find(wf, "notify.sent")
    assert sorted(s.data["channel"] for s in sent) == ["email", "webhook"]
    assert len(mails_for(box)) == mails_before + 2  # alice and bob

    used = await env_for(wf, "1", attempt=2).run(activities.notify, n)
    assert used == ["log", "slack", "email", "webhook"]
    assert len(mails_for(box)) == mails_before + 2  # not mailed twice
    assert len(fake_slack.posted(wf)) == 1
    assert len(channel_runtime.audit.find(wf, "notify.sent")) == 3


async def test_a_refusing_channel_is_audited_and_the_others_deliver(
    channel_settings: Settings, fake_slack: FakeSlack
) -> None:
    assert channel_settings.slack is not None
    settings = channel_settings.model_copy(
        update={"slack": SlackSettings(channel="C0MISSING", api_url=channel_settings.slack.api_url)}
    )
    runtime = Runtime.from_settings(settings)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    used = await env_for(wf, "1").run(NotifyActivities(runtime).notify, notice(wf))
    assert used == ["log", "email", "webhook"]
    (failed,) = runtime.audit.find(wf, "notify.failed")
    assert failed.data["error"] == "slack: chat.postMessage: channel_not_found"


async def test_a_reminder_goes_to_the_thread_and_mails_fresh_links(
    channel_runtime: Runtime, fake_slack: FakeSlack, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    first = notice(wf)
    activities = NotifyActivities(channel_runtime)
    await env_for(wf, "1").run(activities.notify, first)
    (posted,) = fake_slack.posted(wf)
    reminder = first.model_copy(update={"event": "reminder"})
    used = await env_for(wf, "2").run(activities.notify, reminder)
    assert used == ["log", "slack", "email", "webhook"]

    thread = [b for m, b in fake_slack.calls if m == "chat.postMessage" and b.get("thread_ts")]
    (reply,) = [b for b in thread if b["thread_ts"] == posted["ts"]]
    assert reply["reply_broadcast"] is True
    assert "Reminder" in reply["text"] and "<@U0ALICE>" in reply["text"]
    reminders = [
        m
        for m in box.messages
        if m["Subject"].startswith("Reminder")
        and wf in m.get_body(preferencelist=("plain",)).get_content()
    ]  # type: ignore[union-attr]
    assert sorted(m["To"] for m in reminders) == ["alice@example.com", "bob@example.com"]
    events = [
        (r.data["channel"], r.data["event"]) for r in channel_runtime.audit.find(wf, "notify.sent")
    ]
    assert events.count(("slack", "reminder")) == 1
    assert events.count(("email", "reminder")) == 1


async def test_the_dev_mail_catcher_keeps_each_message_as_files(tmp_path: Path) -> None:
    port = free_port()
    controller = start_mail_catcher(tmp_path / "mail", port)
    try:
        message = build_message(
            notice("wf-mail"),
            EmailSettings(smtp_security="none"),
            "alice@example.com",
            {
                "approve": "http://gw/email/decide?token=a",
                "reject": "http://gw/email/decide?token=r",
            },
        )
        await aiosmtplib.send(message, hostname="127.0.0.1", port=port, start_tls=False)
    finally:
        controller.stop()
    (eml,) = (tmp_path / "mail").glob("*.eml")
    (html,) = (tmp_path / "mail").glob("*.html")
    assert b"Approval needed: payments.refund" in eml.read_bytes()
    assert "http://gw/email/decide?token=a" in html.read_text()


async def test_the_gateway_client_can_only_send_updates(gateway: Gateway) -> None:
    handle = gateway.client.get_workflow_handle("any-run")
    with pytest.raises(GatewayPermissionError, match="only send Updates"):
        await handle.query("status")
    with pytest.raises(GatewayPermissionError):
        await handle.signal("decision", {})
    with pytest.raises(GatewayPermissionError):
        await handle.terminate("no")
    with pytest.raises(GatewayPermissionError):
        await gateway.client.start_workflow("AgentRun", {}, id="x", task_queue="q")


def test_notices_show_money_with_its_currency() -> None:
    from countersign.activities.channels import argument_lines
    from countersign.activities.channels.slack import fallback_text

    n = notice("wf-money")
    mail = build_message(
        n, EmailSettings(), "alice@example.com", {"approve": "http://a", "reject": "http://r"}
    )
    assert mail["Subject"] == (
        "Approval needed: payments.refund(order_id=A-1006, amount=129.00 USD, reason=cracked)"
    )
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "amount: 129.00 USD" in text and "12900" not in text
    assert "129.00 USD" in fallback_text(n)
    assert ("amount", "129.00 USD") in argument_lines(n.request)  # Slack's fields, the pages
