"""Facts the guard fetches itself (policy information points).

A rule must not depend on what the model chose to look up: the model may be wrong or
prompt-injected. So before deciding on a side effect, the guard fetches the records the rules
need from the system of record, read-only, whatever the model did. A developer declares a fact
next to the tools of its system:

    class OrderFacts(BaseModel):
        order_id: str
        customer_id: str
        captured_cents: int

    @fact("order", keyed_by="order_id")
    async def order(order_id: str, ctx: FactContext) -> OrderFacts:
        '''An order's customer and amounts.'''
        async with ctx.http("shop") as shop:
            r = await shop.get(f"/orders/{order_id}")
        return OrderFacts.model_validate(r.json())

For a side-effecting call with an argument `order_id`, the policy then sees
`context.facts.order`; for a run whose subject has an `order_id`, `context.run.subject_facts.
order`. Fetched facts are part of the verdict's recorded input, so replay and `policy backtest`
see exactly what the guard saw. A fact that cannot be fetched denies the call, saying why.
Keep fact models narrow: what rules need, no personal data.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, get_type_hints

import httpx
from pydantic import BaseModel

from countersign.activities.runtime import Runtime
from countersign.activities.tools import ToolDeclarationError, system_http
from countersign.guardrails.cedar_schema import FactSchema

__all__ = ["FACTS", "FactContext", "FactUnavailable", "fact", "resolve_facts"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class FactUnavailable(Exception):
    """A fact could not be fetched; the guard denies the call with this message."""


@dataclass
class FactContext:
    """What a fact resolver gets besides its key."""

    runtime: Runtime
    workflow_id: str

    def http(self, system: str) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        """The same pooled client as tools get (base URL, token from keyring, timeouts)."""
        return system_http(self.runtime, system)

    async def executed(self, tool: str) -> list[dict[str, Any]]:
        """Results of this run's executed actions of `tool`, from the audit trail (ours, not
        the model's word): e.g. to tell whether a refund was made by this run."""
        records = await self.runtime.audit_find(self.workflow_id, "action.executed", tool=tool)
        return [r.data.get("result") or {} for r in records]


Resolver = Callable[[Any, FactContext], Awaitable[BaseModel]]


@dataclass(frozen=True)
class FactSpec:
    name: str
    keyed_by: str
    result_model: type[BaseModel]
    fn: Resolver

    @property
    def schema(self) -> FactSchema:
        return FactSchema(
            name=self.name,
            keyed_by=self.keyed_by,
            result_schema=self.result_model.model_json_schema(),
        )


FACTS: dict[str, FactSpec] = {}


def fact(name: str, *, keyed_by: str) -> Callable[[Resolver], Resolver]:
    """Register `async def f(key, ctx: FactContext) -> Model` as the fact `name`, fetched for
    every side effect with an argument `keyed_by` and for every run whose subject has it."""
    if not _NAME.match(name) or not _NAME.match(keyed_by):
        raise ToolDeclarationError(f"fact {name!r} keyed by {keyed_by!r}: use snake_case names")

    def register(fn: Resolver) -> Resolver:
        where = f"fact {name} ({fn.__module__}.{fn.__qualname__})"
        if not inspect.iscoroutinefunction(fn) or len(inspect.signature(fn).parameters) != 2:
            raise ToolDeclarationError(f"{where} must be `async def f(key, ctx: FactContext)`")
        result = get_type_hints(fn).get("return")
        if not (isinstance(result, type) and issubclass(result, BaseModel)):
            raise ToolDeclarationError(f"{where} must return a pydantic model")
        if name in FACTS and FACTS[name].fn is not fn:
            raise ToolDeclarationError(f"{where}: a fact named {name} is already registered")
        FACTS[name] = FactSpec(name, keyed_by, result, fn)
        return fn

    return register


async def resolve_facts(
    runtime: Runtime, workflow_id: str, keys: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Every registered fact whose key is in `keys` (argument or subject values), fetched
    concurrently. Raises FactUnavailable naming the first fact that could not be fetched."""
    wanted = [
        (spec, keys[spec.keyed_by])
        for spec in FACTS.values()
        if isinstance(keys.get(spec.keyed_by), str | int)
        and not isinstance(keys[spec.keyed_by], bool)
    ]
    ctx = FactContext(runtime, workflow_id)
    results = await asyncio.gather(
        *(spec.fn(key, ctx) for spec, key in wanted), return_exceptions=True
    )
    facts = {}
    for (spec, key), result in zip(wanted, results, strict=True):
        if isinstance(result, BaseException):
            raise FactUnavailable(
                f"fact {spec.name!r} for {spec.keyed_by} {key!r} could not be fetched: "
                f"{_why(result)}"
            )
        facts[spec.name] = result.model_dump(mode="json")
    return facts


def _why(e: BaseException) -> str:
    if isinstance(e, httpx.HTTPStatusError):
        return f"{e.request.method} {e.request.url.path} answered {e.response.status_code}"
    return f"{type(e).__name__}: {e}"[:300]
