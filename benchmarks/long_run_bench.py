"""Long-run benchmark: Countersign's own cost per step as a run grows, each history segment's
size, and replay time per step. Prints figures, asserts nothing about time.

    python -m benchmarks.long_run_bench                        # 10 100 500 2000 steps
    python -m benchmarks.long_run_bench --steps 10000 --segment 500

Each run is the replay benchmark's looping script (a read-only lookup per step, then an
answer) on a fresh dev stack, for an agent with a context window (keep 8 turns, fold 8, so the
prompt is bounded) that continues as new every `--segment` steps (agents/segments.py).

Countersign's own cost per step is the run's wall time minus the scripted model server's own
time handling the requests (its `/_stats` endpoint: the time inside its handler, summed),
divided by the steps. It holds the workflow tasks, the guard, the audit, the transcript store,
the openai client and the lookup. "Last 10%" is the same figure from the history's event times
over the last tenth of the run, with the model server's mean time per request subtracted:
flat cost means it matches the whole run's. Replay: every segment's history replayed once
(the workflow code and the SDK, no activities), summed, per step.

A first run (`--warmup` steps, 20) is not counted: on a fresh stack it pays for the worker's
imports, the workflow sandbox, connections and the server's caches, which is not a per-step
cost. Runs shorter than `--repeat-steps` (100) are repeated until they add up to it (10 steps:
ten runs), and the run with the median own cost is shown, so a short run's figure is not one
sample of a shared machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from benchmarks.replay_bench import BENCH_AGENT, loop_script
from countersign.activities.agent_specs import AGENTS, ContextWindow
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput
from countersign.workers.logging import configure_logging
from countersign.workers.replay import fetch_segments, replay
from countersign.workers.worker import build_worker
from tests.histories.record import fresh_stack


async def model_calls(
    histories: list[WorkflowHistory], converter: DataConverter
) -> list[tuple[int, float, int, float]]:
    """Each `model.plan` activity in order: its index in the run's events (all segments), the
    time it was scheduled, the steps its result took (one, or more with read-ahead), and the
    time it completed."""
    calls = []
    at = 0
    for h in histories:
        scheduled: dict[int, tuple[int, float]] = {}
        for i, e in enumerate(h.events):
            if (
                e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                and e.activity_task_scheduled_event_attributes.activity_type.name == "model.plan"
            ):
                scheduled[e.event_id] = (at + i, e.event_time.ToNanoseconds() / 1e9)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                done = e.activity_task_completed_event_attributes
                if done.scheduled_event_id in scheduled:
                    (out,) = await converter.decode(done.result.payloads)
                    index, t = scheduled[done.scheduled_event_id]
                    end = e.event_time.ToNanoseconds() / 1e9
                    calls.append((index, t, 1 + len(out.get("ahead") or []), end))
        at += len(h.events)
    return calls


def breakdown(
    histories: list[WorkflowHistory], calls: list[tuple[int, float, int, float]], first: bool
) -> tuple[float, float]:
    """Over the first (or last) tenth of the model calls: the workflow tasks' time (started to
    completed, summed) and the activities' (the model call: started to completed), in ms per
    step. Event ids restart in each segment, so events are keyed by (segment, event id)."""
    events = [(n, e) for n, h in enumerate(histories) for e in h.events]
    tenth = max(2, len(calls) // 10)
    window = calls[:tenth] if first else calls[-tenth:]
    started: dict[tuple[int, int], float] = {}
    wft = activity = 0.0
    for n, e in events[window[0][0] : window[-1][0]]:
        t = e.event_time.ToNanoseconds() / 1e9
        kind = e.event_type
        if kind in (
            EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
        ):
            started[(n, e.event_id)] = t
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            wft += t - started.get(
                (n, e.workflow_task_completed_event_attributes.started_event_id), t
            )
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            activity += t - started.get(
                (n, e.activity_task_completed_event_attributes.started_event_id), t
            )
    steps = sum(call[2] for call in window[:-1])
    return 1000 * wft / steps, 1000 * activity / steps


async def model_stats(base_url: str) -> tuple[int, float]:
    async with httpx.AsyncClient() as http:
        stats = (await http.get(base_url.removesuffix("/v1") + "/_stats")).json()
    return stats["requests"], stats["seconds"]


async def measure(stack: Any, agent: Any, n: int, base_url: str, tag: str) -> dict[str, Any]:
    """One run of `n` lookups: its own cost per step, history segments and replay."""
    run_input = RunInput(agent=agent.name, task=f"Benchmark loop {n}", requested_by="b")
    requests0, model0 = await model_stats(base_url)
    began, cpu = time.perf_counter(), time.process_time()
    handle = await stack.client.start_workflow(
        AgentRun.run,
        run_input.model_dump(mode="json"),
        id=f"bench-long-{n}-{tag}",
        task_queue="bench",
        execution_timeout=timedelta(hours=3),
    )
    result = await handle.result()
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu
    requests1, model1 = await model_stats(base_url)
    assert result.steps == n + 1, result
    steps = result.steps
    histories = await fetch_segments(stack.client, handle.id)
    per_request = (model1 - model0) / max(1, requests1 - requests0)
    calls = await model_calls(histories, stack.client.data_converter)
    # The last tenth of the steps: from the model call that takes the first of them to the
    # last model call, per step taken in between.
    tail, tail_steps = calls[-1:], 0
    while len(tail) < len(calls) and tail_steps < steps / 10:
        tail.insert(0, calls[-len(tail) - 1])
        tail_steps += tail[0][2]
    tail_ms = 1000 * ((tail[-1][1] - tail[0][1]) / max(1, tail_steps) - per_request)
    # The steps alone: from the first model call's scheduling to the last one's result, so
    # the run's start and end (its first audit record, its last) are not spread over them.
    span = calls[-1][3] - calls[0][1]
    replayed = replayed_cpu = 0.0
    for history in histories:
        t, c = time.perf_counter(), time.process_time()
        (report,) = await replay([("bench", history)])
        replayed += time.perf_counter() - t
        replayed_cpu += time.process_time() - c
        assert report.deterministic, report.divergence
    return {
        "steps": steps,
        "wall_s": wall,
        "model_ms": 1000 * (model1 - model0) / steps,
        "own_ms": 1000 * (wall - (model1 - model0)) / steps,
        "steps_ms": 1000 * (span - (model1 - model0)) / steps,
        "cpu_ms": 1000 * cpu / steps,
        "tail_ms": tail_ms if len(tail) > 1 else float("nan"),
        "segments": len(histories),
        "max_events": max(len(h.events) for h in histories),
        "max_kb": max(sum(e.ByteSize() for e in h.events) for h in histories) / 1024,
        "replay_ms": 1000 * replayed / steps,
        "replay_cpu_ms": 1000 * replayed_cpu / steps,
        "wft": (breakdown(histories, calls, True)[0], breakdown(histories, calls, False)[0]),
        "activities": (
            breakdown(histories, calls, True)[1],
            breakdown(histories, calls, False)[1],
        ),
    }


async def bench(
    step_counts: list[int], segment: int, warmup: int = 20, repeat_steps: int = 100
) -> list[dict[str, Any]]:
    agent = BENCH_AGENT.model_copy(
        update={
            "name": "bench-long",
            "max_steps": max(*step_counts, warmup) + 10,
            "context": ContextWindow(keep_last_turns=8, fold_every=8),
            "segment_steps": segment,
        }
    )
    AGENTS[agent.name] = agent
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scripts-") as scripts:
        for n in {*step_counts, warmup}:
            (Path(scripts) / f"loop-{n}.json").write_text(json.dumps(loop_script(n)))
        async with (
            fresh_stack(scripts=Path(scripts)) as stack,
            build_worker(stack.client, stack.settings, stack.runtime, task_queue="bench"),
        ):
            base_url = stack.settings.openai_base_url
            # Not counted: the fresh stack's and worker's first run (imports, the sandbox,
            # connections, the server's caches) would be the 10-step figure otherwise.
            await measure(stack, agent, warmup, base_url, "warm-up")
            for n in step_counts:
                # Short runs repeat until they add up to ~100 steps; the median run is shown.
                repeats = max(1, -(-repeat_steps // n)) if n < repeat_steps else 1
                runs = [await measure(stack, agent, n, base_url, f"{r}") for r in range(repeats)]
                row = sorted(runs, key=lambda r: r["own_ms"])[len(runs) // 2]
                row["repeats"] = repeats
                rows.append(row)
                print(f"  … {row['steps']} steps in {row['wall_s']:.1f}s (x{repeats})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long_run_bench")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 500, 2000])
    parser.add_argument("--segment", type=int, default=500, help="continue as new every N steps")
    parser.add_argument("--warmup", type=int, default=20, help="steps of an uncounted first run")
    parser.add_argument(
        "--repeat-steps",
        type=int,
        default=100,
        help="runs shorter than this repeat until they add up to it (the median is shown)",
    )
    args = parser.parse_args(argv)
    configure_logging(level="WARNING", json=False)
    print(
        f"Long runs: {', '.join(map(str, args.steps))} steps, window 8+8, continue as new "
        f"every {args.segment} steps (fresh dev stack, scripted model, zero latency)"
    )
    rows = asyncio.run(bench(args.steps, args.segment, args.warmup, args.repeat_steps))
    print(
        f"\n{'steps':>6} {'run':>8} {'model srv':>10} {'own/step':>9} {'steps only':>11} "
        f"{'last 10%':>9} {'cpu':>7} "
        f"{'segments':>9} {'events/seg':>11} {'KB/seg':>8} {'replay/step':>12} {'(cpu)':>7}"
    )
    for r in rows:
        print(
            f"{r['steps']:>6} {r['wall_s']:>7.1f}s {r['model_ms']:>8.1f}ms {r['own_ms']:>7.1f}ms "
            f"{r['steps_ms']:>9.1f}ms {r['tail_ms']:>7.1f}ms {r['cpu_ms']:>5.1f}ms "
            f"{r['segments']:>9} "
            f"{r['max_events']:>11} {r['max_kb']:>8.0f} {r['replay_ms']:>10.2f}ms "
            f"{r['replay_cpu_ms']:>5.2f}ms"
        )
    print(f"\n{'steps':>6} {'workflow tasks/step':>22} {'activities/step':>18}  (first → last 10%)")
    for r in rows:
        wft, plan = r["wft"], r["activities"]
        print(f"{r['steps']:>6} {wft[0]:>9.1f} → {wft[1]:>5.1f} ms", end="")
        print(f" {plan[0]:>8.1f} → {plan[1]:>5.1f} ms")
    print("(own/step: wall time minus the model server's own time, per step; steps only: the")
    print(" same from the first model call to the last one's result, without the run's start")
    print(" and end; last 10%: the same over the last tenth of the steps; cpu: the worker")
    print(" process's CPU time per step (the workflow, the guard, the audit, the transcript, the")
    print(" openai client; not the Temporal server's); events/seg and")
    print(" KB/seg: the largest segment's history; replay/step: all segments replayed, per step,")
    print(" wall and CPU time: on a shared machine CPU time is the steadier figure)")


if __name__ == "__main__":
    main()
