"""Facts the guard fetches itself: declared with a decorator, resolved over real HTTP from the
demo shop, failing closed with a reason."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from countersign.activities.facts import FACTS, FactContext, FactUnavailable, fact, resolve_facts
from countersign.activities.runtime import Runtime
from countersign.activities.tools import ToolDeclarationError
from tests.conftest import Shop


async def test_a_side_effects_facts_are_fetched_from_the_system_of_record(
    runtime: Runtime, shop: Shop
) -> None:
    shop.reset()
    facts = await resolve_facts(
        runtime, "wf-facts", {"order_id": "A-1002", "amount_cents": 100, "reason": "r"}
    )
    with shop.client() as c:
        placed = c.get("/orders/A-1002").json()["created_at"]
    assert facts == {
        "order": {
            "order_id": "A-1002",
            "customer_id": "C-200",
            "status": "delivered",
            "total_cents": 18900,
            "captured_cents": 18900,
            "refunded_cents": 0,
            "created_at": placed,
        }
    }
    with shop.client() as c:
        made = c.post(
            "/refunds",
            json={"order_id": "A-1002", "amount_cents": 100, "reason": "by hand"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        ).json()
        note = c.post(
            "/customers/C-100/notes",
            json={"text": "x"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        ).json()
    facts = await resolve_facts(
        runtime, "wf-facts", {"refund_id": made["refund_id"], "note_id": note["note_id"]}
    )
    assert facts["refund"]["order_id"] == "A-1002" and facts["refund"]["status"] == "succeeded"
    # Nothing in this run's audit trail executed it.
    assert facts["refund"]["made_by_this_run"] is False
    assert facts["note"] == {"note_id": note["note_id"], "customer_id": "C-100", "deleted": False}


async def test_a_fact_that_cannot_be_fetched_says_which_and_why(runtime: Runtime) -> None:
    with pytest.raises(FactUnavailable) as e:
        await resolve_facts(runtime, "wf-facts", {"order_id": "Z-9999"})
    assert str(e.value) == (
        "fact 'order' for order_id 'Z-9999' could not be fetched: GET /orders/Z-9999 answered 404"
    )


async def test_only_facts_keyed_by_what_the_call_has_are_fetched(runtime: Runtime) -> None:
    assert await resolve_facts(runtime, "wf-facts", {"customer_id": "C-100", "flag": True}) == {}


class Out(BaseModel):
    x: int


def test_a_wrong_fact_declaration_fails_at_import() -> None:
    with pytest.raises(ToolDeclarationError, match="async def"):

        @fact("sync_fact", keyed_by="order_id")
        def sync_fact(key: str, ctx: FactContext) -> Out:  # type: ignore[type-var]
            return Out(x=1)

    with pytest.raises(ToolDeclarationError, match="pydantic model"):

        @fact("untyped_fact", keyed_by="order_id")
        async def untyped_fact(key: str, ctx: FactContext) -> dict:  # type: ignore[type-var]
            return {}

    with pytest.raises(ToolDeclarationError, match="already registered"):

        @fact("order", keyed_by="order_id")
        async def another_order(key: str, ctx: FactContext) -> Out:
            return Out(x=1)

    assert set(FACTS) == {"order", "refund", "note"}
