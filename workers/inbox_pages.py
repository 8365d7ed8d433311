"""The approver inbox's HTML: sign-in pages, and the list of requests waiting for the signed-in
approver.

Plain server-rendered HTML, no scripts (the gateway's CSP allows none); everything shown is
escaped. What one request shows is rendered by `request_block` alone, so a richer rendering
(the evidence pack) replaces one function.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from countersign.guardrails.money import describe_call
from countersign.guardrails.tokens import RequestRef
from countersign.workers.gateway_pages import _e, change_fields, facts_table, page


def in_words(delta: timedelta) -> str:
    """A time left, for people: "in 3 h 59 min", "in 40 s", "expired"."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else ""]
    parts.append(f"{minutes} min" if minutes else "" if days or hours else f"{secs} s")
    return "in " + " ".join(p for p in parts if p)


def run_link(temporal_ui_url: str, namespace: str, workflow_id: str) -> str:
    return (
        f"{temporal_ui_url.rstrip('/')}/namespaces/{quote(namespace, safe='')}"
        f"/workflows/{quote(workflow_id, safe='')}"
    )


def request_block(ref: RequestRef, *, run_url: str, now: datetime) -> str:
    """One request as the approver sees it: what it carries, its expiry, a link to the run."""
    details = ref.details
    expires = ref.expires_at.astimezone(UTC)
    action = describe_call(str(details.get("tool", "?")), details.get("arguments"))
    return (
        f"<h2 style='font-size:1.1rem'>{_e(action)}</h2>"
        f"<p>Task: <i>{_e(details.get('task', ''))}</i></p>"
        f"{facts_table(details)}"
        f"<p class='expiry'>Expires <b>{_e(in_words(expires - now))}</b> "
        f"(<time datetime='{_e(expires.isoformat())}'>{_e(expires.isoformat())}</time>)</p>"
        f"<p>Run <a class='run' href='{_e(run_url)}'>{_e(ref.workflow_id)}</a>, "
        f"request <code>{_e(ref.request_id)}</code></p>"
    )


def decision_form(ref: RequestRef, csrf: str) -> str:
    """Approve, or reject with a reason (the agent hears it)."""
    rid = _e(ref.request_id)
    return (
        f"<form method='post' action='/inbox/decide'>"
        f"<input type='hidden' name='csrf' value='{_e(csrf)}'>"
        f"<input type='hidden' name='reference' value='{_e(ref.ref)}'>"
        f"<p><label for='comment-{rid}'>Reason (required to reject; the agent hears it)</label>"
        f"<br><textarea id='comment-{rid}' name='comment' maxlength='1000'></textarea></p>"
        f"{change_fields(ref.details, key='-' + ref.request_id)}"
        f"<button type='submit' name='verb' value='approve' class='approve'>Approve</button> "
        f"<button type='submit' name='verb' value='reject' class='reject'>Reject</button>"
        f"</form>"
    )


def inbox(
    identity: str,
    items: list[tuple[RequestRef, str]],
    csrf: str,
    *,
    notice: tuple[str, str] | None = None,
) -> str:
    """`items`: each request with its rendered block; `notice`: (kind, text) after a decision,
    kind "ok" or "refused"."""
    banner = ""
    if notice is not None:
        kind, text = notice
        color = "#1a7f37" if kind == "ok" else "#cf222e"
        banner = (
            f"<div id='notice' class='box {_e(kind)}' style='border-color:{color};"
            f"border-width:2px'>{_e(text)}</div>"
        )
    sections = "".join(
        f"<section class='box request' id='{_e(ref.request_id)}'>{block}"
        f"{decision_form(ref, csrf)}</section>"
        for ref, block in items
    )
    empty = "<p id='empty'>Nothing waits for you.</p>" if not items else ""
    body = (
        f"<h1 id='title'>Waiting for you: {len(items)}</h1>"
        f"<p>Signed in as <b id='who'>{_e(identity)}</b>.</p>"
        f"<form method='post' action='/inbox/sign-out'>"
        f"<input type='hidden' name='csrf' value='{_e(csrf)}'>"
        f"<button type='submit' id='sign-out' style='background:#59636e'>Sign out</button>"
        "</form>"
        f"{banner}{empty}{sections}"
    )
    return page("Approver inbox", body)


def sign_in(pre: str, message: str = "") -> str:
    """Ask who you are; the link goes to the address the directory lists for you."""
    note = f"<p id='message'>{_e(message)}</p>" if message else ""
    body = (
        "<h1 id='title'>Approver inbox: sign in</h1>"
        f"{note}"
        "<form method='post' action='/inbox/sign-in'>"
        f"<input type='hidden' name='pre' value='{_e(pre)}'>"
        "<p><label for='who'>Your name or email address</label><br>"
        "<input id='who' name='who' maxlength='200' autocomplete='username'></p>"
        "<button type='submit' id='send-link' class='approve'>Email me a sign-in link</button>"
        "</form>"
        "<p class='muted'>The link goes to the address on record for you, works once and "
        "expires in 15 minutes.</p>"
    )
    return page("Sign in", body)


def confirm_sign_in(identity: str, token: str, pre: str) -> str:
    """Opening the emailed link changes nothing (mail scanners open links); the button does."""
    body = (
        f"<h1 id='title'>Sign in as {_e(identity)}?</h1>"
        "<form method='post' action='/inbox/sign-in/confirm'>"
        f"<input type='hidden' name='token' value='{_e(token)}'>"
        f"<input type='hidden' name='pre' value='{_e(pre)}'>"
        "<button type='submit' id='sign-in' class='approve'>Sign in</button></form>"
        "<p class='muted'>This link works once.</p>"
    )
    return page("Sign in?", body)
