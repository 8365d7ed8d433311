"""Re-record the history corpus against a fresh dev stack, in one command:

    python -m tests.histories.record              # every scenario
    python -m tests.histories.record approved     # just some

Each scenario runs the real thing — Temporal dev server (the time-skipping test server for the
timeout), demo shop, scripted model, an in-process worker — on free ports in a throwaway state
folder, and writes `tests/histories/<scenario>.json` (`fetch_history().to_json()`). The test
suite replays every file on every run (`test_corpus.py`). Re-record only for an intentional
change of workflow behaviour (see the README's "Evolving workflows safely").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from countersign.activities.agent_specs import AGENTS, AgentSpec
from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput, RunResult
from countersign.credentials import get_secret
from countersign.settings import Settings, SystemSettings
from countersign.workers.codec import pydantic_data_converter
from countersign.workers.decisions import (
    decide_as,
    rollback_request,
    sign_decision,
    wait_for_requests,
)
from countersign.workers.devstack import free_port, start_dev_stack
from countersign.workers.identities import signer_for
from countersign.workers.replay import fetch_segments, readable_text, save_history
from countersign.workers.worker import (
    build_worker,
    check_startup,
    connect,
    ensure_search_attributes,
)

HERE = Path(__file__).parent
# Runs that continue as new: one file per segment, `segments/<scenario>.<n>.json`.
SEGMENTS = HERE / "segments"
DEMO_SCRIPTS = HERE.parent.parent / "demo" / "scripts"
TASK_QUEUE = "corpus"


@dataclass
class Stack:
    settings: Settings
    client: Client
    runtime: Runtime

    def secrets(self) -> list[str]:
        """Values that must never appear in a history."""
        return [
            get_secret(self.settings.systems["shop"].credential),
            get_secret(self.settings.audit_signing_credential),
        ]


@asynccontextmanager
async def fresh_stack(
    scripts: Path | None = None, *, tuned: bool = True, persist: bool = True
) -> AsyncIterator[Stack]:
    """Temporal dev server, shop, scripted model (optionally other scripts) on free ports.
    `tuned` and `persist`: the dev server's options (see `start_temporal`)."""
    with tempfile.TemporaryDirectory(prefix="countersign-record-") as tmp:
        settings = Settings(
            state_dir=Path(tmp),
            temporal_address=f"127.0.0.1:{free_port()}",
            temporal_ui_url=f"http://127.0.0.1:{free_port()}",
            openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
            systems={"shop": SystemSettings(url=f"http://127.0.0.1:{free_port()}")},
            # The corpus must replay anywhere, without this throwaway stack's keys.
            encrypt_payloads=False,
        )
        stack = await asyncio.to_thread(
            start_dev_stack,
            settings,
            with_worker=False,
            scripts=scripts,
            tuned=tuned,
            persist=persist,
        )
        try:
            runtime = check_startup(settings)
            yield Stack(settings, await connect(settings), runtime)
        finally:
            stack.stop()


async def _start(
    client: Client, name: str, task: str, **options: Any
) -> WorkflowHandle[AgentRun, RunResult]:
    # The run is about the order its task names.
    order = re.search(r"\b[A-Z]-\d{4}\b", task)
    options.setdefault("subject", {"order_id": order[0]} if order else {})
    options.setdefault("agent", "support-refunds")
    run_input = RunInput(task=task, requested_by="ops-dana", **options)
    return await client.start_workflow(
        AgentRun.run,
        run_input.model_dump(mode="json"),
        id=name,  # the file stem: histories from the test server do not name their workflow
        task_queue=TASK_QUEUE,
    )


async def auto_approved(client: Client) -> WorkflowHandle[Any, Any]:
    """42.00 is within the automatic limit: lookup, refund, CRM note, no human."""
    handle = await _start(
        client, "auto-approved", "Refund order A-1001: the teapot arrived broken."
    )
    await handle.result()
    return handle


async def approved(client: Client) -> WorkflowHandle[Any, Any]:
    """189.00 waits for a support lead; alice approves through the CLI's path (an Update)."""
    handle = await _start(client, "approved", "Refund order A-1002: the espresso machine leaks.")
    (request,) = await wait_for_requests(handle)
    await decide_as(client, handle.id, request, "alice", comment="photo checked")
    await handle.result()
    return handle


async def rejected(client: Client) -> WorkflowHandle[Any, Any]:
    """129.00 waits; bob rejects from the Temporal UI (the `decision` signal)."""
    handle = await _start(
        client, "rejected", "Refund order A-1006: the kettle is the wrong colour."
    )
    (request,) = await wait_for_requests(handle)
    # What `countersign reject … --as bob --print` prints, pasted into the signal.
    envelope = sign_decision(
        signer_for("bob"),
        handle.id,
        request.request_id,
        request.action_hash,
        approve=False,
        comment="colour is not a defect",
        channel="temporal-ui",
    )
    await handle.signal("decision", {"envelope": envelope.model_dump(mode="json")})
    await handle.result()
    return handle


async def timed_out(client: Client) -> WorkflowHandle[Any, Any]:
    """Nobody answers: the 4-hour approval timer fires (time-skipping server) and rejects."""
    handle = await _start(client, "timed-out", "Refund order A-1011: nobody answers.")
    await handle.result()
    return handle


async def reminded(client: Client) -> WorkflowHandle[Any, Any]:
    """Nobody answers (time-skipping server): reminded at 3 h, escalated to the duty managers
    at 4 h, reminded again at 7 h, expired at 8 h (patch approval-reminders)."""
    handle = await _start(client, "reminded", "Refund order A-1009: the lamp hums.")
    await handle.result()
    return handle


async def compensated(client: Client) -> WorkflowHandle[Any, Any]:
    """A 48.00 refund and its note run automatically; inside the undo window alice rolls the
    run back, and both are compensated newest first (note deleted, refund reversed)."""
    handle = await _start(
        client, "compensated", "Refund order A-1015: the board split.", undo_window_seconds=600
    )
    for _ in range(400):
        if (await handle.query(AgentRun.status)).stage.startswith("completed"):
            break
        await asyncio.sleep(0.05)
    await handle.execute_update(
        "rollback", rollback_request(signer_for("alice"), handle.id, "duplicate ticket")
    )
    await handle.result()
    return handle


async def approved_with_changes(client: Client) -> WorkflowHandle[Any, Any]:
    """899.00 needs a support lead and finance; alice approves 600.00 instead (still the
    finance tier: her signature counts once), and carol approves the changed action."""
    handle = await _start(client, "approved-with-changes", "Refund order A-1003: the desk wobbles.")
    (request,) = await wait_for_requests(handle)
    await decide_as(
        client, handle.id, request, "alice", comment="one leg only", changes={"amount_cents": 60000}
    )
    for _ in range(400):
        pending = await wait_for_requests(handle)
        follow = [r for r in pending if r.request_id != request.request_id]
        if follow:
            break
        await asyncio.sleep(0.05)
    await decide_as(client, handle.id, follow[0], "carol")
    await handle.result()
    return handle


async def own_graph(client: Client) -> WorkflowHandle[Any, Any]:
    """A graph of its own (planner-executor, agents/planner_executor.py): a refund of another
    order is denied, the 88.00 refund waits for a support lead as in the built-in loop, alice
    approves."""
    handle = await _start(
        client,
        "own-graph",
        "Plan first, then refund order A-1017: the tray cracked.",
        agent="support-planner",
    )
    (request,) = await wait_for_requests(handle)
    await decide_as(client, handle.id, request, "alice", comment="photo checked")
    await handle.result()
    return handle


# A long run in three segments (agents/segments.py): this agent continues as new every two
# steps. Steps 1-2 look A-1054 up and refund 30.00 automatically; steps 3-4 refund 25.00 more,
# which the first refund brings over 50.00 for the customer's week, so it waits for a support
# lead (alice approves); step 5 reaches max_steps. Inside the undo window bob rolls the run
# back: both refunds are reversed, newest first, across the segments.
SEGMENTED = "support-refunds-segmented"


def segmented_agent() -> AgentSpec:
    """Made when needed, from the registered support-refunds agent."""
    return AGENTS["support-refunds"].model_copy(
        update={"name": SEGMENTED, "segment_steps": 2, "max_steps": 5}
    )


_LOOKUP = {"name": "orders.lookup", "arguments": {"order_id": "{order_id}"}}


def _refund(amount_cents: int) -> dict[str, Any]:
    args = {"order_id": "{order_id}", "amount_cents": amount_cents, "reason": "in two parts"}
    return {"name": "payments.refund", "arguments": args}


TWO_PART_REFUND = {
    "name": "two-part-refund",
    "match": r"(?i)pay back (?P<order_id>A-\d{4}) in two parts",
    "turns": [
        {"tool_calls": [_LOOKUP]},
        {"tool_calls": [_refund(3000)]},
        {"tool_calls": [_LOOKUP]},
        {"tool_calls": [_refund(2500)]},
        {"tool_calls": [_LOOKUP]},
        {"say": "done"},
    ],
}


async def long_run(client: Client) -> WorkflowHandle[Any, Any]:
    AGENTS[SEGMENTED] = segmented_agent()
    first = await _start(
        client,
        "long-run",
        "Pay back A-1054 in two parts.",
        agent=SEGMENTED,
        undo_window_seconds=600,
    )
    latest = client.get_workflow_handle(first.id)  # decisions go to the latest segment
    (request,) = await wait_for_requests(latest)
    await decide_as(client, first.id, request, "alice", comment="second part checked")
    for _ in range(400):
        if (await latest.query(AgentRun.status)).stage.startswith("completed"):
            break
        await asyncio.sleep(0.05)
    await latest.execute_update(
        "rollback", rollback_request(signer_for("bob"), first.id, "paid twice")
    )
    await first.result()
    return first


Scenario = Callable[[Client], Awaitable[WorkflowHandle[Any, Any]]]
# name → (scenario, needs the time-skipping server)
SCENARIOS: dict[str, tuple[Scenario, bool]] = {
    "auto-approved": (auto_approved, False),
    "approved": (approved, False),
    "rejected": (rejected, False),
    "timed-out": (timed_out, True),
    "compensated": (compensated, False),
    "reminded": (reminded, True),
    "approved-with-changes": (approved_with_changes, False),
    "own-graph": (own_graph, False),
}
PENDING_SCENARIOS: dict[str, str] = {}
# Behaviour runs recorded before a patch cannot have: not in the before-* folders.
LATER_SCENARIOS: dict[str, str] = {
    "own-graph": "graphs of one's own came with the guarded graph parts (agents/guarded.py)",
    "reminded": "reminders came with patch approval-reminders",
    "approved-with-changes": "approving with changes came with patch approval-evidence-and-changes",
}
# Runs that continue as new (one history per segment, in SEGMENTS).
SEGMENTED_SCENARIOS: dict[str, Scenario] = {"long-run": long_run}


def check_no_secrets(name: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        if secret in text:
            raise AssertionError(f"history {name} contains a secret; not writing it")
    if "Bearer " in text:
        raise AssertionError(f"history {name} contains an Authorization header; not writing it")


async def _save(stack: Stack, name: str, history: WorkflowHistory, out: Path) -> Path:
    text = readable_text(history.to_json_dict())
    check_no_secrets(name, text, stack.secrets())
    path = out / f"{name}.json"
    save_history(path, history)
    return path


async def record(names: list[str], out: Path = HERE) -> list[Path]:
    written = []
    scripts = Path(tempfile.mkdtemp(prefix="countersign-record-scripts-"))
    for script in DEMO_SCRIPTS.glob("*.json"):
        shutil.copy(script, scripts)
    (scripts / "two-part-refund.json").write_text(json.dumps(TWO_PART_REFUND))
    async with fresh_stack(scripts) as stack:
        live = [n for n in names if n in SCENARIOS and not SCENARIOS[n][1]]
        skipping = [n for n in names if n in SCENARIOS and SCENARIOS[n][1]]
        async with build_worker(stack.client, stack.settings, stack.runtime, task_queue=TASK_QUEUE):
            for name in live:
                handle = await SCENARIOS[name][0](stack.client)
                written.append(await _save(stack, name, await handle.fetch_history(), out))
            for name in [n for n in names if n in SEGMENTED_SCENARIOS]:
                handle = await SEGMENTED_SCENARIOS[name](stack.client)
                folder = out / SEGMENTS.name
                folder.mkdir(exist_ok=True)
                for n, history in enumerate(await fetch_segments(stack.client, handle.id), start=1):
                    written.append(await _save(stack, f"{name}.{n}", history, folder))
        if skipping:
            env = await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
                data_converter=pydantic_data_converter,
            )
            try:
                await ensure_search_attributes(env.client)
                async with build_worker(
                    env.client,
                    stack.settings,
                    stack.runtime,
                    task_queue=TASK_QUEUE,
                    sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
                ):
                    for name in skipping:
                        handle = await SCENARIOS[name][0](env.client)
                        written.append(await _save(stack, name, await handle.fetch_history(), out))
            finally:
                await env.shutdown()
    shutil.rmtree(scripts, ignore_errors=True)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.histories.record", description=__doc__)
    every = [*SCENARIOS, *SEGMENTED_SCENARIOS]
    parser.add_argument("names", nargs="*", choices=[[], *every], metavar="SCENARIO")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for path in asyncio.run(record(args.names or every, args.out)):
        print(f"recorded {path} ({path.stat().st_size} bytes)")
    for name, why in PENDING_SCENARIOS.items():
        print(f"not recorded: {name} ({why})")


if __name__ == "__main__":
    main()
