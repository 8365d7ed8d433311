"""The guard's decision table: every rule of the default policy has a case where it lets a
call through and one where it stops it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import workers.worker  # noqa: F401  (registers the tools)
from activities.tools import REGISTRY, tool_schemas
from guardrails.policy import (
    DEFAULT_POLICY_PATH,
    DecisionInput,
    PolicyError,
    PolicySource,
    Proposal,
    Verdict,
    decide,
    load_policy,
)

POLICY = load_policy(tools=tool_schemas())
SCOPES = ["orders:read", "crm:read", "payments:refund", "crm:write"]
ORDER = {"order_id": "A-1003", "customer_id": "C-300", "captured_cents": 89900, "refunded_cents": 0}


def decision(tool: str = "payments.refund", args: dict[str, Any] | None = None, **kw) -> Verdict:
    arguments = {"order_id": "A-1003", "amount_cents": 4200, "reason": "broken"}
    if tool != "payments.refund":
        arguments = {}
    arguments |= args or {}
    spec = REGISTRY.get(tool)
    d = DecisionInput(
        proposal=Proposal(call_id="call_1", tool=tool, arguments=arguments),
        agent=kw.pop("agent", "support-refunds"),
        granted_scopes=kw.pop("scopes", SCOPES),
        tool=spec.facts if spec else None,
        arguments=kw.pop("validated", arguments),
        arguments_error=kw.pop("error", None),
        requested_mode=kw.pop("mode", None),
        workflow_id="wf-1",
        requested_by="dana",
        facts=kw.pop("facts", {"order": ORDER}),
        usage=kw.pop("usage", {"agent_refunded_today_cents": 0, "customer_refunds_this_week": 0}),
        **kw,
    )
    return decide(d, kw.pop("policy", POLICY))


@pytest.mark.parametrize(
    ("amount", "outcome", "rule"),
    [
        (5000, "allow", "refund.automatic"),
        (5001, "needs_approval", "refund.over_50"),
        (50000, "needs_approval", "refund.over_50"),
        (50001, "needs_approval", "refund.over_500"),
    ],
)
def test_refund_tiers(amount: int, outcome: str, rule: str) -> None:
    v = decision(args={"amount_cents": amount})
    assert (v.outcome, v.rule_ids) == (outcome, [rule])


def test_tier_approvals_name_groups_quorum_and_escalation() -> None:
    lead = decision(args={"amount_cents": 18900}).approval
    assert lead and (lead.quorum, lead.eligible, lead.escalate_members) == (
        1,
        ["alice", "bob"],
        ["erin"],
    )
    two = decision(args={"amount_cents": 89900}).approval
    assert two and two.quorum == 2 and two.required_members == ["carol"]
    assert two.eligible == ["alice", "bob", "carol"] and two.escalate_to is None


def test_scopes_allow_inside_and_deny_outside() -> None:
    assert decision(scopes=["orders:read"]).rule_ids == ["scope.not_granted"]
    assert decision("orders.lookup", {"order_id": "A-1001"}, scopes=["orders:read"]).outcome == (
        "allow"
    )


def test_unknown_tool_and_invalid_arguments_are_denied() -> None:
    assert decision("payments.wire_transfer").rule_ids == ["tool.unknown"]
    v = decision(validated=None, error="amount_cents: Input should be a valid integer")
    assert (v.outcome, v.rule_ids) == ("deny", ["arguments.invalid"])
    assert "amount_cents" in v.reason


def test_refund_needs_the_order_looked_up_first() -> None:
    assert decision(facts={}).rule_ids == ["refund.order_not_looked_up"]
    other = {**ORDER, "order_id": "A-1001"}
    assert decision(facts={"order": other}).rule_ids == ["refund.order_not_looked_up"]


def test_cannot_refund_more_than_refundable() -> None:
    partly = {**ORDER, "refunded_cents": 89000}
    assert decision(args={"amount_cents": 900}, facts={"order": partly}).outcome == "allow"
    v = decision(args={"amount_cents": 901}, facts={"order": partly})
    assert v.rule_ids == ["refund.over_refundable"]
    assert "captured" in v.reason


def test_agent_daily_limit_and_customer_weekly_limit() -> None:
    near = {"agent_refunded_today_cents": 195800, "customer_refunds_this_week": 0}
    assert decision(usage=near).outcome == "allow"  # 195800 + 4200 = 200000
    over = {**near, "agent_refunded_today_cents": 195801}
    assert decision(usage=over).rule_ids == ["refund.agent_daily_limit"]
    third = {"agent_refunded_today_cents": 0, "customer_refunds_this_week": 2}
    assert decision(usage=third).outcome == "allow"
    fourth = {**third, "customer_refunds_this_week": 3}
    assert decision(usage=fourth).rule_ids == ["refund.customer_weekly_limit"]


def test_explicit_deny_beats_any_permit() -> None:
    # Over the daily limit and looked up wrong: both forbids decide, no permit survives.
    v = decision(
        facts={}, usage={"agent_refunded_today_cents": 10**9, "customer_refunds_this_week": 9}
    )
    assert v.outcome == "deny"
    assert set(v.rule_ids) == {
        "refund.order_not_looked_up",
        "refund.agent_daily_limit",
        "refund.customer_weekly_limit",
    }


def test_crm_customer_binding() -> None:
    note = {"customer_id": "C-300", "text": "hello"}
    assert decision("crm.add_note", note).outcome == "allow"
    bound = decision("crm.add_note", note, run_context={"customer_id": "C-300"})
    assert bound.outcome == "allow"
    other = decision("crm.add_note", note, run_context={"customer_id": "C-100"})
    assert other.rule_ids == ["crm.customer_binding"]


def test_kill_switch_stops_side_effects_not_reads() -> None:
    assert decision(killed=True).rule_ids == ["kill_switch"]
    assert decision("orders.lookup", {"order_id": "A-1001"}, killed=True).outcome == "allow"


def test_modes_shadow_records_and_augment_asks_a_human() -> None:
    assert decision(mode="shadow").outcome == "shadow"
    v = decision(mode="augment")
    assert (v.outcome, v.rule_ids) == ("needs_approval", ["mode.augment"])
    assert decision("orders.lookup", {"order_id": "A-1001"}, mode="shadow").outcome == "allow"


def test_no_permit_means_default_deny(tmp_path: Path) -> None:
    folder = copy_policy(tmp_path)
    (folder / "crm.cedar").unlink()
    policy = load_policy(folder, tool_schemas())
    v = decision("crm.add_note", {"customer_id": "C-300", "text": "x"}, policy=policy)
    assert (v.outcome, v.rule_ids) == ("deny", ["default_deny"])


def test_every_verdict_names_the_policy_version(tmp_path: Path) -> None:
    folder = copy_policy(tmp_path)
    changed = folder / "policy.toml"
    changed.write_text(
        changed.read_text().replace('default_mode = "automate"', 'default_mode = "augment"')
    )
    assert decision().policy_version == POLICY.version != load_policy(folder).version


def copy_policy(tmp_path: Path) -> Path:
    folder = tmp_path / "policy"
    shutil.copytree(DEFAULT_POLICY_PATH, folder)
    return folder


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        (
            "zz-extra.cedar",
            '@id("x")\npermit(principal, action, resource)\nwhen { context.x > };\n',
            r"zz-extra\.cedar:1: .*unexpected token",
        ),
        (
            "zz-extra.cedar",
            "\n\n// a comment\npermit(principal, action, resource);\n",
            r"zz-extra\.cedar:4: every rule needs an @id",
        ),
        (
            "zz-extra.cedar",
            '@id("typo")\npermit(principal, action == Action::"payments.refund", resource)\n'
            "when { context.args.amount > 5 };\n",
            r"zz-extra\.cedar:1: rule 'typo': .*amount",
        ),
        (
            "zz-extra.cedar",
            '@id("refund.automatic")\npermit(principal, action, resource);\n',
            r"zz-extra\.cedar:1: rule id 'refund.automatic' is already used at .*refunds\.cedar",
        ),
        (
            "zz-extra.cedar",
            '@id("g")\n@approval_groups("nobody")\npermit(principal, action, resource);\n',
            r"zz-extra\.cedar:1: rule 'g' names group 'nobody'",
        ),
        ("policy.toml", 'default_mode = "reckless"\n', r"policy\.toml: default_mode"),
    ],
)
def test_invalid_policy_names_file_line_and_reason(
    tmp_path: Path, file: str, text: str, expected: str
) -> None:
    folder = copy_policy(tmp_path)
    (folder / file).write_text(text)
    with pytest.raises(PolicyError, match=expected):
        load_policy(folder, tool_schemas())


def test_invalid_edit_keeps_the_active_policy(tmp_path: Path) -> None:
    folder = copy_policy(tmp_path)
    source = PolicySource(folder, tool_schemas())
    active = source.current()
    broken = folder / "refunds.cedar"
    broken.write_text(broken.read_text() + '\n@id("oops") permit(principal, action;\n')
    os.utime(broken, (1, 1))
    assert source.current() is active
    assert source.last_error is not None and "refunds.cedar" in str(source.last_error)
