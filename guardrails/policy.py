"""The guard: a deterministic decision on every proposal.

`decide()` is a pure function of (proposal, agent grant, tool declaration, policy). It does no
I/O: the guard activity (`activities/guard.py`) loads the policy and records the verdict, so the
verdict lands in workflow history and replays exactly.

Default deny; an explicit deny (kill switch, scope, bad arguments) always wins over an allow.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Mode = Literal["shadow", "augment", "automate"]
Outcome = Literal["allow", "deny", "needs_approval", "shadow"]

DEFAULT_POLICY_PATH = Path(__file__).parent / "policies" / "default.toml"


class PolicyError(Exception):
    """A policy file is invalid. The message names the file and what is wrong."""


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


class ApprovalRule(BaseModel):
    """Who must countersign an action, and until when."""

    model_config = ConfigDict(extra="forbid")

    id: str
    tool: str
    argument: str | None = None
    above: int | None = None
    groups: list[str] = Field(min_length=1)
    quorum: int = Field(default=1, ge=1)
    # At least one approver must belong to this group (e.g. finance above a second tier).
    required_group: str | None = None
    timeout_minutes: int = Field(default=240, ge=1)

    def applies(self, tool: str, arguments: dict[str, Any]) -> bool:
        if tool != self.tool:
            return False
        if self.argument is None:
            return True
        value = arguments.get(self.argument)
        return isinstance(value, int) and (self.above is None or value > self.above)


class KillSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tools: list[str] = []
    agents: list[str] = []
    all_side_effects: bool = False


class Policy(BaseModel):
    """Policy v1: rollout modes, kill switch, approval rules and approver groups."""

    model_config = ConfigDict(extra="forbid")

    default_mode: Mode = "automate"
    modes: dict[str, Mode] = {}
    kill_switch: KillSwitch = KillSwitch()
    groups: dict[str, list[str]] = {}
    # Approvers for side effects in `augment` mode, where no specific rule applies.
    augment_rule: ApprovalRule | None = None
    approval_rules: list[ApprovalRule] = []

    @model_validator(mode="after")
    def _groups_exist(self) -> Policy:
        rules = [*self.approval_rules, *([self.augment_rule] if self.augment_rule else [])]
        for rule in rules:
            for group in [*rule.groups, *([rule.required_group] if rule.required_group else [])]:
                if group not in self.groups:
                    raise ValueError(
                        f"approval rule {rule.id!r} names group {group!r}, "
                        f"which is not defined under [groups] (defined: {sorted(self.groups)})"
                    )
        return self

    @property
    def version(self) -> str:
        """The hash every verdict records, so a verdict names the exact policy it came from."""
        return "pol_" + sha256_hex(self.model_dump(mode="json"))[:16]

    def mode_for(self, agent: str, requested: Mode | None) -> Mode:
        """The strictest of the agent's configured mode and the mode the run asked for."""
        order = ["shadow", "augment", "automate"]
        configured = self.modes.get(agent, self.default_mode)
        if requested is None:
            return configured
        return min(configured, requested, key=order.index)  # type: ignore[return-value]


def load_policy(path: str | Path = DEFAULT_POLICY_PATH) -> Policy:
    """Read and validate a policy file; raise PolicyError naming the file and the problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise PolicyError(f"{path}: policy file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: not valid TOML: {e}") from e
    try:
        return Policy.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in e.errors()
        )
        raise PolicyError(f"{path}: invalid policy: {problems}") from e


class ToolFacts(BaseModel):
    """What the guard needs to know about a registered tool."""

    name: str
    scope: str
    read_only: bool
    risk: Literal["low", "medium", "high"]
    compensate: str | None


class ApprovalNeed(BaseModel):
    """What an approval request for a verdict must satisfy (resolved to people)."""

    rule_id: str
    groups: list[str]
    eligible: list[str]
    quorum: int
    required_group: str | None = None
    required_members: list[str] = []
    timeout: timedelta


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


def action_hash(workflow_id: str, call_id: str, tool: str, arguments: dict[str, Any]) -> str:
    """The hash an approval is bound to: this run, this call, this tool, these arguments."""
    return "act_" + sha256_hex(
        {"workflow_id": workflow_id, "call_id": call_id, "tool": tool, "arguments": arguments}
    )


def decide(
    *,
    proposal: Proposal,
    agent: str,
    granted_scopes: list[str],
    tool: ToolFacts | None,
    arguments: dict[str, Any] | None,
    arguments_error: str | None,
    policy: Policy,
    requested_mode: Mode | None,
    workflow_id: str,
) -> Verdict:
    """Decide a proposal. `arguments` are the tool's validated arguments, or None with an error."""
    mode = policy.mode_for(agent, requested_mode)

    def verdict(outcome: Outcome, rule_ids: list[str], reason: str, **extra: Any) -> Verdict:
        return Verdict(
            call_id=proposal.call_id,
            tool=proposal.tool,
            outcome=outcome,
            rule_ids=rule_ids,
            policy_version=policy.version,
            reason=reason,
            mode=mode,
            **extra,
        )

    if tool is None:
        return verdict("deny", ["tool.unknown"], f"there is no tool named {proposal.tool!r}")
    if tool.scope not in granted_scopes:
        return verdict(
            "deny",
            ["scope.not_granted"],
            f"agent {agent!r} is not granted scope {tool.scope!r}, which {tool.name} needs",
        )
    if arguments is None:
        return verdict("deny", ["arguments.invalid"], f"invalid arguments: {arguments_error}")

    facts = {
        "arguments": arguments,
        "action_hash": action_hash(workflow_id, proposal.call_id, tool.name, arguments),
        "read_only": tool.read_only,
        "compensate": tool.compensate,
    }
    if tool.read_only:
        return verdict("allow", ["tool.read_only"], "read-only tools are allowed in scope", **facts)

    kill = policy.kill_switch
    if kill.all_side_effects or tool.name in kill.tools or agent in kill.agents:
        return verdict("deny", ["kill_switch"], "side effects are switched off by the kill switch")
    if mode == "shadow":
        return verdict("shadow", ["mode.shadow"], "shadow mode: recorded, not executed", **facts)

    rules = [r for r in policy.approval_rules if r.applies(tool.name, arguments)]
    if not rules and mode == "augment" and policy.augment_rule is not None:
        rules = [policy.augment_rule]
    if rules:
        # The strictest applicable rule decides: most approvers, then the highest threshold.
        rule = max(rules, key=lambda r: (r.quorum, r.required_group is not None, r.above or 0))
        members = sorted({m for g in rule.groups for m in policy.groups[g]})
        required = sorted(policy.groups[rule.required_group]) if rule.required_group else []
        need = ApprovalNeed(
            rule_id=rule.id,
            groups=rule.groups,
            eligible=sorted(set(members) | set(required)),
            quorum=rule.quorum,
            required_group=rule.required_group,
            required_members=required,
            timeout=timedelta(minutes=rule.timeout_minutes),
        )
        return verdict(
            "needs_approval",
            [rule.id],
            f"{rule.quorum} approval(s) from {', '.join(rule.groups)} required"
            + (f", one of them from {rule.required_group}" if rule.required_group else ""),
            approval=need,
            **facts,
        )
    if mode == "augment":
        return verdict("deny", ["mode.augment"], "augment mode: side effects need a human")
    return verdict("allow", ["mode.automate"], "within automatic limits", **facts)


class PolicySource:
    """The active policy, re-read when its file changes.

    An invalid edit never replaces a valid active policy: the error is kept (and reported by
    the caller) and the last valid version stays in force.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._active: Policy | None = None
        self.last_error: PolicyError | None = None

    def current(self) -> Policy:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError as e:
            if self._active is None:
                raise PolicyError(f"{self.path}: policy file not found") from e
            return self._active
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._active = load_policy(self.path)
                self.last_error = None
            except PolicyError as e:
                self.last_error = e
                if self._active is None:
                    raise
        assert self._active is not None
        return self._active
