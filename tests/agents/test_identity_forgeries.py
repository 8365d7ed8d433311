"""A countersignature must be proven, not typed: every forgery below is tried through the real
stack (dev server, worker, demo shop) and must be refused with zero side effects in the shop
and an audit record; the legitimate paths still decide."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.agents.state import RollbackRequest, RunInput
from countersign.guardrails.identity import Envelope
from countersign.settings import Settings
from countersign.workers.decisions import rollback_request, signed_start
from countersign.workers.identities import signer_for
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run, wait_for_undo_window


async def refused(handle: WorkflowHandle[Any, Any], payload: Any) -> str:
    """Send a decision Update under a fresh update id; return why the run refused it."""
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await handle.execute_update("decide", payload, id=uuid.uuid4().hex)
    return str(e.value.cause)


async def refusals(runtime: Runtime, workflow_id: str, count: int) -> list[str]:
    """The run's `approval.refused` records, once there are `count` of them."""
    for _ in range(200):
        found = runtime.audit.find(workflow_id, "approval.refused")
        if len(found) >= count:
            return [r.data["reason"] for r in found]
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} refusal records, found {len(found)}")


def forged(envelope: Envelope, **changes: Any) -> dict[str, Any]:
    """The envelope with statement fields changed after signing."""
    data = envelope.model_dump(mode="json")
    data["statement"].update(changes)
    return data


async def test_a_typed_name_decides_nothing_on_any_path(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    handle = await start_run(temporal.client, worker.task_queue, task="Refund order A-1002: leak.")
    (request,) = await wait_for_pending(handle)
    bare = {"request_id": request.request_id, "approver": "alice", "approve": True}

    # A plain Temporal client, no Countersign keys or codec, sending the Update by hand.
    target = temporal.client.service_client.config.target_host
    plain = await Client.connect(target, namespace=temporal.client.namespace)
    # (Failure messages are encrypted: a client without the payload keys reads only the type.)
    assert "DecisionRefused" in await refused(plain.get_workflow_handle(handle.id), bare)
    reasons = []
    # The same from our own client, and every variant of a signed statement that lies.
    alice = signed(handle.id, request, "alice")
    bob_key = signer_for("bob")
    now = datetime.now(UTC)
    reasons += [
        await refused(handle, {**bare, "channel": "email"}),
        await refused(handle, forged(alice, approve=False)),  # edited after signing
        await refused(handle, forged(alice, identity="carol")),  # alice's key, carol's name
        await refused(  # bob's own key claiming a channel only the gateway attests
            handle, signed(handle.id, request, "bob", channel="email")
        ),
        await refused(  # bob's key signing for alice
            handle,
            bob_key.sign(
                purpose="decision",
                channel="cli",
                now=now,
                identity="alice",
                workflow_id=handle.id,
                request_id=request.request_id,
                action_hash=request.action_hash,
                approve=True,
            ),
        ),
        await refused(handle, signed(handle.id, request, "mallory")),  # in no approver group
        await refused(handle, signed("run-elsewhere", request, "alice")),
        await refused(
            handle,
            signed(handle.id, request.model_copy(update={"action_hash": "act_other"}), "alice"),
        ),
        await refused(
            handle,
            signed(handle.id, request.model_copy(update={"request_id": "apr_other"}), "alice"),
        ),
        await refused(
            handle,
            bob_key.sign(
                purpose="decision",
                channel="cli",
                now=now - timedelta(hours=2),
                workflow_id=handle.id,
                request_id=request.request_id,
                action_hash=request.action_hash,
                approve=True,
            ),
        ),
    ]
    expected = [
        "typed name proves nothing",
        "signature does not match",
        "signature does not match",
        "attested by the approval gateway only",
        "may not sign for 'alice'",
        "mallory may not decide",
        "signed for run 'run-elsewhere'",
        "signed for action act_other",
        "unknown approval request 'apr_other'",
        "expired",
    ]
    for reason, want in zip(reasons, expected, strict=False):
        assert want in reason
    # The UI's "Send a Signal" with a typed name: refused, audited, and shown to people.
    await handle.signal("decision", bare)
    audited = await refusals(runtime, handle.id, len(expected) + 2)
    assert "typed name proves nothing" in audited[0]  # the plain client's
    assert "typed name proves nothing" in audited[-1]
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "Refused decisions" in metadata.current_details
    assert "typed name proves nothing" in metadata.current_details

    assert shop.refunds("A-1002") == []
    assert (await handle.query(AgentRun.status)).pending_approvals
    # The UI path that works: bob pastes the envelope `countersign reject … --print` prints.
    pasted = signed(handle.id, request, "bob", approve=False, channel="temporal-ui")
    await handle.signal("decision", {"envelope": pasted.model_dump(mode="json")})
    result = await handle.result()
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["rejected"]
    (decided,) = runtime.audit.find(handle.id, "approval.decided")
    assert decided.actor == "temporal-ui:bob"
    assert decided.data["proof"]["statement"]["key_id"] == signer_for("bob").key_id


async def test_one_person_cannot_fill_a_two_person_quorum(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1003: the lid is cracked."
    )
    (request,) = await wait_for_pending(handle)
    assert request.need.quorum == 2 and request.need.required_group == "finance"
    first = signed(handle.id, request, "alice")
    receipt = await handle.execute_update(AgentRun.decide, first)
    assert (receipt.status, receipt.approvals) == ("pending", 1)

    assert "already used" in await refused(handle, first)  # the same envelope again
    assert "already decided" in await refused(handle, signed(handle.id, request, "alice"))
    as_carol = forged(signed(handle.id, request, "alice"), identity="carol")
    assert "signature does not match" in await refused(handle, as_carol)
    await refusals(runtime, handle.id, 3)
    assert shop.refunds("A-1003") == []

    done = await handle.execute_update(AgentRun.decide, signed(handle.id, request, "carol"))
    assert done.status == "approved"
    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and sorted(refund.approved_by) == ["alice", "carol"]
    assert len(shop.refunds("A-1003")) == 1


def start_input(workflow_id: str, who: str, signer: str | None = None, **fields: Any) -> dict:
    """A run input with `signer`'s signed start statement (as `countersign start` sends it)."""
    run_input = RunInput(agent="support-refunds", requested_by=who, **fields)
    return signed_start(signer_for(signer or who), workflow_id, run_input).model_dump(mode="json")


async def test_a_verified_requester_cannot_approve_under_any_name(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    workflow_id = f"run-{uuid.uuid4().hex[:12]}"
    handle = await temporal.client.start_workflow(
        AgentRun.run,
        start_input(
            workflow_id,
            "alice",
            task="Refund order A-1006: wrong colour.",
            subject={"order_id": "A-1006"},
        ),
        id=workflow_id,
        task_queue=worker.task_queue,
        execution_timeout=timedelta(minutes=5),
    )
    (request,) = await wait_for_pending(handle)
    assert request.requester == "alice"
    (started,) = runtime.audit.find(workflow_id, "run.started")
    assert started.actor == "requester:alice" and started.data["requester"]["verified"]

    assert "requested this run" in await refused(handle, signed(workflow_id, request, "alice"))
    as_bob = forged(signed(workflow_id, request, "alice"), identity="bob")
    assert "signature does not match" in await refused(handle, as_bob)
    assert shop.refunds("A-1006") == []
    await handle.execute_update(AgentRun.decide, signed(workflow_id, request, "bob"))
    await handle.result()
    assert len(shop.refunds("A-1006")) == 1


async def test_a_claimed_requester_is_unknown_and_excludes_no_one(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime
) -> None:
    # Started from the Temporal UI: the name is only claimed, recorded as such, excludes no one.
    claimed = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: leak.", requested_by="bob"
    )
    (request,) = await wait_for_pending(claimed)
    assert request.requester is None
    (started,) = runtime.audit.find(claimed.id, "run.started")
    assert started.actor == "requester:bob (claimed)"
    await claimed.execute_update(AgentRun.decide, signed(claimed.id, request, "bob", False))
    await claimed.result()


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("signed by someone else", "signed by 'mallory'"),
        ("signed for another input", "another input"),
        ("signed for another run", "another run"),
    ],
)
async def test_a_bad_start_proof_fails_the_run_at_once(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, case: str, why: str
) -> None:
    workflow_id = f"bad-proof-{uuid.uuid4().hex[:8]}"
    task = "Refund order A-1002: leak."
    run_input = {
        "signed by someone else": start_input(workflow_id, "alice", "mallory", task=task),
        "signed for another input": {
            **start_input(workflow_id, "alice", task=task),
            "task": "Refund order A-1003 instead.",
        },
        "signed for another run": start_input("run-elsewhere", "alice", task=task),
    }[case]
    bad = await temporal.client.start_workflow(
        AgentRun.run, run_input, id=workflow_id, task_queue=worker.task_queue
    )
    with pytest.raises(WorkflowFailureError) as e:
        await asyncio.wait_for(bad.result(), timeout=20)
    assert "requester_proof" in str(e.value.cause) and why in str(e.value.cause)
    assert runtime.audit.find(workflow_id, "run.refused")


def revoke(directory: Path, key_id: str) -> str:
    """Mark `key_id` revoked now in the directory file; return the file as it was."""
    original = directory.read_text()
    revoked = re.sub(
        rf'(\{{ id = "{key_id}", public_key = "[^"]+")',
        rf"\1, revoked_at = {datetime.now(UTC).isoformat()}",
        original,
    )
    assert revoked != original
    directory.write_text(revoked)
    return original


async def test_a_revoked_key_decides_nothing_from_then_on(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, settings: Settings, shop: Shop
) -> None:
    handle = await start_run(temporal.client, worker.task_queue, task="Refund order A-1002: leak.")
    (request,) = await wait_for_pending(handle)
    original = revoke(settings.directory_file, signer_for("bob").key_id)
    try:
        assert "was revoked" in await refused(handle, signed(handle.id, request, "bob"))
    finally:
        settings.directory_file.write_text(original)
    assert shop.refunds("A-1002") == []
    await handle.execute_update(AgentRun.decide, signed(handle.id, request, "alice", False))
    await handle.result()


async def test_rollback_needs_a_verified_operator_in_the_rollback_groups(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        undo_window_seconds=300,
        task="Refund order A-1015: board split.",
    )
    await wait_for_undo_window(handle)
    (refund,) = shop.refunds("A-1015")

    async def rollback_refused(request: RollbackRequest) -> str:
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await handle.execute_update(AgentRun.rollback, request, id=uuid.uuid4().hex)
        return str(e.value.cause)

    by_name = RollbackRequest(requested_by="alice", reason="duplicate ticket")
    assert "typed name proves nothing" in await rollback_refused(by_name)
    mallory = rollback_request(signer_for("mallory"), handle.id, "duplicate ticket")
    assert "mallory may not rollback" in await rollback_refused(mallory)
    alice = rollback_request(signer_for("alice"), handle.id, "duplicate ticket")
    other_reason = alice.model_copy(update={"reason": "something else"})
    assert "another reason" in await rollback_refused(other_reason)
    assert len(runtime.audit.find(handle.id, "rollback.refused")) == 3
    assert [r["status"] for r in shop.refunds("A-1015")] == [refund["status"]] == ["succeeded"]

    await handle.execute_update(AgentRun.rollback, alice)
    result = await handle.result()
    assert result.status == "rolled_back"
    (requested,) = runtime.audit.find(handle.id, "rollback.requested")
    assert requested.actor == "operator:alice"


async def test_payloads_of_any_shape_decide_nothing_and_are_audited(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    handle = await start_run(temporal.client, worker.task_queue, task="Refund order A-1002: leak.")
    (request,) = await wait_for_pending(handle)
    alice = signer_for("alice")
    # A statement alice really signed, but for another purpose (a rollback of this run).
    rollback = alice.sign(
        purpose="rollback", channel="cli", now=datetime.now(UTC), workflow_id=handle.id
    )
    payloads: list[Any] = [
        "approve",
        ["alice", True],
        42,
        {"envelope": "not an envelope"},
        {"statement": {"identity": "alice"}, "signature": "x"},
        {"envelope": rollback.model_dump(mode="json")},
        {"approver": "a" * 100_000, "approve": True},
    ]
    for payload in payloads:
        assert "DecisionRefused" in await refused(handle, payload)
    for payload in payloads[:3]:  # and as UI signals
        await handle.signal("decision", payload)
    audited = await refusals(runtime, handle.id, len(payloads) + 3)
    assert any("not a decision" in r for r in audited)
    assert all(
        len(r.model_dump_json()) < 10_000 for r in runtime.audit.find(handle.id, "approval.refused")
    )
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    shown = metadata.current_details.split("**Refused decisions**")[1]
    assert shown.count("\n- ") == 5  # ten refusals, the latest five shown
    assert "a" * 101 not in shown
    assert shop.refunds("A-1002") == []
    await handle.execute_update(AgentRun.decide, signed(handle.id, request, "bob", False))
    await handle.result()
