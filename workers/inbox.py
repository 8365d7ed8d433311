"""The approver inbox: one page on the approval gateway listing every pending request the
signed-in approver may decide, across runs, with approve and reject-with-a-reason.

Sign-in proves who you are the way an email link does: a single-use link sent to the address
the identity directory lists for you (guardrails/sessions.py). It opens a short-lived session
(HttpOnly, SameSite=Strict cookie; every form also carries a token bound to the session). A
decision from the inbox is attested by the gateway exactly like an email-link decision
(channel `email`: the mailbox is what the gateway verified) and the run decides whether it
counts; a refusal is shown on the page.

What waits is read from the approval link store, which every run's notify activity keeps up to
date (a request's latest notice: who may decide now, pending or settled) and which every
gateway instance shares, so the inbox needs no Temporal rights beyond the gateway's Updates.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from temporalio.service import RPCError

from countersign.activities.channels import ChannelError
from countersign.activities.channels.mail import send_email
from countersign.activities.stores import open_sessions
from countersign.credentials import get_secret
from countersign.guardrails.sessions import (
    SESSION_LIFETIME,
    Session,
    SessionStore,
    SignInRefusedError,
    TooManySignInsError,
)
from countersign.guardrails.tokens import RequestRef
from countersign.workers import gateway_pages as pages
from countersign.workers import inbox_pages
from countersign.workers.decisions import DecisionRefusedError

if TYPE_CHECKING:
    from countersign.workers.gateway import Gateway

log = structlog.get_logger(__name__)

SESSION_COOKIE = "countersign_inbox"
# Double-submit token for the sign-in forms (there is no session yet to bind them to).
PRE_COOKIE = "countersign_inbox_pre"
SIGN_IN_PATH = "/inbox/sign-in"


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _sessions(request: Request) -> SessionStore:
    state = request.app.state
    if getattr(state, "inbox_sessions", None) is None:
        state.inbox_sessions = open_sessions(_gateway(request).settings)
    store: SessionStore = state.inbox_sessions
    return store


async def _form(request: Request) -> dict[str, str]:
    form = parse_qs((await request.body()).decode(errors="replace"))
    return {k: v[0] for k, v in form.items()}


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status)


def _secure(gw: Gateway) -> bool:
    return gw.settings.gateway_url.startswith("https://")


def _with_pre(request: Request, render: Any, status: int = 200) -> HTMLResponse:
    """A sign-in page whose form carries the browser's double-submit token."""
    pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(16)
    response = _html(render(pre), status)
    response.set_cookie(
        PRE_COOKIE,
        pre,
        max_age=3600,
        path="/inbox",
        httponly=True,
        samesite="strict",
        secure=_secure(_gateway(request)),
    )
    return response


def _pre_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(PRE_COOKIE, "")
    return bool(cookie) and secrets.compare_digest(cookie, form.get("pre", ""))


async def _audit(gw: Gateway, kind: str, actor: str, **data: Any) -> None:
    await gw.audit.append(
        record_id=f"inbox/{uuid.uuid4().hex}",
        workflow_id=str(data.pop("workflow_id", "")),
        run_id="",
        kind=kind,
        actor=f"email:{actor}",
        data={"channel": "inbox", **data},
    )


async def _session(request: Request) -> tuple[str, Session] | None:
    token = request.cookies.get(SESSION_COOKIE, "")
    session = await asyncio.to_thread(_sessions(request).session, token)
    return (token, session) if session else None


# --- what waits for whom ---------------------------------------------------------------------


def may_decide(identity: str, ref: RequestRef) -> bool:
    """Whether the request's latest notice names `identity` among those who may decide (as
    `deciders` does: eligible, neither the requester nor the agent) and who has not decided."""
    details = ref.details
    need = details.get("need") or {}
    decided = {d.get("approver") for d in details.get("decisions") or [] if isinstance(d, dict)}
    not_them = {details.get("requested_by"), details.get("agent")}
    if not need.get("requester_may_approve"):
        not_them.add(details.get("requester"))
    return identity in (need.get("eligible") or []) and identity not in not_them | decided


async def waiting_for(gw: Gateway, identity: str, just_decided: str = "") -> list[RequestRef]:
    """Pending requests `identity` may decide and has not decided yet, across runs."""
    refs = await asyncio.to_thread(gw.tokens.pending)
    mine = [r for r in refs if r.ref != just_decided and may_decide(identity, r)]
    # A decision since the request's last notice (quorum not met yet) is in the audit trail.
    decided = await asyncio.gather(
        *(
            asyncio.to_thread(
                gw.audit.find, r.workflow_id, "approval.decided", request_id=r.request_id
            )
            for r in mine
        )
    )
    return [
        r
        for r, records in zip(mine, decided, strict=True)
        if not any(rec.data.get("approver") == identity for rec in records)
    ]


def render_request(gw: Gateway, ref: RequestRef, now: datetime) -> str:
    """One request's block; the one place to swap for a richer rendering."""
    settings = gw.settings
    url = inbox_pages.run_link(
        settings.temporal_ui_url, settings.temporal_namespace, ref.workflow_id
    )
    return inbox_pages.request_block(ref, run_url=url, now=now)


async def _inbox_page(
    gw: Gateway,
    session: Session,
    notice: tuple[str, str] | None = None,
    status: int = 200,
    just_decided: str = "",
) -> HTMLResponse:
    now = datetime.now(UTC)
    waiting = await waiting_for(gw, session.identity, just_decided)
    items = [(r, render_request(gw, r, now)) for r in waiting]
    return _html(inbox_pages.inbox(session.identity, items, session.csrf, notice=notice), status)


# --- routes ----------------------------------------------------------------------------------


async def inbox_get(request: Request) -> Response:
    found = await _session(request)
    if found is None:
        return _with_pre(request, inbox_pages.sign_in)
    return await _inbox_page(_gateway(request), found[1])


async def sign_in_request(request: Request) -> Response:
    """Send a sign-in link to the address on record. The answer is the same whoever was
    named, so the page does not tell who is in the directory."""
    gw = _gateway(request)
    form = await _form(request)
    if not _pre_ok(request, form):
        return _with_pre(request, lambda pre: inbox_pages.sign_in(pre, "Please try again."), 403)
    who = form.get("who", "").strip()[:200]
    directory = gw.directory.current()
    person = directory.get(who) or (directory.by_email(who) if "@" in who else None)
    answer = (
        "If the name or address is on record, a sign-in link is on its way to the address on "
        "record. It works once, for 15 minutes."
    )
    if person is None or person.kind != "person" or not person.email or gw.settings.email is None:
        log.info("inbox.sign_in_unknown")
        return _with_pre(request, lambda pre: inbox_pages.sign_in(pre, answer))
    try:
        token = await asyncio.to_thread(_sessions(request).issue_sign_in, person.name)
    except TooManySignInsError:
        # The same answer: the page must not become a way to flood someone's mailbox, nor
        # tell who is on record.
        await _audit(gw, "inbox.sign_in_throttled", person.name, identity=person.name)
        return _with_pre(request, lambda pre: inbox_pages.sign_in(pre, answer))
    url = f"{gw.settings.gateway_url.rstrip('/')}{SIGN_IN_PATH}?token={token}"
    try:
        await _send_sign_in(gw, person.email, person.name, url)
    except ChannelError as e:
        log.warning("inbox.sign_in_not_sent", error=str(e))
        return _with_pre(
            request,
            lambda pre: inbox_pages.sign_in(pre, "The email could not be sent; try again."),
            503,
        )
    await _audit(gw, "inbox.sign_in_sent", person.name, identity=person.name)
    return _with_pre(request, lambda pre: inbox_pages.sign_in(pre, answer))


async def _send_sign_in(gw: Gateway, to: str, identity: str, url: str) -> None:
    conf = gw.settings.email
    assert conf is not None
    msg = EmailMessage()
    msg["Subject"] = "Sign in to your Countersign approver inbox"
    msg["From"] = conf.sender
    msg["To"] = to
    msg["Message-ID"] = make_msgid(domain="countersign.local")
    msg.set_content(
        f"Sign in as {identity}: {url}\n\n"
        "The link works once and expires in 15 minutes. If you did not ask for it, ignore "
        "this email."
    )
    credential = conf.smtp_password_credential
    password = await asyncio.to_thread(get_secret, credential) if credential else None
    await send_email(conf, password, msg)


async def _sign_in_refused(gw: Gateway, e: SignInRefusedError, step: str) -> HTMLResponse:
    await _audit(gw, "inbox.sign_in_refused", e.identity or "?", reason=e.reason, step=step)
    title = {
        "unknown": "This sign-in link is not valid",
        "used": "This sign-in link was already used",
        "expired": "This sign-in link has expired",
    }[e.reason]
    return _html(pages.outcome(title, str(e)), 404 if e.reason == "unknown" else 410)


async def sign_in_open(request: Request) -> Response:
    """GET the emailed link: show whom it signs in. Changes nothing."""
    gw = _gateway(request)
    token = request.query_params.get("token", "")
    try:
        identity = await asyncio.to_thread(_sessions(request).check_sign_in, token)
    except SignInRefusedError as e:
        return await _sign_in_refused(gw, e, "open")
    return _with_pre(request, lambda pre: inbox_pages.confirm_sign_in(identity, token, pre))


async def sign_in_confirm(request: Request) -> Response:
    """POST from the sign-in page: use the link once and open a session."""
    gw = _gateway(request)
    form = await _form(request)
    token = form.get("token", "")
    if not _pre_ok(request, form):
        return _html(
            pages.outcome("Please sign in again", "Open the link from the email again."), 403
        )
    try:
        session_token, session = await asyncio.to_thread(_sessions(request).sign_in, token)
    except SignInRefusedError as e:
        return await _sign_in_refused(gw, e, "confirm")
    await _audit(gw, "inbox.signed_in", session.identity, identity=session.identity)
    response = RedirectResponse("/inbox", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/inbox",
        httponly=True,
        samesite="strict",
        secure=_secure(gw),
    )
    response.delete_cookie(PRE_COOKIE, path="/inbox")
    return response


async def sign_out(request: Request) -> Response:
    found = await _session(request)
    form = await _form(request)
    if found is not None and secrets.compare_digest(found[1].csrf, form.get("csrf", "")):
        await asyncio.to_thread(_sessions(request).sign_out, found[0])
    response = RedirectResponse("/inbox", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/inbox")
    return response


async def decide(request: Request) -> Response:
    """POST approve / reject from the inbox: the session's identity, attested by the gateway."""
    gw = _gateway(request)
    found = await _session(request)
    form = await _form(request)
    if found is None:
        return _with_pre(
            request, lambda pre: inbox_pages.sign_in(pre, "Please sign in first."), 401
        )
    _, session = found
    who = session.identity
    if not secrets.compare_digest(session.csrf, form.get("csrf", "")):
        await gw.refused(channel="email", actor=who, reason="inbox: missing or invalid CSRF token")
        return await _inbox_page(
            gw, session, ("refused", "This form is out of date; nothing was decided."), 403
        )
    verb = form.get("verb", "")
    comment = form.get("comment", "").strip()[:1000]
    ref = await asyncio.to_thread(gw.tokens.resolve, form.get("reference", ""))
    problem = None
    changes: dict[str, int] = {}
    if verb not in ("approve", "reject"):
        problem = "choose approve or reject"
    elif ref is None:
        problem = "this approval request is unknown to the gateway"
    elif not may_decide(who, ref):
        problem = f"{who} may not decide request {ref.request_id}"
    elif verb == "reject" and not comment:
        problem = "a rejection needs a reason (the agent hears it)"
    else:
        try:  # approve with changes: the amounts typed under the request
            changes = pages.form_changes({k: [v] for k, v in form.items()})
        except ValueError as e:
            problem = str(e)
    if problem is not None or ref is None:
        await gw.refused(
            channel="email",
            actor=who,
            reason=f"inbox: {problem}",
            workflow_id=ref.workflow_id if ref else "",
            request_id=ref.request_id if ref else None,
        )
        return await _inbox_page(gw, session, ("refused", f"Not decided: {problem}."), 403)
    try:
        receipt = await gw.decide(
            ref,
            identity=who,
            approve=verb == "approve",
            channel="email",
            comment=comment,
            changes=changes if verb == "approve" and changes else None,
        )
    except DecisionRefusedError as e:
        # send_decision audited it; the sender sees why.
        return await _inbox_page(
            gw, session, ("refused", f"Your decision was not accepted: {e}"), 409
        )
    except RPCError as e:
        log.warning("inbox.decide_failed", error=str(e))
        return await _inbox_page(
            gw,
            session,
            ("refused", "The run could not be reached, so nothing was decided; try again."),
            503,
        )
    done = "Approved" if receipt.approve else "Rejected"
    state = (
        f"{receipt.approvals} of {receipt.quorum} approvals so far"
        if receipt.status == "pending"
        else f"the request is {receipt.status}"
    )
    # The run records the decision a moment later: do not list what was just decided.
    return await _inbox_page(
        gw, session, ("ok", f"{done} {ref.request_id}: {state}."), just_decided=ref.ref
    )


def routes() -> list[Route]:
    return [
        Route("/inbox", inbox_get, methods=["GET"]),
        Route(SIGN_IN_PATH, sign_in_request, methods=["POST"]),
        Route(SIGN_IN_PATH, sign_in_open, methods=["GET"]),
        Route("/inbox/sign-in/confirm", sign_in_confirm, methods=["POST"]),
        Route("/inbox/sign-out", sign_out, methods=["POST"]),
        Route("/inbox/decide", decide, methods=["POST"]),
    ]
