"""The Cedar schema of the guard's requests, generated from the registered tools.

Policies are type-checked against it when they load, so `context.args.amount` (for
`amount_cents`) or a rule about a tool that does not exist fails with file and line instead of
silently never matching.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

RUN_CONTEXT_KEYS = ("customer_id", "order_id")


class ToolSchema(BaseModel):
    """A registered tool as the schema sees it."""

    name: str
    args_schema: dict[str, Any]
    # Read-only tools whose results the policy may use as facts, under this name.
    fact: str | None = None
    result_schema: dict[str, Any] | None = None


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


def cedar_schema(tools: list[ToolSchema], counters: list[str]) -> dict[str, Any]:
    """The schema for requests of principal Agent, action = the tool, resource Tool."""
    facts = {
        t.fact: {**model_record(t.result_schema), "required": False}
        for t in tools
        if t.fact and t.result_schema
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
        "facts": {"type": "Record", "attributes": facts},
        "killed": {"type": "Boolean"},
        "run": {
            "type": "Record",
            "attributes": {
                "requested_by": {"type": "String"},
                # The run's structured context: only the keys rules may rely on are typed.
                "context": {
                    "type": "Record",
                    "attributes": {
                        key: {"type": "String", "required": False} for key in RUN_CONTEXT_KEYS
                    },
                },
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
        for t in tools
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
