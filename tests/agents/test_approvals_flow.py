"""Approval hazards: parallel calls, the Temporal UI's signal path, and what history holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.workers.decisions import DecisionRefusedError, send_decision
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import SHOP_TOKEN, Shop, signed, start_run

TWO_REFUNDS = {
    "name": "two-refunds",
    "match": r"(?i)two partial paybacks for (?P<order_id>[A-Z]-\d{4})",
    "turns": [
        {"tool_calls": [{"name": "orders.lookup", "arguments": {"order_id": "{order_id}"}}]},
        {
            "tool_calls": [
                {
                    "name": "payments.refund",
                    "reason": "first item",
                    "arguments": {
                        "order_id": "{order_id}",
                        "amount_cents": 6000,
                        "reason": "first item damaged",
                    },
                },
                {
                    "name": "payments.refund",
                    "reason": "second item",
                    "arguments": {
                        "order_id": "{order_id}",
                        "amount_cents": 7000,
                        "reason": "second item damaged",
                    },
                },
            ]
        },
        {"say": "Done with the partial refunds."},
    ],
}


async def test_each_parallel_call_gets_its_own_request_and_decision(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, scripts_dir: Path
) -> None:
    (scripts_dir / "two-refunds.json").write_text(json.dumps(TWO_REFUNDS))
    before = [r["amount_cents"] for r in shop.refunds("A-1003")]
    handle = await start_run(
        temporal.client, worker.task_queue, task="Make two partial paybacks for A-1003 please."
    )
    first, second = sorted(
        await wait_for_pending(handle, 2), key=lambda r: r.arguments["amount_cents"]
    )
    assert first.request_id != second.request_id
    assert first.action_hash != second.action_hash
    # A decision bound to one action cannot be used for the other.
    await handle.execute_update(
        AgentRun.decide,
        signed(
            handle.id,
            first,
            "alice",
        ),
    )
    status = await handle.query(AgentRun.status)
    assert [r.request_id for r in status.pending_approvals] == [second.request_id]
    await handle.execute_update(
        AgentRun.decide,
        signed(handle.id, second, "bob", approve=False, comment="no"),
    )
    result = await handle.result()
    outcome = {
        a.arguments["amount_cents"]: a.status for a in result.actions if a.tool == "payments.refund"
    }
    # One turn is one unit: the approved refund is skipped with the rejected one.
    assert outcome == {6000: "skipped", 7000: "rejected"}
    assert [r["amount_cents"] for r in shop.refunds("A-1003")] == before


async def test_audit_tells_the_run_in_order_and_no_secret_reaches_history(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime
) -> None:
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        task="Refund order A-1001: audit test.",
        agent="support-readonly",
    )
    await handle.result()
    kinds = [r.kind for r in runtime.audit.for_run(handle.id)]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    # The first turn looks the order up and searches the knowledge base: each call is
    # proposed and decided (the two are guarded concurrently, so their records interleave),
    # then both are read.
    assert kinds[1] == "model.call" and kinds[6:8] == ["action.read"] * 2
    assert sorted(kinds[2:6]) == ["proposal", "proposal", "verdict", "verdict"]
    first_turn = runtime.audit.for_run(handle.id)[2:6]
    for call in {r.data["call_id"] for r in first_turn}:
        assert [r.kind for r in first_turn if r.data["call_id"] == call] == ["proposal", "verdict"]
    verdicts = runtime.audit.find(handle.id, "verdict")
    assert all(v.data["policy_version"].startswith("pol_") for v in verdicts)
    history = json.dumps((await handle.fetch_history()).to_json_dict())
    assert SHOP_TOKEN not in history
    audit = json.dumps([r.model_dump(mode="json") for r in runtime.audit.for_run(handle.id)])
    assert SHOP_TOKEN not in audit
    assert runtime.audit.signer is not None
    assert runtime.audit.verify(runtime.audit.signer.public_key).ok


async def test_a_decision_after_the_run_ended_is_told_how_the_request_was_settled(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop
) -> None:
    """The second approver answers from a stale page after the first one's approval ended the
    run: refused, and told the request was already approved, by whom (not only "no open run").
    Likewise after a rejection."""
    cases = (("A-1051", True, "already approved (by bob)"), ("A-1002", False, "already rejected"))
    for order, approve, settled in cases:
        handle = await start_run(
            temporal.client, worker.task_queue, task=f"Refund order {order}: it arrived cracked."
        )
        (request,) = await wait_for_pending(handle)
        await send_decision(
            temporal.client, handle.id, signed(handle.id, request, "bob", approve=approve)
        )
        await handle.result()
        with pytest.raises(DecisionRefusedError) as refused:
            await send_decision(temporal.client, handle.id, signed(handle.id, request, "alice"))
        assert "no open run" in str(refused.value)
        assert f"approval request {request.request_id} is {settled}" in str(refused.value)
