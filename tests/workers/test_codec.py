"""Protected payloads: what the Temporal server stores is ciphertext; keys rotate."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import MarkerRecordedEventAttributes
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.payload_keys import PayloadKeys, load_payload_keys
from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.credentials import configure_keyring
from countersign.settings import Settings
from countersign.workers.codec import (
    ENCODING,
    EncryptionCodec,
    PayloadKeyError,
    encrypted_data_converter,
)
from countersign.workers.replay import LOCAL_ACTIVITY_MARKER
from countersign.workers.worker import build_worker
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import signed, start_run

COMMENT = "Checked the photo: zebra-crossing-7781."


def history_bytes(events: list[Message]) -> bytes:
    return b"".join(e.SerializeToString() for e in events)


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every payload in a protobuf message (history events nest them deeply), except search
    attributes (the server indexes those, so they are plain by design and carry no PII) and
    the SDK core's own marker bookkeeping (a patch id; a local activity's id, type, attempt and
    times). A local activity's result and failure are ours, and are included."""
    if isinstance(message, Payload):
        yield message
        return
    if isinstance(message, MarkerRecordedEventAttributes):
        if "result" in message.details:
            yield from message.details["result"].payloads
        if message.HasField("failure"):
            yield from payloads_in(message.failure)
        return
    for field, value in message.ListFields():
        if field.message_type is None or field.name == "search_attributes":
            continue
        if field.is_repeated:
            items = value.values() if hasattr(value, "values") else value
            for item in items:
                if isinstance(item, Message):
                    yield from payloads_in(item)
        else:
            yield from payloads_in(value)


async def test_history_holds_no_plaintext_of_arguments_results_or_decisions(
    temporal: WorkflowEnvironment, worker: Worker, settings: Settings
) -> None:
    client = temporal.client
    lookup = await start_run(
        client, worker.task_queue, agent="crm-updates", task="Update customer C-200 phone please."
    )
    await lookup.result()
    refund = await start_run(client, worker.task_queue, task="Refund order A-1002: it leaks.")
    (request,) = await wait_for_pending(refund)
    await refund.execute_update(
        AgentRun.decide,
        signed(refund.id, request, "alice", comment=COMMENT),
    )
    result = await refund.result()
    [refunded] = [a for a in result.actions if a.tool == "payments.refund"]
    assert refunded.arguments["amount_cents"] == 18900

    codec = EncryptionCodec(load_payload_keys(settings))
    for handle in (lookup, refund):
        history = await handle.fetch_history()
        raw = history_bytes(list(history.events))
        payloads = [p for e in history.events for p in payloads_in(e)]
        assert payloads and all(p.metadata["encoding"] == ENCODING for p in payloads)
        # The guard's verdicts and audit appends are local activities: their results count.
        local = [
            e.marker_recorded_event_attributes
            for e in history.events
            if e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        ]
        assert local and all("result" in m.details for m in local)
        plain = b"".join(p.SerializeToString() for p in await codec.decode(payloads))
        # The facts are in the history (the worker replays them), only never in plain text.
        secrets = {
            lookup: ['"tier":"standard"', "the current contact details"],
            refund: ["18900", COMMENT, "it leaks", "Espresso machine"],
        }[handle]
        for value in secrets:
            assert value.encode() in plain, value
            assert value.encode() not in raw, value
        # Personal data is sealed before it reaches history at all (activities/sealing.py).
        for value in ["grace@example.com", "Grace Hopper", "+44 20 7946 0000"]:
            assert value.encode() not in plain and value.encode() not in raw, value


async def test_failure_messages_are_encrypted_too(
    temporal: WorkflowEnvironment, worker: Worker
) -> None:
    handle = await start_run(temporal.client, worker.task_queue, task="x")  # too short
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert "invalid run input: task" in str(failed.value.cause)
    raw = history_bytes(list((await handle.fetch_history()).events))
    assert b"invalid run input" not in raw
    assert b"Encoded failure" in raw


async def test_rotated_keys_decrypt_old_payloads_and_encrypt_with_the_new_key() -> None:
    old = PayloadKeys.generate()
    new = old.rotated()
    assert new.active != old.active and set(old.keys) < set(new.keys)
    message = Payload(metadata={"encoding": b"json/plain"}, data=b'{"amount_cents": 18900}')
    (sealed_old,) = await EncryptionCodec(old).encode([message])
    (sealed_new,) = await EncryptionCodec(new).encode([message])
    assert sealed_new.metadata["encryption-key-id"] == new.active.encode()
    assert b"18900" not in sealed_old.data + sealed_new.data
    assert await EncryptionCodec(new).decode([sealed_old, sealed_new]) == [message, message]
    # A payload from before encryption was switched on passes through.
    assert await EncryptionCodec(new).decode([message]) == [message]
    # The ring round-trips through its keyring form.
    assert PayloadKeys.from_json(new.to_json()) == new


async def test_unknown_keys_and_altered_ciphertext_fail_clearly() -> None:
    keys = PayloadKeys.generate()
    (sealed,) = await EncryptionCodec(keys).encode([Payload(data=b"x")])
    with pytest.raises(PayloadKeyError, match="not in this keyring"):
        await EncryptionCodec(PayloadKeys.generate()).decode([sealed])
    altered = Payload()
    altered.CopyFrom(sealed)
    altered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="failed authentication"):
        await EncryptionCodec(keys).decode([altered])


async def test_a_run_survives_key_rotation_mid_run(
    temporal: WorkflowEnvironment, settings: Settings, runtime: Runtime
) -> None:
    """Started under the old key, finished by a worker whose ring has a new active key."""
    old = load_payload_keys(settings)
    new = old.rotated()
    target = temporal.client.service_client.config.target_host
    queue = f"rotate-{uuid.uuid4().hex[:8]}"
    before = await Client.connect(target, data_converter=encrypted_data_converter(old))
    after = await Client.connect(target, data_converter=encrypted_data_converter(new))
    # The first worker's sticky queue would hold the next task ~10 s after it stops.
    sticky = {"sticky_queue_schedule_to_start_timeout": timedelta(seconds=1)}
    async with build_worker(before, settings, runtime, task_queue=queue, **sticky):
        handle = await start_run(before, queue, task="Refund order A-1002: rotated.")
        (request,) = await wait_for_pending(handle)
    async with build_worker(after, settings, runtime, task_queue=queue, **sticky):
        await after.get_workflow_handle(handle.id).execute_update(
            AgentRun.decide, signed(handle.id, request, "alice")
        )
        result = await after.get_workflow_handle_for(AgentRun.run, handle.id).result()
    assert result.status == "completed"
    history = await after.get_workflow_handle(handle.id).fetch_history()
    key_ids = {
        p.metadata["encryption-key-id"].decode() for e in history.events for p in payloads_in(e)
    }
    assert key_ids == {old.active, new.active}
    # A client with only the new key cannot read the old part of the history.
    with pytest.raises(PayloadKeyError, match="not in this keyring"):
        await EncryptionCodec(PayloadKeys(new.active, {new.active: new.keys[new.active]})).decode(
            [p for e in history.events for p in payloads_in(e)]
        )


@pytest.fixture
def own_keyring(tmp_path: Path, settings: Settings) -> Iterator[Settings]:
    """Settings with a keyring of their own; the session's keyring is back afterwards (the
    keyring backend is process-wide)."""
    try:
        yield Settings(state_dir=tmp_path)
    finally:
        configure_keyring(settings)


def test_keys_command_creates_then_rotates_the_ring(own_keyring: Settings) -> None:
    tmp_path = own_keyring.state_dir
    env = {**os.environ, "COUNTERSIGN_STATE_DIR": str(tmp_path)}

    def countersign(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "countersign.workers", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def keys(action: str) -> str:
        out = countersign("keys", action)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "payload keys ready (active pk_" in keys("init")
    first = load_payload_keys(own_keyring)
    assert "payload keys ready (active " + first.active in keys("init")  # idempotent
    assert "2 key(s)" in keys("rotate")
    ring = load_payload_keys(own_keyring)
    assert ring.active != first.active and ring.keys[first.active] == first.keys[first.active]
    # Nothing secret on the screen.
    assert base64.b64encode(ring.keys[ring.active]).decode() not in keys("rotate")

    # A damaged ring is never silently replaced: its keys may be all that reads old histories.
    assert countersign("secrets", "set", "payload-keys", stdin="not json\n").returncode == 0
    refused = countersign("keys", "rotate")
    assert refused.returncode == 2 and "repair it" in refused.stderr
    assert countersign("keys", "init").returncode == 2
