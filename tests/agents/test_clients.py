"""Activities reuse their HTTP and model clients (building one costs milliseconds), yet a
rotated secret takes effect on the next call, with no worker restart."""

from __future__ import annotations

import httpx
import keyring

from countersign.activities.http import BearerFromKeyring, HttpClients
from countersign.activities.model import ModelActivities
from countersign.activities.runtime import Runtime
from countersign.credentials import SERVICE
from tests.conftest import Shop


async def test_the_model_client_is_reused_until_its_key_changes(runtime: Runtime) -> None:
    models = ModelActivities(runtime)
    first = models._client()
    assert models._client() is first
    before = keyring.get_password(SERVICE, "openai")
    keyring.set_password(SERVICE, "openai", "sk-rotated-0123456789abcdef")
    try:
        rotated = models._client()
        assert rotated is not first and rotated.api_key == "sk-rotated-0123456789abcdef"
        assert rotated._client is first._client  # the same pooled connections
    finally:
        if before is None:
            keyring.delete_password(SERVICE, "openai")
        else:
            keyring.set_password(SERVICE, "openai", before)


async def test_a_pooled_system_client_sends_the_current_token(shop: Shop) -> None:
    clients = HttpClients()
    credential = "test-rotation-token"
    keyring.set_password(SERVICE, credential, "wrong-token")

    def build() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=shop.url, auth=BearerFromKeyring(credential))

    try:
        client = clients.get("shop", build)
        assert (await client.get("/orders/A-1001")).status_code == 401
        keyring.set_password(SERVICE, credential, shop.token)
        assert clients.get("shop", build) is client
        assert (await client.get("/orders/A-1001")).status_code == 200
        await client.aclose()  # closed by mistake: the next caller gets a working client
        again = clients.get("shop", build)
        assert again is not client and (await again.get("/orders/A-1001")).status_code == 200
    finally:
        keyring.delete_password(SERVICE, credential)
        await clients.aclose()
