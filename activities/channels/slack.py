"""Slack: an interactive Block Kit message per approval request, updated when it settles.

The buttons' `value` is only the request's opaque reference (`ref_…`): who clicked comes from
Slack's signed interaction payload, and what is decided comes from the run, never from the
message. Works against any Slack-API-compatible base URL (`COUNTERSIGN_SLACK__API_URL`).
"""

from __future__ import annotations

from typing import Any

import httpx

from countersign.activities.channels import (
    ChannelError,
    action_text,
    deciders,
    outcome_line,
    view_of,
    when,
)
from countersign.activities.contracts import ApprovalNotice
from countersign.guardrails.identity import Directory
from countersign.guardrails.rendering import as_slack_blocks
from countersign.guardrails.tokens import RequestRef
from countersign.settings import Settings, SlackSettings

APPROVE = "countersign.approve"
REJECT = "countersign.reject"
CHANGE = "countersign.change"  # a link to the inbox: the gateway ignores its click
ACTIONS_BLOCK = "countersign.decision"


class SlackApi:
    """The few Web API methods we use, over httpx, with errors classified for retries."""

    def __init__(self, conf: SlackSettings, bot_token: str) -> None:
        self.conf = conf
        self._token = bot_token

    async def call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.conf.api_url.rstrip('/')}/{method}"
        try:
            async with httpx.AsyncClient(timeout=self.conf.timeout_seconds) as http:
                r = await http.post(
                    url, json=payload, headers={"Authorization": f"Bearer {self._token}"}
                )
        except httpx.HTTPError as e:
            raise ChannelError("slack", f"{method}: {type(e).__name__}", retryable=True) from e
        if r.status_code == 429 or r.status_code >= 500:
            raise ChannelError("slack", f"{method}: HTTP {r.status_code}", retryable=True)
        try:
            body: dict[str, Any] = r.json()
        except ValueError:
            body = {"ok": False, "error": f"HTTP {r.status_code}, not JSON"}
        if not body.get("ok"):
            raise ChannelError("slack", f"{method}: {body.get('error')}", retryable=False)
        return body

    async def respond(self, response_url: str, payload: dict[str, Any]) -> None:
        """Answer an interaction through its response_url (e.g. a message only the clicker
        sees). The URL came in a signature-verified payload."""
        try:
            async with httpx.AsyncClient(timeout=self.conf.timeout_seconds) as http:
                r = await http.post(response_url, json=payload)
        except httpx.HTTPError as e:
            raise ChannelError("slack", f"response_url: {type(e).__name__}", retryable=True) from e
        if r.status_code >= 400:
            raise ChannelError("slack", f"response_url: HTTP {r.status_code}", retryable=False)


def request_blocks(
    notice: ApprovalNotice, ref: RequestRef, settings: Settings, directory: Directory
) -> list[dict[str, Any]]:
    """What the agent wants to do and why, with its evidence (the one view every channel
    shows); buttons while the request is open."""
    request = notice.request
    mentions = [_mention(p, directory) for p in deciders(request)]
    blocks = as_slack_blocks(view_of(notice))
    if any(mentions):
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " ".join(mentions)}]}
        )
    if request.status == "pending":
        blocks.append(
            {
                "type": "actions",
                "block_id": ACTIONS_BLOCK,
                "elements": [
                    _button("Approve", APPROVE, ref.ref, "primary"),
                    _button("Reject", REJECT, ref.ref, "danger"),
                    # Slack has no field for a new amount: the inbox has (signed in there).
                    *([_change_button(settings, request.request_id)] if request.may_change else []),
                ],
            }
        )
    else:
        blocks.append(outcome_block(outcome_line(request), request.status))
    return blocks


def outcome_block(text: str, status: str) -> dict[str, Any]:
    icon = {
        "approved": ":white_check_mark:",
        "changed": ":pencil2:",
        "rejected": ":x:",
        "expired": ":hourglass:",
    }
    return {
        "type": "section",
        "block_id": "countersign.outcome",
        "text": {
            "type": "mrkdwn",
            "text": f"{icon.get(status, ':hourglass_flowing_sand:')} {text}",
        },
    }


def fallback_text(notice: ApprovalNotice) -> str:
    """Shown in notifications and by clients that cannot render blocks."""
    request = notice.request
    if request.status == "pending":
        return f"Approval needed: {action_text(request)}"
    return f"{action_text(request)}: {outcome_line(request)}"


def _button(text: str, action_id: str, value: str, style: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
        "style": style,
    }


def _change_button(settings: Settings, request_id: str) -> dict[str, Any]:
    """Opens the request in the approver inbox, where the changeable arguments have fields."""
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": "Approve with changes…"},
        "action_id": CHANGE,
        "url": f"{settings.gateway_url.rstrip('/')}/inbox#{request_id}",
    }


def _mention(identity: str, directory: Directory) -> str:
    contact = directory.get(identity)
    return f"<@{contact.slack_user}>" if contact and contact.slack_user else ""


class SlackChannel:
    name = "slack"

    def __init__(
        self, settings: Settings, api: SlackApi, sent: dict[str, Any] | None, directory: Directory
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.api = api
        # The audit data of the "requested" message, for updating it when the request settles.
        self.sent = sent

    async def send(self, notice: ApprovalNotice, ref: RequestRef) -> dict[str, Any]:
        assert self.settings.slack is not None
        blocks = request_blocks(notice, ref, self.settings, self.directory)
        text = fallback_text(notice)
        if notice.event == "settled" and self.sent:
            await self.api.call(
                "chat.update",
                {
                    "channel": self.sent["slack_channel"],
                    "ts": self.sent["ts"],
                    "text": text,
                    "blocks": blocks,
                },
            )
            return {
                "slack_channel": self.sent["slack_channel"],
                "ts": self.sent["ts"],
                "updated": True,
            }
        if notice.event == "settled":
            # No message to update (Slack was configured after the request was posted).
            return {"skipped": "no request message to update"}
        if notice.event == "reminder" and self.sent:
            # In the request's thread, shown in the channel too, so the buttons are one click away.
            mentions = " ".join(_mention(p, self.directory) for p in deciders(notice.request))
            body = await self.api.call(
                "chat.postMessage",
                {
                    "channel": self.sent["slack_channel"],
                    "thread_ts": self.sent["ts"],
                    "reply_broadcast": True,
                    "text": f"Reminder: still waiting for a decision on "
                    f"{action_text(notice.request)} (expires {when(notice.request.expires_at)}) "
                    f"{mentions}".strip(),
                },
            )
            return {
                "slack_channel": body.get("channel"),
                "ts": body.get("ts"),
                "thread_ts": self.sent["ts"],
            }
        body = await self.api.call(
            "chat.postMessage",
            {"channel": self.settings.slack.channel, "text": text, "blocks": blocks},
        )
        return {"slack_channel": body.get("channel"), "ts": body.get("ts")}
