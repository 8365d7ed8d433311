"""Notifications to approvers: where a request is announced, recalled and its outcome shown.

Every configured channel (Slack, email, webhook; see countersign/settings.py) gets the notice; a
channel that is not configured is skipped. A failed notification never fails a run: the
request stays answerable from the CLI and the Temporal UI. A transport error (timeout, 5xx,
rate limit) raises so Temporal retries the activity; channels that already delivered are not
sent again on the retry (their `notify.sent` record exists). A channel that refuses for good
(bad channel id, no address) is audited as `notify.failed` and the others still go out.
"""

from __future__ import annotations

import asyncio

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from countersign.activities.channels import Channel, ChannelError, action_text
from countersign.activities.channels.mail import EmailChannel
from countersign.activities.channels.slack import SlackApi, SlackChannel
from countersign.activities.channels.webhook import WebhookChannel
from countersign.activities.contracts import NOTIFY, ApprovalNotice
from countersign.activities.knowledge import check_citations
from countersign.activities.runtime import Runtime, activity_record_id, audit_from_activity
from countersign.activities.stores import open_tokens
from countersign.credentials import CredentialError, get_secret
from countersign.guardrails.knowledge import Citation, KnowledgeError
from countersign.guardrails.redaction import redact

log = structlog.get_logger(__name__)

# A channel's slot in the audit record id (`n`): stable across attempts of one activity.
CHANNELS = ("slack", "email", "webhook")


class NotifyActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tokens = open_tokens(runtime.settings)

    @activity.defn(name=NOTIFY)
    async def notify(self, notice: ApprovalNotice) -> list[str]:
        """Announce on every configured channel; returns the channels that delivered."""
        request = notice.request
        log.info(
            f"approval.{notice.event}",
            request_id=request.request_id,
            action=action_text(request),
            status=request.status,
            how=f"countersign approve {notice.workflow_id} {request.request_id} --as NAME",
        )
        ref = await asyncio.to_thread(
            self.tokens.reference,
            notice.workflow_id,
            request.request_id,
            request.action_hash,
            request.expires_at,
            # The link store shows approvers the action: redacted, like every summary.
            redact(
                {
                    "workflow_id": notice.workflow_id,
                    "agent": notice.agent,
                    "task": notice.task,
                    **request.model_dump(mode="json"),
                }
            ),
        )
        if notice.event == "requested":
            # The passages the agent cited, resolved or flagged: audited as
            # `approval.citations` (the evidence pack can render the returned list).
            await self._check_citations(notice)
        used = ["log"]
        retry: list[str] = []
        for n, name in enumerate(CHANNELS):
            if await asyncio.to_thread(
                self.runtime.audit.get, activity_record_id("notify.sent", n)
            ):
                used.append(name)  # delivered by an earlier attempt of this activity
                continue
            facts = {"channel": name, "event": notice.event, "request_id": request.request_id}
            try:
                channel = await self._channel(name, notice)
                if channel is None:
                    continue
                sent = await channel.send(notice, ref)
            except ChannelError as e:
                log.warning("notify.failed", **_for_log(facts), error=str(e), retryable=e.retryable)
                if e.retryable:
                    retry.append(str(e))
                else:
                    await audit_from_activity(
                        self.runtime, "notify.failed", {**facts, "error": str(e)}, n=n
                    )
                continue
            await audit_from_activity(
                self.runtime, "notify.sent", {**facts, "reference": ref.ref, **sent}, n=n
            )
            log.info("notify.sent", **_for_log(facts))
            used.append(name)
        if retry:
            raise ApplicationError(
                f"notification not delivered (will retry): {'; '.join(retry)}",
                type="NotifyTransportError",
            )
        return used

    async def _check_citations(self, notice: ApprovalNotice) -> list[Citation]:
        """The knowledge-base passages the agent cited for this action, resolved (or flagged
        as resolving to none), recorded once per request with their text and index version:
        what the approver is shown, and what an auditor reads later even if the documents
        change."""
        request = notice.request
        argument_reason = request.arguments.get("reason")
        texts = [request.reason] + ([argument_reason] if isinstance(argument_reason, str) else [])
        try:
            # A request with an evidence pack shows the citations its pack checked.
            citations = (
                request.evidence.citations
                if request.evidence is not None
                else await check_citations(self.runtime.settings, *texts)
            )
        except KnowledgeError as e:  # the notice matters more: send it without the passages
            log.warning("approval.citations_unchecked", request_id=request.request_id, error=str(e))
            return []
        if not citations:
            return []
        flagged = [c.ref for c in citations if c.flagged]
        await audit_from_activity(
            self.runtime,
            "approval.citations",
            {
                "request_id": request.request_id,
                "call_id": request.call_id,
                "action_hash": request.action_hash,
                "citations": [c.model_dump(mode="json") for c in citations],
                "flagged": flagged,
            },
        )
        log.info(
            "approval.citations",
            request_id=request.request_id,
            cited=[c.line() for c in citations],
            flagged=flagged,
        )
        return citations

    async def _channel(self, name: str, notice: ApprovalNotice) -> Channel | None:
        try:
            return await self._build_channel(name, notice)
        except CredentialError as e:
            raise ChannelError(name, str(e), retryable=False) from e

    async def _build_channel(self, name: str, notice: ApprovalNotice) -> Channel | None:
        settings = self.runtime.settings
        if name == "slack" and settings.slack:
            requested = await self.runtime.audit_find(
                notice.workflow_id,
                "notify.sent",
                channel="slack",
                event="requested",
                request_id=notice.request.request_id,
            )
            sent = requested[0].data if requested else None
            api = SlackApi(settings.slack, get_secret(settings.slack.bot_token_credential))
            return SlackChannel(settings, api, sent, self.runtime.directory.current())
        if name == "email" and settings.email:
            credential = settings.email.smtp_password_credential
            return EmailChannel(
                settings,
                self.tokens,
                get_secret(credential) if credential else None,
                self.runtime.directory.current(),
            )
        if name == "webhook" and settings.webhook:
            return WebhookChannel(settings, get_secret(settings.webhook.secret_credential))
        return None


def _for_log(facts: dict[str, str]) -> dict[str, str]:
    # structlog's first argument is called `event`.
    return {("notice" if k == "event" else k): v for k, v in facts.items()}
