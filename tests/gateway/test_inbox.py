"""The approver inbox, in a real headless chromium: sign in by an emailed single-use link (real
SMTP), see what waits across runs, approve one and reject another with a reason; the runs on
the real dev server decide and the shop counts the refunds."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.guardrails.sessions import MAX_LIVE_SIGN_IN_LINKS
from countersign.workers.decisions import send_decision
from countersign.workers.gateway import Gateway
from countersign.workers.inbox import SESSION_COOKIE
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run
from tests.gateway.conftest import ARTIFACTS, Mailbox, gateway_http, wait_until

SIGN_IN_LINK = re.compile(r"http://\S+/inbox/sign-in\?token=[\w-]+")
CSRF = re.compile(r"name='csrf' value='([0-9a-f]+)'")
PRE = re.compile(r"name='pre' value='([\w-]+)'")


async def emailed_sign_in_link(box: Mailbox, to: str, count: int) -> str:
    """The sign-in link of the `count`th sign-in email to `to`."""
    messages = await box.wait_for(count, to=to, Subject="Sign in")
    text = messages[count - 1].get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    found = SIGN_IN_LINK.search(text)
    assert found, text
    return found[0]


def sign_ins(box: Mailbox, to: str) -> int:
    return len([m for m in list(box.messages) if m["To"] == to and "Sign in" in m["Subject"]])


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"inbox-{name}.png"), full_page=True)


async def browser_sign_in(browser: Any, gateway: Gateway, box: Mailbox, name: str) -> Any:
    """Sign in as a person would: ask for a link, open it from the email, confirm."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{gateway.settings.gateway_url}/inbox")
    assert "sign in" in (await page.inner_text("#title")).lower()
    before = sign_ins(box, f"{name}@example.com")
    await page.fill("#who", name)
    async with page.expect_navigation():
        await page.click("#send-link")
    assert "on its way" in await page.inner_text("#message")
    link = await emailed_sign_in_link(box, f"{name}@example.com", before + 1)
    response = await page.goto(link)
    assert response.status == 200
    assert await page.inner_text("#title") == f"Sign in as {name}?"
    async with page.expect_navigation():
        await page.click("#sign-in")
    assert await page.inner_text("#who") == name
    (cookie,) = [c for c in await context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # The link worked once.
    again = await context.new_page()
    response = await again.goto(link)
    assert response.status == 410
    assert "already used" in await again.inner_text("#title")
    await again.close()
    return page


async def test_inbox_lists_two_runs_and_approves_one_and_rejects_the_other(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    mailbox: tuple[Mailbox, int],
    browser: Any,
    shop: Shop,
    channel_runtime: Runtime,
) -> None:
    box, _ = mailbox
    refunds_before = {o: len(shop.refunds(o)) for o in ("A-1052", "A-1054")}
    grinder = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1052: the grinder is loud."
    )
    pan = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1054: the pan is warped."
    )
    (to_approve,) = await wait_for_pending(grinder)
    (to_reject,) = await wait_for_pending(pan)
    for handle, request in ((grinder, to_approve), (pan, to_reject)):
        await wait_until(
            lambda h=handle, r=request: gateway.tokens.find_reference(h.id, r.request_id),
            "the request in the link store",
        )

    page = await browser_sign_in(browser, gateway, box, "alice")
    await shot(page, "1-two-waiting")
    approve_box = page.locator(f"section#{to_approve.request_id}")
    reject_box = page.locator(f"section#{to_reject.request_id}")
    text = await approve_box.inner_text()
    assert "payments.refund" in text and "89.00 USD" in text and "refund.over_50" in text
    assert "the grinder is loud" in text and re.search(r"Expires in 3 h 5\d min|in 4 h", text)
    assert to_approve.expires_at.astimezone(UTC).isoformat() in text
    run_href = await approve_box.locator("a.run").get_attribute("href")
    assert run_href.endswith(f"/namespaces/default/workflows/{grinder.id}")
    assert "69.00 USD" in await reject_box.inner_text()

    async with page.expect_navigation():
        await approve_box.locator("button.approve").click()
    assert "Approved" in await page.inner_text("#notice")
    assert await page.locator(f"section#{to_approve.request_id}").count() == 0

    # A rejection needs a reason the agent hears.
    async with page.expect_navigation():
        await page.locator(f"section#{to_reject.request_id} button.reject").click()
    assert "needs a reason" in await page.inner_text("#notice")
    await page.locator(f"section#{to_reject.request_id} textarea").fill("Warped by the customer")
    async with page.expect_navigation():
        await page.locator(f"section#{to_reject.request_id} button.reject").click()
    assert "Rejected" in await page.inner_text("#notice")
    await shot(page, "2-decided")

    approved, rejected = await grinder.result(), await pan.result()
    refund = next(a for a in approved.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.approved_by == ["alice"]
    assert [a.status for a in rejected.actions if a.tool == "payments.refund"] == ["rejected"]
    assert len(shop.refunds("A-1052")) == refunds_before["A-1052"] + 1
    assert len(shop.refunds("A-1054")) == refunds_before["A-1054"]
    (yes,) = channel_runtime.audit.find(grinder.id, "approval.decided")
    (no,) = channel_runtime.audit.find(pan.id, "approval.decided")
    assert yes.actor == no.actor == "email:alice"
    assert no.data["comment"] == "Warped by the customer" and not no.data["approve"]

    # Approve with changes: a lower amount typed under the request, decided again, refunded.
    scale_before = len(shop.refunds("A-1053"))
    scale = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1053: the scale reads wrong."
    )
    (to_change,) = await wait_for_pending(scale)
    await wait_until(
        lambda: gateway.tokens.find_reference(scale.id, to_change.request_id),
        "the request in the link store",
    )
    await page.goto(f"{gateway.settings.gateway_url}/inbox")
    change_box = page.locator(f"section#{to_change.request_id}")
    assert "99.00 USD" in await change_box.inner_text()
    await change_box.locator("input[name='change:amount_cents']").fill("120.00")
    async with page.expect_navigation():
        await change_box.locator("button.approve").click()
    assert "not accepted" in await page.inner_text("#notice")  # never up
    change_box = page.locator(f"section#{to_change.request_id}")
    await change_box.locator("input[name='change:amount_cents']").fill("60.00")
    await change_box.locator("textarea").fill("Half: the scale still works")
    async with page.expect_navigation():
        await change_box.locator("button.approve").click()
    assert "the request is changed" in await page.inner_text("#notice")
    changed = await scale.result()
    (refund,) = [a for a in changed.actions if a.tool == "payments.refund"]
    assert refund.status == "executed" and refund.arguments is not None
    assert refund.arguments["amount_cents"] == 6000
    assert [r["amount_cents"] for r in shop.refunds("A-1053")[scale_before:]] == [6000]
    (change,) = channel_runtime.audit.find(scale.id, "approval.changed")
    assert change.actor == "email:alice"

    # Settled elsewhere (here: by alice) means gone from everyone's inbox.
    await page.goto(f"{gateway.settings.gateway_url}/inbox")
    html = await page.content()
    assert to_approve.request_id not in html and to_reject.request_id not in html
    await page.context.close()


async def http_sign_in(http: httpx.AsyncClient, box: Mailbox, name: str) -> str:
    """Sign in without a browser; returns the session's CSRF token."""
    page = await http.get("/inbox")
    before = sign_ins(box, f"{name}@example.com")
    await http.post("/inbox/sign-in", data={"who": name, "pre": PRE.findall(page.text)[0]})
    link = await emailed_sign_in_link(box, f"{name}@example.com", before + 1)
    confirm = await http.get(link)
    r = await http.post(
        "/inbox/sign-in/confirm",
        data={"token": link.split("token=")[1], "pre": PRE.findall(confirm.text)[0]},
    )
    assert r.status_code == 303
    inbox = await http.get("/inbox")
    assert f"<b id='who'>{name}</b>" in inbox.text
    return CSRF.findall(inbox.text)[0]


async def test_the_inbox_shows_only_what_you_may_decide_and_refusals_are_shown(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    mailbox: tuple[Mailbox, int],
    browser: Any,
    shop: Shop,
    channel_runtime: Runtime,
) -> None:
    box, _ = mailbox
    before = len(shop.refunds("A-1051"))
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1051: the lamp flickers."
    )
    (request,) = await wait_for_pending(handle)
    # The notify activity records the request in the link store a moment after it opens.
    ref = await wait_until(
        lambda: gateway.tokens.find_reference(handle.id, request.request_id), "the reference"
    )

    # carol (finance) may not decide a refund over 50.00: not listed, and a crafted POST with
    # her own valid session and CSRF token decides nothing.
    async with gateway_http(gateway) as carol:
        csrf = await http_sign_in(carol, box, "carol")
        assert request.request_id not in (await carol.get("/inbox")).text
        crafted = {"csrf": csrf, "reference": ref.ref, "verb": "approve"}
        r = await carol.post("/inbox/decide", data=crafted)
        assert r.status_code == 403 and "carol may not decide" in r.text
        r = await carol.post("/inbox/decide", data={**crafted, "csrf": "0" * 32})
        assert r.status_code == 403
    async with gateway_http(gateway) as stranger:  # no session at all
        r = await stranger.post("/inbox/decide", data=crafted)
        assert r.status_code == 401
    assert (await handle.query(AgentRun.status)).pending_approvals
    assert channel_runtime.audit.find(handle.id, "approval.decided") == []
    reasons = [r.data["reason"] for r in channel_runtime.audit.find(handle.id, "approval.refused")]
    assert any("carol may not decide" in r for r in reasons)

    # An expired or forged sign-in link signs nobody in.
    sessions = gateway_sessions(gateway)
    expired = sessions.issue_sign_in("alice", now=datetime.now(UTC) - timedelta(minutes=16))
    async with gateway_http(gateway) as http:
        r = await http.get(f"/inbox/sign-in?token={expired}")
        assert r.status_code == 410 and "expired" in r.text
        r = await http.get("/inbox/sign-in?token=forged-0123")
        assert r.status_code == 404

    # alice's page lists the request; bob decides it first from the CLI; alice's answer from
    # her now stale page is refused by the run, and she is told why.
    page = await browser_sign_in(browser, gateway, box, "alice")
    assert await page.locator(f"section#{request.request_id}").count() == 1
    await send_decision(temporal.client, handle.id, signed(handle.id, request, "bob"))
    async with page.expect_navigation():
        await page.locator(f"section#{request.request_id} button.approve").click()
    await shot(page, "3-refused")
    notice = await page.inner_text("#notice")
    assert "not accepted" in notice and "already approved" in notice
    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.approved_by == ["bob"]
    assert len(shop.refunds("A-1051")) == before + 1
    await page.context.close()


def gateway_sessions(gateway: Gateway) -> Any:
    from countersign.activities.stores import open_sessions

    return open_sessions(gateway.settings)


async def test_asking_for_sign_in_links_again_and_again_mails_a_few_at_most(
    gateway: Gateway, mailbox: tuple[Mailbox, int]
) -> None:
    """Anyone may ask for a link in anyone's name: the page mails at most a few live ones, and
    its answer does not change when it stops (nor for a name not on record)."""
    box, _ = mailbox
    address = "mallory@example.com"
    before = sign_ins(box, address)
    answers = set()
    async with gateway_http(gateway) as http:
        for who in ["mallory"] * (MAX_LIVE_SIGN_IN_LINKS + 3) + ["nobody-on-record"]:
            page = await http.get("/inbox")
            r = await http.post(
                "/inbox/sign-in", data={"who": who, "pre": PRE.findall(page.text)[0]}
            )
            assert r.status_code == 200
            answers.add(re.sub(r"name='pre' value='[\w-]+'", "", r.text))
    assert len(answers) == 1
    await box.wait_for(before + MAX_LIVE_SIGN_IN_LINKS, to=address, Subject="Sign in")
    await asyncio.sleep(0.5)  # what would have been sent more has had time to arrive
    assert sign_ins(box, address) == before + MAX_LIVE_SIGN_IN_LINKS
    throttled = gateway.audit.find("", "inbox.sign_in_throttled", identity="mallory")
    assert len(throttled) == 3
