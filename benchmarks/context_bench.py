"""Context-window benchmark: what the model call costs per step as a run grows, with and without
an agent's context window (agents/specs.ContextWindow). Prints figures, asserts nothing about
time.

    python -m benchmarks.context_bench                       # 400-step runs, marks 10 100 400
    python -m benchmarks.context_bench --steps 200 --marks 10 100 200 --keep 8 --fold 8

One run per setting of the replay benchmark's looping script (a read-only lookup per step, on a
fresh dev stack with the scripted model). At each mark it shows the prompt the model server
received at that step (its token estimate, ceil(characters / 4), from the `model.call` audit
record) and the `model.plan` activity's time averaged over the ten steps ending there (from
the history's started/completed events), which includes reading the transcript, any summary
call, and the model server's own handling of the request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from benchmarks.replay_bench import BENCH_AGENT, loop_script
from countersign.activities.agent_specs import AGENTS, ContextWindow
from countersign.activities.contracts import PLAN
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput
from countersign.workers.logging import configure_logging
from countersign.workers.worker import build_worker
from tests.histories.record import fresh_stack

AVERAGED_STEPS = 10


def plan_seconds(history: WorkflowHistory) -> list[float]:
    """Each `model.plan` activity's time from started to completed, in step order."""
    scheduled: list[int] = []
    started: dict[int, float] = {}
    done: dict[int, float] = {}
    for e in history.events:
        t = e.event_time.ToNanoseconds() / 1e9
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if e.activity_task_scheduled_event_attributes.activity_type.name == PLAN:
                scheduled.append(e.event_id)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started[e.activity_task_started_event_attributes.scheduled_event_id] = t
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done[e.activity_task_completed_event_attributes.scheduled_event_id] = t
    return [done[s] - started[s] for s in scheduled]


async def bench(steps: int, marks: list[int], keep: int, fold: int) -> list[dict[str, object]]:
    settings = {
        "whole conversation": None,
        f"window {keep}+{fold}, summarized": ContextWindow(keep_last_turns=keep, fold_every=fold),
    }
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scripts-") as scripts:
        (Path(scripts) / "loop.json").write_text(json.dumps(loop_script(steps)))
        async with (
            fresh_stack(scripts=Path(scripts)) as stack,
            build_worker(stack.client, stack.settings, stack.runtime, task_queue="bench"),
        ):
            for i, (label, window) in enumerate(settings.items()):
                agent = BENCH_AGENT.model_copy(
                    update={"name": f"bench-context-{i}", "context": window}
                )
                AGENTS[agent.name] = agent
                run_input = RunInput(
                    agent=agent.name, task=f"Benchmark loop {steps}", requested_by="bench"
                )
                began = time.perf_counter()
                handle = await stack.client.start_workflow(
                    AgentRun.run,
                    run_input.model_dump(mode="json"),
                    id=f"bench-context-{i}",
                    task_queue="bench",
                    execution_timeout=timedelta(minutes=30),
                )
                result = await handle.result()
                run_s = time.perf_counter() - began
                assert result.steps == steps + 1, result
                seconds = plan_seconds(await handle.fetch_history())
                audit = stack.runtime.audit
                tokens = {
                    c.data["step"]: c.data["usage"]["prompt_tokens"]
                    for c in audit.find(handle.id, "model.call")
                }
                summaries = len(audit.find(handle.id, "model.summary"))
                for mark in marks:
                    recent = seconds[max(0, mark - AVERAGED_STEPS) : mark]
                    rows.append(
                        {
                            "setting": label,
                            "step": mark,
                            "prompt_tokens": tokens[mark],
                            "plan_ms": 1000 * sum(recent) / len(recent),
                            "run_s": run_s,
                            "summaries": summaries,
                        }
                    )
                print(f"  … {label}: {steps} steps in {run_s:.1f}s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.context_bench")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--marks", type=int, nargs="+", default=[10, 100, 400])
    parser.add_argument("--keep", type=int, default=8, help="keep_last_turns")
    parser.add_argument("--fold", type=int, default=8, help="fold_every")
    args = parser.parse_args(argv)
    if max(args.marks) > args.steps:
        parser.error(f"--marks must be at most --steps ({args.steps})")
    configure_logging(level="WARNING", json=False)

    print(f"Context window: runs of {args.steps} agent steps (fresh dev stack, scripted model)")
    rows = asyncio.run(bench(args.steps, args.marks, args.keep, args.fold))
    print(
        f"\n{'setting':<28} {'step':>5} {'prompt tokens':>14} "
        f"{'model.plan ms/step':>19} {'summaries':>10} {'run':>7}"
    )
    for r in rows:
        print(
            f"{r['setting']:<28} {r['step']:>5} {r['prompt_tokens']:>14} "
            f"{r['plan_ms']:>19.1f} {r['summaries']:>10} {r['run_s']:>6.1f}s"
        )
    print(f"(model.plan ms/step: mean over the {AVERAGED_STEPS} steps ending at that step)")


if __name__ == "__main__":
    main()
