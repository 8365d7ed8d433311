"""Strict tool arguments, whatever a tool's model declares (Hypothesis): nothing is coerced,
nothing unknown is dropped, and nothing the policy engine cannot hold reaches it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from countersign.activities.tools import REGISTRY, validate_arguments
from countersign.workers.plugins import load
from tests.guardrails.test_policy import decision

# The demo's tools and agents, as a worker finds them (here too in spawned processes,
# which never run tests/conftest.py).
load(["demo"])

# One valid call of every registered tool.
VALID: dict[str, dict[str, Any]] = {
    "orders.lookup": {"order_id": "A-1001"},
    "customers.lookup": {"customer_id": "C-100"},
    "payments.refund": {"order_id": "A-1001", "amount_cents": 4200, "reason": "broken"},
    "payments.reverse_refund": {"refund_id": "rf_0a1b2c"},
    "crm.add_note": {"customer_id": "C-100", "text": "hello"},
    "crm.delete_note": {"note_id": "note_0a1b2c"},
    "crm.update_contact": {"customer_id": "C-100", "fields": {"phone": "+44 1"}},
    "knowledge.search": {"query": "refund a broken item", "limit": 3},
}
names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_0123456789"), min_size=1, max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)


def errors(tool: str, arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, error type) of each problem; [] when the arguments are valid."""
    try:
        validate_arguments(REGISTRY[tool], arguments)
    except ValidationError as e:
        return [(".".join(map(str, err["loc"])), err["type"]) for err in e.errors()]
    return []


def test_every_tool_has_a_valid_example() -> None:
    assert set(VALID) == set(REGISTRY)
    for tool, arguments in VALID.items():
        assert errors(tool, arguments) == [], tool
        valid = validate_arguments(REGISTRY[tool], arguments)
        assert valid.model_dump(mode="json", exclude_none=True) == arguments


@settings(max_examples=300, deadline=None)
@given(tool=st.sampled_from(sorted(VALID)), name=names, value=json_values)
def test_an_unknown_field_is_refused_by_every_tool_never_dropped(tool, name, value) -> None:
    arguments = VALID[tool]
    if name in arguments:
        return
    assert (name, "extra_forbidden") in errors(tool, {**arguments, name: value})


@settings(max_examples=200, deadline=None)
@given(name=names, value=json_values)
def test_an_unknown_nested_field_is_refused_too(name, value) -> None:
    fields = {"phone": "+44 1", name: value}
    if name in ("phone", "email", "address"):
        return
    found = errors("crm.update_contact", {"customer_id": "C-100", "fields": fields})
    assert (f"fields.{name}", "extra_forbidden") in found


@settings(max_examples=300, deadline=None)
@given(
    value=st.booleans()
    | st.integers(1, 10**6).map(str)
    | st.floats(min_value=1, max_value=10**6, allow_nan=False).map(float)
    | st.integers(1, 10**6).map(float)
)
def test_an_amount_is_an_integer_never_a_bool_string_or_float(value) -> None:
    arguments = {**VALID["payments.refund"], "amount_cents": value}
    assert [path for path, _ in errors("payments.refund", arguments)] == ["amount_cents"]


@settings(max_examples=300, deadline=None)
@given(tool=st.sampled_from(sorted(VALID)), value=st.integers() | st.booleans() | st.none())
def test_strings_are_never_made_from_other_types(tool, value) -> None:
    for field, example in VALID[tool].items():
        if isinstance(example, str):
            assert (field, "string_type") in errors(tool, {**VALID[tool], field: value})


@settings(max_examples=300, deadline=None)
@given(amount=st.integers())
def test_amounts_outside_the_declared_bounds_are_refused(amount) -> None:
    found = errors("payments.refund", {**VALID["payments.refund"], "amount_cents": amount})
    assert (found == []) == (1 <= amount <= 100_000_000)
    assert all(path == "amount_cents" for path, _ in found)


@settings(max_examples=300, deadline=None)
@given(amount=st.integers(min_value=-(2**80), max_value=2**80), usage=st.integers(0, 2**64))
def test_the_guard_answers_every_integer_with_a_verdict(amount, usage) -> None:
    """Past the tool's bounds (a tool may declare none), the engine's own limits: any integer is
    decided, and what it cannot evaluate is a deny naming the field, never an exception."""
    v = decision(args={"amount_cents": amount}, usage={"customer_refunded_week_cents": usage})
    if not -(2**63) <= amount < 2**63:
        assert (v.outcome, v.rule_ids) == ("deny", ["arguments.unevaluable"])
        assert v.reason.startswith(f"amount_cents: {amount} ")
    elif usage >= 2**63:
        assert (v.outcome, v.rule_ids) == ("deny", ["arguments.unevaluable"])
        assert v.reason.startswith("usage.customer_refunded_week_cents")
    if amount > 5000:
        assert v.outcome != "allow"


def test_non_json_values_are_refused() -> None:
    with pytest.raises(ValueError):
        validate_arguments(
            REGISTRY["payments.refund"], {**VALID["payments.refund"], "amount_cents": float("nan")}
        )


def test_the_model_is_told_that_unknown_fields_are_refused() -> None:
    """Every object in every tool's schema is closed, as validation enforces."""

    def objects(schema: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(schema, dict):
            if schema.get("type") == "object" and "properties" in schema:
                found.append(schema)
            for value in schema.values():
                found += objects(value)
        elif isinstance(schema, list):
            for value in schema:
                found += objects(value)
        return found

    for spec in REGISTRY.values():
        closed = objects(spec.model_schema()["function"]["parameters"])
        assert closed and all(o["additionalProperties"] is False for o in closed), spec.name
