"""Email: one message per named approver, with a single-use link per decision.

A link opens a confirmation page on the approval gateway (opening changes nothing: mail
scanners pre-open links); the button on that page decides. Each link's token is random, stored
only as a hash, bound to the request, the action, the approver and the verb, and expires with
the request.
"""

from __future__ import annotations

import asyncio
import html
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import aiosmtplib

from countersign.activities.channels import ChannelError, deciders, view_of
from countersign.activities.contracts import ApprovalNotice
from countersign.guardrails.identity import Directory
from countersign.guardrails.rendering import as_html, as_text
from countersign.guardrails.tokens import RequestRef, TokenStore, link_id
from countersign.settings import EmailSettings, Settings

DECIDE_PATH = "/email/decide"


def build_message(
    notice: ApprovalNotice, conf: EmailSettings, to: str, links: dict[str, str]
) -> EmailMessage:
    """The approval email for one approver; `links` maps "approve"/"reject" to URLs. Its
    subject, text and HTML are laid out from the one view every channel shows."""
    view = view_of(notice)
    msg = EmailMessage()
    prefix = "Reminder: " if notice.event == "reminder" else ""
    msg["Subject"] = f"{prefix}{view.title}"[:200]
    msg["From"] = conf.sender
    msg["To"] = to
    msg["Message-ID"] = make_msgid(domain="countersign.local")
    changeable = bool(notice.request.may_change)
    text = "\n".join(
        [
            as_text(view),
            "",
            f"Approve: {links['approve']}",
            f"Reject:  {links['reject']}",
            *(["(The approve page lets you approve with changes.)"] if changeable else []),
            "",
            "Each link opens a confirmation page; nothing is decided until you confirm there.",
            "The links are yours alone and work once. Do not forward this email.",
        ]
    )
    msg.set_content(text)
    msg.add_alternative(
        f"""<!doctype html><html><body style="font-family:sans-serif">
<h2>{html.escape(view.title)}</h2>
{as_html(view)}
<p><a href="{html.escape(links["approve"])}" style="padding:8px 16px;background:#1a7f37;color:#fff;
text-decoration:none">Approve{" (or with changes)" if changeable else ""}…</a>
&nbsp; <a href="{html.escape(links["reject"])}" style="padding:8px 16px;background:#cf222e;
color:#fff;text-decoration:none">Reject…</a></p>
<p style="color:#555">Each link opens a confirmation page; nothing is decided until you confirm
there. The links are yours alone and work once. Do not forward this email.</p>
</body></html>""",
        subtype="html",
    )
    return msg


class EmailChannel:
    name = "email"

    def __init__(
        self, settings: Settings, tokens: TokenStore, password: str | None, directory: Directory
    ) -> None:
        assert settings.email is not None
        self.settings = settings
        self.directory = directory
        self.conf = settings.email
        self.tokens = tokens
        self._password = password

    async def send(self, notice: ApprovalNotice, ref: RequestRef) -> dict[str, Any]:
        if notice.event == "settled":
            # Outstanding links of a settled request stop working at once.
            revoked = await asyncio.to_thread(
                self.tokens.revoke, notice.workflow_id, notice.request.request_id
            )
            return {"revoked_links": revoked}
        sent, links_issued, no_address = [], [], []
        base = self.settings.gateway_url.rstrip("/") + DECIDE_PATH
        decided = {d.approver for d in notice.request.decisions}
        for identity in deciders(notice.request):
            if notice.event == "reminder" and identity in decided:
                continue  # a reminder goes only to those who have not decided
            contact = self.directory.get(identity)
            if contact is None or not contact.email:
                no_address.append(identity)
                continue
            links = {}
            for verb in ("approve", "reject"):
                token = await asyncio.to_thread(self.tokens.issue, ref, identity, verb == "approve")
                links[verb] = f"{base}?token={token}"
                links_issued.append(link_id(token))
            await self._deliver(build_message(notice, self.conf, contact.email, links))
            sent.append(identity)
        if not sent:
            raise ChannelError(
                "email",
                f"no email address configured for any of {', '.join(no_address) or 'nobody'}"
                " (COUNTERSIGN_APPROVERS)",
                retryable=False,
            )
        return {"to": sent, "links": links_issued, "no_address": no_address}

    async def _deliver(self, msg: EmailMessage) -> None:
        await send_email(self.conf, self._password, msg)


async def send_email(conf: EmailSettings, password: str | None, msg: EmailMessage) -> None:
    """Deliver one message by SMTP, or ChannelError (retryable when worth trying again)."""
    try:
        await aiosmtplib.send(
            msg,
            hostname=conf.smtp_host,
            port=conf.smtp_port,
            username=conf.smtp_username,
            password=password,
            use_tls=conf.smtp_security == "tls",
            start_tls=conf.smtp_security == "starttls",
            timeout=conf.timeout_seconds,
        )
    except aiosmtplib.SMTPResponseException as e:
        # 4xx: try again later; 5xx: the server refuses this for good.
        raise ChannelError("email", f"SMTP {e.code} {e.message}", retryable=e.code < 500) from e
    except (aiosmtplib.SMTPException, OSError) as e:
        raise ChannelError("email", f"SMTP: {type(e).__name__}: {e}", retryable=True) from e
