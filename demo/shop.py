"""Demo shop: the system of record that Countersign's guarded tools act on.

A small Starlette service over a SQLite file holding orders, refunds, customers (CRM records)
and CRM notes. It behaves like a real downstream API: bearer-token auth, idempotency keys on
every side effect, JSON validation errors, and fault injection (`POST /_faults`) so tests can
exercise retries, timeouts and a worker dying after the side effect but before the answer.

    export SHOP_API_TOKEN=dev-token
    python -m countersign.demo.shop --port 8101 --db .countersign/shop.sqlite3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["create_app", "main"]

API_TOKEN_ENV = "SHOP_API_TOKEN"
CUSTOMER_FIELDS = ("name", "email", "tier", "phone", "address")
NULLABLE_CUSTOMER_FIELDS = ("phone", "address")
TIERS = ("standard", "silver", "gold", "platinum")
# Fault injection never touches these, so a test can always inspect and reset the shop.
CONTROL_PATHS = ("/healthz", "/_faults", "/_state", "/_stats")

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
    tier TEXT NOT NULL, phone TEXT, address TEXT);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers,
    status TEXT NOT NULL, currency TEXT NOT NULL, total_cents INTEGER NOT NULL,
    captured_cents INTEGER NOT NULL, refunded_cents INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL REFERENCES orders, position INTEGER NOT NULL, sku TEXT NOT NULL,
    name TEXT NOT NULL, quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, position));
CREATE TABLE IF NOT EXISTS refunds (
    refund_id TEXT PRIMARY KEY, order_id TEXT NOT NULL REFERENCES orders,
    amount_cents INTEGER NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, reversed_at TEXT);
CREATE TABLE IF NOT EXISTS notes (
    note_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers,
    text TEXT NOT NULL, created_at TEXT NOT NULL, deleted_at TEXT);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status_code INTEGER NOT NULL,
    response TEXT NOT NULL, created_at TEXT NOT NULL);
"""

SEED_CREATED_AT = "2025-01-15T09:30:00+00:00"
SEED_CUSTOMERS = [  # customer_id, name, email, tier, phone, address
    ("C-100", "Ada Lovelace", "ada@example.com", "gold", "+44 20 7946 0100", "12 St James's Sq"),
    ("C-200", "Grace Hopper", "grace@example.com", "standard", "+1 202 555 0200", "1 Navy Yard"),
    ("C-300", "Alan Turing", "alan@example.com", "standard", "+44 161 496 0300", "Bletchley Park"),
    ("C-400", "Katherine Johnson", "katherine@example.com", "gold", "+1 757 555 0400", "Hampton"),
    ("C-500", "Edsger Dijkstra", "edsger@example.com", "standard", "+31 40 555 0500", "Nuenen"),
    ("C-600", "Barbara Liskov", "barbara@example.com", "gold", "+1 617 555 0600", "Cambridge"),
    ("C-700", "Donald Knuth", "donald@example.com", "standard", "+1 650 555 0700", "Stanford"),
    ("C-800", "Frances Allen", "frances@example.com", "gold", "+1 914 555 0800", "Yorktown"),
]
SEED_ORDERS = [  # order_id, customer_id, status, total = captured, items (sku, name, qty, unit)
    ("A-1001", "C-100", "delivered", 4200, [("TEA-POT-01", "Ceramic teapot", 1, 4200)]),
    ("A-1002", "C-200", "delivered", 18900, [("ESP-MCH-01", "Espresso machine", 1, 18900)]),
    ("A-1003", "C-300", "delivered", 89900, [("DSK-STD-01", "Standing desk", 1, 89900)]),
    ("A-1004", "C-100", "shipped", 2500, [("TEA-SMP-02", "Tea sampler", 2, 1250)]),
    ("A-1005", "C-300", "delivered", 64900, [("CHR-ERG-01", "Ergonomic chair", 1, 64900)]),
    ("A-1006", "C-200", "delivered", 12900, [("KTL-GLS-01", "Glass kettle", 1, 12900)]),
    ("A-1007", "C-100", "delivered", 3100, [("MUG-SET-04", "Mug set", 4, 775)]),
    ("A-1008", "C-200", "delivered", 2400, [("FLT-PPR-01", "Coffee filters", 3, 800)]),
    ("A-1009", "C-300", "delivered", 15900, [("LMP-DSK-01", "Desk lamp", 1, 15900)]),
    ("A-1010", "C-100", "delivered", 9900, [("GRN-BUR-01", "Burr grinder", 1, 9900)]),
    ("A-1011", "C-200", "delivered", 24900, [("SCL-KIT-01", "Kitchen scale", 1, 24900)]),
    ("A-1012", "C-300", "delivered", 7900, [("BTL-INS-02", "Insulated bottle", 2, 3950)]),
    ("A-1013", "C-100", "delivered", 3900, [("TWL-LIN-02", "Linen towels", 2, 1950)]),
    ("A-1014", "C-200", "delivered", 12500, [("PAN-CST-01", "Cast iron pan", 1, 12500)]),
    ("A-1015", "C-300", "delivered", 4800, [("BRD-OAK-01", "Oak board", 1, 4800)]),
    ("A-1016", "C-400", "delivered", 1500, [("SPN-WOD-03", "Wooden spoons", 3, 500)]),
    ("A-1017", "C-500", "delivered", 8800, [("TRY-BMB-01", "Bamboo tray", 1, 8800)]),
    # Orders the approval gateway tests refund once each (Slack, email, duplicates).
    ("A-1051", "C-500", "delivered", 7900, [("LMP-DSK-01", "Desk lamp", 1, 7900)]),
    ("A-1052", "C-600", "delivered", 8900, [("GRN-BUR-01", "Burr grinder", 1, 8900)]),
    ("A-1053", "C-700", "delivered", 9900, [("SCL-KIT-01", "Kitchen scale", 1, 9900)]),
    ("A-1054", "C-800", "delivered", 6900, [("PAN-CST-01", "Cast iron pan", 1, 6900)]),
]


class ShopError(Exception):
    """A request the shop refuses; becomes `{"error": code, "detail": detail}`."""

    def __init__(self, status_code: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status_code, self.code, self.detail = status_code, code, detail


# --- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RefundRequest(_Body):
    order_id: Annotated[str, Field(min_length=1)]
    amount_cents: Annotated[StrictInt, Field(gt=0)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class NoteRequest(_Body):
    text: Annotated[str, Field(min_length=1, max_length=2000)]


class CustomerPatch(_Body):
    fields: Annotated[dict[str, Any], Field(min_length=1)]


class FaultRule(_Body):
    latency_ms: Annotated[StrictInt, Field(ge=0, le=60_000)] = 0
    fail_status: Annotated[StrictInt, Field(ge=400, le=599)] | None = None
    fail_count: Annotated[StrictInt, Field(ge=0)] = 0
    path_prefix: str = "/"
    # Only requests with this method (e.g. "POST": slow writes, prompt reads); None: all.
    method: Literal["GET", "POST", "PATCH", "DELETE"] | None = None
    latency_after_commit: bool = False


BodyT = TypeVar("BodyT", bound=BaseModel)
Result = dict[str, Any]
Change = Callable[[sqlite3.Connection], tuple[int, Result]]


@dataclass
class ShopState:
    db_path: Path
    api_token: str
    faults: FaultRule | None = None
    stats: Counter[str] = field(default_factory=Counter)


# --- database -------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _connect(db_path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves; timeout waits out other writers.
    conn = sqlite3.connect(db_path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def _transaction(db_path: Path, *, write: bool = False) -> Iterator[sqlite3.Connection]:
    """One connection, one transaction; IMMEDIATE takes the write lock before the first read."""
    conn = _connect(db_path)
    try:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def _init_db(db_path: Path) -> None:
    conn = _connect(db_path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)
    finally:
        conn.close()
    with _transaction(db_path, write=True) as conn:
        if conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 0:
            _seed(conn)


def _seed(conn: sqlite3.Connection) -> None:
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", SEED_CUSTOMERS)
    for order_id, customer_id, status, cents, items in SEED_ORDERS:
        conn.execute(
            "INSERT INTO orders VALUES (?, ?, ?, 'EUR', ?, ?, 0, ?)",
            (order_id, customer_id, status, cents, cents, SEED_CREATED_AT),
        )
        conn.executemany(
            "INSERT INTO order_items VALUES (?, ?, ?, ?, ?, ?)",
            [(order_id, pos, *item) for pos, item in enumerate(items)],
        )


def _order_json(conn: sqlite3.Connection, row: sqlite3.Row) -> Result:
    items = conn.execute(
        "SELECT sku, name, quantity, unit_price_cents FROM order_items"
        " WHERE order_id = ? ORDER BY position",
        (row["order_id"],),
    ).fetchall()
    return {**dict(row), "items": [dict(item) for item in items]}


def _customer_json(conn: sqlite3.Connection, row: sqlite3.Row) -> Result:
    (count,) = conn.execute(
        "SELECT count(*) FROM notes WHERE customer_id = ? AND deleted_at IS NULL",
        (row["customer_id"],),
    ).fetchone()
    return {**dict(row), "notes_count": count}


def _refund_json(row: sqlite3.Row) -> Result:
    keys = ("refund_id", "order_id", "amount_cents", "reason", "status", "created_at")
    return {key: row[key] for key in keys}


def _note_json(row: sqlite3.Row) -> Result:
    return {key: row[key] for key in ("note_id", "customer_id", "text", "created_at")}


def _fetch_one(conn: sqlite3.Connection, table: str, key: str, value: str) -> sqlite3.Row:
    row = conn.execute(f"SELECT * FROM {table} WHERE {key} = ?", (value,)).fetchone()
    if row is None:
        raise ShopError(404, "not_found", f"no {table[:-1]} with {key} {value!r}")
    return row


# --- operations: synchronous, one transaction each, run in the thread pool ------------------


def _run_idempotent(
    db_path: Path, key: str, fingerprint: str, change: Change
) -> tuple[int, Result, bool]:
    """Check the key and apply the change in one write transaction: concurrent twins see one.

    Returns (status, body, replayed). Only successful responses are stored, so a refused
    request can be corrected and retried under the same key.
    """
    with _transaction(db_path, write=True) as conn:
        stored = conn.execute("SELECT * FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
        if stored is not None:
            if not hmac.compare_digest(stored["fingerprint"], fingerprint):
                raise ShopError(
                    422,
                    "idempotency_key_reused",
                    f"Idempotency-Key {key!r} was first used with a different request;"
                    " use a new key for a new request",
                )
            return 200, json.loads(stored["response"]), True
        status, body = change(conn)
        conn.execute(
            "INSERT INTO idempotency_keys VALUES (?, ?, ?, ?, ?)",
            (key, fingerprint, status, json.dumps(body), _now()),
        )
        return status, body, False


def _get_order(conn: sqlite3.Connection, order_id: str) -> Result:
    return _order_json(conn, _fetch_one(conn, "orders", "order_id", order_id))


def _get_customer(conn: sqlite3.Connection, customer_id: str) -> Result:
    return _customer_json(conn, _fetch_one(conn, "customers", "customer_id", customer_id))


def _create_refund(conn: sqlite3.Connection, req: RefundRequest) -> tuple[int, Result]:
    order = _fetch_one(conn, "orders", "order_id", req.order_id)
    refundable = order["captured_cents"] - order["refunded_cents"]
    if req.amount_cents > refundable:
        raise ShopError(
            409,
            "exceeds_refundable",
            f"amount_cents {req.amount_cents} exceeds refundable {refundable} on order"
            f" {req.order_id} (captured {order['captured_cents']},"
            f" refunded {order['refunded_cents']})",
        )
    refund_id = "rf_" + secrets.token_hex(6)
    conn.execute(
        "INSERT INTO refunds VALUES (?, ?, ?, ?, 'succeeded', ?, NULL)",
        (refund_id, req.order_id, req.amount_cents, req.reason, _now()),
    )
    conn.execute(
        "UPDATE orders SET refunded_cents = refunded_cents + ? WHERE order_id = ?",
        (req.amount_cents, req.order_id),
    )
    return 201, _refund_json(_fetch_one(conn, "refunds", "refund_id", refund_id))


def _list_refunds(
    conn: sqlite3.Connection, order_id: str | None, idempotency_key: str | None = None
) -> Result:
    """Refunds, of one order, or the one made by the request with an Idempotency-Key (how a
    client whose answer was lost finds out whether its refund happened)."""
    if idempotency_key is not None:
        stored = conn.execute(
            "SELECT response FROM idempotency_keys WHERE key = ?", (idempotency_key,)
        ).fetchone()
        refund_id = json.loads(stored["response"]).get("refund_id") if stored else None
        rows = conn.execute(
            "SELECT * FROM refunds WHERE refund_id = ? AND (? IS NULL OR order_id = ?)",
            (refund_id, order_id, order_id),
        )
        return {"refunds": [_refund_json(r) for r in rows]}
    sql = "SELECT * FROM refunds WHERE ? IS NULL OR order_id = ? ORDER BY rowid"
    return {"refunds": [_refund_json(r) for r in conn.execute(sql, (order_id, order_id))]}


def _get_refund(conn: sqlite3.Connection, refund_id: str) -> Result:
    return _refund_json(_fetch_one(conn, "refunds", "refund_id", refund_id))


def _reverse_refund(conn: sqlite3.Connection, refund_id: str) -> Result:
    refund = _fetch_one(conn, "refunds", "refund_id", refund_id)
    if refund["status"] != "reversed":
        conn.execute(
            "UPDATE refunds SET status = 'reversed', reversed_at = ? WHERE refund_id = ?",
            (_now(), refund_id),
        )
        conn.execute(
            "UPDATE orders SET refunded_cents = refunded_cents - ? WHERE order_id = ?",
            (refund["amount_cents"], refund["order_id"]),
        )
    return _refund_json(_fetch_one(conn, "refunds", "refund_id", refund_id))


def _check_customer_value(name: str, value: Any) -> None:
    if value is None and name in NULLABLE_CUSTOMER_FIELDS:
        return
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ShopError(422, "invalid_value", f"{name} must be a non-empty string of ≤200 chars")
    if name == "email" and "@" not in value:
        raise ShopError(422, "invalid_value", f"email {value!r} is not an email address")
    if name == "tier" and value not in TIERS:
        raise ShopError(422, "invalid_value", f"tier {value!r} is not one of {', '.join(TIERS)}")


def _update_customer(
    conn: sqlite3.Connection, customer_id: str, fields: dict[str, Any]
) -> tuple[int, Result]:
    for name, value in fields.items():
        if name not in CUSTOMER_FIELDS:
            raise ShopError(
                422,
                "invalid_field",
                f"field {name!r} cannot be updated; updatable: {', '.join(CUSTOMER_FIELDS)}",
            )
        _check_customer_value(name, value)
    row = _fetch_one(conn, "customers", "customer_id", customer_id)
    before = {name: row[name] for name, value in fields.items() if row[name] != value}
    for name in before:  # names are checked against CUSTOMER_FIELDS above
        conn.execute(
            f"UPDATE customers SET {name} = ? WHERE customer_id = ?", (fields[name], customer_id)
        )
    return 200, {"customer": _get_customer(conn, customer_id), "before": before}


def _add_note(conn: sqlite3.Connection, customer_id: str, text: str) -> tuple[int, Result]:
    _fetch_one(conn, "customers", "customer_id", customer_id)
    note_id = "note_" + secrets.token_hex(6)
    conn.execute(
        "INSERT INTO notes VALUES (?, ?, ?, ?, NULL)", (note_id, customer_id, text, _now())
    )
    return 201, _note_json(_fetch_one(conn, "notes", "note_id", note_id))


def _list_notes(conn: sqlite3.Connection, customer_id: str) -> Result:
    _fetch_one(conn, "customers", "customer_id", customer_id)
    sql = "SELECT * FROM notes WHERE customer_id = ? AND deleted_at IS NULL ORDER BY rowid"
    return {"notes": [_note_json(r) for r in conn.execute(sql, (customer_id,))]}


def _get_note(conn: sqlite3.Connection, note_id: str) -> Result:
    row = _fetch_one(conn, "notes", "note_id", note_id)
    return {**_note_json(row), "deleted": row["deleted_at"] is not None}


def _delete_note(conn: sqlite3.Connection, note_id: str) -> Result:
    _fetch_one(conn, "notes", "note_id", note_id)
    conn.execute(
        "UPDATE notes SET deleted_at = ? WHERE note_id = ? AND deleted_at IS NULL",
        (_now(), note_id),
    )
    return {"note_id": note_id, "deleted": True}


def _dump_state(conn: sqlite3.Connection) -> Result:
    def rows(sql: str) -> list[sqlite3.Row]:
        return conn.execute(sql).fetchall()

    return {
        "orders": [_order_json(conn, r) for r in rows("SELECT * FROM orders ORDER BY order_id")],
        "refunds": [dict(r) for r in rows("SELECT * FROM refunds ORDER BY rowid")],
        "customers": [
            _customer_json(conn, r) for r in rows("SELECT * FROM customers ORDER BY customer_id")
        ],
        "notes": [dict(r) for r in rows("SELECT * FROM notes ORDER BY rowid")],
    }


# --- HTTP -----------------------------------------------------------------------------------


def _error(status_code: int, code: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code, headers=headers or None)


async def _parse(request: Request, model: type[BodyT]) -> BodyT:
    try:
        data = json.loads(await request.body())
    except ValueError as exc:
        raise ShopError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "body"
        got = "" if err["type"] == "missing" else f" (got {err['input']!r:.60})"
        raise ShopError(422, "invalid_request", f"{where}: {err['msg']}{got}") from exc


async def _in_db(
    request: Request, op: Callable[..., Result], *args: Any, write: bool = False
) -> JSONResponse:
    """Run `op(conn, *args)` in its own transaction, off the event loop."""

    def run() -> Result:
        with _transaction(request.app.state.shop.db_path, write=write) as conn:
            return op(conn, *args)

    return JSONResponse(await run_in_threadpool(run))


async def _idempotent(request: Request, body: BaseModel, change: Change) -> JSONResponse:
    key = request.headers.get("idempotency-key", "").strip()
    if not key or len(key) > 255:
        raise ShopError(
            400,
            "idempotency_key_required",
            f"{request.method} {request.url.path} needs an Idempotency-Key header (1-255 chars)",
        )
    request_id = [request.method, request.url.path, body.model_dump(mode="json")]
    fingerprint = hashlib.sha256(json.dumps(request_id, sort_keys=True).encode()).hexdigest()
    db_path = request.app.state.shop.db_path
    status, payload, replayed = await run_in_threadpool(
        _run_idempotent, db_path, key, fingerprint, change
    )
    return JSONResponse(payload, status, {"Idempotent-Replayed": "true"} if replayed else None)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def get_order(request: Request) -> Response:
    return await _in_db(request, _get_order, request.path_params["order_id"])


async def get_customer(request: Request) -> Response:
    return await _in_db(request, _get_customer, request.path_params["customer_id"])


async def patch_customer(request: Request) -> Response:
    patch = await _parse(request, CustomerPatch)
    cid = request.path_params["customer_id"]
    return await _idempotent(request, patch, lambda c: _update_customer(c, cid, patch.fields))


async def add_note(request: Request) -> Response:
    note = await _parse(request, NoteRequest)
    cid = request.path_params["customer_id"]
    return await _idempotent(request, note, lambda c: _add_note(c, cid, note.text))


async def list_notes(request: Request) -> Response:
    return await _in_db(request, _list_notes, request.path_params["customer_id"])


async def get_note(request: Request) -> Response:
    return await _in_db(request, _get_note, request.path_params["note_id"])


async def delete_note(request: Request) -> Response:
    return await _in_db(request, _delete_note, request.path_params["note_id"], write=True)


async def create_refund(request: Request) -> Response:
    refund = await _parse(request, RefundRequest)
    return await _idempotent(request, refund, lambda c: _create_refund(c, refund))


async def list_refunds(request: Request) -> Response:
    params = request.query_params
    return await _in_db(
        request, _list_refunds, params.get("order_id"), params.get("idempotency_key")
    )


async def get_refund(request: Request) -> Response:
    return await _in_db(request, _get_refund, request.path_params["refund_id"])


async def reverse_refund(request: Request) -> Response:
    return await _in_db(request, _reverse_refund, request.path_params["refund_id"], write=True)


async def set_faults(request: Request) -> Response:
    rule = await _parse(request, FaultRule)
    if rule.fail_count and rule.fail_status is None:
        raise ShopError(422, "invalid_request", "fail_count > 0 needs fail_status (e.g. 503)")
    request.app.state.shop.faults = rule
    return JSONResponse({"faults": rule.model_dump()})


async def clear_faults(request: Request) -> Response:
    request.app.state.shop.faults = None
    return JSONResponse({"faults": None})


def _reseed(conn: sqlite3.Connection) -> Result:
    for table in ("idempotency_keys", "notes", "refunds", "order_items", "orders", "customers"):
        conn.execute(f"DELETE FROM {table}")
    _seed(conn)
    return {"reset": True}


async def reset(request: Request) -> Response:
    """Back to the seed data (demo and tests: every test starts from the same shop)."""
    request.app.state.shop.faults = None
    return await _in_db(request, _reseed, write=True)


async def get_state(request: Request) -> Response:
    return await _in_db(request, _dump_state)


async def get_stats(request: Request) -> Response:
    return JSONResponse({"requests": dict(request.app.state.shop.stats)})


Handler = Callable[[Request], Awaitable[Response]]


def _authorized(request: Request, api_token: str) -> bool:
    supplied = request.headers.get("authorization", "").encode()
    return hmac.compare_digest(supplied, f"Bearer {api_token}".encode())


def _matching_fault(rule: FaultRule | None, method: str, path: str) -> FaultRule | None:
    if rule is None or path in CONTROL_PATHS or not path.startswith(rule.path_prefix):
        return None
    return rule if rule.method in (None, method) else None


def _endpoint(method: str, template: str, handler: Handler, *, public: bool = False) -> Route:
    """Wrap a handler with what every shop request gets: counting, auth, faults, JSON errors."""

    async def endpoint(request: Request) -> Response:
        shop: ShopState = request.app.state.shop
        shop.stats[f"{method} {template}"] += 1
        if not public and not _authorized(request, shop.api_token):
            return _error(
                401,
                "unauthorized",
                "missing or invalid Authorization header; expected 'Bearer <SHOP_API_TOKEN>'",
                **{"WWW-Authenticate": "Bearer"},
            )
        rule = _matching_fault(shop.faults, method, request.url.path)
        if rule and not rule.latency_after_commit:
            await asyncio.sleep(rule.latency_ms / 1000)
        if rule and rule.fail_count > 0 and rule.fail_status is not None:
            rule.fail_count -= 1
            headers = {"Retry-After": "1"} if rule.fail_status == 429 else {}
            return _error(
                rule.fail_status, "injected_fault", "failure injected by /_faults", **headers
            )
        try:
            response = await handler(request)
        except ShopError as exc:
            response = _error(exc.status_code, exc.code, exc.detail)
        if rule and rule.latency_after_commit:
            await asyncio.sleep(rule.latency_ms / 1000)
        return response

    return Route(template, endpoint, methods=[method])


ROUTES = [
    ("GET", "/orders/{order_id}", get_order),
    ("GET", "/customers/{customer_id}", get_customer),
    ("PATCH", "/customers/{customer_id}", patch_customer),
    ("POST", "/customers/{customer_id}/notes", add_note),
    ("GET", "/customers/{customer_id}/notes", list_notes),
    ("GET", "/notes/{note_id}", get_note),
    ("DELETE", "/notes/{note_id}", delete_note),
    ("POST", "/refunds", create_refund),
    ("GET", "/refunds", list_refunds),
    ("GET", "/refunds/{refund_id}", get_refund),
    ("POST", "/refunds/{refund_id}/reversal", reverse_refund),
    ("POST", "/_faults", set_faults),
    ("DELETE", "/_faults", clear_faults),
    ("GET", "/_state", get_state),
    ("POST", "/_reset", reset),
    ("GET", "/_stats", get_stats),
]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else "http_error"
    return _error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")


def create_app(db_path: str | Path, api_token: str) -> Starlette:
    """Build the shop app over the SQLite file at `db_path`, creating and seeding it if new."""
    if not api_token:
        raise ValueError("api_token must be a non-empty string")
    db_path = Path(db_path)
    _init_db(db_path)
    routes = [_endpoint("GET", "/healthz", healthz, public=True)]
    routes += [_endpoint(method, template, handler) for method, template, handler in ROUTES]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.shop = ShopState(db_path=db_path, api_token=api_token)
    return app


class _AnnouncingServer(uvicorn.Server):
    """Prints the listening line once sockets are bound, so scripts can wait for it."""

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"shop listening on http://{host}:{port}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m countersign.demo.shop", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101, help="0 picks a free port")
    parser.add_argument("--db", type=Path, default=Path(".countersign/shop.sqlite3"))
    args = parser.parse_args(argv)
    api_token = os.environ.get(API_TOKEN_ENV, "")
    if not api_token:
        print(
            f"error: {API_TOKEN_ENV} is not set; export {API_TOKEN_ENV}=<token> and start again"
            " (the token is never accepted on the command line)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    app = create_app(args.db, api_token)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    _AnnouncingServer(config).run()


if __name__ == "__main__":
    main()
