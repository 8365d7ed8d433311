"""Replay of committed histories, on every run: the current code must reproduce every recorded
decision exactly, a changed workflow must be caught, and no history may hold a secret."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.agent_specs import AGENTS
from countersign.activities.contracts import DECIDE, PLAN
from countersign.agents.state import ALL_PATCHES_2026_11
from countersign.settings import Settings
from countersign.workers.replay import activities_in, load_histories, readable_text, replay
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import SHOP_TOKEN, signed, start_run
from tests.e2e.test_cli import countersign
from tests.histories.record import (
    LATER_SCENARIOS,
    PENDING_SCENARIOS,
    SCENARIOS,
    SEGMENTED,
    SEGMENTED_SCENARIOS,
    SEGMENTS,
    segmented_agent,
)
from tests.histories.variants import AgentRunThatChecksFirst, graph_without_approvals

HERE = Path(__file__).parent
# Runs recorded before a patch must keep replaying after it: before agents.state's
# LOCAL_BOOKKEEPING, and before SIGNED_IDENTITIES (typed-name decisions, no subject, no
# atomic turns, model bounds as constants).
BEFORE_PATCH = HERE / "before-local-bookkeeping"
BEFORE_SIGNED = HERE / "before-signed-identities"
# Runs recorded before GUARD_IN_MODEL: each proposal decided by a guard activity of its own.
BEFORE_GUARD = HERE / "before-guard-in-model"
# Runs recorded before READS_IN_MODEL: each allowed read ran as a local activity of its own.
BEFORE_READS = HERE / "before-reads-in-model"
# Runs recorded before ALL_PATCHES_2026_11: the same behaviour, one marker per patch.
BEFORE_PATCH_SET = HERE / "before-patch-set"
# Runs recorded before read-ahead (AgentSpec.read_ahead): one model call per activity.
BEFORE_READ_AHEAD = HERE / "before-read-ahead"
# Newest first; the first five hold a long run's segments too.
FOLDERS = [
    HERE,
    BEFORE_READ_AHEAD,
    BEFORE_PATCH_SET,
    BEFORE_READS,
    BEFORE_GUARD,
    BEFORE_SIGNED,
    BEFORE_PATCH,
]
SEGMENTED_FOLDERS = FOLDERS[:5]
READS = {"orders.lookup", "knowledge.search"}


def folder_id(folder: Path) -> str:
    return "current" if folder == HERE else folder.name


CORPUS = sorted(HERE.glob("*.json"))
ALL_HISTORIES = (
    CORPUS
    + sorted(BEFORE_READ_AHEAD.glob("*.json"))
    + sorted(BEFORE_PATCH_SET.glob("*.json"))
    + sorted(BEFORE_READS.glob("*.json"))
    + sorted(BEFORE_GUARD.glob("*.json"))
    + sorted(BEFORE_SIGNED.glob("*.json"))
    + sorted(BEFORE_PATCH.glob("*.json"))
)


def test_every_scenario_is_recorded() -> None:
    assert {p.stem for p in CORPUS} == set(SCENARIOS)
    for folder in (BEFORE_READ_AHEAD, BEFORE_PATCH_SET, BEFORE_READS, BEFORE_GUARD):
        assert {p.stem for p in folder.glob("*.json")} == set(SCENARIOS)
    for folder in (BEFORE_SIGNED, BEFORE_PATCH):
        assert {p.stem for p in folder.glob("*.json")} == set(SCENARIOS) - set(LATER_SCENARIOS)
    assert not set(PENDING_SCENARIOS) & set(SCENARIOS)


@pytest.mark.parametrize(
    "path", ALL_HISTORIES, ids=[f"{p.parent.name}/{p.stem}" for p in ALL_HISTORIES]
)
async def test_recorded_history_replays_to_the_same_result(path: Path) -> None:
    (report,) = await replay(load_histories([path]))
    assert report.deterministic, report.divergence
    # Every model output, verdict and tool result came from history, and the run's result
    # computed from them now is the one the original run returned.
    # Three planning steps; a verdict per proposal (the current corpus's refund script also
    # searches the knowledge base), one per compensation when rolled back, and one for an
    # action approved with changes. The planner-executor graph plans, then takes five steps.
    if path.stem == "own-graph":
        assert (report.model_steps, report.verdicts) == (6, 4)
    else:
        assert report.model_steps == 3
        extra = {"compensated": 2, "approved-with-changes": 1}
        since_search = (HERE, BEFORE_READ_AHEAD, BEFORE_PATCH_SET, BEFORE_READS, BEFORE_GUARD)
        proposals = 4 if path.parent in since_search else 3
        assert report.verdicts == proposals + extra.get(path.stem, 0)
    assert report.result_matches is True
    assert report.result is not None
    # Since GUARD_IN_MODEL the model call decides its reply's proposals: a guard activity runs
    # only for what is decided apart from a reply (an approved change, a compensation).
    ((_, history),) = load_histories([path])
    # Since read-ahead a model call that allowed and ran its reply's reads also takes the next
    # step (the built-in graph's agents; own-graph's graph is its own): one result, two steps.
    plans = [a for a in activities_in(history) if a.activity_type == PLAN]
    if path.parent == HERE and path.stem != "own-graph":
        assert len(plans) == report.model_steps - 1
    else:
        assert len(plans) == report.model_steps
    guard_activities = [a for a in activities_in(history) if a.activity_type == DECIDE]
    # Since READS_IN_MODEL the model call executes the reads it allowed: no local activity.
    reads = [a for a in activities_in(history) if a.local and a.activity_type in READS]
    if path.parent in (HERE, BEFORE_READ_AHEAD, BEFORE_PATCH_SET, BEFORE_READS):
        assert bool(reads) == (path.parent == BEFORE_READS)
        assert len(guard_activities) == {"compensated": 2, "approved-with-changes": 1}.get(
            path.stem, 0
        )
    else:
        assert len(guard_activities) == report.verdicts


@pytest.mark.parametrize("folder", FOLDERS, ids=[folder_id(f) for f in FOLDERS])
async def test_replay_reconstructs_each_scenarios_decisions(folder: Path) -> None:
    reports = {r.workflow_id: r for r in await replay(load_histories([folder]))}

    def refund(name: str) -> dict:
        result = reports[name].result
        assert result is not None
        return next(a for a in result["actions"] if a["tool"] == "payments.refund")

    assert refund("auto-approved")["status"] == "executed"
    assert refund("auto-approved")["rule_ids"] == ["refund.automatic"]
    assert refund("approved")["approved_by"] == ["alice"]
    assert refund("rejected")["status"] == "rejected"
    assert "colour is not a defect" in refund("rejected")["detail"]
    assert refund("timed-out")["status"] == "expired"
    if "reminded" in reports:
        assert refund("reminded")["status"] == "expired"
    assert refund("compensated")["status"] == "compensated"
    assert reports["compensated"].result["status"] == "rolled_back"
    if folder in (HERE, BEFORE_READ_AHEAD, BEFORE_PATCH_SET, BEFORE_READS, BEFORE_GUARD):
        changed = refund("approved-with-changes")
        assert changed["arguments"]["amount_cents"] == 60000
        assert changed["changed_from"]["amount_cents"] == 89900
        assert sorted(changed["approved_by"]) == ["alice", "carol"]
        own = reports["own-graph"].result
        assert own is not None
        refunds = [
            (a["status"], a["approved_by"])
            for a in own["actions"]
            if a["tool"] == "payments.refund"
        ]
        assert refunds == [("denied", []), ("executed", ["alice"])]


def test_histories_hold_no_secrets() -> None:
    for path in ALL_HISTORIES:
        text = readable_text(json.loads(path.read_text()))
        assert "Bearer " not in text and SHOP_TOKEN not in text, path
        assert not re.search(
            r"(?i)\"(authorization|api_key|token)\"\s*:\s*\"(?!\[redacted\])", text
        )


async def test_an_added_activity_is_caught_as_a_divergence() -> None:
    (report,) = await replay(
        load_histories([BEFORE_PATCH / "auto-approved.json"]), workflows=[AgentRunThatChecksFirst]
    )
    assert not report.deterministic
    assert report.divergence is not None
    assert report.divergence == (
        "NondeterminismError: [TMPRL1100] Nondeterminism error: Activity type of scheduled "
        "event 'audit.record' does not match activity type of activity command "
        "'policy.preflight'"
    )
    # In a current run the first recorded command is the patch marker the change displaced.
    (current,) = await replay(
        load_histories([HERE / "auto-approved.json"]), workflows=[AgentRunThatChecksFirst]
    )
    assert current.divergence is not None
    assert f"patch marker encountered for change {ALL_PATCHES_2026_11}" in current.divergence


async def test_a_skipped_approval_step_is_caught_as_a_divergence() -> None:
    # Without approvals the graph goes straight from guard to the refund: replaying a run that
    # waited for a human must fail…
    (approved,) = await replay(
        load_histories([HERE / "approved.json"]), graph=graph_without_approvals
    )
    assert not approved.deterministic
    assert approved.divergence is not None
    # Where the approval step's commands were recorded, the changed graph issues others.
    assert "Nondeterminism error" in approved.divergence
    # …while a run that never needed approval still replays: the change is invisible there.
    (auto,) = await replay(
        load_histories([HERE / "auto-approved.json"]), graph=graph_without_approvals
    )
    assert auto.deterministic and auto.result_matches


def test_cli_replays_the_corpus_with_nothing_reachable(tmp_path: Path) -> None:
    """Temporal, the model and the shop all point at closed ports: replay needs none of them."""
    env = {
        "COUNTERSIGN_STATE_DIR": str(tmp_path),
        "COUNTERSIGN_TEMPORAL_ADDRESS": "127.0.0.1:9",
        "COUNTERSIGN_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "COUNTERSIGN_SYSTEMS__SHOP__URL": "http://127.0.0.1:9",
        # The corpus is recorded unencrypted so it replays without any deployment's keys.
        "COUNTERSIGN_ENCRYPT_PAYLOADS": "false",
    }
    done = countersign(env, "replay", "--file", str(HERE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("deterministic") == len(CORPUS)
    assert done.stdout.count("result identical") == len(CORPUS)

    (tmp_path / "broken.json").write_text("{not json")
    bad = countersign(env, "replay", "--file", str(tmp_path / "broken.json"))
    assert bad.returncode == 2 and "not a readable history JSON file" in bad.stderr


async def test_cli_replays_a_live_run_by_workflow_id(
    temporal: WorkflowEnvironment, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1003: the lid is cracked."
    )
    (request,) = await wait_for_pending(handle)
    await handle.execute_update("decide", signed(handle.id, request, "bob", approve=False))
    await handle.result()
    # The live run's payloads are encrypted: the CLI reads the session's keys from its keyring.
    env = {
        "COUNTERSIGN_STATE_DIR": str(settings.state_dir),
        "COUNTERSIGN_TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
    }
    saved = tmp_path / "live.json"
    done = countersign(env, "replay", handle.id, "--save", str(saved), "--json")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["deterministic"] and report["result_matches"]
    assert report["workflow_id"] == handle.id
    # The saved file replays too, and is what `--file` and the corpus take.
    again = countersign(env, "replay", "--file", str(saved))
    assert again.returncode == 0 and "result identical" in again.stdout


def _patch_markers(path: Path) -> list[str]:
    ((_, history),) = load_histories([path])
    return [
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_a_run_records_one_patch_marker_where_it_recorded_one_per_patch(path: Path) -> None:
    """Since ALL_PATCHES_2026_11 a run starts with one patch marker (and so one
    TemporalChangeVersion upsert) instead of twelve; the run is otherwise the same."""
    (marker,) = _patch_markers(path)
    assert marker == ALL_PATCHES_2026_11
    before = _patch_markers(BEFORE_PATCH_SET / path.name)
    assert len(before) == 12 and ALL_PATCHES_2026_11 not in before


def test_every_segmented_scenario_is_recorded() -> None:
    stems = {p.stem.rsplit(".", 1)[0] for p in SEGMENTS.glob("*.json")}
    assert stems == set(SEGMENTED_SCENARIOS)


@pytest.mark.parametrize(
    "paths",
    [sorted((f / "segments").glob("long-run.*.json")) for f in SEGMENTED_FOLDERS],
    ids=[folder_id(f) for f in SEGMENTED_FOLDERS],
)
async def test_a_run_continued_as_new_replays_segment_by_segment(
    monkeypatch: pytest.MonkeyPatch, paths: list[Path]
) -> None:
    """long-run: three segments; each replays on its own from its carried input, and the last
    computes the recorded result (approved across a boundary, rolled back across two)."""
    monkeypatch.setitem(AGENTS, SEGMENTED, segmented_agent())
    reports = await replay(load_histories(paths))
    assert [r.deterministic for r in reports] == [True] * 3, [r.divergence for r in reports]
    assert [r.result_matches for r in reports] == [None, None, True]
    assert [r.model_steps for r in reports] == [2, 2, 1]
    result = reports[-1].result
    assert result is not None and (result["status"], result["steps"]) == ("rolled_back", 5)
    refunds = [a for a in result["actions"] if a["tool"] == "payments.refund"]
    assert [a["status"] for a in refunds] == ["compensated", "compensated"]
    assert refunds[1]["approved_by"] == ["alice"]
    for path in paths:
        text = readable_text(json.loads(path.read_text()))
        assert "Bearer " not in text and SHOP_TOKEN not in text, path
