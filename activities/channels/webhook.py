"""Generic webhook: the notice as JSON, signed with HMAC-SHA256 (Teams bots, ticket systems).

Signature: `X-Countersign-Signature: sha256=HEX` where HEX is the HMAC-SHA256, keyed with the
shared secret, of `"{timestamp}.{raw body}"`, and `X-Countersign-Timestamp` is Unix seconds.
The gateway's `POST /webhook/decision` checks decisions called back the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from countersign.activities.channels import ChannelError, deciders, outcome_line, view_of
from countersign.activities.contracts import ApprovalNotice
from countersign.guardrails.redaction import redact
from countersign.guardrails.rendering import as_json
from countersign.guardrails.tokens import RequestRef
from countersign.settings import Settings

SIGNATURE_HEADER = "X-Countersign-Signature"
TIMESTAMP_HEADER = "X-Countersign-Timestamp"
MAX_AGE_SECONDS = 300


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(now if now is not None else time.time()))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def verify(secret: str, headers: Any, body: bytes, now: float | None = None) -> str | None:
    """None if the request is authentic and fresh, else why not (for the log, not the caller)."""
    lowered = {str(k).lower(): v for k, v in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    given = lowered.get(SIGNATURE_HEADER.lower())
    if not timestamp or not given:
        return "missing signature or timestamp header"
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return "timestamp is not Unix seconds"
    if age > MAX_AGE_SECONDS:
        return f"stale: timestamp is {age:.0f}s away from now"
    if not hmac.compare_digest(signature(secret, timestamp, body), given):
        return "signature does not match"
    return None


def notice_payload(notice: ApprovalNotice, ref: RequestRef, settings: Settings) -> dict[str, Any]:
    request = notice.request
    return {
        "event": notice.event,
        "reference": ref.ref,
        "workflow_id": notice.workflow_id,
        "agent": notice.agent,
        "task": notice.task,
        "request": redact(request.model_dump(mode="json")),  # [secret] / [personal]
        # What every channel shows, laid out once (guardrails/rendering.py).
        "view": as_json(view_of(notice)),
        "deciders": deciders(request),
        "outcome": outcome_line(request),
        "decide": {
            "url": f"{settings.gateway_url.rstrip('/')}/webhook/decision",
            "body": {"reference": ref.ref, "approver": "IDENTITY", "approve": True},
            # Approve with changes: add e.g. "changes": {"amount_cents": 12000}.
            "may_change": request.may_change,
        },
    }


class WebhookChannel:
    name = "webhook"

    def __init__(self, settings: Settings, secret: str) -> None:
        assert settings.webhook is not None
        self.conf = settings.webhook
        self.settings = settings
        self._secret = secret

    async def send(self, notice: ApprovalNotice, ref: RequestRef) -> dict[str, Any]:
        body = json.dumps(notice_payload(notice, ref, self.settings)).encode()
        delivered = []
        async with httpx.AsyncClient(timeout=self.conf.timeout_seconds) as http:
            for url in self.conf.urls:
                # A webhook URL often embeds its own secret (Teams, Slack hooks): only the
                # host is ever logged or audited.
                host = urlsplit(url).netloc
                try:
                    r = await http.post(
                        url, content=body, headers=signed_headers(self._secret, body)
                    )
                except httpx.HTTPError as e:
                    raise ChannelError(
                        "webhook", f"{host}: {type(e).__name__}", retryable=True
                    ) from e
                if r.status_code == 429 or r.status_code >= 500:
                    raise ChannelError("webhook", f"{host}: HTTP {r.status_code}", retryable=True)
                if r.status_code >= 400:
                    raise ChannelError("webhook", f"{host}: HTTP {r.status_code}", retryable=False)
                delivered.append(host)
        return {"targets": delivered}
