"""The custom search attributes a run keeps up to date, so ops can filter runs in the Temporal
UI's list page (e.g. `CountersignWaiting = true`).

The one place they are defined: the dev server, the test servers and docker-compose register
exactly `REGISTRATION` (an unregistered attribute fails every workflow task, in a loop).
Search attributes are stored in plain text by the server (they are indexed, so the payload
codec cannot encrypt them): they carry names and states, never personal data or amounts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributeUpdate

AGENT = SearchAttributeKey.for_keyword("CountersignAgent")
STAGE = SearchAttributeKey.for_keyword("CountersignStage")
WAITING = SearchAttributeKey.for_bool("CountersignWaiting")
TOOL = SearchAttributeKey.for_keyword("CountersignTool")
# The order (or customer) the run is about: a business id ops search by, never a name or email.
CUSTOMER_REF = SearchAttributeKey.for_keyword("CountersignCustomerRef")

KEYS: list[SearchAttributeKey[Any]] = [AGENT, STAGE, WAITING, TOOL, CUSTOMER_REF]

# Name → type as the Temporal CLI and the server's admin tools spell it.
REGISTRATION: dict[str, str] = {
    k.name: {"KEYWORD": "Keyword", "BOOL": "Bool"}[k.indexed_value_type.name] for k in KEYS
}


class SearchAttributesMissing(Exception):
    """The namespace lacks these search attributes and they could not be registered."""


# Arguments or context fields that name the order or customer a run is about, first wins.
_REF_FIELDS = ("order_id", "customer_id", "customer_ref")


# A run passes through these stages on every step, in milliseconds, each an upsert (a history
# event, a quarter of a step's): its search attribute says "working" instead (since the patch
# agents/state.WORKING_STAGE; long runs always did), and Current Details names the stage.
# Waiting, compensating and how the run ended are shown as they are.
TRANSIENT_STAGES = frozenset({"planning", "guarding", "acting"})


def stage_value(stage: str, working: bool) -> str:
    return "working" if working and stage in TRANSIENT_STAGES else stage


def dev_server_args() -> list[str]:
    """`temporal server start-dev` arguments that register every key."""
    return [
        arg
        for name, kind in REGISTRATION.items()
        for arg in ("--search-attribute", f"{name}={kind}")
    ]


def customer_ref(*sources: Mapping[str, Any] | None) -> str | None:
    """The first order id (else customer id or ref) found in the given argument maps."""
    for source in sources:
        for name in _REF_FIELDS:
            value = (source or {}).get(name)
            if isinstance(value, str) and value:
                return value[:64]
    return None


def upsert(values: Mapping[SearchAttributeKey[Any], Any]) -> None:
    """Upsert the values that changed (each upsert is a history event). Workflow code only."""
    current = workflow.info().typed_search_attributes
    updates: list[SearchAttributeUpdate[Any]] = [
        key.value_set(value)
        for key, value in values.items()
        if value is not None and current.get(key) != value
    ]
    if updates:
        workflow.upsert_search_attributes(updates)
