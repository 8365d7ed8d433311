"""Activities reuse their HTTP and model clients (building one costs milliseconds), yet a
rotated secret takes effect on the next call, with no worker restart."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
import time
from typing import Any

import httpx
import keyring
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.testing import ActivityEnvironment

from countersign.activities.agent_specs import AGENTS
from countersign.activities.http import BearerFromKeyring, HttpClients
from countersign.activities.model import ModelActivities
from countersign.activities.runtime import Runtime
from countersign.credentials import SERVICE, openai_api_key
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


async def test_the_model_call_posts_the_conversation_as_given_with_the_current_key(
    runtime: Runtime,
) -> None:
    """The model call posts its request itself (no per-message rewriting by the SDK): the
    endpoint gets the key, the messages and the tools exactly as the activity built them, and
    the reply comes back typed, with the sha256 of the very bytes the endpoint received."""
    seen: list[tuple[str | None, Any]] = []
    received: list[bytes] = []

    async def completions(request: Request) -> JSONResponse:
        assert request.headers.get("content-type") == "application/json"
        received.append(await request.body())
        seen.append((request.headers.get("authorization"), await request.json()))
        message = {"role": "assistant", "content": "done", "refusal": None}
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "echo",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "endpoint did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        settings = runtime.settings.model_copy(
            update={"openai_base_url": f"http://127.0.0.1:{port}/v1"}
        )
        models = ModelActivities(
            dataclasses.replace(runtime, settings=settings, http=HttpClients())
        )
        agent = next(iter(AGENTS.values()))
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "refund A-1001"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "shop.lookup_order", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "{}"},
        ]
        tools = [{"type": "function", "function": {"name": "shop.lookup_order", "parameters": {}}}]
        in_activity = ActivityEnvironment()
        response, prompt_hash = await in_activity.run(models._complete, agent, messages, tools)
        assert response.choices[0].message.content == "done"
        assert response.usage is not None and response.usage.total_tokens == 4
        no_tools, _ = await in_activity.run(models._complete, agent, messages[:2], [])
        assert no_tools.model == "echo"
        assert prompt_hash == hashlib.sha256(received[0]).hexdigest()
        await models.runtime.http.aclose()
    finally:
        server.should_exit = True
        thread.join(5)
    assert seen == [
        (
            f"Bearer {openai_api_key()}",
            {"model": agent.model, "messages": messages, "tools": tools},
        ),
        (f"Bearer {openai_api_key()}", {"model": agent.model, "messages": messages[:2]}),
    ]
