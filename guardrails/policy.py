"""The guard: a deterministic decision on every proposal, by Cedar policies.

A policy is a folder: `policy.toml` (rollout modes, approver groups, counters for stateful
limits) and `*.cedar` rules. Cedar gives us what the guard must say — default deny, and an
explicit `forbid` always beats any `permit` — and a rule language a security owner can read.
Approval tiers are `permit` rules with annotations (`@approval_groups`, `@quorum`, ...): when
such a rule is among those that allowed a call, the call needs that approval.

`decide()` is pure: given the proposal and the facts the guard activity gathered (usage of
limits, records it fetched itself, kill switch), it returns the same verdict every time. The guard
activity (`activities/guard.py`) gathers the facts, calls it, reserves limits and audits.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import cedarpy
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from countersign.guardrails.cedar_schema import PolicySurface, cedar_schema
from countersign.guardrails.errors import describe
from countersign.guardrails.rollout import Mode, OverrideCount, Rollout, rollout_mode

Outcome = Literal["allow", "deny", "needs_approval", "shadow"]
# Acts that need a verified identity in a group the policy names for them.
Authority = Literal["rollback", "kill_switch", "policy"]

DEFAULT_POLICY_PATH = Path(__file__).parent / "policies" / "default"

# Rules owned by the code, not by policy files: a policy edit can never switch them off.
BASELINE_RULES = """
@id("scope.not_granted")
forbid(principal, action, resource) unless { principal.scopes.contains(context.tool.scope) };

@id("kill_switch")
forbid(principal, action, resource) when { context.killed && !context.tool.read_only };

@id("tool.read_only")
permit(principal, action, resource) when { context.tool.read_only };
"""
BASELINE_FILE = "<baseline>"


class PolicyError(Exception):
    """A policy is invalid. The message names the file, the line where known, and the reason."""


def canonical_json(value: Any) -> str:
    """One byte-exact JSON form, so hashes of equal values are equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


class Proposal(BaseModel):
    """A tool call the model asked for: tool, arguments, its stated reason."""

    call_id: str
    tool: str
    arguments: dict[str, Any] | None = None
    # Set when the model's arguments were not a JSON object; the guard then denies.
    arguments_error: str | None = None
    reason: str = ""


class ToolFacts(BaseModel):
    """What the guard needs to know about a registered tool."""

    name: str
    scope: str
    read_only: bool
    risk: Literal["low", "medium", "high"]
    compensate: str | None = None


class Counter(BaseModel):
    """A stateful limit's running total, kept durably by the guard's ledger."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    tool: str
    # Sum this integer argument; without it, count calls.
    sum: str | None = None
    # One total per agent, per run, or per value of an argument, fact or subject field:
    # "args.order_id", "facts.order.customer_id", "subject.customer_id" ("customer": the
    # call's customer_id, else its order's customer). Calls without the value share one total.
    per: str = Field(
        default="agent",
        pattern=r"^(agent|run|customer|(args|subject|facts|subject_facts)(\.[A-Za-z_]\w*)+)$",
    )
    window: Literal["run", "day", "week"] = "day"


class Settings(BaseModel):
    """`policy.toml`: everything about a policy that is not a Cedar rule."""

    model_config = ConfigDict(extra="forbid")

    default_mode: Mode = "automate"
    modes: dict[str, Mode] = {}
    groups: dict[str, list[str]] = {}
    counters: list[Counter] = []
    # Who countersigns side effects in `augment` mode.
    augment_groups: list[str] = ["support-leads"]
    augment_timeout_minutes: int = Field(default=240, ge=1)
    # Approvers who have not decided are reminded when this share of a request's time is left
    # (0: no reminders).
    remind_when_left: float = Field(default=0.25, ge=0, lt=1)
    # Who may do what besides deciding approval requests: verified identities in these groups.
    authority: dict[Authority, list[str]] = {}
    # Per agent: automate for a share of runs, demote on human overrides (guardrails/rollout.py).
    rollout: dict[str, Rollout] = {}


class ApprovalNeed(BaseModel):
    """What an approval request for a verdict must satisfy (resolved to people)."""

    rule_id: str
    groups: list[str]
    eligible: list[str]
    quorum: int
    required_group: str | None = None
    required_members: list[str] = []
    timeout: timedelta
    # On expiry, hand the request to this group once instead of rejecting it.
    escalate_to: str | None = None
    escalate_members: list[str] = []
    # Remind those who have not decided this long before the request expires (None: never).
    remind_before: timedelta | None = None
    # Opt-in per rule (`@requester_may_approve("true")`): the run's *verified* requester may
    # confirm their own action (a customer confirming a payment). Never the default.
    requester_may_approve: bool = False


class Verdict(BaseModel):
    """The guard's decision on one proposal."""

    call_id: str
    tool: str
    outcome: Outcome
    rule_ids: list[str]
    policy_version: str
    reason: str
    mode: Mode
    # Validated, normalized arguments (None when they did not validate).
    arguments: dict[str, Any] | None = None
    action_hash: str | None = None
    read_only: bool = False
    compensate: str | None = None
    approval: ApprovalNeed | None = None
    # Why a rollout put this run in its mode (share of runs, or demotion), when one did.
    mode_reason: str | None = None


def action_hash(workflow_id: str, call_id: str, tool: str, arguments: dict[str, Any]) -> str:
    """The hash an approval is bound to: this run, this call, this tool, these arguments."""
    return "act_" + sha256_hex(
        {"workflow_id": workflow_id, "call_id": call_id, "tool": tool, "arguments": arguments}
    )


@dataclass(frozen=True)
class Rule:
    """One Cedar policy of the bundle, with where it came from."""

    id: str
    effect: Literal["permit", "forbid"]
    annotations: dict[str, str]
    file: str
    line: int
    source: str


_STATEMENT_END = re.compile(r";[ \t]*(?://[^\n]*)?(?:\n|$)")


def _statements(text: str) -> list[tuple[int, str]]:
    """Split Cedar text into (first line, statement) pairs, to name the line of an error."""
    out, start = [], 0
    for m in _STATEMENT_END.finditer(text):
        chunk = text[start : m.end()]
        if chunk.strip() and not all(
            ln.strip().startswith("//") or not ln.strip() for ln in chunk.splitlines()
        ):
            # The statement's line is its first line that is not blank or a comment.
            lines = chunk.splitlines(keepends=True)
            skip = 0
            while lines and (not lines[0].strip() or lines[0].strip().startswith("//")):
                skip += len(lines.pop(0))
            line = text.count("\n", 0, start + skip) + 1
            out.append((line, chunk))
        start = m.end()
    if text[start:].strip():
        out.append((text.count("\n", 0, start) + 1, text[start:]))
    return out


def _parse_rules(file: str, text: str) -> list[Rule]:
    rules = []
    for line, statement in _statements(text):
        try:
            parsed = json.loads(cedarpy.policies_to_json_str(statement))["staticPolicies"]
        except ValueError as e:
            raise PolicyError(f"{file}:{line}: {str(e).strip()}") from None
        for policy in parsed.values():
            annotations = policy.get("annotations") or {}
            if "id" not in annotations:
                raise PolicyError(f'{file}:{line}: every rule needs an @id("...") annotation')
            rules.append(
                Rule(annotations["id"], policy["effect"], annotations, file, line, statement)
            )
    return rules


class PolicyBundle:
    """A loaded, validated policy: settings, rules, and the version every verdict records."""

    def __init__(self, settings: Settings, rules: list[Rule], version: str, path: Path) -> None:
        self.settings = settings
        self.rules = rules
        self.version = version
        self.path = path
        self.by_id = {r.id: r for r in rules}
        self._policy_set = cedarpy.PolicySet.from_str("\n".join(r.source for r in rules))
        # cedarpy names policies policy0, policy1, ... in source order.
        self._ids = [r.id for r in rules]

    def mode_for(
        self,
        agent: str,
        requested: Mode | None,
        workflow_id: str = "",
        overrides: OverrideCount | None = None,
    ) -> tuple[Mode, str | None]:
        """The strictest of the agent's configured mode (after its rollout, if any) and the
        mode the run asked for; and why the rollout chose, if it did."""
        order = ["shadow", "augment", "automate"]
        configured, why = rollout_mode(
            self.settings.modes.get(agent, self.settings.default_mode),
            self.settings.rollout.get(agent),
            workflow_id,
            overrides,
        )
        if requested is None:
            return configured, why
        return min(configured, requested, key=order.index), why  # type: ignore[return-value]

    def evaluate(
        self, request: dict[str, Any], entities: list[dict[str, Any]]
    ) -> tuple[bool, list[str]]:
        """(allowed, ids of the rules that decided it) for one Cedar request."""
        result = cedarpy.is_authorized(request, self._policy_set, entities)
        if result.diagnostics.errors:
            # A rule that errors is skipped by Cedar; say so rather than hide it.
            errors = "; ".join(
                re.sub(r"`policy(\d+)`", lambda m: repr(self._ids[int(m[1])]), str(e))
                for e in result.diagnostics.errors
            )
            raise PolicyError(f"the policy could not be evaluated: {errors}")
        reasons = [self._ids[int(p.removeprefix("policy"))] for p in result.diagnostics.reasons]
        return result.allowed, reasons

    def members(self, group: str) -> list[str]:
        return sorted(self.settings.groups.get(group, []))

    def groups_of(self, identity: str) -> list[str]:
        return sorted(g for g, members in self.settings.groups.items() if identity in members)

    def has_authority(self, identity: str, authority: Authority) -> bool:
        return bool(set(self.groups_of(identity)) & set(self.settings.authority.get(authority, [])))


def load_policy(
    path: str | Path = DEFAULT_POLICY_PATH, tools: PolicySurface | None = None
) -> PolicyBundle:
    """Load a policy folder; raise PolicyError naming the file, line and reason.

    With the registered `tools`, every rule is also type-checked against the schema generated
    from them (guardrails/cedar_schema.py): a misspelt argument or tool is an error here, not a
    rule that silently never matches.
    """
    path = Path(path)
    settings_file = path / "policy.toml"
    try:
        raw = tomllib.loads(settings_file.read_text())
    except FileNotFoundError:
        raise PolicyError(f"{settings_file}: policy settings file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{settings_file}: not valid TOML: {e}") from None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        raise PolicyError(f"{settings_file}: {describe(e, '(top level)')}") from None

    for authority, groups in settings.authority.items():
        unknown = [g for g in groups if g not in settings.groups]
        if unknown:
            raise PolicyError(
                f"{settings_file}: authority.{authority} names group(s) {', '.join(unknown)}, "
                f"which [groups] does not define"
            )
    files = sorted(path.glob("*.cedar"))
    if not files:
        raise PolicyError(f"{path}: no *.cedar rule files")
    rules = _parse_rules(BASELINE_FILE, BASELINE_RULES)
    for f in files:
        rules += _parse_rules(str(f), f.read_text())
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.id in seen:
            first = seen[rule.id]
            raise PolicyError(
                f"{rule.file}:{rule.line}: rule id {rule.id!r} is already used at "
                f"{first.file}:{first.line}"
            )
        seen[rule.id] = rule
        _check_annotations(rule, settings)
    if tools is not None:
        _check_counters(settings_file, settings.counters, tools)
        _validate(rules, cedar_schema(tools, [c.id for c in settings.counters]))
    version = (
        "pol_"
        + sha256_hex(
            {"settings": settings.model_dump(mode="json"), "rules": [r.source for r in rules]}
        )[:16]
    )
    return PolicyBundle(settings, rules, version, path)


def _check_annotations(rule: Rule, settings: Settings) -> None:
    where = f"{rule.file}:{rule.line}: rule {rule.id!r}"
    a = rule.annotations
    groups = [g.strip() for g in a.get("approval_groups", "").split(",") if g.strip()]
    named = groups + [a[k] for k in ("required_group", "escalate_to") if k in a]
    for group in named:
        if group not in settings.groups:
            raise PolicyError(
                f"{where} names group {group!r}, which policy.toml does not define "
                f"(defined: {', '.join(sorted(settings.groups)) or 'none'})"
            )
    if groups and rule.effect != "permit":
        raise PolicyError(f"{where}: approval annotations belong on permit rules")
    if a.get("requester_may_approve", "false") not in ("true", "false"):
        raise PolicyError(f'{where}: @requester_may_approve must be "true" or "false"')
    for key in ("quorum", "timeout_minutes"):
        if key in a and not a[key].isdigit():
            raise PolicyError(f"{where}: @{key} must be a whole number, got {a[key]!r}")


def _check_counters(file: Path, counters: list[Counter], surface: PolicySurface) -> None:
    """A counter naming a tool, argument, fact or subject field that does not exist would keep
    its total under one shared key, or fail at decision time: refuse it when the policy loads."""
    tools = {t.name: t.args_schema.get("properties", {}) for t in surface.tools}
    facts = {f.name: f.result_schema.get("properties", {}) for f in surface.facts}
    for c in counters:
        where = f"{file}: counter {c.id!r}"
        if c.tool not in tools:
            raise PolicyError(f"{where}: tool {c.tool!r} is not registered")
        args = tools[c.tool]
        integers = sorted(a for a, prop in args.items() if prop.get("type") == "integer")
        if c.sum is not None and c.sum not in integers:
            raise PolicyError(
                f"{where}: sum {c.sum!r} is not an integer argument of {c.tool} "
                f"(integer arguments: {', '.join(integers) or 'none'})"
            )
        root, *path = c.per.split(".")
        known: dict[str, Any] = {
            "args": args,
            "subject": dict.fromkeys(surface.subject),
            "facts": facts,
            "subject_facts": facts,
        }.get(root, {})
        if path and path[0] not in known:
            raise PolicyError(
                f"{where}: per {c.per!r}: {root} has no {path[0]!r} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        if root in ("facts", "subject_facts") and len(path) > 1 and path[1] not in facts[path[0]]:
            raise PolicyError(
                f"{where}: per {c.per!r}: fact {path[0]!r} has no field {path[1]!r} "
                f"(fields: {', '.join(sorted(facts[path[0]]))})"
            )


def _validate(rules: list[Rule], schema: dict[str, Any]) -> None:
    for rule in rules:
        result = cedarpy.validate_policies(rule.source, schema)
        if not result.validation_passed:
            reasons = "; ".join(
                str(e.error) if hasattr(e, "error") else str(e) for e in result.errors
            )
            raise PolicyError(f"{rule.file}:{rule.line}: rule {rule.id!r}: {reasons}")


class DecisionInput(BaseModel):
    """Everything a decision depends on, so it can be recorded and evaluated again."""

    proposal: Proposal
    agent: str
    granted_scopes: list[str]
    tool: ToolFacts | None
    arguments: dict[str, Any] | None
    arguments_error: str | None
    requested_mode: Mode | None
    workflow_id: str
    requested_by: str
    # What the run is about (fields the agent declares), e.g. {"order_id": "A-1002"}.
    subject: dict[str, str] = {}
    # Recorded before the subject existed: its string values count as the subject.
    run_context: dict[str, Any] = {}
    # Running totals of the policy's counters, before this call.
    usage: dict[str, int] = {}
    # Records the guard fetched itself (activities/facts.py), keyed by this call's arguments
    # (e.g. "order" for args.order_id) and by the run's subject.
    facts: dict[str, dict[str, Any]] = {}
    subject_facts: dict[str, dict[str, Any]] = {}
    # Why a fact this call needs could not be fetched: the guard then denies.
    facts_error: str | None = None
    killed: bool = False
    # Human decisions on this agent's proposals over its rollout window (when it has one).
    overrides: OverrideCount | None = None

    @model_validator(mode="after")
    def _subject_from_context(self) -> DecisionInput:
        if not self.subject and self.run_context:
            self.subject = {k: v for k, v in self.run_context.items() if isinstance(v, str)}
        return self


def cedar_request(d: DecisionInput) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    assert d.tool is not None and d.arguments is not None
    entities = [
        {
            "uid": {"type": "Agent", "id": d.agent},
            "attrs": {"scopes": d.granted_scopes},
            "parents": [],
        },
    ]
    request = {
        "principal": {"type": "Agent", "id": d.agent},
        "action": {"type": "Action", "id": d.tool.name},
        "resource": {"type": "Tool", "id": d.tool.name},
        "context": {
            "args": _cedar_value(d.arguments),
            "tool": d.tool.model_dump(exclude={"compensate"}),
            "usage": d.usage,
            "facts": _cedar_value(d.facts),
            "killed": d.killed,
            "run": {
                "requested_by": d.requested_by,
                "subject": d.subject,
                "subject_facts": _cedar_value(d.subject_facts),
            },
        },
    }
    return request, entities


# Cedar's integers are 64-bit signed.
CEDAR_LONG = (-(2**63), 2**63 - 1)


def _out_of_range(value: Any, path: str) -> str | None:
    """The first integer the policy engine cannot represent, as `path: value`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not CEDAR_LONG[0] <= value <= CEDAR_LONG[1]:
        return f"{path}: {value}"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _out_of_range(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _cedar_value(value: Any) -> Any:
    """Cedar has no null and no floats: drop nulls, keep floats as strings."""
    if isinstance(value, dict):
        return {k: _cedar_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_cedar_value(v) for v in value if v is not None]
    if isinstance(value, float):
        return str(value)
    return value


def decide(d: DecisionInput, policy: PolicyBundle) -> Verdict:
    """Decide a proposal. Same input and policy, same verdict."""
    proposal = d.proposal
    mode, mode_reason = policy.mode_for(d.agent, d.requested_mode, d.workflow_id, d.overrides)

    def verdict(outcome: Outcome, rule_ids: list[str], reason: str, **extra: Any) -> Verdict:
        return Verdict(
            call_id=proposal.call_id,
            tool=proposal.tool,
            outcome=outcome,
            rule_ids=rule_ids,
            policy_version=policy.version,
            reason=reason,
            mode=mode,
            mode_reason=mode_reason,
            **extra,
        )

    tool = d.tool
    if tool is None:
        return verdict("deny", ["tool.unknown"], f"there is no tool named {proposal.tool!r}")
    if d.arguments is None:
        return verdict("deny", ["arguments.invalid"], f"invalid arguments: {d.arguments_error}")
    if d.facts_error is not None:
        return verdict("deny", ["fact.unavailable"], d.facts_error)
    too_big = _out_of_range(d.arguments, "") or _out_of_range(
        {"usage": d.usage, "facts": d.facts, "subject_facts": d.subject_facts}, ""
    )
    if too_big:
        return verdict(
            "deny",
            ["arguments.unevaluable"],
            f"{too_big} is outside what the policy engine can evaluate "
            f"({CEDAR_LONG[0]}..{CEDAR_LONG[1]})",
        )
    try:
        allowed, rule_ids = policy.evaluate(*cedar_request(d))
    except PolicyError as e:
        # A rule that cannot be evaluated (e.g. an overflowing sum) would be skipped by
        # Cedar, and a skipped `forbid` lets the call through: deny instead.
        return verdict("deny", ["policy.unevaluable"], str(e))
    if not allowed:
        rule_ids = rule_ids or ["default_deny"]
        return verdict("deny", rule_ids, _deny_reason(rule_ids, d, policy))
    facts = {
        "arguments": d.arguments,
        "action_hash": action_hash(d.workflow_id, proposal.call_id, tool.name, d.arguments),
        "read_only": tool.read_only,
        "compensate": tool.compensate,
    }
    if tool.read_only:
        return verdict("allow", rule_ids, "read-only and in scope", **facts)
    if mode == "shadow":
        return verdict("shadow", ["mode.shadow"], "shadow mode: recorded, not executed", **facts)

    gated = [policy.by_id[r] for r in rule_ids if "approval_groups" in policy.by_id[r].annotations]
    if gated:
        need = _strictest(gated, policy)
    elif mode == "augment":
        groups = policy.settings.augment_groups
        need = ApprovalNeed(
            rule_id="mode.augment",
            groups=groups,
            eligible=sorted({m for g in groups for m in policy.members(g)}),
            quorum=1,
            timeout=timedelta(minutes=policy.settings.augment_timeout_minutes),
            remind_before=_remind_before(policy.settings.augment_timeout_minutes, policy),
        )
    else:
        return verdict("allow", rule_ids, "within automatic limits", **facts)
    return verdict(
        "needs_approval",
        [need.rule_id],
        f"{need.quorum} approval(s) from {', '.join(need.groups)} required"
        + (f", one of them from {need.required_group}" if need.required_group else "")
        + (f" ({mode_reason})" if mode_reason and need.rule_id == "mode.augment" else ""),
        approval=need,
        **facts,
    )


def _remind_before(timeout_minutes: int, policy: PolicyBundle) -> timedelta | None:
    share = policy.settings.remind_when_left
    return timedelta(minutes=timeout_minutes * share) if share else None


def _strictest(rules: list[Rule], policy: PolicyBundle) -> ApprovalNeed:
    def need(rule: Rule) -> ApprovalNeed:
        a = rule.annotations
        groups = [g.strip() for g in a["approval_groups"].split(",") if g.strip()]
        required = a.get("required_group")
        escalate = a.get("escalate_to")
        members = {m for g in groups for m in policy.members(g)}
        required_members = policy.members(required) if required else []
        timeout_minutes = int(a.get("timeout_minutes", "240"))
        return ApprovalNeed(
            rule_id=rule.id,
            groups=groups,
            eligible=sorted(members | set(required_members)),
            quorum=int(a.get("quorum", "1")),
            required_group=required,
            required_members=required_members,
            timeout=timedelta(minutes=timeout_minutes),
            remind_before=_remind_before(timeout_minutes, policy),
            escalate_to=escalate,
            escalate_members=policy.members(escalate) if escalate else [],
            requester_may_approve=a.get("requester_may_approve") == "true",
        )

    needs = [need(r) for r in rules]
    return max(needs, key=lambda n: (n.quorum, n.required_group is not None, n.rule_id))


def _deny_reason(rule_ids: list[str], d: DecisionInput, policy: PolicyBundle) -> str:
    if rule_ids == ["default_deny"]:
        return f"no rule permits {d.agent} to call {d.proposal.tool} with these arguments"
    if "scope.not_granted" in rule_ids and d.tool is not None:
        return f"agent {d.agent!r} is not granted scope {d.tool.scope!r}, which {d.tool.name} needs"
    if "kill_switch" in rule_ids:
        return "side effects are switched off by the kill switch"
    described = [policy.by_id[r].annotations.get("reason", r) for r in rule_ids]
    return "forbidden: " + "; ".join(described)


# Says whether a loaded policy may become active, given the one in force (None before the
# first): None when it may, else why not (e.g. no verified activation; see workers.policies).
ActivationGate = Callable[["PolicyBundle", "PolicyBundle | None"], str | None]


class PolicySource:
    """The active policy, re-read when a file in its folder changes.

    An invalid edit never replaces a valid active policy: the error is kept (and reported by
    the caller) and the last valid version stays in force. With a `gate`, neither does a valid
    edit until the gate lets it through (a verified activation): it waits as `pending`.
    """

    def __init__(
        self,
        path: str | Path,
        tools: PolicySurface | None = None,
        gate: ActivationGate | None = None,
    ) -> None:
        self.path = Path(path)
        self.tools = tools
        self.gate = gate
        self._stamp: tuple[tuple[str, float], ...] | None = None
        self._active: PolicyBundle | None = None
        self.pending: PolicyBundle | None = None
        self.last_error: PolicyError | None = None

    def _files_stamp(self) -> tuple[tuple[str, float], ...]:
        files = [*self.path.glob("*.cedar"), self.path / "policy.toml"]
        return tuple(sorted((f.name, f.stat().st_mtime) for f in files if f.exists()))

    def current(self) -> PolicyBundle:
        stamp = self._files_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.pending = load_policy(self.path, self.tools)
                self.last_error = None
            except PolicyError as e:
                self.pending, self.last_error = None, e
        if self.pending is not None:
            self._try_activate(self.pending)
        if self._active is None:
            raise self.last_error or PolicyError(f"{self.path}: no policy in force")
        return self._active

    def _try_activate(self, candidate: PolicyBundle) -> None:
        if self._active is not None and candidate.version == self._active.version:
            self.pending = None
            return
        refusal = self.gate(candidate, self._active) if self.gate else None
        if refusal is None:
            self._active, self.pending, self.last_error = candidate, None, None
        else:
            self.last_error = PolicyError(refusal)
