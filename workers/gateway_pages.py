"""The approval gateway's HTML pages: a confirmation page for email links, and outcomes.

Plain server-rendered HTML with no scripts and no external resources (the gateway's
Content-Security-Policy allows neither). Everything shown is escaped: arguments and reasons
come from the model.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from countersign.guardrails.approvals import ApprovalRequest
from countersign.guardrails.money import argument_pairs, format_value
from countersign.guardrails.rendering import as_html, request_view
from countersign.guardrails.tokens import DecisionLink

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
h1{font-size:1.4rem} th{text-align:left;padding:.2rem 1rem .2rem 0;vertical-align:top}
.box{border:1px solid #d0d7de;border-radius:6px;padding:1rem;margin:1rem 0}
button{font-size:1rem;padding:.6rem 1.4rem;border:0;border-radius:6px;color:#fff;cursor:pointer}
.approve{background:#1a7f37}.reject{background:#cf222e}.muted{color:#59636e}
textarea{width:100%;min-height:4rem}
"""


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<meta name='robots' content='noindex'><title>{html.escape(title)} · Countersign</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _e(value: Any) -> str:
    return html.escape(str(value))


def facts_table(details: dict[str, Any]) -> str:
    """The request and its evidence, laid out as every channel shows it."""
    try:
        request = ApprovalRequest.model_validate(details)
    except ValidationError:  # a link issued before evidence packs: the action alone
        return _action_table(details)
    view = request_view(
        request,
        workflow_id=str(details.get("workflow_id", "")),
        agent=request.agent,
        task=str(details.get("task", "")),
        now=datetime.now(UTC),
    )
    return f"<div id='facts'>{as_html(view)}</div>"


def change_fields(details: dict[str, Any], *, key: str = "") -> str:
    """Inputs for approving with changes: one per argument the tool lets an approver change.
    Left empty, the action is approved as proposed. `key` keeps ids unique on a page that
    shows several requests (the inbox)."""
    may_change = details.get("may_change") or {}
    arguments = details.get("arguments") or {}
    if not may_change:
        return ""
    inputs = []
    for name in may_change:
        now = format_value(name, arguments.get(name))
        unit = " (e.g. 120.00)" if name.endswith("_cents") else ""
        field = f"change{_e(key)}-{_e(name)}"
        inputs.append(
            f"<p><label for='{field}'>New {_e(name.removesuffix('_cents'))}{unit}, "
            f"lower than {_e(now)}</label><br>"
            f"<input id='{field}' name='change:{_e(name)}' inputmode='decimal' "
            f"autocomplete='off'></p>"
        )
    return (
        "<fieldset class='box'><legend>Approve with changes (optional)</legend>"
        + "".join(inputs)
        + "<p class='muted'>The changed action is checked again by the policy before it runs;"
        " say why in the comment.</p></fieldset>"
    )


def form_changes(form: dict[str, list[str]]) -> dict[str, int]:
    """The changes typed on the confirmation page: `change:amount_cents` = "120.00" → 12000
    (money in major units, as people type it). ValueError says what was not understood."""
    changes = {}
    for key, values in form.items():
        if not key.startswith("change:") or not values or not values[0].strip():
            continue
        name, text = key.removeprefix("change:"), values[0].strip()
        if name.endswith("_cents"):
            whole, _, cents = text.replace(",", "").partition(".")
            if not whole.isdigit() or not (cents == "" or (cents.isdigit() and len(cents) <= 2)):
                raise ValueError(f"new {name.removesuffix('_cents')}: {text!r} is not an amount")
            changes[name] = int(whole) * 100 + int(cents.ljust(2, "0") or 0)
        elif text.lstrip("-").isdigit():
            changes[name] = int(text)
        else:
            raise ValueError(f"new {name}: {text!r} is not a whole number")
    return changes


def _action_table(details: dict[str, Any]) -> str:
    arguments = details.get("arguments") or {}
    need = details.get("need") or {}
    rows = [
        ("Tool", details.get("tool", "?")),
        *argument_pairs(arguments),
        ("Why (the model)", details.get("reason") or "(none given)"),
        ("Rules", ", ".join(details.get("rule_ids", []))),
        ("Requested by", details.get("requested_by", "?")),
        ("Agent", details.get("agent", "?")),
        ("Who may decide", f"{need.get('quorum', 1)} of {', '.join(need.get('eligible', []))}"),
    ]
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table id='facts'>{cells}</table>"


def confirmation(link: DecisionLink, token: str, csrf: str) -> str:
    """Shown when an email link is opened. Changes nothing; the button decides."""
    details = link.request.details
    verb = "approve" if link.approve else "reject"
    expires = link.expires_at.strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f"<h1>{verb.capitalize()} this action?</h1>"
        f"<p>You are <b>{_e(link.approver)}</b>. Task: <i>{_e(details.get('task', ''))}</i></p>"
        f"<div class='box'>{facts_table(details)}</div>"
        f"<form method='post' action='/email/decide'>"
        f"<input type='hidden' name='token' value='{_e(token)}'>"
        f"<input type='hidden' name='csrf' value='{_e(csrf)}'>"
        f"{change_fields(details) if link.approve else ''}"
        f"<p><label for='comment'>Comment (optional)</label><br>"
        f"<textarea id='comment' name='comment' maxlength='1000'></textarea></p>"
        f"<button type='submit' id='decide' class='{verb}'>{verb.capitalize()}</button>"
        f"</form>"
        f"<p class='muted'>Nothing has been decided yet. This link works once and expires "
        f"{_e(expires)}. Run {_e(link.request.workflow_id)}, request "
        f"{_e(link.request.request_id)}.</p>"
    )
    return page(f"{verb.capitalize()}?", body)


def outcome(title: str, message: str, *, details: dict[str, Any] | None = None) -> str:
    facts = f"<div class='box'>{facts_table(details)}</div>" if details else ""
    return page(title, f"<h1 id='title'>{_e(title)}</h1><p id='message'>{_e(message)}</p>{facts}")
