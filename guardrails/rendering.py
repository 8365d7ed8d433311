"""One rendering of an approval request and its evidence pack, for every channel.

`request_view()` decides once what an approver sees — the action (money with its currency),
the subject, the verified facts with their sources, the rule in words, what the run already
did, the history the policy counted, the agent's claim (kept apart from the facts) with its
citations, who may decide, the expiry in words and ISO, and a link to the run. The formatters
only lay that view out: plain text (email, CLI), markdown (Temporal UI Current Details), HTML
(email, gateway pages), Slack Block Kit and JSON (webhook). So every channel carries the same
facts. Pure functions, no I/O: workflow code renders Current Details with them.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from countersign.guardrails.approvals import ApprovalRequest
from countersign.guardrails.evidence import EvidencePack
from countersign.guardrails.money import argument_pairs, describe_call, format_value, money
from countersign.guardrails.redaction import redact

__all__ = [
    "RequestView",
    "as_html",
    "as_json",
    "as_markdown",
    "as_slack_blocks",
    "as_text",
    "expiry_words",
    "outcome_line",
    "request_view",
    "run_url",
]

AGENT_CLAIM = "The agent's claim (not verified)"


class Row(BaseModel):
    label: str
    value: str


class Section(BaseModel):
    title: str
    rows: list[Row]


class RequestView(BaseModel):
    """What every channel shows about one approval request."""

    workflow_id: str
    request_id: str
    status: str
    title: str  # one line, money as money: the email subject, Slack's fallback text
    headline: str  # who asked which agent to do what
    sections: list[Section]
    run_url: str = ""

    def values(self) -> list[str]:
        """Every fact shown, as text (what a test checks each channel carries)."""
        return [r.value for s in self.sections for r in s.rows]


def run_url(ui_url: str, namespace: str, workflow_id: str) -> str:
    """The run in the Temporal UI."""
    return f"{ui_url.rstrip('/')}/namespaces/{namespace}/workflows/{workflow_id}"


def when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def expiry_words(expires_at: datetime, now: datetime) -> str:
    """ "in 3 h 59 min (2026-11-30 12:11 UTC, 2026-11-30T12:11:03+00:00)"."""
    seconds = int((expires_at - now).total_seconds())
    left = abs(seconds)
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min"]
    span = " ".join(p for p in parts if p) if left >= 60 else "less than a minute"
    relative = f"in {span}" if seconds >= 0 else f"{span} ago"
    return f"{relative} ({when(expires_at)}, {expires_at.isoformat()})"


def deciders(request: ApprovalRequest) -> list[str]:
    """Who may decide: eligible people, never the requester or the agent."""
    return [p for p in request.need.eligible if p not in (request.requested_by, request.agent)]


def who_may_decide(request: ApprovalRequest) -> str:
    need = request.need
    text = f"{need.quorum} of {', '.join(deciders(request))} ({', '.join(need.groups)})"
    if need.required_group:
        text += f", at least one from {need.required_group}"
    return text


def change_words(original: dict[str, Any], changes: dict[str, Any]) -> str:
    """amount 189.00 USD → 120.00 USD."""
    return ", ".join(
        f"{k.removesuffix('_cents')} {format_value(k, original.get(k))} → {format_value(k, v)}"
        for k, v in changes.items()
    )


def outcome_line(request: ApprovalRequest) -> str:
    """The state of a request, in one line."""
    if request.status == "approved":
        return f"Approved by {', '.join(request.approvers)}"
    if request.status == "changed":
        d = next(d for d in reversed(request.decisions) if d.changes)
        return (
            f"Approved with changes by {d.approver}: {change_words(request.arguments, d.changes)}"
            + (f" ({d.comment})" if d.comment else "")
        )
    if request.status == "rejected":
        no = [d for d in request.decisions if not d.approve]
        if no:
            return f"Rejected by {no[-1].approver}" + (
                f": {no[-1].comment}" if no[-1].comment else ""
            )
        return "Rejected"
    if request.status == "expired":
        return f"Expired at {when(request.expires_at)} without a decision: rejected"
    return f"Waiting: {len(request.approvers)} of {request.need.quorum} approvals"


def _fields(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k.removesuffix('_cents')}={format_value(k, v)}" for k, v in fields.items())


def request_view(
    request: ApprovalRequest,
    *,
    workflow_id: str,
    agent: str,
    task: str,
    now: datetime,
) -> RequestView:
    """The one view of a request every channel lays out."""
    pack: EvidencePack | None = request.evidence
    changeable = [
        f"{k.removesuffix('_cents')} ({'lower only' if v == 'decrease' else v})"
        for k, v in request.may_change.items()
    ]
    action = [
        Row(label="Tool", value=request.tool),
        *(Row(label=k, value=v) for k, v in argument_pairs(request.arguments)),
    ]
    if changeable:
        action.append(Row(label="Approver may change", value=", ".join(changeable)))
    if request.changed_from:
        action.append(
            Row(label="Changed by an approver", value=f"replaces request {request.changed_from}")
        )
    sections = [Section(title="Action", rows=action)]
    if pack is not None:
        if pack.subject:
            sections.append(
                Section(
                    title="Subject",
                    rows=[Row(label=k, value=str(v)) for k, v in redact(pack.subject).items()],
                )
            )
        facts = []
        for f in pack.facts:
            facts.append(Row(label=f"{f.name} ({f.key})", value=_fields(redact(f.fields))))
            facts.append(
                Row(label="source", value=f"{f.source}; fetched {f.fetched_at.isoformat()}")
            )
        if facts:
            sections.append(Section(title="Verified facts (fetched by the guard)", rows=facts))
    rule = [
        Row(label="Rule", value=", ".join(request.rule_ids)),
    ]
    if pack is not None:
        if pack.rule.words:
            rule.append(Row(label="In words", value=pack.rule.words))
        if pack.rule.condition:
            rule.append(Row(label="Condition", value=pack.rule.condition))
        if pack.rule.where or pack.rule.policy_version:
            rule.append(
                Row(label="Policy", value=f"{pack.rule.policy_version} {pack.rule.where}".strip())
            )
    rule += [
        Row(label="Who may decide", value=who_may_decide(request)),
        Row(label="Expires", value=expiry_words(request.expires_at, now)),
        Row(label="Status", value=outcome_line(request)),
    ]
    sections.append(Section(title="Why approval is needed", rows=rule))
    if pack is not None and pack.history:
        rows = []
        for h in pack.history:
            value = money(h.value) if h.money else str(h.value)
            earlier = "; ".join(
                f"{money(e.amount) if h.money else e.amount} on {when(e.at)}"
                + (" (this run)" if e.this_run else f" (run {e.workflow_id})")
                for e in h.entries
            ) + (f"; and {h.older} older" if h.older else "")
            rows.append(
                Row(
                    label=h.counter_id,
                    value=f"{value} before this call: {h.counts}"
                    + (f"; earlier: {earlier}" if earlier else "; nothing earlier"),
                )
            )
        sections.append(Section(title="History the policy counted", rows=rows))
    if pack is not None:
        done = [
            Row(label=when(d.at), value=describe_call(d.tool, d.arguments)) for d in pack.done
        ] or [Row(label="Actions", value="none executed yet")]
        sections.append(Section(title="This run already did", rows=done))
    claim = [Row(label="Reason", value=request.reason or "(none given)")]
    for c in pack.citations if pack else []:
        p = c.passage
        if p is None:
            shown = "NOT FOUND: no such passage in the knowledge base (the citation may be made up)"
        else:
            changed = "CHANGED since it was cited: " if c.status == "changed" else ""
            shown = f"{changed}{p.title} § {p.section} ¶{p.position}: “{p.text}”"
        claim.append(Row(label=f"Cites {c.ref}", value=shown))
    sections.append(Section(title=AGENT_CLAIM, rows=claim))
    if pack is not None and pack.gaps:
        sections.append(
            Section(
                title="Not gathered",
                rows=[Row(label="gap", value=g) for g in pack.gaps],
            )
        )
    link = pack.run_url if pack else ""
    sections.append(
        Section(
            title="Run",
            rows=[
                Row(label="Run", value=workflow_id),
                Row(label="Request", value=request.request_id),
                *([Row(label="Link", value=link)] if link else []),
            ],
        )
    )
    prefix = "Approval needed" if request.status == "pending" else outcome_line(request)
    return RequestView(
        workflow_id=workflow_id,
        request_id=request.request_id,
        status=request.status,
        title=f"{prefix}: {describe_call(request.tool, request.arguments)}"[:200],
        headline=f"{request.requested_by} asked agent {agent}: {task}",
        sections=sections,
        run_url=link,
    )


def as_text(view: RequestView) -> str:
    lines = [view.title, view.headline]
    for s in view.sections:
        lines += ["", s.title.upper(), *(f"  {r.label}: {r.value}" for r in s.rows)]
    return "\n".join(lines)


def as_markdown(view: RequestView, *, title: bool = True) -> str:
    """For Temporal UI Current Details. Model and tool text is escaped: data, not markup."""
    lines = [f"**{_md(view.title)}**", ""] if title else []
    lines.append(_md(view.headline))
    for s in view.sections:
        lines += ["", f"*{s.title}*", *(f"- {_md(r.label)}: {_md(r.value)}" for r in s.rows)]
    return "\n".join(lines)


def _md(text: str) -> str:
    # Data, not markup: no links, images or emphasis sneak in from model or tool text.
    for ch in "\\`*_[]<>!#|":
        text = text.replace(ch, "\\" + ch)
    return text


def as_html(view: RequestView) -> str:
    """Tables, every value escaped (arguments and reasons come from the model)."""
    e = html.escape
    parts = [f"<p id='headline'>{e(view.headline)}</p>"]
    for s in view.sections:
        cells = "".join(
            f"<tr><th align='left' style='padding:2px 12px 2px 0;vertical-align:top'>"
            f"{e(r.label)}</th><td>{e(r.value)}</td></tr>"
            for r in s.rows
        )
        parts.append(f"<h3>{e(s.title)}</h3><table>{cells}</table>")
    return "".join(parts)


def as_slack_blocks(view: RequestView) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": view.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack(view.headline)}},
    ]
    for s in view.sections:
        text = f"*{s.title}*\n" + "\n".join(
            f"• *{_slack(r.label)}*: {_slack(r.value)}" for r in s.rows
        )
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    return blocks


def _slack(text: str) -> str:
    # Model and requester text is data, not markup: no mentions or links sneak in.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def as_json(view: RequestView) -> dict[str, Any]:
    return view.model_dump(mode="json")
