"""Tools for the shop: orders and payments."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, PositiveInt

from countersign.activities.facts import FactContext, fact
from countersign.activities.tools import ToolContext, Undo, guarded_tool


class OrderLookupArgs(BaseModel):
    order_id: str = Field(pattern=r"^[A-Z]-\d{4}$", description="Order id, e.g. A-1001")


class OrderItem(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price_cents: int


class Order(BaseModel):
    order_id: str
    customer_id: str
    status: str
    currency: str
    total_cents: int
    captured_cents: int
    refunded_cents: int
    items: list[OrderItem]


@guarded_tool("orders.lookup", system="shop", scope="orders:read", read_only=True)
async def lookup_order(args: OrderLookupArgs, ctx: ToolContext) -> Order:
    """Look up an order: customer, status, captured and already refunded amounts (cents)."""
    async with ctx.http() as shop:
        r = await shop.get(f"/orders/{args.order_id}")
    return Order.model_validate(r.json())


class OrderFacts(BaseModel):
    """What refund rules need to know about an order, fetched by the guard itself."""

    order_id: str
    customer_id: str
    status: str
    total_cents: int
    captured_cents: int
    refunded_cents: int
    # When the order was placed (ISO 8601), shown to approvers in the evidence pack.
    created_at: str


@fact("order", keyed_by="order_id")
async def order_facts(order_id: str, ctx: FactContext) -> OrderFacts:
    """An order's customer and amounts, from the shop."""
    async with ctx.http("shop") as shop:
        r = await shop.get(f"/orders/{order_id}")
    return OrderFacts.model_validate(r.json(), extra="ignore")


class RefundArgs(BaseModel):
    order_id: str = Field(pattern=r"^[A-Z]-\d{4}$")
    # Bounded: no order is worth more than 1,000,000.00.
    amount_cents: PositiveInt = Field(
        le=100_000_000, description="Amount to refund in cents (minor units)"
    )
    reason: str = Field(min_length=3, max_length=500)


class Refund(BaseModel):
    refund_id: str
    order_id: str
    amount_cents: int
    status: Literal["succeeded", "pending", "reversed"]


async def find_refund(args: RefundArgs, ctx: ToolContext) -> Refund | None:
    """The refund made under this call's idempotency key, if the shop made one."""
    async with ctx.http("shop") as shop:
        r = await shop.get(
            "/refunds", params={"order_id": args.order_id, "idempotency_key": ctx.idempotency_key}
        )
    found = r.json()["refunds"]
    return Refund.model_validate(found[0]) if found else None


@guarded_tool(
    "payments.refund",
    system="shop",
    scope="payments:refund",
    risk="high",
    compensate=Undo(
        "payments.reverse_refund", lambda args, result: {"refund_id": result.refund_id}
    ),
    # One refund per order and amount per run, however often the model asks.
    business_key=lambda a: f"{a.order_id}:{a.amount_cents}",
    # Money: when the answer is lost, ask the shop before calling the refund failed.
    reconcile=find_refund,
    # An approver may approve a lower amount (never a higher one).
    approver_may_change={"amount_cents": "decrease"},
)
async def refund(args: RefundArgs, ctx: ToolContext) -> Refund:
    """Refund part or all of an order's captured payment. Amount in cents."""
    async with ctx.http() as shop:
        r = await shop.post("/refunds", json=args.model_dump(), headers=ctx.idempotency_headers())
    return Refund.model_validate(r.json())


class ReverseRefundArgs(BaseModel):
    refund_id: str = Field(pattern=r"^rf_[0-9a-f]+$")


@guarded_tool("payments.reverse_refund", system="shop", scope="payments:refund", risk="high")
async def reverse_refund(args: ReverseRefundArgs, ctx: ToolContext) -> Refund:
    """Reverse a refund that was issued by mistake (compensation for payments.refund)."""
    async with ctx.http() as shop:
        r = await shop.post(
            f"/refunds/{args.refund_id}/reversal", headers=ctx.idempotency_headers()
        )
    return Refund.model_validate(r.json())


class RefundFacts(BaseModel):
    """A refund as the shop knows it, and whether this run made it."""

    refund_id: str
    order_id: str
    amount_cents: int
    status: str
    made_by_this_run: bool


@fact("refund", keyed_by="refund_id")
async def refund_facts(refund_id: str, ctx: FactContext) -> RefundFacts:
    """A refund's order and status, from the shop; made by this run if this run executed it."""
    async with ctx.http("shop") as shop:
        r = await shop.get(f"/refunds/{refund_id}")
    ours = {result.get("refund_id") for result in await ctx.executed("payments.refund")}
    return RefundFacts.model_validate(
        {**r.json(), "made_by_this_run": refund_id in ours}, extra="ignore"
    )
