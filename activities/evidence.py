"""The evidence activity: gather one approval request's evidence pack (guardrails/evidence).

Everything comes from our own records, not from what the model said: the facts the guard
fetched itself (its recorded verdict input), the rule from the active policy, this run's
executed actions from the audit trail, and the totals the policy counted from the ledger.
Its result lands in history, so every channel, the CLI and replay show the same pack.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import structlog
from temporalio import activity

from countersign.activities.contracts import EVIDENCE, EvidenceInput
from countersign.activities.facts import FACTS
from countersign.activities.knowledge import check_citations
from countersign.activities.runtime import Runtime, current_workflow_id
from countersign.guardrails.audit import AuditRecord
from countersign.guardrails.evidence import (
    SHOWN_ENTRIES,
    CountedHistory,
    DoneAction,
    EvidencePack,
    HistoryEntry,
    RuleInWords,
    SourcedFact,
)
from countersign.guardrails.knowledge import KnowledgeError
from countersign.guardrails.ledger import key_of, window_of
from countersign.guardrails.policy import Counter, DecisionInput, PolicyBundle
from countersign.guardrails.rendering import run_url

log = structlog.get_logger(__name__)


class EvidenceActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @activity.defn(name=EVIDENCE)
    async def gather(self, input: EvidenceInput) -> EvidencePack:
        workflow_id = current_workflow_id()
        gaps: list[str] = []
        verdicts = await self.runtime.audit_find(workflow_id, "verdict", call_id=input.call_id)
        # The verdict of exactly this action (an action approved with changes has its own).
        verdict = next(
            (r for r in reversed(verdicts) if r.data.get("action_hash") == input.action_hash), None
        )
        decided: DecisionInput | None = None
        if verdict is None:
            gaps.append(f"no recorded verdict for action {input.action_hash}")
        else:
            decided = DecisionInput.model_validate(verdict.data["input"])
        policy: PolicyBundle | None = None
        try:
            policy = self.runtime.policy.current()
        except Exception as e:  # the pack is best effort: the guard already decided
            gaps.append(f"the policy could not be read: {e}")
        executed = await self.runtime.audit_find(workflow_id, "action.executed")
        history: list[CountedHistory] = []
        if decided is not None and verdict is not None and policy is not None:
            history = await asyncio.to_thread(
                self._history, decided, policy.settings.counters, verdict.at, input.action_hash
            )
        subject = dict(input.subject)
        facts = _facts(decided, verdict.at) if decided and verdict else []
        for f in facts:
            customer = f.fields.get("customer_id")
            if isinstance(customer, str):
                subject.setdefault("customer_id", customer)
        try:
            # The passages the agent's reason cites, resolved or flagged as made up.
            citations = await check_citations(self.runtime.settings, input.reason)
        except KnowledgeError as e:
            citations = []
            gaps.append(f"the cited passages could not be checked: {e}")
        return EvidencePack(
            request_id=input.request_id,
            subject=subject,
            facts=facts,
            rule=_rule(policy, input.rule_id, verdict),
            done=[_done(r) for r in executed],
            history=history,
            agent_claim=input.reason,
            citations=citations,
            gathered_at=datetime.now(UTC),
            run_url=run_url(
                self.runtime.settings.temporal_ui_url,
                self.runtime.settings.temporal_namespace,
                workflow_id,
            ),
            gaps=gaps,
        )

    def _history(
        self, d: DecisionInput, counters: list[Counter], at: datetime, action_hash: str
    ) -> list[CountedHistory]:
        """The totals the policy counted for this call, and the ledger entries behind them."""
        out = []
        for c in counters:
            if d.tool is None or c.tool != d.tool.name or c.id not in d.usage:
                continue
            key, window = key_of(c, d), window_of(c, d.workflow_id, at)
            found = self.runtime.ledger.entries(c.id, key, window, exclude=action_hash)
            entries = [
                HistoryEntry(
                    workflow_id=workflow_id,
                    amount=amount,
                    at=created,
                    this_run=workflow_id == d.workflow_id,
                )
                for workflow_id, amount, created in found[-SHOWN_ENTRIES:]
            ]
            what = f"{c.sum} of {c.tool}" if c.sum else f"{c.tool} calls"
            out.append(
                CountedHistory(
                    counter_id=c.id,
                    counts=f"{what} per {c.per} ({key}), {c.window} {window}",
                    value=d.usage[c.id],
                    money=bool(c.sum and c.sum.endswith("_cents")),
                    entries=entries,
                    older=len(found) - len(entries),
                )
            )
        return out


def _facts(d: DecisionInput, at: datetime) -> list[SourcedFact]:
    """The records the guard fetched for this call and for the run's subject, with sources."""
    out: list[SourcedFact] = []
    keys: dict[str, Any] = {**(d.arguments or {})}
    for group, fetched, source_keys in (
        ("call", d.facts, keys),
        ("subject", d.subject_facts, d.subject),
    ):
        for name, fields in fetched.items():
            if any(f.name == name and f.fields == fields for f in out):
                continue  # the call's and the subject's order are often the same record
            spec = FACTS.get(name)
            keyed_by = spec.keyed_by if spec else "?"
            where = f"{spec.fn.__module__}.{spec.fn.__qualname__}" if spec else "unregistered"
            doc = (
                (spec.fn.__doc__ or "").strip().splitlines()[0] if spec and spec.fn.__doc__ else ""
            )
            out.append(
                SourcedFact(
                    name=name,
                    key=f"{keyed_by}={source_keys.get(keyed_by, '?')}",
                    fields=fields,
                    source=f"fetched by the guard for the {group}: fact `{name}` ({where})"
                    + (f": {doc}" if doc else ""),
                    fetched_at=at,
                )
            )
    return out


def _rule(policy: PolicyBundle | None, rule_id: str, verdict: AuditRecord | None) -> RuleInWords:
    version = str(verdict.data.get("policy_version", "")) if verdict else ""
    words = str(verdict.data.get("reason", "")) if verdict else ""
    rule = policy.by_id.get(rule_id) if policy else None
    if rule is None:
        if rule_id == "mode.augment":
            words = f"augment mode: every side effect needs a person. {words}"
        return RuleInWords(rule_id=rule_id, words=words, policy_version=version)
    described = rule.annotations.get("description") or rule.annotations.get("reason")
    condition = rule.source
    if "when" in condition or "unless" in condition:
        start = min(i for i in (condition.find("when"), condition.find("unless")) if i >= 0)
        condition = condition[start:].strip().rstrip(";").strip()
    return RuleInWords(
        rule_id=rule_id,
        words=f"{described}. {words}" if described else words,
        condition=" ".join(condition.split()),
        where=f"{rule.file.rsplit('/', 1)[-1]}:{rule.line}",
        policy_version=version,
    )


def _done(r: AuditRecord) -> DoneAction:
    return DoneAction(
        tool=str(r.data.get("tool")),
        call_id=str(r.data.get("call_id")),
        arguments=r.data.get("arguments") or {},
        at=r.at,
    )
