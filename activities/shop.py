"""Tools for the shop: orders and payments."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, PositiveInt

from activities.tools import ToolContext, Undo, guarded_tool


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


@guarded_tool("orders.lookup", system="shop", scope="orders:read", read_only=True, fact="order")
async def lookup_order(args: OrderLookupArgs, ctx: ToolContext) -> Order:
    """Look up an order: customer, status, captured and already refunded amounts (cents)."""
    async with ctx.http() as shop:
        r = await shop.get(f"/orders/{args.order_id}")
    return Order.model_validate(r.json())


class RefundArgs(BaseModel):
    order_id: str = Field(pattern=r"^[A-Z]-\d{4}$")
    amount_cents: PositiveInt = Field(description="Amount to refund in cents (minor units)")
    reason: str = Field(min_length=3, max_length=500)


class Refund(BaseModel):
    refund_id: str
    order_id: str
    amount_cents: int
    status: Literal["succeeded", "pending", "reversed"]


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
