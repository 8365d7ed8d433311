"""Rollout by share of runs, and demotion to augment when humans keep overriding the agent:
through the real stack, counting refunds in the demo shop and reading verdicts."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.agent_specs import AGENTS
from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.guardrails.policy import DecisionInput, Proposal, ToolFacts, decide, load_policy
from countersign.guardrails.rollout import OverrideCount, Rollout, rollout_mode, share_of
from countersign.settings import Settings
from countersign.workers.stats import compute_stats, format_stats
from countersign.workers.worker import build_worker, check_startup
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run

ROLLOUT = """
[rollout.canary-share]
automate_share = 0.5

[rollout.canary-demote]
demote_when_override_rate_above = 0.3
window_hours = 1
min_decisions = 2
"""


def run_id_in(share: bool, cut: float = 0.5) -> str:
    """A fresh workflow id that falls inside (or outside) the first `cut` of runs."""
    while True:
        candidate = f"run-{uuid.uuid4().hex[:12]}"
        if (share_of(candidate) < cut) == share:
            return candidate


async def reject_all(handle: Any, requests: list[Any]) -> None:
    for r in requests:
        await handle.execute_update(AgentRun.decide, signed(handle.id, r, "alice", approve=False))
    await handle.result()


# --- pure ---------------------------------------------------------------------------------


def test_a_runs_share_is_stable_and_the_split_follows_the_setting() -> None:
    ids = [f"run-{i}" for i in range(4000)]
    assert [share_of(i) for i in ids[:50]] == [share_of(i) for i in ids[:50]]
    automated = [
        i
        for i in ids
        if rollout_mode("automate", Rollout(automate_share=0.2), i, None)[0] == "automate"
    ]
    assert 0.17 < len(automated) / len(ids) < 0.23


def test_demotion_needs_enough_decisions_and_a_rate_above_the_threshold() -> None:
    rollout = Rollout(demote_when_override_rate_above=0.3, min_decisions=10)
    few = OverrideCount(decisions=3, rejections=3)
    fine = OverrideCount(decisions=10, rejections=3)
    bad = OverrideCount(decisions=10, rejections=4)
    assert rollout_mode("automate", rollout, "r", few) == ("automate", None)
    assert rollout_mode("automate", rollout, "r", fine) == ("automate", None)
    mode, why = rollout_mode("automate", rollout, "r", bad)
    assert mode == "augment" and why is not None and "4 of 10" in why and "40%" in why
    # A rollout never loosens a stricter configured mode.
    assert rollout_mode("shadow", rollout, "r", bad) == ("shadow", None)


def test_a_demoted_verdict_needs_a_human_and_says_why(tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    shutil.copytree(Path(__file__).parents[2] / "guardrails/policies/default", folder)
    with (folder / "policy.toml").open("a") as f:
        f.write(ROLLOUT)
    policy = load_policy(folder)
    d = DecisionInput(
        proposal=Proposal(call_id="c1", tool="crm.add_note"),
        agent="canary-demote",
        granted_scopes=["crm:write"],
        tool=ToolFacts(name="crm.add_note", scope="crm:write", read_only=False, risk="low"),
        arguments={"customer_id": "C-100", "text": "hello"},
        arguments_error=None,
        requested_mode=None,
        workflow_id="run-1",
        requested_by="dana",
        subject={"customer_id": "C-100"},
        overrides=OverrideCount(decisions=4, rejections=2, window_hours=1),
    )
    v = decide(d, policy)
    assert v.outcome == "needs_approval" and v.rule_ids == ["mode.augment"]
    assert v.mode == "augment" and v.mode_reason and "demoted" in v.mode_reason
    assert "demoted" in v.reason
    ok = decide(d.model_copy(update={"overrides": OverrideCount(decisions=4)}), policy)
    assert ok.outcome == "allow" and ok.mode_reason is None


# --- through the stack --------------------------------------------------------------------


@pytest.fixture
async def canary_worker(
    temporal: WorkflowEnvironment,
    settings: Settings,
    session_policy: Path,
    task_queue: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Worker, Runtime]]:
    for name in ("canary-share", "canary-demote"):
        monkeypatch.setitem(
            AGENTS, name, AGENTS["support-refunds"].model_copy(update={"name": name})
        )
    folder = tmp_path / "policy"
    shutil.copytree(session_policy, folder)
    with (folder / "policy.toml").open("a") as f:
        f.write(ROLLOUT)
    with_rollout = settings.model_copy(update={"policy_path": folder})
    runtime = check_startup(with_rollout)
    worker = build_worker(temporal.client, with_rollout, runtime, task_queue=task_queue)
    async with worker:
        yield worker, runtime


async def test_runs_outside_the_automate_share_wait_for_a_human(
    temporal: WorkflowEnvironment, canary_worker: tuple[Worker, Runtime], shop: Shop
) -> None:
    worker, runtime = canary_worker
    inside = await start_run(
        temporal.client,
        worker.task_queue,
        agent="canary-share",
        workflow_id=run_id_in(share=True),
        task="Refund order A-1004: stale tea.",
    )
    result = await inside.result()
    assert {a.tool: a.status for a in result.actions}["payments.refund"] == "executed"
    assert len(shop.refunds("A-1004")) == 1

    outside = await start_run(
        temporal.client,
        worker.task_queue,
        agent="canary-share",
        workflow_id=run_id_in(share=False),
        task="Refund order A-1007: chipped mugs.",
    )
    requests = await wait_for_pending(outside, 2)
    assert {r.rule_ids[0] for r in requests} == {"mode.augment"}
    assert shop.refunds("A-1007") == []
    (verdict,) = runtime.audit.find(outside.id, "verdict", tool="payments.refund")
    assert verdict.data["mode"] == "augment"
    assert "outside the automate share" in verdict.data["mode_reason"]
    await reject_all(outside, requests)


async def test_the_guard_demotes_an_agent_that_humans_keep_overriding(
    temporal: WorkflowEnvironment, canary_worker: tuple[Worker, Runtime], shop: Shop
) -> None:
    worker, runtime = canary_worker
    for order in ("A-1002", "A-1006"):  # both above 50.00: a support lead decides
        handle = await start_run(
            temporal.client,
            worker.task_queue,
            agent="canary-demote",
            task=f"Refund order {order}: customer changed their mind.",
        )
        (request,) = await wait_for_pending(handle)
        await handle.execute_update(
            AgentRun.decide,
            signed(handle.id, request, "bob", approve=False),
        )
        await handle.result()

    # 2 of 2 decisions overridden: a 25.00 refund, automatic before, now waits for a human.
    handle = await start_run(
        temporal.client,
        worker.task_queue,
        agent="canary-demote",
        task="Refund order A-1004: sampler stale.",
    )
    requests = await wait_for_pending(handle, 2)
    refund = next(r for r in requests if r.tool == "payments.refund")
    assert refund.rule_ids == ["mode.augment"]
    assert shop.refunds("A-1004") == []
    (verdict,) = runtime.audit.find(handle.id, "verdict", tool="payments.refund")
    assert verdict.data["mode"] == "augment"
    assert "demoted to augment" in verdict.data["mode_reason"]
    assert verdict.data["input"]["overrides"]["rejections"] >= 2
    await reject_all(handle, requests)

    now = datetime.now(UTC)
    stats = compute_stats(
        runtime.audit.between(now - timedelta(minutes=5)),
        since=now - timedelta(minutes=5),
        until=now,
        prices={},
    )
    assert stats.override_by_mode["automate"]["rejections"] >= 2
    assert "override by mode" in format_stats(stats)
