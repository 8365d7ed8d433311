"""Protected payloads: what the Temporal server stores is ciphertext; keys rotate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from agents.run import AgentRun
from guardrails.approvals import Decision
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import start_run
from workers.codec import (
    ENCODING,
    EncryptionCodec,
    PayloadKeyError,
    PayloadKeys,
    load_payload_keys,
)
from workers.settings import Settings

COMMENT = "Checked the photo: zebra-crossing-7781."


def history_bytes(events: list[Message]) -> bytes:
    return b"".join(e.SerializeToString() for e in events)


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every payload in a protobuf message (history events nest them deeply), except search
    attributes: the server indexes those, so they are plain by design (and carry no PII)."""
    if isinstance(message, Payload):
        yield message
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
        Decision(request_id=request.request_id, approver="alice", approve=True, comment=COMMENT),
    )
    result = await refund.result()
    assert result.actions[1].arguments["amount_cents"] == 18900

    codec = EncryptionCodec(load_payload_keys(settings))
    for handle in (lookup, refund):
        history = await handle.fetch_history()
        raw = history_bytes(list(history.events))
        payloads = [p for e in history.events for p in payloads_in(e)]
        assert payloads and all(p.metadata["encoding"] == ENCODING for p in payloads)
        plain = b"".join(p.SerializeToString() for p in await codec.decode(payloads))
        # The facts are in the history (the worker replays them), only never in plain text.
        secrets = {
            lookup: ["grace@example.com", "Grace Hopper", "+44 20 7946 0000"],
            refund: ["18900", COMMENT, "it leaks", "Espresso machine"],
        }[handle]
        for value in secrets:
            assert value.encode() in plain, value
            assert value.encode() not in raw, value


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
