"""The demo shop over real HTTP: uvicorn in a thread, a fresh SQLite file per test, httpx."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from countersign.demo.shop import SEED_CUSTOMERS, SEED_ORDERS, create_app, main

TOKEN = "test-shop-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def stopping_servers() -> Iterator[list[threading.Thread]]:
    """Server threads still shutting down; joined once, so no test waits for uvicorn's tick."""
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(timeout=5)


@pytest.fixture
def shop_url(tmp_path: Path, stopping_servers: list[threading.Thread]) -> Iterator[str]:
    """A shop on a free loopback port over its own fresh database.

    Not conftest's session-wide `shop`: these tests assert exact amounts and counts on the
    seed data, so each gets a pristine copy (starting one takes a few milliseconds).
    """
    app = create_app(tmp_path / "shop.sqlite3", TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline, "shop did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = server.force_exit = True  # don't wait for deliberately slow requests
    stopping_servers.append(thread)


@pytest.fixture
async def api(shop_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated client for this test's shop."""
    async with httpx.AsyncClient(base_url=shop_url, headers=AUTH, timeout=5) as client:
        yield client


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"test-{uuid.uuid4()}"}


async def refund(
    api: httpx.AsyncClient, headers: dict[str, str], amount_cents: int = 1000, wait_s: float = 5
) -> httpx.Response:
    body = {"order_id": "A-1003", "amount_cents": amount_cents, "reason": "damaged"}
    return await api.post("/refunds", json=body, headers=headers, timeout=wait_s)


async def test_healthz_is_open_and_everything_else_needs_the_bearer_token(shop_url: str) -> None:
    async with httpx.AsyncClient(base_url=shop_url) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"ok": True}
        missing = await anonymous.get("/orders/A-1001")
        wrong = await anonymous.get("/_state", headers={"Authorization": "Bearer nope"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert TOKEN not in response.text


async def test_order_and_customer_lookup_return_seed_data(api: httpx.AsyncClient) -> None:
    order = (await api.get("/orders/A-1004")).json()
    assert order["customer_id"] == "C-100"
    assert order["status"] == "shipped"
    assert (order["currency"], order["total_cents"], order["captured_cents"]) == ("EUR", 2500, 2500)
    assert order["refunded_cents"] == 0
    assert [(i["name"], i["quantity"], i["unit_price_cents"]) for i in order["items"]] == [
        ("Tea sampler", 2, 1250)
    ]
    customer = (await api.get("/customers/C-100")).json()
    assert (customer["name"], customer["email"], customer["tier"]) == (
        "Ada Lovelace",
        "ada@example.com",
        "gold",
    )
    assert customer["notes_count"] == 0


async def test_unknown_order_and_customer_are_404(api: httpx.AsyncClient) -> None:
    for path in ("/orders/A-9999", "/customers/C-999", "/no/such/route"):
        response = await api.get(path)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    assert "A-9999" in (await api.get("/orders/A-9999")).json()["detail"]


async def test_refund_replayed_with_same_key_returns_the_first_refund(
    api: httpx.AsyncClient,
) -> None:
    headers = key()
    first = await refund(api, headers)
    assert first.status_code == 201
    body = first.json()
    assert body["refund_id"].startswith("rf_") and len(body["refund_id"]) == 15
    assert (body["order_id"], body["amount_cents"], body["status"]) == ("A-1003", 1000, "succeeded")

    again = await refund(api, headers)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == body
    assert len((await api.get("/refunds", params={"order_id": "A-1003"})).json()["refunds"]) == 1
    assert (await api.get("/orders/A-1003")).json()["refunded_cents"] == 1000


async def test_refund_key_reused_with_a_different_body_is_422(api: httpx.AsyncClient) -> None:
    headers = key()
    assert (await refund(api, headers, 1000)).status_code == 201
    reused = await refund(api, headers, 2000)
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"


async def test_refund_without_idempotency_key_is_400(api: httpx.AsyncClient) -> None:
    response = await refund(api, {})
    assert response.status_code == 400
    assert response.json()["error"] == "idempotency_key_required"


async def test_refund_above_refundable_is_409_naming_both_amounts(
    api: httpx.AsyncClient,
) -> None:
    assert (await refund(api, key(), 89000)).status_code == 201
    response = await refund(api, key(), 1000)
    assert response.status_code == 409
    assert response.json()["error"] == "exceeds_refundable"
    assert "1000" in response.json()["detail"] and "900" in response.json()["detail"]
    assert (await api.get("/orders/A-1003")).json()["refunded_cents"] == 89000


async def test_refund_body_is_validated(api: httpx.AsyncClient) -> None:
    for body in (
        {"order_id": "A-1003", "amount_cents": 0, "reason": "x"},
        {"order_id": "A-1003", "amount_cents": "100", "reason": "x"},
    ):
        response = await api.post("/refunds", json=body, headers=key())
        assert response.status_code == 422
        assert response.json()["error"] == "invalid_request"
        assert response.json()["detail"].startswith("amount_cents: ")
    response = await api.post(
        "/refunds", json={"order_id": "A-1003", "amount_cents": 100}, headers=key()
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "reason: Field required"
    garbage = await api.post("/refunds", content=b"{not json", headers=key())
    assert (garbage.status_code, garbage.json()["error"]) == (400, "invalid_json")
    unknown = await api.post(
        "/refunds", json={"order_id": "A-0", "amount_cents": 1, "reason": "x"}, headers=key()
    )
    assert unknown.status_code == 404


async def test_concurrent_identical_refunds_create_one_refund(api: httpx.AsyncClient) -> None:
    headers = key()
    responses = await asyncio.gather(*(refund(api, headers, 500) for _ in range(10)))
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.json()["refund_id"] for r in responses}) == 1
    state = (await api.get("/_state")).json()
    assert len(state["refunds"]) == 1
    assert next(o for o in state["orders"] if o["order_id"] == "A-1003")["refunded_cents"] == 500


async def test_concurrent_refunds_never_exceed_the_captured_amount(
    api: httpx.AsyncClient,
) -> None:
    responses = await asyncio.gather(*(refund(api, key(), 10000) for _ in range(10)))
    assert sorted(r.status_code for r in responses) == [201] * 8 + [409] * 2
    assert (await api.get("/orders/A-1003")).json()["refunded_cents"] == 80000


async def test_reversal_restores_refundable_amount_and_is_idempotent(
    api: httpx.AsyncClient,
) -> None:
    refund_id = (await refund(api, key(), 89900)).json()["refund_id"]
    first = await api.post(f"/refunds/{refund_id}/reversal")
    second = await api.post(f"/refunds/{refund_id}/reversal")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["status"] == "reversed"
    assert (await api.get("/orders/A-1003")).json()["refunded_cents"] == 0
    assert (await api.post("/refunds/rf_000000000000/reversal")).status_code == 404


async def test_patch_customer_returns_before_image_of_changed_fields(
    api: httpx.AsyncClient,
) -> None:
    headers = key()
    body = {"fields": {"tier": "platinum", "phone": "+44 1", "name": "Ada Lovelace"}}
    first = await api.patch("/customers/C-100", json=body, headers=headers)
    assert first.status_code == 200
    assert first.json()["before"] == {"tier": "gold", "phone": "+44 20 7946 0100"}
    assert first.json()["customer"]["tier"] == "platinum"

    # Someone else changes the tier; replaying the first key must not re-apply it.
    await api.patch("/customers/C-100", json={"fields": {"tier": "silver"}}, headers=key())
    replay = await api.patch("/customers/C-100", json=body, headers=headers)
    assert replay.json() == first.json()
    assert (await api.get("/customers/C-100")).json()["tier"] == "silver"


async def test_patch_customer_rejects_unknown_field_and_bad_values(
    api: httpx.AsyncClient,
) -> None:
    unknown = await api.patch(
        "/customers/C-200", json={"fields": {"loyalty_points": 5}}, headers=key()
    )
    assert (unknown.status_code, unknown.json()["error"]) == (422, "invalid_field")
    assert "loyalty_points" in unknown.json()["detail"]
    bad_tier = await api.patch("/customers/C-200", json={"fields": {"tier": "vip"}}, headers=key())
    assert (bad_tier.status_code, bad_tier.json()["error"]) == (422, "invalid_value")
    no_key = await api.patch("/customers/C-200", json={"fields": {"tier": "gold"}})
    assert no_key.status_code == 400
    assert (await api.get("/customers/C-200")).json()["tier"] == "standard"


async def test_notes_are_created_once_and_deleted_idempotently(api: httpx.AsyncClient) -> None:
    headers = key()
    created = await api.post(
        "/customers/C-300/notes", json={"text": "Prefers email"}, headers=headers
    )
    assert created.status_code == 201
    note = created.json()
    assert note["note_id"].startswith("note_") and note["customer_id"] == "C-300"
    replay = await api.post(
        "/customers/C-300/notes", json={"text": "Prefers email"}, headers=headers
    )
    assert replay.json() == note
    assert (await api.get("/customers/C-300/notes")).json()["notes"] == [note]
    assert (await api.get("/customers/C-300")).json()["notes_count"] == 1

    for _ in range(2):
        deleted = await api.delete(f"/notes/{note['note_id']}")
        assert deleted.status_code == 200
        assert deleted.json() == {"note_id": note["note_id"], "deleted": True}
    assert (await api.get("/customers/C-300/notes")).json()["notes"] == []
    assert (await api.delete("/notes/note_000000000000")).status_code == 404
    too_long = await api.post("/customers/C-300/notes", json={"text": "x" * 2001}, headers=key())
    assert too_long.status_code == 422


async def test_injected_503_fails_the_next_two_matching_requests(api: httpx.AsyncClient) -> None:
    rule = {"fail_status": 503, "fail_count": 2, "path_prefix": "/orders"}
    assert (await api.post("/_faults", json=rule)).status_code == 200
    assert (await api.get("/customers/C-100")).status_code == 200  # prefix does not match
    statuses = [(await api.get("/orders/A-1001")).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


async def test_injected_429_carries_retry_after(api: httpx.AsyncClient) -> None:
    await api.post("/_faults", json={"fail_status": 429, "fail_count": 1})
    response = await refund(api, key())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"] == "injected_fault"
    assert (await api.get("/_state")).json()["refunds"] == []  # refused before any side effect
    await api.delete("/_faults")
    assert (await refund(api, key())).status_code == 201


async def test_latency_after_commit_commits_refund_although_the_caller_timed_out(
    api: httpx.AsyncClient,
) -> None:
    await api.post(
        "/_faults", json={"latency_ms": 1000, "latency_after_commit": True, "path_prefix": "/ref"}
    )
    headers = key()
    with pytest.raises(httpx.ReadTimeout):
        await refund(api, headers, wait_s=0.3)
    await api.delete("/_faults")
    refunds = (await api.get("/refunds", params={"order_id": "A-1003"})).json()["refunds"]
    assert len(refunds) == 1
    replay = await refund(api, headers)  # the retry finds the committed refund
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["refund_id"] == refunds[0]["refund_id"]


async def test_latency_delays_matching_requests_without_blocking_others(
    api: httpx.AsyncClient,
) -> None:
    await api.post("/_faults", json={"latency_ms": 400, "path_prefix": "/orders"})

    async def timed(path: str) -> float:
        start = time.monotonic()
        assert (await api.get(path)).status_code == 200
        return time.monotonic() - start

    slow, fast = await asyncio.gather(timed("/orders/A-1001"), timed("/customers/C-100"))
    assert slow >= 0.4
    assert fast < 0.3


async def test_state_dump_and_request_stats(api: httpx.AsyncClient) -> None:
    before = (await api.get("/_state")).json()
    assert [o["order_id"] for o in before["orders"]] == [o[0] for o in SEED_ORDERS]
    assert [c["customer_id"] for c in before["customers"]] == [c[0] for c in SEED_CUSTOMERS]
    assert before["refunds"] == before["notes"] == []
    await refund(api, key())
    await api.get("/orders/A-1001")
    await api.get("/orders/A-1002")
    after = (await api.get("/_state")).json()
    assert len(after["refunds"]) == 1
    stats = (await api.get("/_stats")).json()["requests"]
    assert stats["POST /refunds"] == 1
    assert stats["GET /orders/{order_id}"] == 2
    assert stats["GET /_state"] == 2


def test_restart_keeps_data_and_does_not_reseed(tmp_path: Path) -> None:
    db_path = tmp_path / "shop.sqlite3"
    create_app(db_path, TOKEN)
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM order_items WHERE order_id = 'A-1004'")
        conn.execute("DELETE FROM orders WHERE order_id = 'A-1004'")
    create_app(db_path, TOKEN)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == len(SEED_ORDERS) - 1


def test_main_without_token_exits_2_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("SHOP_API_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--port", "0", "--db", str(tmp_path / "shop.sqlite3")])
    assert exc.value.code == 2
    assert "SHOP_API_TOKEN is not set" in capsys.readouterr().err


def test_main_announces_its_address_and_serves(tmp_path: Path) -> None:
    env = {**os.environ, "SHOP_API_TOKEN": TOKEN}
    args = ["--host", "127.0.0.1", "--port", "0", "--db", str(tmp_path / "shop.sqlite3")]
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-m", "countersign.demo.shop", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode().strip()
            assert line.startswith("shop listening on http://127.0.0.1:")
            url = line.removeprefix("shop listening on ")
            assert httpx.get(f"{url}/orders/A-1001", headers=AUTH).json()["total_cents"] == 4200
        finally:
            proc.terminate()
            proc.wait(timeout=5)
