"""The price of durability, measured against the alternatives (issue 7). Prints figures,
asserts nothing about time.

    python -m benchmarks.durability_bench                  # everything
    python -m benchmarks.durability_bench --only overhead  # one part
    python -m benchmarks.durability_bench --server stock --persistence memory

One fresh dev stack (Temporal dev server, shop, scripted model at zero latency) on free ports.
The dev server is `--server tuned` (DEV_SERVER_TUNING: history.transferProcessorMaxPollRPS
raised from its stock 20/s) or `--server stock` (no dynamic config), and keeps its state in a
SQLite file (`--persistence sqlite`, `--db-filename`) or in memory (`--persistence memory`).
The output's first line says which; every table's title repeats it. Run the combinations one
after the other to compare them: each run starts its own stack.

1. overhead: the same model → tool loop (N read-only `orders.lookup` calls, then an answer)
   (a) as plain in-process LangGraph, (b) under Temporal with the LangGraph plugin, both nodes
   activities, no guard (`benchmarks.bare_loop`), (c) as a Countersign AgentRun (guard, audit,
   transcript store; the built-in graph's read-ahead, AgentSpec.read_ahead), (d) the same with
   `read_ahead=0` (one model call per activity). ms per iteration (model call + tool call);
   ratios of medians. Workers run in this process.
2. throughput: completed 3-step runs per second (lookup, lookup, answer: read-only, so every
   run can hit the same order) with N worker processes (`--workers 1 2`), k runs started at
   once (`--batches 1 10 100 1000`). The workers are `python -m benchmarks.worker` processes —
   `countersign worker` with the benchmark-only agent registered — on their own task queue
   (one per N; this process's workers never poll it), with the stack's settings in their
   environment. Once every process polls the queue, a warm-up batch (not counted) runs;
   then, per batch, the clock starts before the first start (at most 100 starts in flight)
   and stops when the last result is in. The processes are stopped (SIGTERM) before the next
   N.
   ceiling: for scale, 100 of the same 3-step runs at once on in-process workers, bare plugin
   (`bare_loop`, "Benchmark loop 2") against Countersign, in the same stack and process.
3. decision: the demo refund of A-1002 (189.00) waits for a support lead; the time from the
   approval Update being sent (client clock, just before `send_decision`) to the server's
   ActivityTaskStarted event of `payments.refund` in the run's history (same machine's clock).
   The shop is reset (`POST /_reset`) before each run so the order is refundable again. The
   worker runs in this process.
4. memory: the resident memory (VmRSS from /proc, plus any child processes) of one
   `python -m countersign.workers worker` process (the real `countersign worker`, nothing
   registered) on its own task queue: just started, idle after one warm-up run (a
   refund parked on an approval, then terminated: imports, the workflow sandbox and the
   clients are loaded), and with `--parked N` refunds of A-1002 parked on an approval
   (confirmed through the status query). The delta over idle, per parked run, is the
   figure that scales; the worker's workflow cache (the SDK's default, 1,000 runs) keeps
   every parked run in memory up to that number. The parked runs are terminated afterwards.

Medians over repeats, with min..max. Ratios are measured in the same run on the same stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.langgraph import LangGraphPlugin
from temporalio.service import RPCError
from temporalio.worker import Worker

from benchmarks import bare_loop
from benchmarks.replay_bench import BENCH_AGENT, loop_script
from countersign.activities.agent_specs import AGENTS
from countersign.activities.model import tools_for
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput
from countersign.credentials import get_secret, openai_api_key
from countersign.guardrails.policy import DEFAULT_POLICY_PATH
from countersign.workers.decisions import send_decision, sign_decision, wait_for_requests
from countersign.workers.devstack import (
    DEV_SERVER_TUNING,
    DevStackError,
    Service,
    ensure_dev_policy_activation,
    settings_env,
    start_service,
)
from countersign.workers.identities import signer_for
from countersign.workers.logging import configure_logging
from countersign.workers.worker import build_worker, check_startup
from tests.conftest import count_tiers_per_run
from tests.histories.record import Stack, fresh_stack

ROOT = Path(__file__).resolve().parent.parent
DEMO_SCRIPTS = ROOT / "demo" / "scripts"
CS_QUEUE = "bench-countersign"
BARE_QUEUE = "bench-bare"
PROCESS_QUEUE = "bench-processes"  # + which round and how many worker processes
MEMORY_QUEUE = "bench-memory"
# The throughput workers: `countersign worker` with the benchmark agent registered. The memory
# worker: `countersign worker` itself. `python -m` from this checkout, not the console script:
# an editable install's script may import another checkout's modules.
BENCH_WORKER = ["benchmarks.worker"]
PLAIN_WORKER = ["countersign.workers", "worker"]
# Requests in flight at once from this client, so that 1,000 runs started "at once" are not
# 1,000 simultaneous RPCs (starts, result long-polls, status queries, terminations).
STARTS_IN_FLIGHT = 100
WAITS_IN_FLIGHT = 250
QUERIES_IN_FLIGHT = 50
REFUND_TASK = "Refund order A-1002: it leaks."

T = TypeVar("T")
R = TypeVar("R")


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


def rss_kb(pid: int) -> int:
    """VmRSS of a process plus its descendants', in KB (what is gone counts 0)."""
    proc = Path("/proc") / str(pid)
    total = 0
    children: set[int] = set()
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total = int(line.split()[1])
        for task in (proc / "task").iterdir():
            children.update(int(c) for c in (task / "children").read_text().split())
    except OSError:  # the process (or one of its threads) ended meanwhile
        pass
    return total + sum(rss_kb(child) for child in children)


# The benchmark agent with one model call per activity (no read-ahead): the loop as it ran
# before read-ahead, beside it.
STEPWISE_AGENT = BENCH_AGENT.model_copy(update={"name": "bench-loop-stepwise", "read_ahead": 0})


async def _agent_run(
    client: Client,
    wf_id: str,
    task: str,
    agent: str = BENCH_AGENT.name,
    task_queue: str = CS_QUEUE,
) -> Any:
    # The demo refunds act on their subject only (the guard binds refunds to it).
    subject = {"order_id": "A-1002"} if agent == "support-refunds" else {}
    run_input = RunInput(agent=agent, task=task, requested_by="bench", subject=subject)
    return await client.start_workflow(
        AgentRun.run,
        run_input.model_dump(mode="json"),
        id=wf_id,
        task_queue=task_queue,
        execution_timeout=timedelta(minutes=30),
    )


async def bounded(limit: int, fn: Callable[[T], Awaitable[R]], items: list[T]) -> list[R]:
    """`fn` over `items`, at most `limit` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with gate:
            return await fn(item)

    return await asyncio.gather(*(one(item) for item in items))


# --- worker processes ------------------------------------------------------------------------


def start_workers(stack: Stack, n: int, task_queue: str, module: list[str]) -> list[Service]:
    """n `python -m <module>` worker processes on `task_queue`, with the stack's settings
    (including the benchmark's policy copy) in their environment; logs in the state folder."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {
        **settings_env(stack.settings),
        "COUNTERSIGN_TASK_QUEUE": task_queue,
        "COUNTERSIGN_POLICY_PATH": str(stack.settings.policy_path),
        "COUNTERSIGN_METRICS_ADDRESS": "",  # n workers would fight for one metrics port
        "PYTHONPATH": path,  # this checkout's modules, wherever the benchmark was started
    }
    log_dir = stack.settings.state_dir / "logs"
    workers: list[Service] = []
    try:
        for i in range(n):
            argv = [sys.executable, "-m", *module]
            workers.append(start_service(f"{task_queue}-{i}", argv, log_dir, env=env))
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[Service]) -> None:
    for w in workers:  # SIGTERM all first, then wait for each
        if w.process.poll() is None:
            w.process.terminate()
    for w in workers:
        w.stop()


async def wait_for_pollers(client: Client, task_queue: str, workers: list[Service]) -> None:
    """Until every worker process polls both the workflow and the activity task queue."""
    deadline = time.monotonic() + 120
    while True:
        for w in workers:
            if w.process.poll() is not None:
                raise DevStackError(
                    f"{w.name} exited with code {w.process.returncode}; see {w.log_path}:\n"
                    f"{w.log_path.read_text()[-2000:]}"
                )
        polling = []
        for kind in (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ):
            try:
                described = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=client.namespace,
                        task_queue=TaskQueue(name=task_queue),
                        task_queue_type=kind,
                    )
                )
            except RPCError:  # a server still busy with the last batch: ask again
                polling.append(0)
                continue
            polling.append(len({p.identity for p in described.pollers}))
        if min(polling) >= len(workers):
            return
        if time.monotonic() > deadline:
            raise DevStackError(
                f"{len(workers)} worker(s) started, {min(polling)} poll {task_queue!r} after "
                f"120 s; see {workers[0].log_path.parent}"
            )
        await asyncio.sleep(0.5)


# --- 1. overhead per agent step --------------------------------------------------------------


async def bench_overhead(stack: Stack, n: int, repeats: int) -> dict[str, list[float]]:
    task = f"Benchmark loop {n}"
    plain = bare_loop.build_bare_graph(None).compile()
    out: dict[str, list[float]] = {"plain": [], "plugin": [], "countersign": [], "stepwise": []}
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

        t = time.perf_counter()
        handle = await _agent_run(stack.client, f"cs1-{n}-{r}", task, agent=STEPWISE_AGENT.name)
        result = await handle.result()
        stepwise_s = time.perf_counter() - t
        assert result.steps == n + 1, result
        if r:
            out["stepwise"].append(1000 * stepwise_s / n)
            out["plain"].append(1000 * plain_s / n)
            out["plugin"].append(1000 * plugin_s / n)
            out["countersign"].append(1000 * cs_s / n)
        print(f"  … overhead round {r} done", flush=True)
    return out


# --- 2. throughput ---------------------------------------------------------------------------


async def three_step_batch(client: Client, task_queue: str, ids: list[str]) -> float:
    """Seconds from before the first start until the last of these runs' results is in."""

    async def start(wf_id: str) -> Any:
        return await _agent_run(client, wf_id, "Benchmark three", task_queue=task_queue)

    async def result(handle: Any) -> Any:
        return await handle.result()

    t = time.perf_counter()
    handles = await bounded(STARTS_IN_FLIGHT, start, ids)
    results = await bounded(WAITS_IN_FLIGHT, result, handles)
    elapsed = time.perf_counter() - t
    assert all(res.steps == 3 for res in results), results[0]
    return elapsed


async def _workflow_identities(handle: Any) -> set[str]:
    history = await handle.fetch_history()
    return {
        e.workflow_task_started_event_attributes.identity
        for e in history.events
        if e.HasField("workflow_task_started_event_attributes")
    }


async def bench_throughput(
    stack: Stack, worker_counts: list[int], batches: list[int], repeats: int
) -> dict[int, dict[int, list[float]]]:
    """runs/s by batch size, then by number of worker processes."""
    out: dict[int, dict[int, list[float]]] = {k: {} for k in batches}
    for round_, n in enumerate(worker_counts):
        # A fresh queue per round: the server keeps listing a stopped worker's pollers a while.
        queue = f"{PROCESS_QUEUE}-{round_}-{n}"
        workers = start_workers(stack, n, queue, BENCH_WORKER)
        try:
            await wait_for_pollers(stack.client, queue, workers)
            warm_ids = [f"tp-{round_}-w{n}-warm-{i}" for i in range(5 * n)]
            await three_step_batch(stack.client, queue, warm_ids)
            touched: set[str] = set()
            for wf_id in warm_ids:
                touched |= await _workflow_identities(stack.client.get_workflow_handle(wf_id))
            print(
                f"  … {n} worker process(es) polling; the warm-up ({len(warm_ids)} runs) ran "
                f"on {len(touched)} of them",
                flush=True,
            )
            for k in batches:
                out[k][n] = [
                    k
                    / await three_step_batch(
                        stack.client, queue, [f"tp-{round_}-w{n}-{k}-{r}-{i}" for i in range(k)]
                    )
                    for r in range(repeats)
                ]
                print(f"  … throughput: {n} worker(s), batch {k}: {spread(out[k][n])}", flush=True)
        finally:
            await asyncio.to_thread(stop_workers, workers)
    return out


async def bench_in_process(stack: Stack, k: int, repeats: int) -> dict[str, list[float]]:
    """The same 3-step run (model → lookup, twice, then an answer) k at once, on in-process
    workers of this one process: the bare plugin (`bare_loop`) and Countersign, runs/s. What
    this machine's server and one Python process allow at all, next to what Countersign gets."""
    out: dict[str, list[float]] = {"plugin": [], "countersign": []}
    for r in range(repeats):
        t = time.perf_counter()
        counts = await asyncio.gather(
            *(
                stack.client.execute_workflow(
                    bare_loop.BareLoop.run,
                    "Benchmark loop 2",
                    id=f"ceiling-bare-{r}-{i}",
                    task_queue=BARE_QUEUE,
                    execution_timeout=timedelta(minutes=30),
                )
                for i in range(k)
            )
        )
        out["plugin"].append(k / (time.perf_counter() - t))
        assert all(c == 2 + 2 * 2 + 1 for c in counts), counts[0]
        ids = [f"ceiling-cs-{r}-{i}" for i in range(k)]
        out["countersign"].append(k / await three_step_batch(stack.client, CS_QUEUE, ids))
    print(f"  … in-process throughput, batch {k} done", flush=True)
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
            (request,) = await wait_for_requests(handle, seconds=20)
            request_id, action_hash = request.request_id, request.action_hash
        except TimeoutError:
            # The default policy's refund budgets (per agent per day, per customer per week)
            # live in the guard's ledger, which the shop reset does not touch: after a few
            # approved refunds the guard refuses outright and nothing waits any more.
            print(f"  … decision: run {i} was refused by the refund budget; stopping", flush=True)
            with contextlib.suppress(RPCError):
                await handle.terminate("benchmark done")
            break
        sent = time.time()
        envelope = sign_decision(
            signer_for("alice"), handle.id, request_id, action_hash, approve=True, comment="bench"
        )
        await send_decision(stack.client, handle.id, envelope)
        await handle.result()
        started = await refund_started_at(handle)
        assert started is not None, f"{handle.id}: payments.refund never started"
        latencies.append(1000 * (started - sent))
    return latencies


async def refund_started_at(handle: Any) -> float | None:
    """When the run's first `payments.refund` activity started (epoch seconds), from its
    history; None if none has yet."""
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
    return min(started) if started else None


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


async def bench_memory(stack: Stack, parked: int) -> dict[str, int]:
    """KB of one worker process: started, idle (after a warm-up run), loaded (runs parked);
    and how many of the runs were confirmed parked."""
    client = stack.client
    workers = start_workers(stack, 1, MEMORY_QUEUE, PLAIN_WORKER)
    pid = workers[0].process.pid
    try:
        await wait_for_pollers(client, MEMORY_QUEUE, workers)
        started = rss_kb(pid)
        warm = await _agent_run(
            client, "park-warm", REFUND_TASK, agent="support-refunds", task_queue=MEMORY_QUEUE
        )
        if not await _parked(warm):
            raise RuntimeError("the warm-up refund did not park on an approval")
        await warm.terminate("benchmark warm-up done")
        await asyncio.sleep(1)
        idle = rss_kb(pid)

        async def start(i: int) -> Any:
            return await _agent_run(
                client,
                f"park-{parked}-{i}",
                REFUND_TASK,
                agent="support-refunds",
                task_queue=MEMORY_QUEUE,
            )

        async def terminate(handle: Any) -> None:
            with contextlib.suppress(RPCError):  # already finished
                await handle.terminate("benchmark done")

        handles = await bounded(STARTS_IN_FLIGHT, start, list(range(parked)))
        try:
            count = sum(await bounded(QUERIES_IN_FLIGHT, _parked, handles))
            await asyncio.sleep(1)
            loaded = rss_kb(pid)
        finally:
            await bounded(STARTS_IN_FLIGHT, terminate, handles)
    finally:
        await asyncio.to_thread(stop_workers, workers)
    return {"pid": pid, "started": started, "idle": idle, "loaded": loaded, "parked": count}


def bench_policy(folder: Path) -> Path:
    shutil.copytree(DEFAULT_POLICY_PATH, folder)
    cedar = folder / "refunds.cedar"
    text = cedar.read_text()
    for limit, raised in ((">= 3", ">= 1000000"), ("> 200000", "> 100000000000")):
        assert limit in text, f"default policy changed: {limit!r} not in {cedar}"
        text = text.replace(limit, raised)
    cedar.write_text(text)
    # Refunds parked at once for one customer would otherwise count each other into the
    # two-approver tier: each run's refund is its own tier here.
    count_tiers_per_run(folder)
    (folder / "cases.toml").unlink(missing_ok=True)  # its budget cases no longer hold
    return folder


PARTS = ["overhead", "throughput", "ceiling", "decision", "memory"]


# --- the stack -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    AGENTS[BENCH_AGENT.name] = BENCH_AGENT
    AGENTS[STEPWISE_AGENT.name] = STEPWISE_AGENT
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as scripts:
        (Path(scripts) / "loop.json").write_text(json.dumps(loop_script(args.steps)))
        (Path(scripts) / "three.json").write_text(json.dumps(three_step_script()))
        (Path(scripts) / "loop-2.json").write_text(json.dumps(loop_script(2)))
        shutil.copy(DEMO_SCRIPTS / "refund.json", Path(scripts) / "refund.json")
        async with fresh_stack(
            scripts=Path(scripts),
            tuned=args.server == "tuned",
            persist=args.persistence == "sqlite",
        ) as stack:
            # Decision and memory runs refund the same orders again and again: the default
            # refund budgets would refuse them after three, so this stack's guard reads a copy
            # of the default policy with the budgets out of reach (the rules are unchanged).
            # (A copied policy is not activated: the bench stack does not ask for activation.)
            stack.settings = stack.settings.model_copy(
                update={
                    "policy_path": bench_policy(Path(scripts) / "policy"),
                    "require_policy_activation": False,
                }
            )
            ensure_dev_policy_activation(stack.settings)  # as the dev stack activates its own
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


def server_line(args: argparse.Namespace) -> str:
    tuning = " ".join(DEV_SERVER_TUNING[1:])
    server = f"tuned ({tuning})" if args.server == "tuned" else "stock (no dynamic config)"
    persistence = "SQLite file (--db-filename)" if args.persistence == "sqlite" else "in memory"
    return (
        f"Temporal dev server: {server}; persistence: {persistence}; "
        f"{os.cpu_count()} CPUs on this machine"
    )


async def report(stack: Stack, args: argparse.Namespace) -> None:
    parts = args.only or PARTS
    on = f"[{args.server} server, {args.persistence}]"
    print(server_line(args), flush=True)
    if "memory" in parts:  # first, while the stack has run nothing else
        m = await bench_memory(stack, args.parked)
        delta = m["loaded"] - m["idle"]
        print(
            f"\nMemory {on}: one `countersign worker` process (pid {m['pid']}), VmRSS with "
            "its children",
        )
        rows = [
            ("just started", m["started"], ""),
            ("idle, after one warm-up run", m["idle"], ""),
            (
                f"{m['parked']} of {args.parked} runs parked",
                m["loaded"],
                f"   +{delta / 1024:.1f} MB over idle, "
                f"{delta / max(m['parked'], 1):.0f} KB per parked run",
            ),
        ]
        for label, kb, note in rows:
            print(f"  {label:<32}{kb / 1024:7.1f} MB{note}", flush=True)
    if "overhead" in parts:
        o = await bench_overhead(stack, args.steps, args.repeats)
        med = {k: statistics.median(v) for k, v in o.items()}
        print(
            f"\nOverhead per iteration (model call + tool call) {on}, N={args.steps}, "
            f"{args.repeats} repeats, ms median (min..max)"
        )
        print(f"  (a) plain LangGraph       {spread(o['plain'])}")
        print(f"  (b) Temporal plugin, bare {spread(o['plugin'])}")
        print(f"  (c) Countersign AgentRun  {spread(o['countersign'])}")
        print(f"  (d) same, read_ahead=0    {spread(o['stepwise'])}")
        print(
            f"  (c)/(a) = {med['countersign'] / med['plain']:.1f}x   "
            f"(c)/(b) = {med['countersign'] / med['plugin']:.2f}x   "
            f"(d)/(b) = {med['stepwise'] / med['plugin']:.2f}x",
            flush=True,
        )
    if "throughput" in parts:
        tp = await bench_throughput(stack, args.workers, args.batches, args.repeats)
        print(
            f"\nThroughput {on}: 3-step runs started at once, completed runs/s with N worker "
            f"processes, median (min..max) of {args.repeats}"
        )
        width = 24
        print("  at once " + "".join(f"{f'N={n}':>{width}}" for n in args.workers))
        for k, by_n in tp.items():
            print(
                f"  {k:>7} " + "".join(f"{spread(by_n[n]):>{width}}" for n in args.workers),
                flush=True,
            )
    if "ceiling" in parts:
        c = await bench_in_process(stack, 100, args.repeats)
        print(
            f"\nThroughput in one process {on}: 100 3-step runs at once, in-process workers, "
            f"runs/s median (min..max) of {args.repeats}"
        )
        print(f"  Temporal plugin, bare   {spread(c['plugin'])}")
        print(f"  Countersign AgentRun    {spread(c['countersign'])}", flush=True)
    if "decision" in parts:
        lat = await bench_decision(stack, args.samples)
        # "inclusive": percentiles within the samples (the default extrapolates past the max).
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
        print(
            f"\nDecision latency {on}, approval Update sent → payments.refund started, "
            f"{len(lat)} runs: p50 {statistics.median(lat):.1f} ms, p99 {q[98]:.1f} ms, "
            f"min {min(lat):.1f}, max {max(lat):.1f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durability_bench")
    parser.add_argument("--only", nargs="+", choices=PARTS)
    parser.add_argument(
        "--server",
        choices=["tuned", "stock"],
        default="tuned",
        help="dev server with DEV_SERVER_TUNING (default) or its stock dispatch rate",
    )
    parser.add_argument(
        "--persistence",
        choices=["sqlite", "memory"],
        default="sqlite",
        help="dev server state in a SQLite file (default) or in memory",
    )
    parser.add_argument("--steps", type=int, default=20, help="overhead: loop iterations")
    parser.add_argument("--repeats", type=int, default=3, help="overhead, throughput, ceiling")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="throughput: numbers of worker processes",
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1, 10, 100, 1000],
        help="throughput: runs started at once",
    )
    parser.add_argument("--samples", type=int, default=50, help="decision: runs")
    parser.add_argument("--parked", type=int, default=1000, help="memory: runs parked")
    args = parser.parse_args(argv)
    args.workers = list(dict.fromkeys(args.workers))  # one column per number of processes
    configure_logging(level="WARNING", json=False)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
