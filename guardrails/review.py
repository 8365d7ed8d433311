"""Reviewing a policy change before it is active: example cases, a diff, and a backtest.

- `run_cases`: the policy folder's `cases.toml` states what the policy must decide for given
  calls; a security owner reads it as the policy's specification.
- `diff`: which rules and settings a candidate adds, removes or changes.
- `backtest`: every decision recorded in the audit trail, decided again by a candidate
  policy with exactly the recorded input; the flips are what the change would do.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from countersign.guardrails.audit import AuditRecord
from countersign.guardrails.policy import (
    DecisionInput,
    Outcome,
    PolicyBundle,
    PolicyError,
    Proposal,
    ToolFacts,
    decide,
)


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    agent: str = "support-refunds"
    scopes: list[str]
    tool: ToolFacts
    args: dict[str, Any]
    subject: dict[str, str] = {}
    facts: dict[str, dict[str, Any]] = {}
    subject_facts: dict[str, dict[str, Any]] = {}
    facts_error: str | None = None
    usage: dict[str, int] = {}
    mode: str | None = None
    killed: bool = False
    expect: Outcome
    rule: str | None = None


def run_cases(policy: PolicyBundle) -> list[str]:
    """Failures of the folder's cases.toml, as sentences; [] when every case holds."""
    path = policy.path / "cases.toml"
    if not path.exists():
        return []
    try:
        cases = [Case.model_validate(c) for c in tomllib.loads(path.read_text())["cases"]]
    except (tomllib.TOMLDecodeError, KeyError, ValueError) as e:
        raise PolicyError(f"{path}: invalid cases: {e}") from None
    usage = {c.id: 0 for c in policy.settings.counters}
    failures = []
    for case in cases:
        v = decide(
            DecisionInput(
                proposal=Proposal(call_id="case", tool=case.tool.name, arguments=case.args),
                agent=case.agent,
                granted_scopes=case.scopes,
                tool=case.tool,
                arguments=case.args,
                arguments_error=None,
                requested_mode=case.mode,  # type: ignore[arg-type]
                workflow_id="case",
                requested_by="case",
                subject=case.subject,
                usage=usage | case.usage,
                facts=case.facts,
                subject_facts=case.subject_facts,
                facts_error=case.facts_error,
                killed=case.killed,
            ),
            policy,
        )
        if v.outcome != case.expect or (case.rule and case.rule not in v.rule_ids):
            failures.append(
                f"{case.name}: expected {case.expect}"
                + (f" by {case.rule}" if case.rule else "")
                + f", got {v.outcome} by {', '.join(v.rule_ids)}"
            )
    return failures


def diff(active: PolicyBundle, candidate: PolicyBundle) -> list[str]:
    """Lines like `+ rule refund.x (refunds.cedar:3)`, `~ rule …`, `- rule …`, `~ settings.…`."""
    lines = []
    for rule_id in sorted(set(active.by_id) | set(candidate.by_id)):
        a, c = active.by_id.get(rule_id), candidate.by_id.get(rule_id)
        if a is None and c is not None:
            lines.append(f"+ rule {rule_id} ({Path(c.file).name}:{c.line})")
        elif c is None and a is not None:
            lines.append(f"- rule {rule_id} ({Path(a.file).name}:{a.line})")
        elif (
            a is not None
            and c is not None
            and " ".join(a.source.split()) != " ".join(c.source.split())
        ):
            lines.append(f"~ rule {rule_id} ({Path(c.file).name}:{c.line})")
    a_settings = active.settings.model_dump(mode="json")
    c_settings = candidate.settings.model_dump(mode="json")
    for key in sorted(set(a_settings) | set(c_settings)):
        if a_settings.get(key) != c_settings.get(key):
            lines.append(f"~ settings.{key}: {a_settings.get(key)} → {c_settings.get(key)}")
    return lines


class Flip(BaseModel):
    workflow_id: str
    call_id: str
    tool: str
    arguments: dict[str, Any] | None
    recorded: Outcome
    recorded_rules: list[str]
    candidate: Outcome
    candidate_rules: list[str]


def backtest(verdicts: list[AuditRecord], candidate: PolicyBundle) -> tuple[int, list[Flip]]:
    """(decisions replayed, the ones the candidate decides differently)."""
    flips, replayed = [], 0
    for record in verdicts:
        if "input" not in record.data:
            continue  # recorded before decision inputs were audited
        d = DecisionInput.model_validate(record.data["input"])
        replayed += 1
        v = decide(d, candidate)
        if v.outcome != record.data["outcome"]:
            flips.append(
                Flip(
                    workflow_id=record.workflow_id,
                    call_id=d.proposal.call_id,
                    tool=d.proposal.tool,
                    arguments=d.arguments,
                    recorded=record.data["outcome"],
                    recorded_rules=record.data["rule_ids"],
                    candidate=v.outcome,
                    candidate_rules=v.rule_ids,
                )
            )
    return replayed, flips
