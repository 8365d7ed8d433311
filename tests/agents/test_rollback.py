"""Rollback: compensation in reverse order after a failure and after cancellation, and the
undo window."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.workers.decisions import rollback_request
from countersign.workers.identities import signer_for
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, start_run, wait_for_undo_window


def script(name: str, match: str, *steps: dict[str, Any]) -> dict[str, Any]:
    turns = [{"tool_calls": [step]} for step in steps] + [{"say": "done"}]
    return {"name": name, "match": match, "turns": turns}


THREE_ACTIONS = script(
    "three-actions",
    r"(?i)tidy up (?P<customer_id>C-\d{3}) then pay back (?P<order_id>A-\d{4})",
    {"name": "orders.lookup", "arguments": {"order_id": "{order_id}"}},
    {"name": "crm.add_note", "arguments": {"customer_id": "{customer_id}", "text": "tidy"}},
    {
        "name": "crm.update_contact",
        "arguments": {"customer_id": "{customer_id}", "fields": {"phone": "+1 555 0100"}},
    },
    {
        "name": "payments.refund",
        "arguments": {
            "order_id": "{order_id}",
            "amount_cents": "{result:orders.lookup.captured_cents}",
            "reason": "tidy up",
        },
    },
)

NOTE_THEN_WAIT = script(
    "note-then-wait",
    r"(?i)note first, then pay back (?P<order_id>A-\d{4}) for (?P<customer_id>C-\d{3})",
    {"name": "orders.lookup", "arguments": {"order_id": "{order_id}"}},
    {"name": "crm.add_note", "arguments": {"customer_id": "{customer_id}", "text": "pending"}},
    {
        "name": "payments.refund",
        "arguments": {
            "order_id": "{order_id}",
            "amount_cents": "{result:orders.lookup.captured_cents}",
            "reason": "waiting",
        },
    },
)


def live_notes(shop: Shop, customer_id: str) -> list[str]:
    return [
        n["note_id"]
        for n in shop.state()["notes"]
        if n["customer_id"] == customer_id and not n.get("deleted_at")
    ]


def customer(shop: Shop, customer_id: str) -> dict[str, Any]:
    return next(c for c in shop.state()["customers"] if c["customer_id"] == customer_id)


async def test_failure_at_the_third_action_undoes_the_first_two_newest_first(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    scripts_dir: Path,
) -> None:
    (scripts_dir / "three-actions.json").write_text(json.dumps(THREE_ACTIONS))
    before = (customer(shop, "C-100"), live_notes(shop, "C-100"))
    shop.faults(fail_status=503, fail_count=100, path_prefix="/refunds")
    try:
        handle = await start_run(
            temporal.client, worker.task_queue, task="Please tidy up C-100 then pay back A-1013."
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    finally:
        shop.clear_faults()
    undone = runtime.audit.find(handle.id, "compensation.executed")
    assert [r.data["tool"] for r in undone] == ["crm.update_contact", "crm.add_note"]
    assert all(r.data["outcome"] == "executed" for r in undone)
    assert (customer(shop, "C-100"), live_notes(shop, "C-100")) == before
    assert shop.refunds("A-1013") == []


async def test_cancelling_a_waiting_run_undoes_what_it_did(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    scripts_dir: Path,
) -> None:
    (scripts_dir / "note-then-wait.json").write_text(json.dumps(NOTE_THEN_WAIT))
    notes_before = live_notes(shop, "C-200")
    handle = await start_run(
        temporal.client, worker.task_queue, task="Note first, then pay back A-1014 for C-200."
    )
    await wait_for_pending(handle)
    assert len(live_notes(shop, "C-200")) == len(notes_before) + 1
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    (undone,) = runtime.audit.find(handle.id, "compensation.executed")
    assert undone.data["tool"] == "crm.add_note"
    assert live_notes(shop, "C-200") == notes_before


async def test_rollback_inside_the_undo_window_restores_the_system_of_record(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop
) -> None:
    def snapshot() -> tuple[Any, ...]:
        state = shop.state()
        order = next(o for o in state["orders"] if o["order_id"] == "A-1015")
        return order, customer(shop, "C-300"), live_notes(shop, "C-300")

    before = snapshot()
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        undo_window_seconds=300,
        task="Refund order A-1015: board split.",
    )
    await wait_for_undo_window(handle)
    assert snapshot() != before  # refunded and noted
    await handle.execute_update(
        AgentRun.rollback, rollback_request(signer_for("alice"), handle.id, "duplicate ticket")
    )
    result = await handle.result()
    assert result.status == "rolled_back" and result.irreversible == []
    assert {a.tool for a in result.actions if a.status == "compensated"} == {
        "payments.refund",
        "crm.add_note",
    }
    assert snapshot() == before
    assert [r["status"] for r in shop.refunds("A-1015")] == ["reversed"]


async def test_rollback_is_refused_after_the_window(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop
) -> None:
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        undo_window_seconds=1,
        task="Refund order A-1016: spoons cracked.",
    )
    await handle.result()
    with pytest.raises(Exception, match=r"(?i)complete|window"):
        await handle.execute_update(
            AgentRun.rollback, rollback_request(signer_for("alice"), handle.id, "too late")
        )
    assert [r["status"] for r in shop.refunds("A-1016")] == ["succeeded"]
