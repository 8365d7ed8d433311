"""The canary test: unique secret and personal values planted through every path (tool
arguments, tool results, the model's reply, approval notices, failure messages) reach none
of the places Countersign keeps things: the audit trail, the worker's log, the approval-link
store, the transcript store, or Temporal history (decrypted)."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.activities.tools import REGISTRY, Personal, Secret, ToolContext, guarded_tool
from countersign.agents.run import AgentRun
from countersign.settings import Settings
from countersign.workers.codec import EncryptionCodec
from countersign.workers.logging import configure_logging
from countersign.workers.worker import build_worker, check_startup
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import TEST_PAYLOAD_KEYS, Shop, signed, start_run

TAG = uuid.uuid4().hex[:10]
CANARY = {
    "argument_secret": f"pw-{TAG}-argument",
    "argument_personal": f"canary.{TAG}@example.com",
    "result_secret": f"rc-{TAG}-result",
    "result_personal": f"{TAG} Canary Lane, Springfield",
    "failure_secret": f"fail-{TAG}-echoed",
}


class LoginArgs(BaseModel):
    customer_id: str = Field(pattern=r"^C-\d{3}$")
    email: Personal[str]
    portal_password: Secret[str]


class LoginResult(BaseModel):
    customer_id: str
    contact: Personal[str]
    recovery_code: SecretStr


async def reset_login(args: LoginArgs, ctx: ToolContext) -> LoginResult:
    """Reset a customer's portal login (a test tool with secret and personal fields)."""
    async with ctx.http("shop") as shop:
        if args.portal_password.startswith("fail-"):
            # Like many systems, the shop echoes the value it refuses.
            await shop.patch(
                f"/customers/{args.customer_id}",
                json={"fields": {"tier": args.portal_password}},
                headers=ctx.idempotency_headers(),
            )
        await shop.get(f"/customers/{args.customer_id}")
    return LoginResult(
        customer_id=args.customer_id,
        contact=args.email,
        recovery_code=SecretStr(CANARY["result_secret"]),
    )


SCRIPT = {
    "name": "canary",
    "match": r"(?i)^canary check for (?P<customer_id>C-\d{3})",
    "turns": [
        {
            "tool_calls": [
                {"name": "customers.lookup", "arguments": {"customer_id": "{customer_id}"}}
            ]
        },
        {
            "say": "The address on file is {result:customers.lookup.address}.",
            "tool_calls": [
                {
                    "name": "portal.reset_login",
                    "arguments": {
                        "customer_id": "{customer_id}",
                        "email": CANARY["argument_personal"],
                        "portal_password": CANARY["argument_secret"],
                    },
                    "reason": "the customer asked for a new login",
                },
                {
                    "name": "crm.add_note",
                    "arguments": {
                        "customer_id": "{customer_id}",
                        "text": "Address confirmed: {result:customers.lookup.address}",
                    },
                    "reason": "record it",
                },
            ],
        },
        {
            "say": "Your recovery code is {result:portal.reset_login.recovery_code}; once more.",
            "tool_calls": [
                {
                    "name": "portal.reset_login",
                    "arguments": {
                        "customer_id": "{customer_id}",
                        "email": CANARY["argument_personal"],
                        "portal_password": CANARY["failure_secret"],
                    },
                }
            ],
        },
        {"say": "Done."},
    ],
}


@pytest.fixture
def captured_logs(capfd: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(level="INFO", json=True)
    yield capfd
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
async def canary_worker(
    temporal: WorkflowEnvironment,
    settings: Settings,
    session_policy: Path,
    task_queue: str,
    tmp_path: Path,
    scripts_dir: Path,
) -> AsyncIterator[tuple[Worker, Runtime]]:
    guarded_tool("portal.reset_login", scope="crm:write", risk="high")(reset_login)
    (scripts_dir / "canary.json").write_text(json.dumps(SCRIPT))
    folder = tmp_path / "policy"
    shutil.copytree(session_policy, folder)
    (folder / "portal.cedar").write_text(
        '@id("portal.reset")\n'
        'permit(principal, action == Action::"portal.reset_login", resource);\n'
    )
    with_tool = settings.model_copy(update={"policy_path": folder})
    runtime = check_startup(with_tool)
    try:
        async with build_worker(temporal.client, with_tool, runtime, task_queue=task_queue) as w:
            yield w, runtime
    finally:
        REGISTRY.pop("portal.reset_login", None)
        (scripts_dir / "canary.json").unlink()


async def approve_all(handle: WorkflowHandle[Any, Any], count: int) -> None:
    for request in await wait_for_pending(handle, count):
        await handle.execute_update(AgentRun.decide, signed(handle.id, request, "alice"))


async def decrypted_history(handle: WorkflowHandle[Any, Any]) -> str:
    """Every payload of the run's history, decrypted, as text (the codec encrypts them all)."""
    codec = EncryptionCodec(TEST_PAYLOAD_KEYS)
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and isinstance(node.get("metadata"), dict):
                payload = Payload(
                    metadata={k: base64.b64decode(v) for k, v in node["metadata"].items()},
                    data=base64.b64decode(node["data"]),
                )
                parts.append(codec.decrypt(payload).data.decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            parts.append(node)

    walk((await handle.fetch_history()).to_json_dict())
    return "\n".join(parts)


def stored_files(settings: Settings) -> dict[str, bytes]:
    """Everything Countersign keeps in its state folder (SQLite files with their WAL), but not
    the systems it talks to: the shop's database and the demo services' logs."""
    return {
        str(p.relative_to(settings.state_dir)): p.read_bytes()
        for p in settings.state_dir.rglob("*")
        if p.is_file() and not p.name.startswith("shop.") and "logs" not in p.parts
    }


async def test_planted_secret_and_personal_values_are_found_nowhere(
    temporal: WorkflowEnvironment,
    canary_worker: tuple[Worker, Runtime],
    shop: Shop,
    settings: Settings,
    captured_logs: pytest.CaptureFixture[str],
) -> None:
    worker, runtime = canary_worker
    with shop.client() as c:  # personal data in the system of record, read by a tool
        c.patch(
            "/customers/C-200",
            json={"fields": {"address": CANARY["result_personal"]}},
            headers={"Idempotency-Key": f"canary-{TAG}"},
        ).raise_for_status()

    handle = await start_run(
        temporal.client,
        worker.task_queue,
        mode="augment",  # every side effect asks a human: summaries, notices, links
        task="Canary check for C-200, please.",
        subject={"customer_id": "C-200"},
    )
    await approve_all(handle, 2)
    await approve_all(handle, 1)
    result = await handle.result()

    # It all really happened, with the clear values where they belong.
    status = [(a.tool, a.status) for a in result.actions]
    assert status == [
        ("customers.lookup", "executed"),
        ("portal.reset_login", "executed"),
        ("crm.add_note", "executed"),
        ("portal.reset_login", "failed"),
    ]
    notes = [n["text"] for n in shop.state()["notes"] if n["customer_id"] == "C-200"]
    assert f"Address confirmed: {CANARY['result_personal']}" in notes
    assert "[secret]" in result.actions[3].detail  # the echoed value, scrubbed
    requested = runtime.audit.find(handle.id, "approval.requested")
    # (the name-based net redacts a password field before its type is looked at)
    assert any("portal_password=[redacted]" in r.data["action"] for r in requested)
    assert any("email=[personal]" in r.data["action"] for r in requested)

    places = {
        "history": await decrypted_history(handle),
        "audit": json.dumps([r.model_dump(mode="json") for r in runtime.audit.for_run(handle.id)]),
        "transcript": json.dumps(await runtime.transcripts.read(handle.id, 1000)),
        "result": result.model_dump_json(),
        **{
            f"file {name}": data.decode("utf-8", "replace")
            for name, data in stored_files(settings).items()
        },
    }
    logs = captured_logs.readouterr()
    places["log"] = logs.out + logs.err
    assert "approval.requested" in places["log"]  # the capture did see the worker's log
    assert {"file audit.sqlite3", "file transcripts.sqlite3", "file approval-links.sqlite3"} <= {
        n.split("-wal")[0] for n in places
    }
    leaks = [
        (name, where)
        for name, value in CANARY.items()
        for where, text in places.items()
        if value in text
    ]
    assert leaks == [], leaks
