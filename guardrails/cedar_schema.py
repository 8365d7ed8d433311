"""The Cedar schema of the guard's requests, generated from the registered tools.

Policies are type-checked against it when they load, so `context.args.amount` (for
`amount_cents`) or a rule about a tool that does not exist fails with file and line instead of
silently never matching.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ToolSchema(BaseModel):
    """A registered tool as the schema sees it."""

    name: str
    args_schema: dict[str, Any]


class FactSchema(BaseModel):
    """A fact the guard fetches itself, keyed by an argument or subject field of that name."""

    name: str
    keyed_by: str
    result_schema: dict[str, Any]


class PolicySurface(BaseModel):
    """Everything a rule can refer to: tools, facts, and the run's subject fields."""

    tools: list[ToolSchema]
    facts: list[FactSchema] = []
    subject: list[str] = []


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return _type(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return _type(options[0], defs) if len(options) == 1 else {"type": "String"}
    kind = schema.get("type")
    if kind == "integer":
        return {"type": "Long"}
    if kind == "boolean":
        return {"type": "Boolean"}
    if kind == "array":
        return {"type": "Set", "element": _type(schema.get("items", {}), defs)}
    if kind == "object":
        return _record(schema, defs)
    return {"type": "String"}  # strings, enums, and numbers (Cedar has no floats)


def _record(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    required = set(schema.get("required", []))
    attributes = {}
    for name, prop in schema.get("properties", {}).items():
        attr = _type(prop, defs)
        nullable = any(s.get("type") == "null" for s in prop.get("anyOf", []))
        attr["required"] = name in required and not nullable
        attributes[name] = attr
    return {"type": "Record", "attributes": attributes}


def model_record(schema: dict[str, Any]) -> dict[str, Any]:
    return _record(schema, schema.get("$defs", {}))


def cedar_schema(surface: PolicySurface, counters: list[str]) -> dict[str, Any]:
    """The schema for requests of principal Agent, action = the tool, resource Tool."""
    # Every fact is optional: it is there when the call (or the subject) has its key.
    facts = {
        "type": "Record",
        "attributes": {
            f.name: {**model_record(f.result_schema), "required": False} for f in surface.facts
        },
    }
    common = {
        "tool": {
            "type": "Record",
            "attributes": {
                "name": {"type": "String"},
                "scope": {"type": "String"},
                "read_only": {"type": "Boolean"},
                "risk": {"type": "String"},
            },
        },
        "usage": {
            "type": "Record",
            "attributes": {c: {"type": "Long"} for c in counters},
        },
        # Facts keyed by this call's arguments (e.g. the order of `args.order_id`).
        "facts": facts,
        "killed": {"type": "Boolean"},
        "run": {
            "type": "Record",
            "attributes": {
                "requested_by": {"type": "String"},
                # What the run is about; a field is absent when the run did not state it.
                "subject": {
                    "type": "Record",
                    "attributes": {
                        key: {"type": "String", "required": False} for key in surface.subject
                    },
                },
                # Facts keyed by the subject (e.g. the customer of the subject's order).
                "subject_facts": facts,
            },
        },
    }
    actions = {
        t.name: {
            "appliesTo": {
                "principalTypes": ["Agent"],
                "resourceTypes": ["Tool"],
                "context": {
                    "type": "Record",
                    "attributes": {"args": model_record(t.args_schema), **common},
                },
            }
        }
        for t in surface.tools
    }
    return {
        "": {
            "entityTypes": {
                "Agent": {
                    "shape": {
                        "type": "Record",
                        "attributes": {"scopes": {"type": "Set", "element": {"type": "String"}}},
                    }
                },
                "Tool": {},
            },
            "actions": actions,
        }
    }
