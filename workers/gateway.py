"""The approval gateway: approvers decide from Slack, email links and webhooks, never from
Temporal.

An HTTP service (Starlette on uvicorn, `countersign gateway`). Each route authenticates its
caller its own way — Slack's request signature, a single-use email token plus a per-page CSRF
token, a webhook's HMAC — maps the caller to an approver identity, and sends the decision
through `workers.decisions.send_decision`: a Temporal Update "decide" with a deterministic
update id, which the run validates (who may decide, separation of duties, the exact action).
Refusals are audited.

Temporal rights: the gateway's client carries `UpdatesOnly`, which refuses every client call
except sending an Update, so this process cannot start, signal, query, read, cancel or
terminate runs even through a bug. Deploy it with credentials for its namespace only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import structlog
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio import client as temporal_client
from temporalio.client import Client
from temporalio.service import RPCError

from countersign.activities.channels import ChannelError
from countersign.activities.channels.slack import (
    ACTIONS_BLOCK,
    APPROVE,
    REJECT,
    SlackApi,
    outcome_block,
)
from countersign.activities.channels.webhook import verify as verify_webhook
from countersign.activities.stores import open_audit_store, open_tokens
from countersign.credentials import CredentialError, configure_keyring, get_secret, set_secret
from countersign.guardrails.approvals import DecisionReceipt
from countersign.guardrails.audit import AuditStore
from countersign.guardrails.identity import Channel, DirectorySource, Envelope, Signer
from countersign.guardrails.tokens import (
    DecisionLink,
    RequestRef,
    TokenRefusedError,
    TokenStore,
    link_id,
)
from countersign.settings import Settings
from countersign.workers import gateway_pages as pages
from countersign.workers.decisions import DecisionRefusedError, send_decision, sign_decision
from countersign.workers.identities import signer_for

log = structlog.get_logger(__name__)

CSRF_CREDENTIAL = "gateway-csrf-key"
# A confirmation page's form stays valid this long after the page was shown.
CSRF_MAX_AGE_SECONDS = 3600
# Slack redelivers an interaction it thinks went unanswered; people double-click.
DUPLICATE_WINDOW_SECONDS = 600

SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
]


class GatewayPermissionError(Exception):
    """The gateway tried a Temporal call other than sending an Update."""


class _UpdatesOnlyOutbound(temporal_client.OutboundInterceptor):
    pass


def _refuse(name: str) -> Callable[..., Any]:
    def refused(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise GatewayPermissionError(f"the approval gateway may only send Updates, not {name}")

    return refused


for _name, _ in inspect.getmembers(temporal_client.OutboundInterceptor, inspect.isfunction):
    if not _name.startswith("_") and _name != "start_workflow_update":
        setattr(_UpdatesOnlyOutbound, _name, _refuse(_name))


class UpdatesOnly(temporal_client.Interceptor):
    """Client interceptor: every call but `start_workflow_update` raises."""

    def intercept_client(
        self, next: temporal_client.OutboundInterceptor
    ) -> temporal_client.OutboundInterceptor:
        return _UpdatesOnlyOutbound(next)


class WebhookDecision(BaseModel):
    """A decision called back by a webhook receiver that holds the shared secret.

    The integration speaks as itself (its identity in the directory, `webhook.identity`), or
    relays a person's own signed decision (`envelope`, signed with that person's key): the
    shared secret never lets it decide as anyone else."""

    model_config = ConfigDict(extra="forbid")

    reference: str = Field(pattern=r"^ref_[A-Za-z0-9_-]{8,64}$")
    # Optional, and only ever the integration's own identity (or the relayed envelope's).
    approver: str | None = Field(default=None, min_length=1, max_length=200)
    approve: bool | None = None
    comment: str = Field(default="", max_length=1000)
    envelope: Envelope | None = None
    # Approve with changes, e.g. {"amount_cents": 12000}; the run checks what may change.
    changes: dict[str, int] = Field(default={}, max_length=20)


@dataclass
class Gateway:
    """What the routes share: settings, stores, secrets and the updates-only client."""

    settings: Settings
    client: Client
    audit: AuditStore
    tokens: TokenStore
    directory: DirectorySource
    csrf_key: bytes
    # The gateway's attestation key: it signs for people it verified (Slack, email, webhook).
    attestation: Signer
    slack_verifier: SignatureVerifier | None = None
    slack: SlackApi | None = None
    webhook_secret: str | None = None
    # Interactions already being handled, by (reference, user, verb), with when they arrived.
    _seen: dict[tuple[str, str, str], float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, client: Client) -> Gateway:
        configure_keyring(settings)
        try:
            csrf_key = get_secret(CSRF_CREDENTIAL)
        except CredentialError:
            csrf_key = secrets.token_urlsafe(32)
            set_secret(CSRF_CREDENTIAL, csrf_key)
        gw = cls(
            settings=settings,
            client=client,
            audit=open_audit_store(settings),
            tokens=open_tokens(settings),
            directory=settings.directory(),
            csrf_key=csrf_key.encode(),
            attestation=signer_for(settings.gateway_identity),
        )
        if settings.slack:
            gw.slack_verifier = SignatureVerifier(
                get_secret(settings.slack.signing_secret_credential)
            )
            gw.slack = SlackApi(settings.slack, get_secret(settings.slack.bot_token_credential))
        if settings.webhook:
            gw.webhook_secret = get_secret(settings.webhook.secret_credential)
        return gw

    # --- shared ------------------------------------------------------------------------------

    async def refused(
        self, *, channel: Channel, actor: str, reason: str, workflow_id: str = "", **data: Any
    ) -> None:
        """Audit a refusal that never reached a run (send_decision audits the ones that did)."""
        log.warning("gateway.refused", channel=channel, actor=actor, reason=reason)
        await self.audit.append(
            record_id=f"gateway/{uuid.uuid4().hex}",
            workflow_id=workflow_id,
            run_id="",
            kind="approval.refused",
            actor=f"{channel}:{actor}",
            data={"channel": channel, "reason": reason, **data},
        )

    async def decide(
        self,
        ref: RequestRef,
        *,
        identity: str,
        approve: bool,
        channel: Channel,
        comment: str = "",
        changes: dict[str, Any] | None = None,
    ) -> DecisionReceipt:
        """Attest a decision by `identity`, whom this gateway verified on `channel`, and send
        it: the run checks the attestation and whether `identity` may decide."""
        envelope = sign_decision(
            self.attestation,
            ref.workflow_id,
            ref.request_id,
            ref.action_hash,
            approve=approve,
            comment=comment,
            channel=channel,
            identity=identity,
            changes=changes,
        )
        return await send_decision(self.client, ref.workflow_id, envelope)

    def first_delivery(self, key: tuple[str, str, str]) -> bool:
        now = time.monotonic()
        for k, at in list(self._seen.items()):
            if now - at > DUPLICATE_WINDOW_SECONDS:
                del self._seen[k]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    def forget(self, key: tuple[str, str, str]) -> None:
        self._seen.pop(key, None)

    # --- email -------------------------------------------------------------------------------

    def csrf_for(self, token: str, issued: int | None = None) -> str:
        issued = issued if issued is not None else int(time.time())
        mac = hmac.new(
            self.csrf_key, f"email-confirm:{link_id(token)}:{issued}".encode(), hashlib.sha256
        )
        return f"{issued}.{mac.hexdigest()}"

    def csrf_ok(self, token: str, csrf: str) -> bool:
        issued, _, _mac = csrf.partition(".")
        if not issued.isdigit() or time.time() - int(issued) > CSRF_MAX_AGE_SECONDS:
            return False
        return hmac.compare_digest(self.csrf_for(token, int(issued)), csrf)


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status)


# --- Slack -----------------------------------------------------------------------------------


async def slack_interactions(request: Request) -> Response:
    """Slack's interactivity request URL. Verify first; answer at once; decide afterwards."""
    gw = _gateway(request)
    if gw.slack_verifier is None or gw.slack is None:
        return PlainTextResponse("Slack is not configured on this gateway", status_code=404)
    body = await request.body()
    try:
        valid = gw.slack_verifier.is_valid_request(body, dict(request.headers))
    except ValueError:  # a timestamp that is not a number
        valid = False
    if not valid:
        await gw.refused(channel="slack", actor="?", reason="invalid or stale Slack signature")
        return PlainTextResponse("invalid signature", status_code=401)
    try:
        payload = json.loads(parse_qs(body.decode())["payload"][0])
        action = payload["actions"][0]
        user = str(payload["user"]["id"])
    except (KeyError, IndexError, ValueError, TypeError):
        return PlainTextResponse("not an interaction this gateway handles", status_code=400)
    if action.get("action_id") not in (APPROVE, REJECT):
        return Response(status_code=200)
    verb = "approve" if action["action_id"] == APPROVE else "reject"
    if not gw.first_delivery((str(action.get("value")), user, verb)):
        # A retried delivery or a double click: the first one is deciding already.
        log.info("slack.duplicate", user=user, verb=verb)
        return Response(status_code=200)
    return Response(
        status_code=200, background=BackgroundTask(_slack_decide, gw, payload, user, verb)
    )


async def _slack_decide(gw: Gateway, payload: dict[str, Any], user: str, verb: str) -> None:
    assert gw.slack is not None
    value = str(payload["actions"][0].get("value", ""))
    response_url = payload.get("response_url")
    ref = await asyncio.to_thread(gw.tokens.resolve, value)
    person = gw.directory.current().by_slack_user(user)
    identity = person.name if person is not None else None
    reason = None
    if ref is None:
        reason = "this approval request is unknown to the gateway"
        await gw.refused(channel="slack", actor=user, reason=reason, reference=value[:80])
    elif identity is None:
        reason = f"Slack user {user} is not mapped to an approver identity"
        await gw.refused(
            channel="slack",
            actor=user,
            reason=reason,
            workflow_id=ref.workflow_id,
            request_id=ref.request_id,
            approve=verb == "approve",
        )
    else:
        try:
            receipt = await gw.decide(
                ref, identity=identity, approve=verb == "approve", channel="slack"
            )
        except DecisionRefusedError as e:
            reason = str(e)
        except RPCError as e:
            reason = f"the run could not be reached ({e.status.name}); try again"
            log.warning("slack.decide_failed", error=str(e))
            gw.forget((value, user, verb))  # nothing was decided: a new click may retry
        else:
            await _slack_show_decision(gw, payload, identity, receipt)
            return
    if response_url:
        try:
            await gw.slack.respond(
                response_url,
                {
                    "response_type": "ephemeral",
                    "replace_original": False,
                    "text": f"Your decision was not accepted: {reason}",
                },
            )
        except ChannelError as e:
            log.warning("slack.respond_failed", error=str(e))


async def _slack_show_decision(
    gw: Gateway, payload: dict[str, Any], identity: str, receipt: DecisionReceipt
) -> None:
    """Rewrite the clicked message: who decided; the buttons go once the request settled."""
    assert gw.slack is not None
    verb = "approved" if receipt.approve else "rejected"
    text = (
        f"{identity} {verb} via Slack: {receipt.approvals} of {receipt.quorum} approvals so far"
        if receipt.status == "pending"
        else f"{verb.capitalize()} by {identity} via Slack"
    )
    message = payload.get("message") or {}
    blocks = [
        b
        for b in message.get("blocks", [])
        if b.get("block_id") != "countersign.outcome"
        and (b.get("block_id") != ACTIONS_BLOCK or receipt.status == "pending")
    ]
    channel = (payload.get("channel") or {}).get("id") or payload.get("container", {}).get(
        "channel_id"
    )
    ts = message.get("ts") or payload.get("container", {}).get("message_ts")
    try:
        await gw.slack.call(
            "chat.update",
            {
                "channel": channel,
                "ts": ts,
                "text": text,
                "blocks": [*blocks, outcome_block(text, receipt.status)],
            },
        )
    except ChannelError as e:
        log.warning("slack.update_failed", error=str(e))


# --- email -----------------------------------------------------------------------------------


async def _token_refused(gw: Gateway, e: TokenRefusedError, step: str) -> HTMLResponse:
    link = e.link
    await gw.refused(
        channel="email",
        actor=link.approver if link else "?",
        reason=f"{e.reason} link: {e}",
        workflow_id=link.request.workflow_id if link else "",
        request_id=link.request.request_id if link else None,
        link=link.link_id if link else None,
        step=step,
    )
    titles = {
        "unknown": "This link is not valid",
        "used": "This link was already used",
        "expired": "This link has expired",
        "revoked": "This request is already settled",
    }
    return _html(pages.outcome(titles[e.reason], str(e)), 404 if e.reason == "unknown" else 410)


async def email_confirm(request: Request) -> Response:
    """GET: show what the link would decide. Never changes state (scanners open links)."""
    gw = _gateway(request)
    token = request.query_params.get("token", "")
    try:
        link = await asyncio.to_thread(gw.tokens.check, token)
    except TokenRefusedError as e:
        return await _token_refused(gw, e, "open")
    return _html(pages.confirmation(link, token, gw.csrf_for(token)))


async def email_decide(request: Request) -> Response:
    """POST from the confirmation page: use the token once and send the decision."""
    gw = _gateway(request)
    form = parse_qs((await request.body()).decode(errors="replace"))
    token = form.get("token", [""])[0]
    csrf = form.get("csrf", [""])[0]
    comment = form.get("comment", [""])[0][:1000]
    try:
        changes = pages.form_changes(form)
    except ValueError as e:
        # Nothing is used up: the approver goes back and types it again.
        page = pages.outcome("Please check your change", f"{e}. Go back and correct it.")
        return _html(page, 400)
    if not gw.csrf_ok(token, csrf):
        await gw.refused(channel="email", actor="?", reason="missing or invalid CSRF token")
        return _html(
            pages.outcome(
                "Please confirm again",
                "This form is out of date or did not come from the confirmation page. "
                "Open the link from the email again.",
            ),
            403,
        )
    try:
        link = await asyncio.to_thread(gw.tokens.claim, token)
    except TokenRefusedError as e:
        return await _token_refused(gw, e, "decide")
    return await _email_send(gw, link, token, comment, changes if link.approve else {})


async def _email_send(
    gw: Gateway, link: DecisionLink, token: str, comment: str, changes: dict[str, int]
) -> Response:
    details = link.request.details
    try:
        # The single-use token, sent only to this approver's address, is the proof.
        receipt = await gw.decide(
            link.request,
            identity=link.approver,
            approve=link.approve,
            channel="email",
            comment=comment,
            changes=changes,
        )
    except DecisionRefusedError as e:
        return _html(pages.outcome("Your decision was not accepted", str(e), details=details), 409)
    except RPCError as e:
        # The decision never reached the run: the link stays usable.
        await asyncio.to_thread(gw.tokens.release, token)
        log.warning("email.decide_failed", error=str(e), link=link.link_id)
        return _html(
            pages.outcome(
                "Try again in a moment",
                "The run could not be reached, so nothing was decided. The link still works.",
            ),
            503,
        )
    verb = "Approved" if receipt.approve else "Rejected"
    if receipt.changes:
        verb = "Approved with changes"
    message = (
        f"Recorded: {receipt.approvals} of {receipt.quorum} approvals; the request waits for "
        "the others."
        if receipt.status == "pending"
        else "The changed action is checked again by the policy; it may need another approval."
        if receipt.status == "changed"
        else f"The request is {receipt.status}; the run continues."
    )
    return _html(pages.outcome(f"{verb} by {link.approver}", message, details=details))


# --- webhook ---------------------------------------------------------------------------------


async def webhook_decision(request: Request) -> Response:
    """A signed decision callback from a webhook receiver (Teams bot, ticket system)."""
    gw = _gateway(request)
    if gw.webhook_secret is None:
        return JSONResponse({"error": "webhooks are not configured"}, status_code=404)
    body = await request.body()
    problem = verify_webhook(gw.webhook_secret, request.headers, body)
    if problem is not None:
        await gw.refused(channel="webhook", actor="?", reason=f"signature: {problem}")
        return JSONResponse({"error": "invalid or stale signature"}, status_code=401)
    try:
        callback = WebhookDecision.model_validate_json(body)
    except ValidationError as e:
        return JSONResponse(
            {
                "error": "invalid decision",
                "detail": e.errors(include_url=False, include_input=False),
            },
            status_code=400,
        )
    integration = gw.settings.webhook.identity if gw.settings.webhook else "?"
    ref = await asyncio.to_thread(gw.tokens.resolve, callback.reference)
    if ref is None:
        await gw.refused(
            channel="webhook",
            actor=integration,
            reason="unknown reference",
            reference=callback.reference,
        )
        return JSONResponse({"error": f"unknown reference {callback.reference}"}, status_code=404)
    problem = _webhook_problem(callback, integration)
    if problem is not None:
        await gw.refused(
            channel="webhook",
            actor=integration,
            reason=problem,
            workflow_id=ref.workflow_id,
            request_id=ref.request_id,
            claimed=callback.approver,
        )
        return JSONResponse({"error": "refused", "reason": problem}, status_code=403)
    try:
        if callback.envelope is not None:
            # A person's own signed decision, relayed as it is: the run checks their key.
            receipt = await send_decision(gw.client, ref.workflow_id, callback.envelope)
        else:
            assert callback.approve is not None
            receipt = await gw.decide(
                ref,
                identity=integration,
                approve=callback.approve,
                channel="webhook",
                comment=callback.comment,
                changes=callback.changes,
            )
    except DecisionRefusedError as e:
        return JSONResponse({"error": "refused", "reason": str(e)}, status_code=409)
    except RPCError as e:
        return JSONResponse({"error": f"run unreachable: {e.status.name}"}, status_code=503)
    return JSONResponse(
        {
            "status": receipt.status,
            "approvals": receipt.approvals,
            "quorum": receipt.quorum,
            "approver": receipt.approver,
        }
    )


def _webhook_problem(callback: WebhookDecision, integration: str) -> str | None:
    """Why a webhook callback may not decide as it asks, or None."""
    if callback.envelope is not None:
        claimed = callback.envelope.statement.identity
        if callback.approver not in (None, claimed):
            return f"the relayed envelope is signed for {claimed!r}, not {callback.approver!r}"
        return None
    if callback.approve is None:
        return "a decision needs `approve` (true or false), or a person's signed `envelope`"
    if callback.approver not in (None, integration):
        return (
            f"this webhook integration speaks as {integration!r} only; to decide for "
            f"{callback.approver!r} relay their own signed envelope "
            "(countersign approve … --print)"
        )
    return None


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


# --- app -------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


class SecurityHeaders:
    """Every response: not cached, no Referer leaking a link's token, no scripts, no frames."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                message["headers"] = [
                    *(h for h in message.get("headers", []) if h[0].lower() not in names),
                    *SECURITY_HEADERS,
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(gateway: Gateway) -> Starlette:
    from countersign.workers import inbox  # the inbox's routes use this module's Gateway

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/slack/interactions", slack_interactions, methods=["POST"]),
            Route("/email/decide", email_confirm, methods=["GET"]),
            Route("/email/decide", email_decide, methods=["POST"]),
            Route("/webhook/decision", webhook_decision, methods=["POST"]),
            *inbox.routes(),
        ]
    )
    app.state.gateway = gateway
    app.add_middleware(SecurityHeaders)  # type: ignore[arg-type]
    return app


async def gateway_client(settings: Settings) -> Client:
    from countersign.workers.worker import connect

    return await connect(settings, interceptors=[UpdatesOnly()])


def uvicorn_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    # No access log: an email link's token is in its query string.
    return uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None)


async def serve_gateway(settings: Settings, host: str, port: int) -> None:
    client = await gateway_client(settings)
    app = create_app(Gateway.from_settings(settings, client))
    log.info(
        "gateway.started",
        url=settings.gateway_url,
        slack=settings.slack is not None,
        email=settings.email is not None,
        webhook=settings.webhook is not None,
    )
    await uvicorn.Server(uvicorn_config(app, host, port)).serve()
