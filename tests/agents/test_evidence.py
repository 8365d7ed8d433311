"""Evidence packs and approve with changes, on the real dev server against the demo shop."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.guardrails.rollout import override_counts
from countersign.workers.decisions import wait_for_requests
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run


def order_in_shop(shop: Shop, order_id: str) -> dict[str, Any]:
    with shop.client() as c:
        order: dict[str, Any] = c.get(f"/orders/{order_id}").json()
    return order


async def test_the_pack_holds_the_facts_of_the_system_of_record_with_sources(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: the espresso machine leaks."
    )
    (request,) = await wait_for_pending(handle)
    pack = request.evidence
    assert pack is not None and pack.request_id == request.request_id
    order = order_in_shop(shop, "A-1002")
    assert pack.subject == {"order_id": "A-1002", "customer_id": order["customer_id"]}
    (fact,) = [f for f in pack.facts if f.name == "order"]
    assert fact.key == "order_id=A-1002"
    fields = ("customer_id", "status", "total_cents", "captured_cents", "refunded_cents")
    for field in (*fields, "created_at"):
        assert fact.fields[field] == order[field], field
    assert (
        "countersign.activities.shop.order_facts" in fact.source
        and "fetched by the guard" in fact.source
    )
    # The rule in words, with its condition and policy version.
    assert pack.rule.rule_id == "refund.over_50" == request.rule_ids[0]
    assert "support lead" in pack.rule.words and "amount_cents" in pack.rule.condition
    assert pack.rule.policy_version.startswith("pol_")
    # The agent's own reason for this call: not the CRM note's reason proposed beside it.
    assert pack.agent_claim == request.reason
    assert request.reason.startswith("The customer reports: the espresso machine leaks")
    assert "customer record" not in request.reason
    # Reads are not "done": nothing has been executed yet. The limits counted are listed.
    assert pack.done == []
    counted = {h.counter_id: h for h in pack.history}
    assert counted["customer_refunded_week_cents"].value == 0
    assert counted["customer_refunded_week_cents"].money
    assert pack.run_url.endswith(f"/workflows/{handle.id}")
    assert pack.gaps == []
    # The passage the agent cites, resolved against the knowledge base (its text, not a ref).
    (cited,) = pack.citations
    assert cited.status == "resolved" and cited.passage is not None
    assert cited.ref in request.reason and cited.passage.document == "refund-policy.md"
    await handle.execute_update(
        AgentRun.decide, signed(handle.id, request, "alice", approve=False, comment="not yet")
    )
    await handle.result()


async def test_approve_with_a_lower_amount_refunds_that_amount_exactly_once(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, runtime: Runtime
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: the espresso machine leaks."
    )
    (request,) = await wait_for_pending(handle)
    assert request.may_change == {"amount_cents": "decrease"}
    receipt = await handle.execute_update(
        AgentRun.decide,
        signed(
            handle.id,
            request,
            "alice",
            comment="only the milk frother is broken",
            changes={"amount_cents": 12000},
        ),
    )
    assert receipt.status == "changed" and receipt.changes == {"amount_cents": 12000}
    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed"
    assert refund.arguments is not None and refund.arguments["amount_cents"] == 12000
    assert refund.changed_from is not None and refund.changed_from["amount_cents"] == 18900
    assert refund.approved_by == ["alice"]
    assert "approved with changes by alice: amount 189.00 USD → 120.00 USD" in refund.detail
    assert [r["amount_cents"] for r in shop.refunds("A-1002")] == [12000]
    # Its own action hash, decided again by the guard (120.00 still needs a support lead,
    # and alice is one: her signed change counts for it).
    (changed,) = runtime.audit.find(handle.id, "approval.changed")
    assert changed.data["original"]["action_hash"] == request.action_hash
    assert changed.data["changed"]["action_hash"] != request.action_hash
    assert changed.data["original"]["arguments"]["amount_cents"] == 18900
    assert changed.data["changed"]["arguments"]["amount_cents"] == 12000
    assert changed.data["changed"]["outcome"] == "needs_approval"
    (executed,) = runtime.audit.find(handle.id, "action.executed", tool="payments.refund")
    assert executed.data["action_hash"] == changed.data["changed"]["action_hash"]
    # The model heard what was changed and why.
    transcript = await runtime.transcripts.read(handle.id, 100)
    heard = next(m["content"] for m in transcript if m.get("tool_call_id") == request.call_id)
    assert '"approved_with_changes"' in heard and "milk frother" in heard
    assert '"proposed": 18900' in heard and '"approved": 12000' in heard
    # A change overrides the agent: it counts in the human override rate.
    records = runtime.audit.for_run(handle.id)
    ((_, counts),) = override_counts(records).items()
    assert counts.decisions >= 1 and counts.rejections == 1


async def test_a_change_into_the_automatic_tier_runs_without_another_request(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, runtime: Runtime
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: the espresso machine leaks."
    )
    (request,) = await wait_for_pending(handle)
    await handle.execute_update(
        AgentRun.decide,
        signed(handle.id, request, "bob", changes={"amount_cents": 4000}, comment="goodwill"),
    )
    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.rule_ids == ["refund.automatic"]
    assert [r["amount_cents"] for r in shop.refunds("A-1002")] == [4000]
    (changed,) = runtime.audit.find(handle.id, "approval.changed")
    assert changed.data["changed"]["outcome"] == "allow"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"amount_cents": 19000}, "is not below the proposed 189.00 USD"),
        ({"amount_cents": 18900}, "is not below the proposed 189.00 USD"),
        ({"amount_cents": 0}, "is below 1"),
        ({"amount_cents": "120"}, "is not a whole number"),
        ({"order_id": "A-1003"}, "may not change 'order_id'"),
        ({"reason": "other"}, "may not change 'reason'"),
    ],
)
async def test_a_change_beyond_what_the_tool_allows_is_refused_and_audited(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    changes: dict[str, Any],
    why: str,
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: the espresso machine leaks."
    )
    (request,) = await wait_for_pending(handle)
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await handle.execute_update(
            AgentRun.decide, signed(handle.id, request, "alice", changes=changes)
        )
    assert why in str(e.value.cause)
    (refused,) = runtime.audit.find(handle.id, "approval.refused")
    assert why in refused.data["reason"] and refused.actor == "cli:alice"
    # Nothing changed: the request still waits, nothing was refunded.
    assert [r.request_id for r in await wait_for_pending(handle)] == [request.request_id]
    assert shop.refunds("A-1002") == []
    await handle.execute_update(
        AgentRun.decide, signed(handle.id, request, "bob", approve=False, comment="no")
    )
    await handle.result()
    assert shop.refunds("A-1002") == []


async def test_a_change_that_still_needs_finance_waits_for_finance(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, runtime: Runtime
) -> None:
    """899.00 needs two approvers, one from finance. A support lead lowers it to 600.00: still
    the finance tier, so their signature is one approval of two and finance must still agree."""
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1003: the desk wobbles."
    )
    (request,) = await wait_for_pending(handle)
    assert request.rule_ids == ["refund.over_500"]
    await handle.execute_update(
        AgentRun.decide, signed(handle.id, request, "alice", changes={"amount_cents": 60000})
    )
    (follow,) = [
        r for r in await wait_for_requests(handle, 1) if r.request_id != request.request_id
    ]
    assert follow.changed_from == request.request_id
    assert follow.arguments["amount_cents"] == 60000
    assert follow.rule_ids == ["refund.over_500"] and follow.approvers == ["alice"]
    assert follow.evidence is not None and follow.evidence.request_id == follow.request_id
    assert shop.refunds("A-1003") == []
    # alice cannot finish it by herself, in any form.
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await handle.execute_update(AgentRun.decide, signed(handle.id, follow, "alice"))
    assert "alice has already decided" in str(e.value.cause)
    await handle.execute_update(AgentRun.decide, signed(handle.id, follow, "carol"))
    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and sorted(refund.approved_by) == ["alice", "carol"]
    assert [r["amount_cents"] for r in shop.refunds("A-1003")] == [60000]


def test_a_pack_lists_the_newest_ledger_entries_and_counts_the_older() -> None:
    """A parked run holds its pack, and approvers read it in chat: a customer with many
    refunds this week gets the newest ten entries listed and the rest counted."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from countersign.activities.evidence import EvidenceActivities
    from countersign.guardrails.evidence import SHOWN_ENTRIES, CountedHistory

    at = datetime(2026, 11, 30, tzinfo=UTC)
    found = [(f"wf-{i}", 100 * i, at) for i in range(25)]
    runtime = SimpleNamespace(ledger=SimpleNamespace(entries=lambda *args, **kwargs: found))
    counter = SimpleNamespace(
        id="agent_refunded_today_cents",
        tool="payments.refund",
        per="agent",
        window="day",
        sum="amount_cents",
    )
    decided = SimpleNamespace(
        tool=SimpleNamespace(name="payments.refund"),
        usage={counter.id: 30000},
        workflow_id="wf-24",
        agent="support-refunds",
    )
    (history,) = EvidenceActivities(runtime)._history(decided, [counter], at, "act_x")  # type: ignore[arg-type]
    assert [e.workflow_id for e in history.entries] == [f"wf-{i}" for i in range(15, 25)]
    assert len(history.entries) == SHOWN_ENTRIES and history.older == 15
    assert history.value == 30000 and history.entries[-1].this_run
    # Packs recorded before the count existed read, and write, as they did.
    assert (
        "older" not in CountedHistory(counter_id="c", counts="", value=0, money=False).model_dump()
    )
