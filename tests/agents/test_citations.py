"""Grounding: the agent searches the knowledge base, cites a passage, and the approval request
carries the cited passage resolved, or flagged when it resolves to nothing. Real stack:
dev server, worker, scripted model over HTTP, demo shop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.guardrails.audit import AuditRecord
from countersign.guardrails.knowledge import DEFAULT_KNOWLEDGE_PATH, citations_in, open_index
from countersign.guardrails.rendering import as_text, request_view
from countersign.workers.story import story_line
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run


async def citations_record(runtime: Runtime, run: str) -> AuditRecord:
    """The `approval.citations` record the notify activity writes for the run's request."""
    for _ in range(100):
        found = runtime.audit.find(run, "approval.citations")
        if found:
            [record] = found
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"{run}: no approval.citations record")


async def test_the_approval_carries_the_policy_passage_the_agent_cited(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1002: the kettle leaks."
    )
    [request] = await wait_for_pending(handle)
    # The agent searched the knowledge base (a read-only tool, allowed and audited)...
    [search] = runtime.audit.find(handle.id, "action.read", tool="knowledge.search")
    found = search.data["result"]["passages"]
    assert found[0]["ref"] == "refund-policy.md#damaged-or-defective-items:1"
    assert {"document", "section", "position", "text"} <= set(found[0])
    # ...and cites the passage it found in its reason for the refund.
    assert citations_in(request.reason) == [found[0]["ref"]]

    record = (await citations_record(runtime, handle.id)).data
    assert record["request_id"] == request.request_id
    assert record["action_hash"] == request.action_hash
    assert record["flagged"] == []
    [cited] = record["citations"]
    shipped = open_index(DEFAULT_KNOWLEDGE_PATH)
    assert cited["status"] == "resolved"
    assert cited["index_version"] == shipped.version
    # The passage as the document says it, word for word.
    assert cited["passage"]["text"] == found[0]["text"]
    assert cited["passage"]["text"] in " ".join(
        (DEFAULT_KNOWLEDGE_PATH / "refund-policy.md").read_text().split()
    )
    assert cited["passage"]["section"] == "Damaged or defective items"

    await handle.execute_update(AgentRun.decide, signed(handle.id, request, "alice"))
    result = await handle.result()
    assert result.status == "completed"
    assert [r["amount_cents"] for r in shop.refunds("A-1002")] == [18900]


async def test_a_fabricated_citation_is_flagged_on_the_approval(
    temporal: WorkflowEnvironment, worker: Worker, runtime: Runtime, shop: Shop
) -> None:
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        task="Refund order A-1002, citing a fabricated policy.",
    )
    [request] = await wait_for_pending(handle)
    audited = await citations_record(runtime, handle.id)
    record = audited.data
    made_up = "refund-policy.md#goodwill-refunds:1"
    # As `countersign audit` and the demo tell it.
    assert f"[{made_up}] DOES NOT RESOLVE" in story_line(audited)
    assert record["flagged"] == [made_up]
    by_ref = {c["ref"]: c for c in record["citations"]}
    assert by_ref[made_up]["status"] == "unresolved" and by_ref[made_up]["passage"] is None
    [real] = [c for ref, c in by_ref.items() if ref != made_up]
    assert real["status"] == "resolved" and real["passage"]["document"] == "refund-policy.md"
    # What the approver reads, on every channel: the made-up passage flagged, the real quoted.
    assert request.evidence is not None
    text = as_text(
        request_view(
            request, workflow_id=handle.id, agent=request.agent, task="", now=datetime.now(UTC)
        )
    )
    assert f"Cites {made_up}: NOT FOUND" in text
    assert real["passage"]["text"][:40] in text

    await handle.execute_update(
        AgentRun.decide,
        signed(handle.id, request, "alice", approve=False, comment="no goodwill rule exists"),
    )
    result = await handle.result()
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["rejected"]
    assert shop.refunds("A-1002") == []
