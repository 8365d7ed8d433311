"""Deciding from email: a real SMTP server receives the approval email, a real headless
chromium opens its links, and the run on the real dev server decides."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.workers.gateway import Gateway
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, start_run
from tests.gateway.conftest import ARTIFACTS, Mailbox, gateway_http, wait_until

LINK = re.compile(r"(?P<verb>Approve|Reject):\s+(?P<url>http://\S+/email/decide\?token=[\w-]+)")


def links(message: EmailMessage) -> dict[str, str]:
    """The decision links of an approval email, from its plain-text part."""
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    return {m["verb"].lower(): m["url"] for m in LINK.finditer(text)}


async def open_page(browser: Any, url: str, shot: str) -> tuple[Any, Any]:
    page = await browser.new_page()
    response = await page.goto(url)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"email-{shot}.png"), full_page=True)
    return page, response


async def confirm(page: Any, shot: str, comment: str = "") -> str:
    if comment:
        await page.fill("#comment", comment)
    async with page.expect_navigation():
        await page.click("#decide")
    await page.screenshot(path=str(ARTIFACTS / f"email-{shot}.png"), full_page=True)
    title: str = await page.inner_text("#title")
    await page.close()
    return title


async def test_email_link_confirms_then_approves_and_the_refund_executes(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    mailbox: tuple[Mailbox, int],
    browser: Any,
    shop: Shop,
    channel_runtime: Runtime,
) -> None:
    """The whole path: the run needs approval → email → click → the refund is executed."""
    box, _ = mailbox
    before = len(shop.refunds("A-1053"))
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1053: the scale reads wrong."
    )
    (request,) = await wait_for_pending(handle)

    (to_alice,) = await box.wait_for(1, to="alice@example.com", Subject="A-1053")
    (to_bob,) = await box.wait_for(1, to="bob@example.com", Subject="A-1053")
    # Only the people who may decide are mailed (not the requester, not other groups).
    assert not [
        m
        for m in box.messages
        if "A-1053" in m["Subject"] and m["To"] not in ("alice@example.com", "bob@example.com")
    ]
    assert to_alice.get_body(preferencelist=("html",)) is not None
    html = to_alice.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    alice, bob = links(to_alice), links(to_bob)
    assert set(alice) == {"approve", "reject"} and alice["approve"] in html.replace("&amp;", "&")
    assert len({*alice.values(), *bob.values()}) == 4  # one link per approver and verb
    assert "99.00" in html and "the scale reads wrong" in html and "refund.over_50" in html

    # Opening the link only shows what would be decided.
    page, response = await open_page(browser, alice["approve"], "1-confirmation")
    assert response.status == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    facts = await page.inner_text("#facts")
    assert "A-1053" in facts and "99.00" in facts and "refund.over_50" in facts
    assert [r.request_id for r in (await handle.query(AgentRun.status)).pending_approvals] == [
        request.request_id
    ]
    assert channel_runtime.audit.find(handle.id, "approval.decided") == []

    assert await confirm(page, "2-approved", comment="Scale checked") == "Approved by alice"
    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.approved_by == ["alice"]
    assert len(shop.refunds("A-1053")) == before + 1
    (decided,) = channel_runtime.audit.find(handle.id, "approval.decided")
    assert decided.actor == "email:alice" and decided.data["comment"] == "Scale checked"

    # Links work once; the sibling link and the other approver's links stop working too.
    page, response = await open_page(browser, alice["approve"], "3-reused")
    assert response.status == 410
    assert "already used" in await page.inner_text("#title")
    await page.close()
    page, response = await open_page(browser, alice["reject"], "4-sibling")
    assert response.status == 410
    await page.close()
    await wait_until(
        lambda: channel_runtime.audit.find(
            handle.id, "notify.sent", channel="email", event="settled"
        ),
        "the settled notice",
    )
    page, response = await open_page(browser, bob["approve"], "5-settled")
    assert response.status == 410
    assert "already settled" in await page.inner_text("#title")
    await page.close()
    refused = channel_runtime.audit.find(handle.id, "approval.refused")
    assert [r.data["reason"].split(" ")[0] for r in refused] == ["used", "used", "revoked"]
    # No token ever reaches the audit trail.
    assert not any(
        url.split("token=")[1] in r.model_dump_json()
        for url in [*alice.values(), *bob.values()]
        for r in channel_runtime.audit.for_run(handle.id)
    )


async def test_forged_expired_and_wrong_approver_links_are_refused(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    mailbox: tuple[Mailbox, int],
    browser: Any,
    channel_runtime: Runtime,
) -> None:
    box, _ = mailbox
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        task="Refund order A-1006: email refusal test.",
        signed_requester=True,
    )
    (request,) = await wait_for_pending(handle)
    to_bob = (await box.wait_for(1, to="bob@example.com", Subject="A-1006"))[-1]
    bob = links(to_bob)
    base = gateway.settings.gateway_url

    # Forged: a token nobody issued.
    page, response = await open_page(browser, f"{base}/email/decide?token=forged-0123", "6-forged")
    assert response.status == 404
    assert "not valid" in await page.inner_text("#title")
    await page.close()
    forged = [
        r
        for r in channel_runtime.audit.find("", "approval.refused")
        if r.data.get("step") == "open" and r.data["reason"].startswith("unknown")
    ]
    assert forged

    # Expired: a link for this request whose time has passed.
    ref = gateway.tokens.find_reference(handle.id, request.request_id)
    assert ref is not None
    expired = gateway.tokens.issue(
        ref, "alice", True, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    page, response = await open_page(browser, f"{base}/email/decide?token={expired}", "7-expired")
    assert response.status == 410
    assert "expired" in await page.inner_text("#title")
    await page.close()

    # Wrong approver: a valid link for the requester, who may never approve their own run.
    for_dana = gateway.tokens.issue(ref, "dana", True)
    page, response = await open_page(
        browser, f"{base}/email/decide?token={for_dana}", "8-wrong-approver"
    )
    assert response.status == 200
    assert await confirm(page, "9-wrong-approver-refused") == "Your decision was not accepted"

    # A POST without the confirmation page's CSRF token decides nothing and uses nothing.
    async with gateway_http(gateway) as http:
        token = bob["approve"].split("token=")[1]
        r = await http.post("/email/decide", data={"token": token, "csrf": "1.forged"})
        assert r.status_code == 403
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["referrer-policy"] == "no-referrer"

    assert (await handle.query(AgentRun.status)).pending_approvals
    assert channel_runtime.audit.find(handle.id, "approval.decided") == []
    reasons = [r.data["reason"] for r in channel_runtime.audit.find(handle.id, "approval.refused")]
    assert any(r.startswith("expired link") for r in reasons)
    assert any("dana requested this run and cannot approve" in r for r in reasons)

    # Bob's own link still works: he rejects.
    page, _ = await open_page(browser, bob["reject"], "10-reject-confirmation")
    assert await confirm(page, "11-rejected", comment="duplicate") == "Rejected by bob"
    result = await handle.result()
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["rejected"]
