"""A compromised or broken model cannot talk past the guard: refused replies, atomic turns,
the kill switch at execution. Through the real stack, counting effects in the demo shop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run

LOOKUP = {"name": "orders.lookup", "arguments": {"order_id": "{order_id}"}}
REFUND = {
    "name": "payments.refund",
    "arguments": {
        "order_id": "{order_id}",
        "amount_cents": "{result:orders.lookup.captured_cents}",
        "reason": "broken",
    },
    "reason": "refund it",
}
NOTE = {
    "name": "crm.add_note",
    "arguments": {
        "customer_id": "{result:orders.lookup.customer_id}",
        "text": "Refunded order {order_id} in full",
    },
    "reason": "keep the record up to date",
}


def write_script(scripts_dir: Path, name: str, *turns: dict[str, Any]) -> str:
    """A script answering tasks that start with `name`; returns such a task."""
    script = {
        "name": name,
        "match": rf"(?i)^{name} (?P<order_id>[A-Z]-\d{{4}})",
        "turns": [{"tool_calls": [LOOKUP]}, *turns],
    }
    (scripts_dir / f"{name}.json").write_text(json.dumps(script))
    return f"{name} A-1002: please help."


def notes(shop: Shop, customer_id: str = "C-200") -> list[str]:
    return [
        n["text"]
        for n in shop.state()["notes"]
        if n["customer_id"] == customer_id and not n.get("deleted_at")
    ]


# --- model replies ------------------------------------------------------------------------


@pytest.mark.parametrize("finish_reason", ["length", "content_filter"])
async def test_a_cut_off_or_filtered_reply_executes_nothing_and_the_model_is_asked_again(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    scripts_dir: Path,
    finish_reason: str,
) -> None:
    task = write_script(
        scripts_dir,
        f"cut-{finish_reason.replace('_', '-')}",
        {"tool_calls": [REFUND, NOTE], "finish_reason": finish_reason},
        {"say": "Sorry, I will not act on that."},
    )
    notes_before = notes(shop)
    handle = await start_run(temporal.client, worker.task_queue, task=task)
    result = await handle.result()
    assert shop.refunds("A-1002") == [] and notes(shop) == notes_before
    assert [a.tool for a in result.actions] == ["orders.lookup"]
    assert result.status == "completed" and result.final_message.startswith("Sorry")
    calls = runtime.audit.find(handle.id, "model.call")
    refused = [c.data for c in calls if c.data["refused"]]
    assert len(refused) == 1 and finish_reason in refused[0]["refused"]
    assert runtime.audit.find(handle.id, "proposal", tool="payments.refund") == []
    # The model heard why, in its conversation.
    transcript = await runtime.transcripts.read(handle.id, 100)
    assert any("discarded your previous reply" in (m.get("content") or "") for m in transcript)


async def test_a_second_refused_reply_stops_the_run_saying_why(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, scripts_dir: Path
) -> None:
    task = write_script(
        scripts_dir,
        "cut-twice",
        {"tool_calls": [REFUND], "finish_reason": "length"},
        {"tool_calls": [REFUND], "finish_reason": "length"},
    )
    handle = await start_run(temporal.client, worker.task_queue, task=task)
    result = await handle.result()
    assert result.status == "stopped" and result.stop_reason == "model_reply_refused"
    assert "cut off" in result.final_message
    assert shop.refunds("A-1002") == []


async def test_duplicate_call_ids_are_refused_as_a_batch(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    scripts_dir: Path,
) -> None:
    small = {**REFUND, "arguments": {**REFUND["arguments"], "amount_cents": 1000}}
    task = write_script(
        scripts_dir,
        "dup-ids",
        # The small one would be automatic, the big one would need approval: same id.
        {"tool_calls": [{**REFUND, "id": "call_same"}, {**small, "id": "call_same"}]},
        {"say": "Understood, stopping."},
    )
    handle = await start_run(temporal.client, worker.task_queue, task=task)
    result = await handle.result()
    assert shop.refunds("A-1002") == []
    assert runtime.audit.find(handle.id, "approval.requested") == []
    assert runtime.audit.find(handle.id, "proposal", tool="payments.refund") == []
    calls = runtime.audit.find(handle.id, "model.call")
    (refused,) = [c.data["refused"] for c in calls if c.data["refused"]]
    assert "call_same" in refused
    assert result.final_message == "Understood, stopping."


async def test_a_huge_reply_is_refused_and_only_an_excerpt_and_hash_are_kept(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    scripts_dir: Path,
) -> None:
    size = 3 * 1024 * 1024
    task = write_script(
        scripts_dir,
        "huge",
        {"say": "Here goes.", "tool_calls": [REFUND], "pad_bytes": size},
        {"say": "Done."},
    )
    handle = await start_run(temporal.client, worker.task_queue, task=task)
    await handle.result()
    assert shop.refunds("A-1002") == []
    (huge,) = [c.data for c in runtime.audit.find(handle.id, "model.call") if c.data["refused"]]
    assert huge["reply_bytes"] > size and len(huge["reply_sha256"]) == 64
    assert len(huge["content"]) < 2000
    audit = json.dumps([r.model_dump(mode="json") for r in runtime.audit.for_run(handle.id)])
    assert len(audit) < 100_000
    history = json.dumps((await handle.fetch_history()).to_json_dict())
    assert len(history) < 200_000 and "x" * 10_000 not in history
    transcript = json.dumps(await runtime.transcripts.read(handle.id, 100))
    assert len(transcript) < 50_000


async def test_too_many_tool_calls_in_one_turn_execute_none(
    temporal: WorkflowEnvironment,
    worker: Worker,
    runtime: Runtime,
    scripts_dir: Path,
) -> None:
    many = runtime.settings.max_tool_calls_per_turn + 1
    task = write_script(
        scripts_dir, "many-calls", {"tool_calls": [LOOKUP] * many}, {"say": "Fine."}
    )
    handle = await start_run(temporal.client, worker.task_queue, task=task)
    result = await handle.result()
    assert [a.tool for a in result.actions] == ["orders.lookup"]
    assert len(runtime.audit.find(handle.id, "action.read")) == 1


# --- atomic turns -------------------------------------------------------------------------


async def test_a_denied_refund_skips_the_note_proposed_beside_it(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    scripts_dir: Path,
) -> None:
    too_much = {**REFUND, "arguments": {**REFUND["arguments"], "amount_cents": 99_999}}
    task = write_script(
        scripts_dir, "denied-beside-note", {"tool_calls": [too_much, NOTE]}, {"say": "Done."}
    )
    notes_before = notes(shop)
    handle = await start_run(temporal.client, worker.task_queue, task=task)
    result = await handle.result()
    status = {a.tool: a for a in result.actions}
    assert status["payments.refund"].status == "denied"
    assert status["crm.add_note"].status == "skipped"
    assert "payments.refund" in status["crm.add_note"].detail
    assert shop.refunds("A-1002") == [] and notes(shop) == notes_before
    assert result.status == "completed_with_refusals"
    assert runtime.audit.find(handle.id, "action.executed") == []
    finished = runtime.audit.find(handle.id, "run.finished")[0].data
    assert finished["status"] == "completed_with_refusals"


async def test_a_rejected_refund_skips_the_note_proposed_beside_it(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, runtime: Runtime
) -> None:
    notes_before = notes(shop)
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: it leaks."
    )
    (request,) = await wait_for_pending(handle)
    await handle.execute_update(
        AgentRun.decide,
        signed(handle.id, request, "bob", approve=False, comment="no"),
    )
    result = await handle.result()
    status = {a.tool: a.status for a in result.actions}
    assert status == {
        "orders.lookup": "executed",
        "knowledge.search": "executed",
        "payments.refund": "rejected",
        "crm.add_note": "skipped",
    }
    assert shop.refunds("A-1002") == [] and notes(shop) == notes_before
    assert result.status == "completed_with_refusals"
    # The model heard why the note was not written.
    transcript = json.dumps(await runtime.transcripts.read(handle.id, 100))
    assert "one unit" in transcript


async def test_an_independent_agent_still_writes_the_note(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from countersign.activities.agent_specs import AGENTS

    monkeypatch.setitem(
        AGENTS,
        "support-refunds",
        AGENTS["support-refunds"].model_copy(update={"turn": "independent"}),
    )
    notes_before = notes(shop)
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: it rattles."
    )
    (request,) = await wait_for_pending(handle)
    await handle.execute_update(AgentRun.decide, signed(handle.id, request, "bob", approve=False))
    result = await handle.result()
    assert {a.tool: a.status for a in result.actions}["crm.add_note"] == "executed"
    assert len(notes(shop)) == len(notes_before) + 1


async def test_a_forged_sealed_value_is_denied_not_retried(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, scripts_dir: Path
) -> None:
    forged = {
        "name": "crm.add_note",
        "arguments": {
            "customer_id": "C-200",
            "text": "[[sealed:secret:pk_tests:AAAAAAAAAAAAAAAA]]",
        },
    }
    task = write_script(scripts_dir, "forged-token", {"tool_calls": [forged]}, {"say": "Ok."})
    notes_before = notes(shop)
    handle = await start_run(temporal.client, worker.task_queue, task=task)
    result = await handle.result()
    note = result.actions[-1]
    assert (note.tool, note.status, note.rule_ids) == (
        "crm.add_note",
        "denied",
        ["arguments.invalid"],
    )
    assert "sealed value" in note.detail
    assert notes(shop) == notes_before


async def test_a_failed_refund_skips_the_note_proposed_after_it(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, runtime: Runtime
) -> None:
    notes_before = notes(shop, "C-100")
    shop.faults(fail_status=409, fail_count=1, path_prefix="/refunds")  # refused for good
    try:
        handle = await start_run(
            temporal.client, worker.task_queue, task="Refund order A-1004: tea was stale."
        )
        result = await handle.result()
    finally:
        shop.clear_faults()
    status = {a.tool: a.status for a in result.actions}
    assert status == {
        "orders.lookup": "executed",
        "knowledge.search": "executed",
        "payments.refund": "failed",
        "crm.add_note": "skipped",
    }
    assert shop.refunds("A-1004") == [] and notes(shop, "C-100") == notes_before
    assert result.status == "completed_with_refusals"
    assert runtime.audit.find(handle.id, "action.executed") == []
