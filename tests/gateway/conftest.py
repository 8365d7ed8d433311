"""Real parts for the approval gateway: an SMTP server (aiosmtpd), a local Slack-API-compatible
server that records every call, a webhook receiver, the gateway itself on uvicorn, and a
worker whose notify activity uses all three channels. Plus a headless Debian chromium."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import hmac
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.credentials import set_secret
from countersign.settings import (
    EmailSettings,
    Settings,
    SlackSettings,
    WebhookSettings,
)
from countersign.workers.devstack import free_port
from countersign.workers.gateway import Gateway, UpdatesOnly, create_app
from countersign.workers.identities import ensure_dev_directory
from countersign.workers.worker import build_worker, check_startup, connect
from tests.conftest import CHROMIUM_ARGS, TEST_PEOPLE, TEST_SLACK_USERS

SLACK_BOT_TOKEN = "xoxb-test-" + "0" * 24
SLACK_SIGNING_SECRET = "slack-signing-secret-for-tests-0123456789"
WEBHOOK_SECRET = "webhook-secret-for-tests-0123456789"
SLACK_CHANNEL = "C0APPROVALS"
ARTIFACTS = Path(__file__).parent.parent.parent / "test-artifacts"
# Demo policy people; dana requests the runs (and so may never approve them).
SLACK_USERS = TEST_SLACK_USERS


class _InLoopServer(uvicorn.Server):
    """uvicorn in the test's event loop, leaving pytest's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = _InLoopServer(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, access_log=False, log_config=None, lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    return server, task


async def stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


@dataclass
class FakeSlack:
    """A Slack-API-compatible server: records Web API calls, response_url posts and webhook
    deliveries; can be told to fail."""

    url: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    hooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_with: int | None = None
    _ts: int = 0

    def app(self) -> Starlette:
        async def api(request: Request) -> JSONResponse:
            method = request.path_params["method"]
            if request.headers.get("authorization") != f"Bearer {SLACK_BOT_TOKEN}":
                return JSONResponse({"ok": False, "error": "invalid_auth"})
            if self.fail_with:
                return JSONResponse({"ok": False}, status_code=self.fail_with)
            body = await request.json()
            if body.get("channel") == "C0MISSING":
                return JSONResponse({"ok": False, "error": "channel_not_found"})
            if method == "chat.postMessage":
                self._ts += 1
                ts = f"1700000000.{self._ts:06d}"
                # Recorded with the ts Slack assigned, as a message the tests can click.
                self.calls.append((method, {**body, "ts": ts}))
                return JSONResponse({"ok": True, "channel": body["channel"], "ts": ts})
            self.calls.append((method, body))
            if method == "chat.update":
                return JSONResponse({"ok": True, "channel": body["channel"], "ts": body["ts"]})
            return JSONResponse({"ok": False, "error": "unknown_method"})

        async def respond(request: Request) -> JSONResponse:
            self.responses.append(await request.json())
            return JSONResponse({"ok": True})

        async def hook(request: Request) -> JSONResponse:
            self.hooks.append((dict(request.headers), await request.body()))
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[
                Route("/api/{method}", api, methods=["POST"]),
                Route("/respond/{n}", respond, methods=["POST"]),
                Route("/hooks/{name}", hook, methods=["POST"]),
            ]
        )

    def posted(self, request_id_fragment: str = "") -> list[dict[str, Any]]:
        return [
            body
            for method, body in self.calls
            if method == "chat.postMessage" and request_id_fragment in json.dumps(body)
        ]

    def updates(self, ts: str) -> list[dict[str, Any]]:
        return [body for method, body in self.calls if method == "chat.update" and body["ts"] == ts]


@dataclass
class Mailbox:
    """What the test SMTP server received."""

    messages: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    async def wait_for(self, count: int, to: str | None = None, **match: str) -> list[EmailMessage]:
        for _ in range(200):
            found = [
                m
                for m in list(self.messages)
                if (to is None or m["To"] == to) and all(v in str(m[k]) for k, v in match.items())
            ]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"expected {count} message(s) to {to} {match}, got {len(found)}")


@pytest.fixture(scope="session")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture(scope="session")
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    port = free_port()
    fake.url = f"http://127.0.0.1:{port}"
    server, task = await serve(fake.app(), port)
    yield fake
    await stop(server, task)


@pytest.fixture(scope="session")
def gateway_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def channel_settings(
    settings: Settings,
    temporal: WorkflowEnvironment,
    mailbox: tuple[Mailbox, int],
    fake_slack: FakeSlack,
    gateway_port: int,
) -> Settings:
    """The session settings plus all three channels, pointed at the local fakes."""
    set_secret("slack-bot-token", SLACK_BOT_TOKEN)
    set_secret("slack-signing-secret", SLACK_SIGNING_SECRET)
    set_secret("webhook-secret", WEBHOOK_SECRET)
    channels = settings.model_copy(
        update={
            "temporal_address": temporal.client.service_client.config.target_host,
            "gateway_url": f"http://127.0.0.1:{gateway_port}",
            "slack": SlackSettings(channel=SLACK_CHANNEL, api_url=f"{fake_slack.url}/api"),
            "email": EmailSettings(
                smtp_host="127.0.0.1", smtp_port=mailbox[1], smtp_security="none"
            ),
            "webhook": WebhookSettings(urls=[f"{fake_slack.url}/hooks/teams"]),
        }
    )
    # Approvers' addresses and Slack ids are in the directory; this adds the webhook's identity.
    ensure_dev_directory(channels, TEST_PEOPLE, slack_users=SLACK_USERS)
    return channels


@pytest.fixture(scope="session")
def channel_runtime(channel_settings: Settings) -> Runtime:
    return check_startup(channel_settings)


@pytest.fixture(scope="session")
async def gateway(channel_settings: Settings, gateway_port: int) -> AsyncIterator[Gateway]:
    """The approval gateway on real HTTP, with its updates-only Temporal client."""
    client = await connect(channel_settings, interceptors=[UpdatesOnly()])
    gw = Gateway.from_settings(channel_settings, client)
    server, task = await serve(create_app(gw), gateway_port)
    yield gw
    await stop(server, task)


@pytest.fixture
async def worker(
    temporal: WorkflowEnvironment,
    channel_settings: Settings,
    channel_runtime: Runtime,
    task_queue: str,
) -> AsyncIterator[Worker]:
    """Overrides the suite's worker: this one notifies on Slack, email and webhook."""
    w = build_worker(
        temporal.client,
        channel_settings,
        channel_runtime,
        task_queue=task_queue,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
    )
    async with w:
        yield w


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian chromium is missing: apt-get install -y chromium (see .ci/run)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=executable,
            args=CHROMIUM_ARGS,
        )
        yield b
        await b.close()


def slack_request(
    payload: dict[str, Any],
    *,
    secret: str = SLACK_SIGNING_SECRET,
    age: float = 0,
) -> tuple[bytes, dict[str, str]]:
    """An interaction as Slack sends it: form-encoded payload, v0 signature, timestamp."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(time.time() - age))
    mac = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return body, {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": "v0=" + mac.hexdigest(),
    }


def click(message: dict[str, Any], fake: FakeSlack, user: str, verb: str) -> dict[str, Any]:
    """The block_actions payload Slack sends when `user` clicks a button of `message`."""
    actions = next(b for b in message["blocks"] if b["type"] == "actions")
    button = next(e for e in actions["elements"] if e["action_id"] == f"countersign.{verb}")
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower()},
        "team": {"id": "T0TEST"},
        "channel": {"id": message["channel"]},
        "container": {
            "type": "message",
            "channel_id": message["channel"],
            "message_ts": message["ts"],
        },
        "message": {"ts": message["ts"], "text": message["text"], "blocks": message["blocks"]},
        "response_url": f"{fake.url}/respond/{len(fake.responses)}",
        "trigger_id": "1.2.3",
        "actions": [
            {
                "type": "button",
                "action_id": button["action_id"],
                "block_id": actions["block_id"],
                "value": button["value"],
            }
        ],
    }


async def wait_until(predicate: Any, what: str, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gateway_http(gateway: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.settings.gateway_url, timeout=10)
