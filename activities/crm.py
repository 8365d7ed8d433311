"""Tools for the CRM: customer records and notes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from countersign.activities.facts import FactContext, fact
from countersign.activities.tools import Personal, ToolContext, Undo, guarded_tool

_CUSTOMER_ID = r"^C-\d{3}$"


class CustomerLookupArgs(BaseModel):
    customer_id: str = Field(pattern=_CUSTOMER_ID, description="Customer id, e.g. C-100")


class Customer(BaseModel):
    customer_id: str
    name: Personal[str]
    email: Personal[str]
    tier: str
    phone: Personal[str | None] = None
    address: Personal[str | None] = None


@guarded_tool("customers.lookup", system="shop", scope="crm:read", read_only=True)
async def lookup_customer(args: CustomerLookupArgs, ctx: ToolContext) -> Customer:
    """Look up a customer record."""
    async with ctx.http() as shop:
        r = await shop.get(f"/customers/{args.customer_id}")
    return Customer.model_validate(r.json())


class AddNoteArgs(BaseModel):
    customer_id: str = Field(pattern=_CUSTOMER_ID)
    text: str = Field(min_length=1, max_length=2000)


class Note(BaseModel):
    note_id: str
    customer_id: str
    text: str


@guarded_tool(
    "crm.add_note",
    system="shop",
    scope="crm:write",
    compensate=Undo("crm.delete_note", lambda args, result: {"note_id": result.note_id}),
)
async def add_note(args: AddNoteArgs, ctx: ToolContext) -> Note:
    """Add a note to a customer's CRM record."""
    async with ctx.http() as shop:
        r = await shop.post(
            f"/customers/{args.customer_id}/notes",
            json={"text": args.text},
            headers=ctx.idempotency_headers(),
        )
    return Note.model_validate(r.json())


class NoteFacts(BaseModel):
    """Whose record a note is on (not its text: rules need no personal data)."""

    note_id: str
    customer_id: str
    deleted: bool


@fact("note", keyed_by="note_id")
async def note_facts(note_id: str, ctx: FactContext) -> NoteFacts:
    """A note's customer, from the CRM."""
    async with ctx.http("shop") as shop:
        r = await shop.get(f"/notes/{note_id}")
    return NoteFacts.model_validate(r.json(), extra="ignore")


class DeleteNoteArgs(BaseModel):
    note_id: str = Field(pattern=r"^note_[0-9a-zA-Z]+$")


class NoteDeleted(BaseModel):
    note_id: str
    deleted: bool


@guarded_tool("crm.delete_note", system="shop", scope="crm:write", risk="low")
async def delete_note(args: DeleteNoteArgs, ctx: ToolContext) -> NoteDeleted:
    """Delete a CRM note (compensation for crm.add_note)."""
    async with ctx.http() as shop:
        r = await shop.delete(f"/notes/{args.note_id}")
    return NoteDeleted.model_validate(r.json())


class ContactFields(BaseModel):
    """The only fields an agent may change; anything else is rejected before any call."""

    model_config = ConfigDict(extra="forbid")

    phone: Personal[str | None] = Field(default=None, max_length=40)
    email: Personal[str | None] = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
    address: Personal[str | None] = Field(default=None, max_length=200)


class UpdateContactArgs(BaseModel):
    customer_id: str = Field(pattern=_CUSTOMER_ID)
    fields: ContactFields


class ContactBefore(BaseModel):
    """Previous values of the changed fields, as the system of record returned them."""

    phone: Personal[str | None] = None
    email: Personal[str | None] = None
    address: Personal[str | None] = None


class ContactUpdated(BaseModel):
    customer: Customer
    # What compensation restores.
    before: ContactBefore


@guarded_tool(
    "crm.update_contact",
    system="shop",
    scope="crm:write",
    risk="medium",
    # Undo restores the before-image the system of record returned.
    compensate=Undo(
        "crm.update_contact",
        lambda args, result: {
            "customer_id": args.customer_id,
            "fields": result.before.model_dump(exclude_unset=True),
        },
    ),
)
async def update_contact(args: UpdateContactArgs, ctx: ToolContext) -> ContactUpdated:
    """Update a customer's contact fields (phone, email, address only)."""
    changes = args.fields.model_dump(exclude_none=True, mode="json")
    async with ctx.http() as shop:
        r = await shop.patch(
            f"/customers/{args.customer_id}",
            json={"fields": changes},
            headers=ctx.idempotency_headers(),
        )
    return ContactUpdated.model_validate(r.json())
