"""Long runs: a run continues as new at step boundaries (agents/segments.py) and approvals,
limits, rollback, status and the audit trail carry on across its segments."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.agent_specs import AGENTS
from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput, RunStatus
from countersign.workers.decisions import decide_as, rollback_request, wait_for_requests
from countersign.workers.identities import signer_for
from countersign.workers.replay import fetch_segments, replay
from tests.conftest import Shop, start_run, wait_for_undo_window
from tests.histories.record import SEGMENTED, TWO_PART_REFUND, segmented_agent

# The segmented agent continues as new every two steps; the script's steps 1-2, 3-4 and 5 are
# three segments, and step 4's refund needs a support lead because step 2's counts against the
# customer's week (tests/histories/record.py).


async def test_a_run_continued_as_new_keeps_approvals_limits_and_rollback(
    temporal: WorkflowEnvironment,
    worker: Worker,
    shop: Shop,
    runtime: Runtime,
    scripts_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(AGENTS, SEGMENTED, segmented_agent())
    (scripts_dir / "two-part-refund.json").write_text(json.dumps(TWO_PART_REFUND))
    refunds_before = len(shop.refunds("A-1054"))
    first = await start_run(
        temporal.client,
        worker.task_queue,
        agent=SEGMENTED,
        undo_window_seconds=300,
        task="Pay back A-1054 in two parts.",
    )
    # The latest segment (no run id): where the CLI and the gateway send decisions.
    run = temporal.client.get_workflow_handle(first.id)
    (request,) = await wait_for_requests(run)
    status = await run.query(AgentRun.status, result_type=RunStatus)
    assert status.step == 4  # counted on from the first segment
    # Current Details go on where the first segment left them.
    shown = "step 4/5 · stage **waiting for approval** · segment 2"
    for _ in range(100):  # the details change once the request is announced
        metadata = await run.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        if shown in metadata.current_details:
            break
        await asyncio.sleep(0.1)
    assert shown in metadata.current_details, metadata.current_details
    # The first refund (segment 1) counts against the customer's week: this one needs a lead.
    assert request.rule_ids == ["refund.over_50"]
    assert [a.tool for a in status.actions] == ["payments.refund", "orders.lookup"]
    await decide_as(temporal.client, first.id, request, "alice", comment="checked")
    await wait_for_undo_window(run)
    assert [r["status"] for r in shop.refunds("A-1054")[refunds_before:]] == ["succeeded"] * 2

    await run.execute_update(
        AgentRun.rollback, rollback_request(signer_for("bob"), first.id, "wrong customer")
    )
    result = await first.result()  # follows the run to its last segment
    assert (result.status, result.steps, result.stop_reason) == ("rolled_back", 5, "max_steps")
    refunds = shop.refunds("A-1054")[refunds_before:]
    assert [r["status"] for r in refunds] == ["reversed"] * 2  # both undone, none twice
    # Newest first: the refund of segment 2, then the one of segment 1.
    undone = runtime.audit.find(first.id, "compensation.executed")
    refunded = [a for a in result.actions if a.tool == "payments.refund"]
    assert [r.data["call_id"] for r in undone] == [refunded[1].call_id, refunded[0].call_id]
    assert all(a.status == "compensated" for a in refunded)

    # Three segments, one audit trail: every record under the same workflow id, a chain that
    # verifies, and two records saying where the run continued.
    continued = runtime.audit.find(first.id, "run.continued")
    assert [(r.data["segment"], r.data["step"]) for r in continued] == [(2, 2), (3, 4)]
    records = runtime.audit.find(first.id, "model.call")
    assert len({r.run_id for r in records}) == 3
    assert len(runtime.audit.find(first.id, "run.started")) == 1
    assert runtime.audit.verify().ok
    # Each segment's own history, linked by continue-as-new; each replays on its own.
    histories = await fetch_segments(temporal.client, first.id)
    assert len(histories) == 3
    reports = await replay(
        [("test", h) for h in histories], converter=temporal.client.data_converter
    )
    assert [r.deterministic for r in reports] == [True] * 3
    assert [r.result_matches for r in reports] == [None, None, True]


async def test_only_a_continuing_run_carries_state(
    temporal: WorkflowEnvironment, worker: Worker
) -> None:
    """Anyone who can start a workflow could type a carried state: it is refused."""
    forged = {"continued": {"input": {}, "requester": "alice"}}
    handle = await temporal.client.start_workflow(
        AgentRun.run, forged, id="forged-carry", task_queue=worker.task_queue
    )
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    assert "only a run continuing as new carries state" in str(caught.value.cause)


def test_max_steps_above_200_needs_an_agent_that_continues_as_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match=r"max_steps: at most 200 for agent 'support-refunds'"):
        RunInput(agent="support-refunds", task="long", requested_by="dana", max_steps=500)
    monkeypatch.setitem(AGENTS, SEGMENTED, segmented_agent())
    assert RunInput(agent=SEGMENTED, task="long", requested_by="d", max_steps=10_000)
