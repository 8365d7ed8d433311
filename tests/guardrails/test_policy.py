"""The guard's decision table: each rule has an allow and a deny (or approval) case."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrails.policy import (
    DEFAULT_POLICY_PATH,
    Policy,
    PolicyError,
    PolicySource,
    Proposal,
    ToolFacts,
    decide,
    load_policy,
)

REFUND = ToolFacts(
    name="payments.refund",
    scope="payments:refund",
    read_only=False,
    risk="high",
    compensate="payments.reverse_refund",
)
LOOKUP = ToolFacts(
    name="orders.lookup", scope="orders:read", read_only=True, risk="low", compensate=None
)
SCOPES = ["orders:read", "payments:refund"]


def verdict(tool=REFUND, arguments=None, *, policy=None, scopes=SCOPES, mode=None, error=None):
    arguments = (
        {"order_id": "A-1001", "amount_cents": 4200, "reason": "broken"} | (arguments or {})
        if error is None
        else None
    )
    return decide(
        proposal=Proposal(call_id="call_1", tool=tool.name if tool else "x.y", arguments={}),
        agent="support-refunds",
        granted_scopes=scopes,
        tool=tool,
        arguments=arguments,
        arguments_error=error,
        policy=policy or load_policy(),
        requested_mode=mode,
        workflow_id="wf-1",
    )


def test_refund_up_to_50_is_automatic() -> None:
    v = verdict(arguments={"amount_cents": 5000})
    assert (v.outcome, v.rule_ids) == ("allow", ["mode.automate"])
    assert v.action_hash and v.action_hash.startswith("act_")


def test_refund_above_50_needs_one_support_lead() -> None:
    v = verdict(arguments={"amount_cents": 5001})
    assert (v.outcome, v.rule_ids) == ("needs_approval", ["refund.over_50"])
    assert v.approval and v.approval.quorum == 1 and v.approval.eligible == ["alice", "bob"]


def test_refund_above_500_needs_two_including_finance() -> None:
    v = verdict(arguments={"amount_cents": 50001})
    assert v.rule_ids == ["refund.over_500"]
    assert v.approval and v.approval.quorum == 2
    assert v.approval.required_members == ["carol"]
    assert v.approval.eligible == ["alice", "bob", "carol"]


def test_tool_outside_scopes_is_denied() -> None:
    assert verdict(scopes=["orders:read"]).rule_ids == ["scope.not_granted"]
    assert verdict(LOOKUP, scopes=["orders:read"]).outcome == "allow"


def test_unknown_tool_and_invalid_arguments_are_denied() -> None:
    assert verdict(tool=None).rule_ids == ["tool.unknown"]
    v = verdict(error="amount_cents: Input should be a valid integer")
    assert (v.outcome, v.rule_ids) == ("deny", ["arguments.invalid"])
    assert "amount_cents" in v.reason


def test_kill_switch_beats_every_allow() -> None:
    base = load_policy().model_dump()
    for kill in (
        {"tools": ["payments.refund"]},
        {"agents": ["support-refunds"]},
        {"all_side_effects": True},
    ):
        policy = Policy.model_validate({**base, "kill_switch": kill})
        assert verdict(policy=policy).rule_ids == ["kill_switch"]
    # Reads stay allowed: the switch stops side effects only.
    policy = Policy.model_validate({**base, "kill_switch": {"all_side_effects": True}})
    assert verdict(LOOKUP, policy=policy).outcome == "allow"


def test_modes_shadow_records_and_augment_asks_a_human() -> None:
    assert verdict(mode="shadow").outcome == "shadow"
    v = verdict(mode="augment")
    assert (v.outcome, v.rule_ids) == ("needs_approval", ["mode.augment"])
    # A run can make its mode stricter than the policy's, never looser.
    base = load_policy().model_dump()
    policy = Policy.model_validate({**base, "modes": {"support-refunds": "shadow"}})
    assert verdict(policy=policy, mode="automate").outcome == "shadow"


def test_every_verdict_names_the_policy_version() -> None:
    base = load_policy()
    changed = Policy.model_validate({**base.model_dump(), "default_mode": "augment"})
    assert verdict().policy_version == base.version != changed.version


def test_invalid_policy_names_file_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text(
        '[groups]\nfinance = ["carol"]\n[[approval_rules]]\nid = "x"\n'
        'tool = "payments.refund"\ngroups = ["nobody"]\n'
    )
    with pytest.raises(PolicyError, match=r"p\.toml.*group 'nobody'"):
        load_policy(bad)
    bad.write_text("default_mode = ")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(bad)


def test_invalid_edit_keeps_the_active_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_POLICY_PATH.read_text())
    source = PolicySource(path)
    active = source.current()
    path.write_text("default_mode = 'reckless'\n")
    import os

    os.utime(path, (1, 1))
    assert source.current() == active
    assert source.last_error is not None and "default_mode" in str(source.last_error)
