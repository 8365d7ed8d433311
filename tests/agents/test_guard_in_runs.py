"""The policy engine inside real runs: kill switch, shadow mode, candidate policy, backtest."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.activities.tools import tool_schemas
from countersign.agents.run import AgentRun
from countersign.guardrails.controls import KillSwitch, read_kill_switch, write_kill_switch
from countersign.guardrails.policy import load_policy
from countersign.guardrails.review import backtest
from countersign.settings import Settings
from countersign.workers.identities import signer_for
from countersign.workers.worker import build_worker, check_startup
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import Shop, signed, start_run


@pytest.fixture
def kill_switch(settings: Settings) -> Iterator[Path]:
    yield settings.kill_switch_path
    write_kill_switch(settings.kill_switch_path, KillSwitch())


def flip(path: Path, who: str, *, on: bool, what: str, name: str | None = None) -> None:
    """Add a kill switch change signed by `who` to the stored switch (what the CLI writes)."""
    change = signer_for(who).sign(
        purpose="kill",
        channel="cli",
        now=datetime.now(UTC),
        claims={"on": on, "what": what, "name": name},
    )
    write_kill_switch(path, read_kill_switch(path).with_change(change))


async def test_kill_switch_flipped_while_waiting_stops_the_approved_action(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, runtime: Runtime, kill_switch: Path
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1012: bottles leak."
    )
    (request,) = await wait_for_pending(handle)
    flip(kill_switch, "erin", on=True, what="tool", name="payments.refund")
    await handle.execute_update(AgentRun.decide, signed(handle.id, request, "bob"))
    result = await handle.result()
    status = {a.tool: a for a in result.actions}
    assert status["payments.refund"].status == "blocked"
    assert "kill switch" in status["payments.refund"].detail
    # The note proposed in the same turn is skipped with it (atomic turns).
    assert status["crm.add_note"].status == "skipped"
    assert result.status == "completed_with_refusals"
    assert shop.refunds("A-1012") == []
    (blocked,) = runtime.audit.find(handle.id, "action.blocked")
    assert blocked.data["reason"] == "kill_switch"
    assert blocked.data["action_hash"] == request.action_hash
    assert runtime.audit.find(handle.id, "action.executed") == []


async def test_kill_switch_denies_new_proposals_but_not_lookups(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, kill_switch: Path
) -> None:
    flip(kill_switch, "erin", on=True, what="agent", name="support-refunds")
    # Revives by someone without the authority, or typed into the store, count for nothing.
    flip(kill_switch, "mallory", on=False, what="agent", name="support-refunds")
    stored = read_kill_switch(kill_switch)
    write_kill_switch(kill_switch, stored.model_copy(update={"agents": []}))
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1007: mugs chipped."
    )
    result = await handle.result()
    status = {a.tool: (a.status, a.rule_ids) for a in result.actions}
    assert status["orders.lookup"][0] == "executed"
    for tool in ("payments.refund", "crm.add_note"):
        assert status[tool][0] == "denied" and "kill_switch" in status[tool][1]
    assert shop.refunds("A-1007") == []


async def test_an_unsigned_kill_switch_edit_changes_nothing(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, kill_switch: Path
) -> None:
    write_kill_switch(kill_switch, KillSwitch(tools=["payments.refund"], all_side_effects=True))
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1004: the sampler was stale."
    )
    result = await handle.result()
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["executed"]
    assert len(shop.refunds("A-1004")) == 1


async def test_shadow_mode_executes_nothing_and_records_every_would_be_action(
    temporal: WorkflowEnvironment, worker: Worker, shop: Shop, runtime: Runtime
) -> None:
    notes_before = shop.state()["notes"]
    handle = await start_run(
        temporal.client, worker.task_queue, mode="shadow", task="Refund order A-1008: filters torn."
    )
    result = await handle.result()
    would_be = [a for a in result.actions if a.status == "shadow"]
    assert {a.tool for a in would_be} == {"payments.refund", "crm.add_note"}
    assert shop.refunds("A-1008") == [] and shop.state()["notes"] == notes_before
    outcomes = {v.data["tool"]: v.data["outcome"] for v in runtime.audit.find(handle.id, "verdict")}
    assert outcomes == {
        "orders.lookup": "allow",
        "knowledge.search": "allow",
        "payments.refund": "shadow",
        "crm.add_note": "shadow",
    }
    assert runtime.audit.find(handle.id, "action.executed") == []


def stricter(tmp_path: Path, active: Path) -> Path:
    """A candidate that only refunds up to 10.00 automatically (the session's limits
    otherwise: the session refunds the same customers many times)."""
    folder = tmp_path / "candidate"
    shutil.copytree(active, folder)
    rules = folder / "refunds.cedar"
    rules.write_text(
        rules.read_text()
        .replace("amount_cents <= 5000", "amount_cents <= 1000")
        .replace("amount_cents > 5000 &&", "amount_cents > 1000 &&")
    )
    return folder


async def test_candidate_runs_in_shadow_and_backtest_reports_its_flips(
    temporal: WorkflowEnvironment,
    settings: Settings,
    shop: Shop,
    task_queue: str,
    tmp_path: Path,
    session_policy: Path,
) -> None:
    candidate = stricter(tmp_path, session_policy)
    with_candidate = settings.model_copy(update={"candidate_policy_path": candidate})
    runtime = check_startup(with_candidate)
    async with build_worker(temporal.client, with_candidate, runtime, task_queue=task_queue):
        handle = await start_run(
            temporal.client, task_queue, task="Refund order A-1001: the teapot arrived broken."
        )
        result = await handle.result()
    # The active policy decided: the 42.00 refund ran automatically...
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.rule_ids == ["refund.automatic"]
    # ...and the candidate's verdict was recorded beside it, flipped, never enforced.
    recorded = runtime.audit.find(handle.id, "verdict", tool="payments.refund")[0].data
    assert recorded["candidate"]["outcome"] == "needs_approval"
    assert recorded["candidate"]["flipped"] is True

    replayed, flips = backtest(
        runtime.audit.find(handle.id, "verdict"), load_policy(candidate, tool_schemas())
    )
    assert replayed == 4
    assert [(f.tool, f.recorded, f.candidate, f.candidate_rules) for f in flips] == [
        ("payments.refund", "allow", "needs_approval", ["refund.over_50"])
    ]
