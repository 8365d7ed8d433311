"""The evidence pack: what an approver needs to decide one approval request, with sources.

Gathered once per request by the evidence activity (activities/evidence.py) from our own
records (the guard's recorded verdict input, the ledger, the audit trail), so its result lands
in history and every channel, the CLI and replay show the same pack. Verified facts and the
agent's claim are kept apart: the agent's reason is what the model said, never a fact.

Pure models, no I/O: the workflow carries packs in its approval requests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from countersign.guardrails.knowledge import Citation

__all__ = [
    "CountedHistory",
    "DoneAction",
    "EvidencePack",
    "HistoryEntry",
    "RuleInWords",
    "SourcedFact",
]


class SourcedFact(BaseModel):
    """One record the guard fetched itself from a system of record, and where it came from."""

    name: str  # the fact's name, e.g. "order"
    key: str  # what it was fetched by, e.g. "order_id=A-1002"
    fields: dict[str, Any]
    # The system record it came from, e.g. "fact `order` (activities.shop.order_facts)".
    source: str
    fetched_at: datetime


class RuleInWords(BaseModel):
    """The rule that asked for approval, as a person reads it, and the Cedar it is."""

    rule_id: str
    words: str
    condition: str = ""
    where: str = ""  # file:line
    policy_version: str = ""


class DoneAction(BaseModel):
    """An action this run already executed (from the audit trail)."""

    tool: str
    call_id: str
    arguments: dict[str, Any]
    at: datetime


# The ledger entries an evidence pack lists per total (the newest); the rest are counted.
SHOWN_ENTRIES = 10


class HistoryEntry(BaseModel):
    """One earlier action counted by a limit (a ledger reservation)."""

    workflow_id: str
    amount: int
    at: datetime
    this_run: bool = False


class CountedHistory(BaseModel):
    """A running total the policy counted for this call (before it), and what makes it up."""

    counter_id: str
    # e.g. "payments.refund amount_cents per facts.order.customer_id=C-200, week 2026-W48"
    counts: str
    value: int
    money: bool
    # The newest entries behind the total (at most SHOWN_ENTRIES), and how many older ones
    # count too: a pack is held by the parked run and shown in chat, so it stays small.
    entries: list[HistoryEntry] = []
    older: int = Field(default=0, exclude_if=lambda v: v == 0)


class EvidencePack(BaseModel):
    """Everything shown to an approver about one request, every fact with its source."""

    request_id: str
    # What the run is about (the run's subject, with the customer the facts name).
    subject: dict[str, str]
    facts: list[SourcedFact] = []
    rule: RuleInWords
    done: list[DoneAction] = []
    history: list[CountedHistory] = []
    # The model's stated reason for this very call: a claim, not a verified fact.
    agent_claim: str = ""
    citations: list[Citation] = []
    gathered_at: datetime
    # Where people see the run (the Temporal UI), from the worker's settings.
    run_url: str = ""
    # What could not be gathered (the pack is best effort; the guard already decided).
    gaps: list[str] = []
