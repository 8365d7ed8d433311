"""Context windows on the real stack: a long run sends the model a bounded conversation (the
latest turns and a running summary made by an audited model call), the transcript store keeps
every message, and the run completes as the scripted model intended."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.agent_specs import AGENTS, AgentSpec, ContextWindow
from countersign.activities.context import fold_point
from countersign.activities.runtime import Runtime
from countersign.demo.plugin import SUPPORT_PROMPT
from tests.conftest import start_run

STEPS = 30
KEEP, FOLD = 4, 4


def loop_script(name: str, match: str) -> dict[str, object]:
    call = {"name": "orders.lookup", "arguments": {"order_id": "A-1001"}, "reason": "check again"}
    return {
        "name": name,
        "match": match,
        "turns": [{"tool_calls": [call]} for _ in range(STEPS)] + [{"say": "Done looking."}],
    }


async def model_requests(model_url: str) -> list[dict[str, Any]]:
    """What the scripted model server received, latest last."""
    async with httpx.AsyncClient(timeout=10) as http:
        listed = await http.get(model_url.removesuffix("/v1") + "/_requests")
    return listed.json()["requests"]


@pytest.mark.parametrize("summarize", [True, False], ids=["summarized", "dropped"])
async def test_long_run_sends_a_bounded_window_and_keeps_the_whole_transcript(
    temporal: WorkflowEnvironment,
    worker: Worker,
    runtime: Runtime,
    scripts_dir: Path,
    model_url: str,
    monkeypatch: pytest.MonkeyPatch,
    summarize: bool,
) -> None:
    agent = AgentSpec(
        name=f"context-loop-{uuid.uuid4().hex[:8]}",
        description="Test only: looks an order up again and again.",
        system_prompt=SUPPORT_PROMPT,
        scopes=["orders:read"],
        max_steps=STEPS + 5,
        context=ContextWindow(keep_last_turns=KEEP, fold_every=FOLD, summarize=summarize),
    )
    monkeypatch.setitem(AGENTS, agent.name, agent)
    token = uuid.uuid4().hex[:12]
    script = loop_script(f"context-{token}", rf"^Context loop {token}\b")
    (scripts_dir / f"context-{token}.json").write_text(json.dumps(script))
    task = f"Context loop {token}: look order A-1001 up {STEPS} times."

    handle = await start_run(
        temporal.client, worker.task_queue, agent=agent.name, task=task, subject={}
    )
    result = await handle.result()

    # The scripted model played every turn in order although it saw only the latest ones:
    # the window's note told it how many replies were left out.
    assert result.status == "completed", result
    assert result.final_message == "Done looking."
    assert result.steps == STEPS + 1
    lookups = [a for a in result.actions if a.tool == "orders.lookup"]
    assert len(lookups) == STEPS and all(a.status == "executed" for a in lookups)

    # What the model server received: system, task, (note), then whole turns, never more than
    # the window holds; without the window the last request would hold 2 + 2 * STEPS.
    sent = [r for r in await model_requests(model_url) if r["task"] == task]
    assert len(sent) == STEPS + 1
    most = 3 + 2 * (KEEP + FOLD - 1)
    assert max(r["messages"] for r in sent) <= most
    folded = [r for r in sent if len(r["roles"]) > 2 and r["roles"][2] == "user"]
    assert folded, "no request carried the note standing for older turns"
    assert all(r["roles"][3] == "assistant" for r in folded)  # no orphaned tool result
    assert sent[-1]["roles"][:4] == ["system", "user", "user", "assistant"]

    # The audit trail: the model calls name their window; summaries are audited model calls.
    calls = runtime.audit.find(handle.id, "model.call")
    assert len(calls) == STEPS + 1
    assert all(c.data["window"]["sent"] <= most for c in calls)
    summaries = runtime.audit.find(handle.id, "model.summary")
    # A fold happens when FOLD turns are older than the last KEEP: at steps 9, 13, ... 29.
    fold_steps = list(range(KEEP + FOLD + 1, STEPS + 2, FOLD))
    if summarize:
        # Made once per fold, not on every step.
        assert [s.data["step"] for s in summaries] == fold_steps
        assert [s.data["replies"] for s in summaries] == [s - 1 - KEEP for s in fold_steps]
        last = summaries[-1].data
        assert last["model"] == "scripted:summarizer"
        # The running summary carries the earlier summaries' content forward.
        assert f"orders.lookup x{fold_steps[-1] - 1 - KEEP}" in last["summary"]
        assert last["usage"]["prompt_tokens"] > 0 and len(last["summary_sha256"]) == 64
    else:
        assert summaries == []

    # The transcript store still holds everything, for audit and replay.
    transcript = await runtime.transcripts.read(handle.id, 10**6)
    assert len(transcript) == 2 * STEPS + 1
    assert [m["role"] for m in transcript[:2]] == ["assistant", "tool"]
    assert transcript[-1]["content"] == "Done looking."
    fold = await runtime.transcripts.fold(handle.id, 10**6)
    assert fold is not None and fold.replies == fold_steps[-1] - 1 - KEEP
    assert (fold.summary is not None) == summarize


def test_a_fold_never_splits_a_turn() -> None:
    """A turn is a reply and all that answers it: tool results, a retry note."""
    turns = [
        [{"role": "assistant", "content": "[reply discarded: too long]"}, {"role": "user"}],
        [{"role": "assistant", "tool_calls": [{}, {}]}, {"role": "tool"}, {"role": "tool"}],
        [{"role": "assistant", "tool_calls": [{}]}, {"role": "tool"}],
        [{"role": "assistant", "tool_calls": [{}]}, {"role": "tool"}],
    ]
    history = [m for turn in turns for m in turn]
    window = ContextWindow(keep_last_turns=2, fold_every=2)
    assert fold_point(history, window) == 5  # the first two turns, whole
    assert fold_point(history[:-2], window) == 0  # one older turn is not enough to fold
    assert fold_point(history, ContextWindow(keep_last_turns=1, fold_every=2)) == 7


async def test_a_summary_of_personal_data_is_stored_and_audited_sealed(
    temporal: WorkflowEnvironment,
    worker: Worker,
    runtime: Runtime,
    scripts_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The summarizer sees the folded turns in clear and may repeat what it saw (the scripted
    one quotes the latest result); whatever it repeats is sealed again before it is kept."""
    agent = AgentSpec(
        name=f"context-crm-{uuid.uuid4().hex[:8]}",
        description="Test only: looks a customer up again and again.",
        system_prompt=SUPPORT_PROMPT,
        scopes=["crm:read"],
        context=ContextWindow(keep_last_turns=1, fold_every=1),
    )
    monkeypatch.setitem(AGENTS, agent.name, agent)
    token = uuid.uuid4().hex[:12]
    call = {"name": "customers.lookup", "arguments": {"customer_id": "C-100"}, "reason": "again"}
    script = {
        "name": f"context-crm-{token}",
        "match": rf"^Customer loop {token}\b",
        "turns": [{"tool_calls": [call]}] * 3 + [{"say": "Done."}],
    }
    (scripts_dir / f"context-crm-{token}.json").write_text(json.dumps(script))

    handle = await start_run(
        temporal.client,
        worker.task_queue,
        agent=agent.name,
        task=f"Customer loop {token}",
        subject={},
    )
    result = await handle.result()
    assert result.status == "completed" and result.final_message == "Done.", result

    summaries = runtime.audit.find(handle.id, "model.summary")
    assert [s.data["step"] for s in summaries] == [3, 4]
    audit = json.dumps([r.model_dump(mode="json") for r in runtime.audit.for_run(handle.id)])
    fold = await runtime.transcripts.fold(handle.id, 10**6)
    assert fold is not None and fold.summary is not None
    for value in ("ada@example.com", "Ada Lovelace", "+44 20 7946 0100"):
        assert value not in audit
        assert value not in fold.summary
    assert "Latest result:" in fold.summary and "[[sealed:personal:" in fold.summary
    assert "[personal]" in summaries[-1].data["summary"]
