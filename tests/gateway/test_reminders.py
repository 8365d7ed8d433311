"""Reminders before expiry, and escalation with links that work: on the time-skipping test
server, with the real notify activity mailing a real SMTP server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from countersign.activities.runtime import Runtime
from countersign.activities.stores import open_tokens
from countersign.agents import search_attributes
from countersign.settings import Settings
from countersign.workers.codec import data_converter
from countersign.workers.decisions import send_decision
from countersign.workers.worker import build_worker, ensure_search_attributes
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run
from tests.gateway.conftest import Mailbox, wait_until
from tests.gateway.test_email import links


def of_run(box: Mailbox, workflow_id: str, to: str, subject: str = "") -> list[EmailMessage]:
    """The approval emails about one run to one address."""
    return [
        m
        for m in list(box.messages)
        if m["To"] == to
        and subject in m["Subject"]
        and workflow_id in m.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    ]


@pytest.fixture(scope="module")
async def time_skipping(channel_settings: Settings) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
        data_converter=data_converter(channel_settings),
    )
    assert await ensure_search_attributes(env.client) == sorted(search_attributes.REGISTRATION)
    yield env
    await env.shutdown()


async def test_undecided_approvers_are_reminded_and_escalation_links_are_valid_when_sent(
    time_skipping: WorkflowEnvironment,
    channel_settings: Settings,
    channel_runtime: Runtime,
    mailbox: tuple[Mailbox, int],
    shop: Shop,
    task_queue: str,
) -> None:
    box, _ = mailbox
    audit = channel_runtime.audit
    before = len(shop.refunds("A-1017"))
    async with build_worker(
        time_skipping.client, channel_settings, channel_runtime, task_queue=task_queue
    ):
        handle = await start_run(
            time_skipping.client,
            task_queue,
            task="Refund order A-1017: the tray cracked.",
            execution_timeout=None,
        )
        (request,) = await wait_for_pending(handle)
        await box.wait_for(1, to="alice@example.com", Subject="A-1017")
        assert request.need.remind_before == timedelta(hours=1)  # a quarter of 4 hours

        # Three hours pass unanswered: alice and bob are reminded, with fresh links.
        await time_skipping.sleep(timedelta(hours=3, minutes=1))
        for who in ("alice", "bob"):
            await wait_until(
                lambda who=who: of_run(box, handle.id, f"{who}@example.com", "Reminder"),
                f"the reminder to {who}",
            )
        (reminded,) = await wait_until(
            lambda: audit.find(handle.id, "approval.reminded"), "the reminder's audit record"
        )
        assert reminded.data["to"] == ["alice", "bob"]
        assert reminded.data["request_id"] == request.request_id
        sent = await wait_until(
            lambda: audit.find(handle.id, "notify.sent", channel="email", event="reminder"),
            "the reminder's notice",
        )
        assert sent[0].data["to"] == ["alice", "bob"]
        assert not [
            m for m in box.messages if m["To"] == "erin@example.com" and "A-1017" in m["Subject"]
        ]

        # At four hours it escalates to the duty managers; erin's links live as long as the
        # escalated request, from the moment they are sent.
        await time_skipping.sleep(timedelta(hours=1))
        (to_erin,) = await wait_until(
            lambda: of_run(box, handle.id, "erin@example.com"), "the escalation notice to erin"
        )
        (escalated,) = audit.find(handle.id, "approval.escalated")
        new_expiry = datetime.fromisoformat(escalated.data["expires_at"])
        sent_at = new_expiry - request.need.timeout
        tokens = open_tokens(channel_settings)
        for url in links(to_erin).values():
            link = tokens.check(url.split("token=")[1], now=sent_at)
            assert link.approver == "erin" and link.expires_at == new_expiry
            tokens.check(url.split("token=")[1], now=new_expiry - timedelta(minutes=1))

        # erin approves (her own key): the refund goes out once.
        (pending,) = await wait_for_pending(handle)
        await send_decision(time_skipping.client, handle.id, signed(handle.id, pending, "erin"))
        result = await asyncio.wait_for(handle.result(), timeout=60)
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.approved_by == ["erin"]
    assert len(shop.refunds("A-1017")) == before + 1
    assert len(audit.find(handle.id, "approval.reminded")) == 1
