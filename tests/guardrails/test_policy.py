"""The guard's decision table: every rule of the default policy has a case where it lets a
call through and one where it stops it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from countersign.activities.tools import REGISTRY, tool_schemas
from countersign.guardrails.policy import (
    DEFAULT_POLICY_PATH,
    DecisionInput,
    PolicyError,
    PolicySource,
    Proposal,
    Verdict,
    decide,
    load_policy,
)
from countersign.workers.plugins import load

# The demo's tools and agents, as a worker finds them (here too in spawned processes,
# which never run tests/conftest.py).
load(["demo"])

POLICY = load_policy(tools=tool_schemas())
SCOPES = ["orders:read", "crm:read", "payments:refund", "crm:write"]
ORDER = {
    "order_id": "A-1003",
    "customer_id": "C-300",
    "status": "delivered",
    "total_cents": 89900,
    "captured_cents": 89900,
    "refunded_cents": 0,
}
NO_USAGE = {
    "agent_refunded_today_cents": 0,
    "customer_refunded_week_cents": 0,
    "customer_refunds_this_week": 0,
}


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
        subject=kw.pop("subject", {"order_id": "A-1003"}),
        facts=kw.pop("facts", {"order": ORDER}),
        usage=NO_USAGE | kw.pop("usage", {}),
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


def test_refunds_are_bound_to_the_runs_subject() -> None:
    assert decision(subject={"customer_id": "C-300"}).outcome == "allow"
    assert decision(subject={"order_id": "A-1001"}).rule_ids == ["refund.subject_binding"]
    assert decision(subject={"customer_id": "C-100"}).rule_ids == ["refund.subject_binding"]
    # What the model looked up does not matter: the guard's fact says whose order it is.
    assert decision(subject={}).rule_ids == ["refund.subject_binding"]
    # Without the order's fact nothing ties the order to the customer.
    v = decision(subject={"customer_id": "C-300"}, facts={})
    assert v.rule_ids == ["refund.subject_binding"]


def test_subject_from_context_of_older_records() -> None:
    assert decision(subject={}, run_context={"order_id": "A-1003"}).outcome == "allow"


def test_a_fact_that_could_not_be_fetched_denies() -> None:
    v = decision(facts={}, facts_error="fact 'order' for order_id 'A-1003' could not be fetched")
    assert (v.outcome, v.rule_ids) == ("deny", ["fact.unavailable"])
    assert "A-1003" in v.reason


@pytest.mark.parametrize(
    ("refunded_before", "outcome", "rule"),
    [
        (0, "allow", "refund.automatic"),
        (800, "allow", "refund.automatic"),  # 800 + 4200 = 5000
        (801, "needs_approval", "refund.over_50"),
        (45800, "needs_approval", "refund.over_50"),
        (45801, "needs_approval", "refund.over_500"),
    ],
)
def test_tiers_count_what_the_customer_was_already_refunded(
    refunded_before: int, outcome: str, rule: str
) -> None:
    v = decision(usage={"customer_refunded_week_cents": refunded_before})
    assert (v.outcome, v.rule_ids) == (outcome, [rule])


def test_what_the_engine_cannot_evaluate_is_a_deny_naming_the_field() -> None:
    v = decision(args={"amount_cents": 10**20})
    assert (v.outcome, v.rule_ids) == ("deny", ["arguments.unevaluable"])
    assert v.reason.startswith("amount_cents: 100000000000000000000 is outside")
    # In range, but the rule's sum overflows: Cedar would skip that forbid; the guard denies.
    v = decision(args={"amount_cents": 2**63 - 1}, usage={"customer_refunded_week_cents": 1})
    assert (v.outcome, v.rule_ids) == ("deny", ["policy.unevaluable"])
    assert "overflow" in v.reason and "refund." in v.reason


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
    # Over the daily limit and another run's order: every forbid decides, no permit survives.
    v = decision(
        subject={"order_id": "A-1001"},
        usage={"agent_refunded_today_cents": 10**9, "customer_refunds_this_week": 9},
    )
    assert v.outcome == "deny"
    assert set(v.rule_ids) == {
        "refund.subject_binding",
        "refund.agent_daily_limit",
        "refund.customer_weekly_limit",
    }


def test_crm_customer_binding() -> None:
    note = {"customer_id": "C-300", "text": "hello"}
    assert decision("crm.add_note", note, subject={"customer_id": "C-300"}).outcome == "allow"
    by_order = decision("crm.add_note", note, subject_facts={"order": ORDER})
    assert by_order.outcome == "allow"
    other = decision("crm.add_note", note, subject={"customer_id": "C-100"})
    assert other.rule_ids == ["crm.customer_binding"]
    # A run that states no subject can read but not write.
    assert decision("crm.add_note", note, subject={}).rule_ids == ["crm.customer_binding"]
    update = {"customer_id": "C-300", "fields": {"phone": "1"}}
    assert decision("crm.update_contact", update, subject={}).rule_ids == ["crm.customer_binding"]


def test_notes_are_deleted_only_on_the_subject_customer() -> None:
    note = {"note": {"note_id": "note_1", "customer_id": "C-300", "deleted": False}}
    delete = {"note_id": "note_1"}
    mine = decision("crm.delete_note", delete, subject={"customer_id": "C-300"}, facts=note)
    assert mine.outcome == "allow"
    theirs = decision("crm.delete_note", delete, subject={"customer_id": "C-100"}, facts=note)
    assert theirs.rule_ids == ["crm.note_binding"]
    assert decision("crm.delete_note", delete, facts={}).rule_ids == ["crm.note_binding"]


def test_only_a_refund_this_run_made_can_be_reversed() -> None:
    refund = {"refund_id": "rf_1", "order_id": "A-1003", "amount_cents": 1, "status": "succeeded"}
    reverse = {"refund_id": "rf_1"}
    ours = {"refund": {**refund, "made_by_this_run": True}}
    theirs = {"refund": {**refund, "made_by_this_run": False}}
    assert decision("payments.reverse_refund", reverse, facts=ours).outcome == "allow"
    v = decision("payments.reverse_refund", reverse, facts=theirs)
    assert v.rule_ids == ["refund.reversal_of_this_run"]


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


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'per = "facts.order.customer_id"',
            'per = "facts.ordr.customer_id"',
            "facts has no 'ordr'",
        ),
        ('per = "facts.order.customer_id"', 'per = "facts.order.customer"', "no field 'customer'"),
        ('per = "agent"', 'per = "args.order"', "args has no 'order'"),
        ('per = "agent"', 'per = "subject.account_id"', "subject has no 'account_id'"),
        ('sum = "amount_cents"', 'sum = "reason"', "sum 'reason' is not an integer argument"),
        ('tool = "payments.refund"', 'tool = "payments.refnd"', "tool 'payments.refnd' is not"),
    ],
)
def test_a_counter_naming_what_does_not_exist_is_refused(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    folder = copy_policy(tmp_path)
    toml = folder / "policy.toml"
    assert old in toml.read_text()
    toml.write_text(toml.read_text().replace(old, new, 1))
    with pytest.raises(PolicyError, match=r"policy\.toml: counter '\w+': .*" + re.escape(expected)):
        load_policy(folder, tool_schemas())
