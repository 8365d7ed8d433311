"""Same request everywhere: email (text and HTML), Slack, webhook, Temporal UI Current Details
and `countersign show` carry the same facts and evidence; and approving with changes from the
email confirmation page, in a real browser."""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import sys
from typing import Any

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.guardrails.rendering import request_view
from countersign.settings import Settings
from countersign.workers.gateway import Gateway
from countersign.workers.show import cmd_show
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run
from tests.gateway.conftest import FakeSlack, Mailbox, wait_until
from tests.gateway.test_email import confirm, links, open_page

TASK = "Refund order A-1002: the espresso machine leaks."


def _slack_text(value: Any) -> str:
    """Every text of a Block Kit message, unescaped as Slack shows it."""
    if isinstance(value, dict):
        return "\n".join(_slack_text(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(_slack_text(v) for v in value)
    return html.unescape(value) if isinstance(value, str) else ""


def _unmarkdown(text: str) -> str:
    for ch in "\\`*_[]<>!#|":
        text = text.replace("\\" + ch, ch)
    return text


async def cli(settings: Settings, *args: str) -> str:
    """`countersign …` in its own process, as an approver runs it (awaited: the worker answering
    its query runs in this event loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "countersign.workers",
        *args,
        env={
            **os.environ,
            "COUNTERSIGN_STATE_DIR": str(settings.state_dir),
            "COUNTERSIGN_TEMPORAL_ADDRESS": settings.temporal_address,
            "COUNTERSIGN_DIRECTORY_PATH": str(settings.directory_file),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_every_channel_carries_the_same_facts_and_the_email_subject_shows_money(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    mailbox: tuple[Mailbox, int],
    fake_slack: FakeSlack,
    channel_settings: Settings,
    channel_runtime: Runtime,
    capsys: pytest.CaptureFixture[str],
) -> None:
    box, _ = mailbox
    handle = await start_run(temporal.client, worker.task_queue, task=TASK)
    (request,) = await wait_for_pending(handle)
    assert request.evidence is not None
    view = request_view(
        request,
        workflow_id=handle.id,
        agent=request.agent,
        task=TASK,
        now=request.evidence.gathered_at,
    )
    # Every fact but the expiry's words ("in 3 h 59 min"), which depend on when one looks;
    # its ISO time is the same everywhere.
    facts = [r.value for s in view.sections for r in s.rows if r.label != "Expires"]
    facts += [request.expires_at.isoformat(), view.headline]
    assert any("189.00 USD" in f for f in facts) and any("C-200" in f for f in facts)
    assert request.evidence.run_url in facts

    (mail,) = await box.wait_for(1, to="alice@example.com", Subject="A-1002")
    assert "189.00 USD" in mail["Subject"] and "amount_cents" not in mail["Subject"]
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    page = html.unescape(
        mail.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    )
    await wait_until(lambda: fake_slack.posted(request.request_id), "the Slack message")
    (posted,) = fake_slack.posted(request.request_id)
    slack = _slack_text(posted["blocks"])

    def hooked() -> list[dict[str, Any]]:
        notices = [json.loads(body) for _, body in fake_slack.hooks]
        return [n for n in notices if n["request"]["request_id"] == request.request_id]

    await wait_until(hooked, "the webhook")
    (webhook,) = hooked()
    webhook_text = "\n".join(
        [
            webhook["view"]["headline"],
            *(r["value"] for s in webhook["view"]["sections"] for r in s["rows"]),
        ]
    )
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    details = _unmarkdown(metadata.current_details)
    await cmd_show(
        argparse.Namespace(ids=[handle.id, request.request_id], output="text"), channel_settings
    )
    shown = capsys.readouterr().out

    for name, rendered in [
        ("email text", text),
        ("email html", page),
        ("slack", slack),
        ("current details", details),
        ("countersign show", shown),
        ("webhook", webhook_text),
    ]:
        missing = [f for f in facts if f not in rendered]
        assert not missing, (name, missing)
    assert webhook["request"]["evidence"]["facts"][0]["fields"]["customer_id"] == "C-200"
    # The agent's claim is shown as a claim, apart from the verified facts.
    for rendered in (text, page, slack, details, shown):
        assert "The agent's claim (not verified)".lower() in rendered.lower()
        assert "Verified facts (fetched by the guard)".lower() in rendered.lower()

    # The same from the command line, in its own process, by request id alone.
    out = await cli(channel_settings, "show", request.request_id, "-o", "json")
    assert json.loads(out)["request_id"] == request.request_id
    await handle.execute_update(
        AgentRun.decide, signed(handle.id, request, "alice", approve=False, comment="done")
    )
    await handle.result()


async def test_email_page_approves_a_lower_amount(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    mailbox: tuple[Mailbox, int],
    browser: Any,
    shop: Shop,
    channel_runtime: Runtime,
) -> None:
    box, _ = mailbox
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1011: the scale is off."
    )
    await wait_for_pending(handle)
    (mail,) = await box.wait_for(1, to="bob@example.com", Subject="A-1011")
    approve = links(mail)["approve"]

    # A change that is not an amount is refused before the link is used up.
    page, response = await open_page(browser, approve, "change-1-confirmation")
    assert response.status == 200
    assert "Approve with changes" in await page.inner_text("form")
    await page.fill("#change-amount_cents", "lots")
    assert await confirm(page, "change-2-not-an-amount") == "Please check your change"

    # Raising the amount reaches the run, which refuses it (and audits it); the link is used.
    page, _ = await open_page(browser, approve, "change-3-again")
    await page.fill("#change-amount_cents", "300.00")
    assert await confirm(page, "change-4-raised") == "Your decision was not accepted"
    (refused,) = channel_runtime.audit.find(handle.id, "approval.refused")
    assert "may only lower it" in refused.data["reason"]
    assert shop.refunds("A-1011") == []

    # The other approver's link, with a lower amount and a reason.
    (to_alice,) = await box.wait_for(1, to="alice@example.com", Subject="A-1011")
    page, _ = await open_page(browser, links(to_alice)["approve"], "change-5-alice")
    await page.fill("#change-amount_cents", "120.00")
    title = await confirm(page, "change-6-approved", comment="only the tray is broken")
    assert title == "Approved with changes by alice"
    result = await asyncio.wait_for(handle.result(), 60)
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.changed_from is not None
    assert [r["amount_cents"] for r in shop.refunds("A-1011")] == [12000]
    (changed,) = channel_runtime.audit.find(handle.id, "approval.changed")
    assert changed.actor == "email:alice" and changed.data["comment"] == "only the tray is broken"
