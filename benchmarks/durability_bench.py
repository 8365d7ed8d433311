"""The price of durability, measured against the alternatives (issue 7). Prints figures,
asserts nothing about time.

    python -m benchmarks.durability_bench                  # everything
    python -m benchmarks.durability_bench --only overhead  # one part

One fresh dev stack (Temporal dev server with DEV_SERVER_TUNING, shop, scripted model at zero
latency) on free ports; workers run in this process.

1. overhead: the same model → tool loop (N read-only `orders.lookup` calls, then an answer)
   (a) as plain in-process LangGraph, (b) under Temporal with the LangGraph plugin, both nodes
   activities, no guard (`benchmarks.bare_loop`), (c) as a Countersign AgentRun (guard, audit,
   transcript store). ms per iteration (model call + tool call); ratios of medians.
2. throughput: completed 3-step runs per second (lookup, lookup, answer: read-only, so every
   run can hit the same order), one worker, runs started at once in batches of 1, 10, 100.
3. decision: the demo refund of A-1002 (189.00) waits for a support lead; the time from the
   approval Update being sent (client clock, just before `send_decision`) to the server's
   ActivityTaskStarted event of `payments.refund` in the run's history (same machine's clock).
   The shop is reset (`POST /_reset`) before each run so the order is refundable again.
4. memory: this process's RSS (VmRSS: it hosts the worker, the client and the benchmark) with
   N runs parked on an approval; the delta over the idle worker is the figure that scales.

Medians over repeats, with min..max. Ratios are measured in the same run on the same stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.langgraph import LangGraphPlugin
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.model import tools_for
from agents.run import AgentRun
from agents.specs import AGENTS
from agents.state import RunInput
from benchmarks import bare_loop
from benchmarks.replay_bench import BENCH_AGENT, loop_script
from guardrails.approvals import Decision
from guardrails.policy import DEFAULT_POLICY_PATH
from tests.histories.record import Stack, fresh_stack
from workers.credentials import get_secret, openai_api_key
from workers.decisions import send_decision, wait_for_requests
from workers.logging import configure_logging
from workers.worker import build_worker, check_startup

DEMO_SCRIPTS = Path(__file__).resolve().parent.parent / "demo" / "scripts"
CS_QUEUE = "bench-countersign"
BARE_QUEUE = "bench-bare"


def three_step_script() -> dict[str, object]:
    call = {"name": "orders.lookup", "arguments": {"order_id": "A-1001"}, "reason": "check"}
    return {
        "name": "three",
        "description": "Benchmark: three model steps, two read-only tool calls.",
        "match": r"(?i)^benchmark three\b",
        "turns": [{"tool_calls": [call]}, {"tool_calls": [call]}, {"say": "Done."}],
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f})"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _agent_run(client: Client, wf_id: str, task: str, agent: str = BENCH_AGENT.name) -> Any:
    run_input = RunInput(agent=agent, task=task, requested_by="bench")
    return await client.start_workflow(
        AgentRun.run,
        run_input.model_dump(mode="json"),
        id=wf_id,
        task_queue=CS_QUEUE,
        execution_timeout=timedelta(minutes=30),
    )


# --- 1. overhead per agent step --------------------------------------------------------------


async def bench_overhead(stack: Stack, n: int, repeats: int) -> dict[str, list[float]]:
    task = f"Benchmark loop {n}"
    plain = bare_loop.build_bare_graph(None).compile()
    out: dict[str, list[float]] = {"plain": [], "plugin": [], "countersign": []}
    for r in range(repeats + 1):  # the first round warms every path up and is dropped
        t = time.perf_counter()
        final = await plain.ainvoke(
            {"messages": bare_loop.first_messages(task)}, config={"recursion_limit": 10_000}
        )
        plain_s = time.perf_counter() - t
        assert len(final["messages"]) == 2 + 2 * n + 1, len(final["messages"])

        t = time.perf_counter()
        count = await stack.client.execute_workflow(
            bare_loop.BareLoop.run,
            task,
            id=f"bare-{n}-{r}",
            task_queue=BARE_QUEUE,
            execution_timeout=timedelta(minutes=30),
        )
        plugin_s = time.perf_counter() - t
        assert count == 2 + 2 * n + 1, count

        t = time.perf_counter()
        handle = await _agent_run(stack.client, f"cs-{n}-{r}", task)
        result = await handle.result()
        cs_s = time.perf_counter() - t
        assert result.steps == n + 1, result
        if r:
            out["plain"].append(1000 * plain_s / n)
            out["plugin"].append(1000 * plugin_s / n)
            out["countersign"].append(1000 * cs_s / n)
        print(f"  … overhead round {r} done", flush=True)
    return out


# --- 2. throughput ---------------------------------------------------------------------------


async def bench_throughput(
    stack: Stack, batches: list[int], repeats: int
) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for k in batches:
        rates = []
        for r in range(repeats):
            t = time.perf_counter()
            handles = await asyncio.gather(
                *(_agent_run(stack.client, f"tp-{k}-{r}-{i}", "Benchmark three") for i in range(k))
            )
            results = await asyncio.gather(*(h.result() for h in handles))
            elapsed = time.perf_counter() - t
            assert all(res.steps == 3 for res in results), results[0]
            rates.append(k / elapsed)
        out[k] = rates
        print(f"  … throughput batch {k} done", flush=True)
    return out


# --- 3. decision latency ---------------------------------------------------------------------


async def _reset_shop(stack: Stack) -> None:
    shop = stack.settings.systems["shop"]
    async with httpx.AsyncClient(
        base_url=shop.url, headers={"Authorization": f"Bearer {get_secret(shop.credential)}"}
    ) as http:
        (await http.post("/_reset")).raise_for_status()


async def bench_decision(stack: Stack, samples: int) -> list[float]:
    latencies = []
    for i in range(samples):
        await _reset_shop(stack)
        handle = await _agent_run(
            stack.client,
            f"dec-{i}",
            "Refund order A-1002: the espresso machine leaks.",
            agent="support-refunds",
        )
        try:
            request_id = (await wait_for_requests(handle, seconds=20))[0].request_id
        except TimeoutError:
            # The default policy's refund budgets (per agent per day, per customer per week)
            # live in the guard's ledger, which the shop reset does not touch: after a few
            # approved refunds the guard refuses outright and nothing waits any more.
            print(f"  … decision: run {i} was refused by the refund budget; stopping", flush=True)
            with contextlib.suppress(RPCError):
                await handle.terminate("benchmark done")
            break
        sent = time.time()
        await send_decision(
            stack.client,
            handle.id,
            Decision(request_id=request_id, approver="alice", approve=True, comment="bench"),
        )
        await handle.result()
        history = await handle.fetch_history()
        scheduled = {
            e.event_id
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
            and e.activity_task_scheduled_event_attributes.activity_type.name == "payments.refund"
        }
        started = [
            e.event_time.ToDatetime().timestamp()
            for e in history.events
            if e.HasField("activity_task_started_event_attributes")
            and e.activity_task_started_event_attributes.scheduled_event_id in scheduled
        ]
        assert started, f"{handle.id}: payments.refund never started"
        latencies.append(1000 * (min(started) - sent))
    return latencies


# --- 4. memory -------------------------------------------------------------------------------


async def _parked(handle: Any, wait_s: float = 120) -> bool:
    """True once the run waits on an approval; False if it finished without one (the guard
    can refuse a refund that another parked run has already reserved)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if (await handle.query(AgentRun.status)).pending_approvals:
                return True
        except RPCError:
            await asyncio.sleep(0.5)
            continue
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return False
        await asyncio.sleep(0.1)
    return False


async def bench_memory(stack: Stack, parked: int) -> tuple[float, float, int]:
    idle = rss_mb()
    handles = []
    for start in range(0, parked, 50):
        handles += await asyncio.gather(
            *(
                _agent_run(
                    stack.client,
                    f"park-{parked}-{i}",
                    "Refund order A-1002: it leaks.",
                    agent="support-refunds",
                )
                for i in range(start, min(parked, start + 50))
            )
        )
    count = 0
    for h in handles:
        count += await _parked(h)
    await asyncio.sleep(1)
    loaded = rss_mb()
    for h in handles:
        with contextlib.suppress(RPCError):  # already finished
            await h.terminate("benchmark done")
    return idle, loaded, count


def bench_policy(folder: Path) -> Path:
    shutil.copytree(DEFAULT_POLICY_PATH, folder)
    cedar = folder / "refunds.cedar"
    text = cedar.read_text()
    for limit, raised in ((">= 3", ">= 1000000"), ("> 200000", "> 100000000000")):
        assert limit in text, f"default policy changed: {limit!r} not in {cedar}"
        text = text.replace(limit, raised)
    cedar.write_text(text)
    (folder / "cases.toml").unlink(missing_ok=True)  # its budget cases no longer hold
    return folder


# --- the stack -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    AGENTS[BENCH_AGENT.name] = BENCH_AGENT
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as scripts:
        (Path(scripts) / "loop.json").write_text(json.dumps(loop_script(args.steps)))
        (Path(scripts) / "three.json").write_text(json.dumps(three_step_script()))
        shutil.copy(DEMO_SCRIPTS / "refund.json", Path(scripts) / "refund.json")
        async with fresh_stack(scripts=Path(scripts)) as stack:
            # Decision and memory runs refund the same orders again and again: the default
            # refund budgets would refuse them after three, so this stack's guard reads a copy
            # of the default policy with the budgets out of reach (the rules are unchanged).
            stack.settings = stack.settings.model_copy(
                update={"policy_path": bench_policy(Path(scripts) / "policy")}
            )
            stack.runtime = check_startup(stack.settings)
            shop = stack.settings.systems["shop"]
            bare_loop.ENDPOINTS = bare_loop.Endpoints(
                model_url=stack.settings.openai_base_url,
                shop_url=shop.url,
                shop_token=get_secret(shop.credential),
                model_key=openai_api_key(),
                tools=tools_for(BENCH_AGENT),
            )
            bare_worker = Worker(
                stack.client,
                task_queue=BARE_QUEUE,
                workflows=[bare_loop.BareLoop],
                plugins=[
                    LangGraphPlugin(graphs={bare_loop.BARE_GRAPH: bare_loop.build_bare_graph()})
                ],
            )
            cs_worker = build_worker(
                stack.client, stack.settings, stack.runtime, task_queue=CS_QUEUE
            )
            async with bare_worker, cs_worker:
                await report(stack, args)


async def report(stack: Stack, args: argparse.Namespace) -> None:
    parts = args.only or ["overhead", "throughput", "decision", "memory"]
    if "memory" in parts:  # first, before the other parts' runs sit in the worker's cache
        idle, loaded, count = await bench_memory(stack, args.parked)
        print(
            f"\nMemory: {count} of {args.parked} runs parked on an approval: RSS {loaded:.0f} MB "
            f"(idle worker {idle:.0f} MB, +{loaded - idle:.0f} MB, "
            f"{1024 * (loaded - idle) / max(count, 1):.0f} KB/parked run)",
            flush=True,
        )
    if "overhead" in parts:
        o = await bench_overhead(stack, args.steps, args.repeats)
        med = {k: statistics.median(v) for k, v in o.items()}
        print(
            f"\nOverhead per iteration (model call + tool call), N={args.steps}, "
            f"{args.repeats} repeats, ms median (min..max)"
        )
        print(f"  (a) plain LangGraph       {spread(o['plain'])}")
        print(f"  (b) Temporal plugin, bare {spread(o['plugin'])}")
        print(f"  (c) Countersign AgentRun  {spread(o['countersign'])}")
        print(
            f"  (c)/(a) = {med['countersign'] / med['plain']:.1f}x   "
            f"(c)/(b) = {med['countersign'] / med['plugin']:.2f}x",
            flush=True,
        )
    if "throughput" in parts:
        tp = await bench_throughput(stack, args.batches, args.repeats)
        print("\nThroughput: 3-step runs started at once, one worker, runs/s median (min..max)")
        for k, rates in tp.items():
            print(f"  {k:>4} at once  {spread(rates)}", flush=True)
    if "decision" in parts:
        lat = await bench_decision(stack, args.samples)
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
        print(
            f"\nDecision latency, approval Update sent → payments.refund started, "
            f"{len(lat)} runs: p50 {statistics.median(lat):.1f} ms, p99 {q[98]:.1f} ms, "
            f"min {min(lat):.1f}, max {max(lat):.1f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durability_bench")
    parser.add_argument(
        "--only", nargs="+", choices=["overhead", "throughput", "decision", "memory"]
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--parked", type=int, default=200)
    args = parser.parse_args(argv)
    configure_logging(level="WARNING", json=False)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
