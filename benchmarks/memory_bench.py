"""Memory per parked run, and what a bounded workflow cache costs in latency. Prints figures,
asserts nothing.

    python -m benchmarks.memory_bench                          # 200 and 1,000 parked
    python -m benchmarks.memory_bench --max-cached 1000 100    # the cache sizes to compare
    python -m benchmarks.memory_bench --evict-parked 100 0     # parked runs evicted, or kept

For each cache size (`COUNTERSIGN_MAX_CACHED_WORKFLOWS`, the worker's sticky workflow cache)
and each `COUNTERSIGN_EVICT_PARKED_MAX_EVENTS` (parked runs leave the cache; 0: they stay),
one `python -m countersign.workers worker` process (the real worker, nothing registered) on
its own task queue of a fresh dev stack: its VmRSS (with children) idle after a warm-up run,
then with runs of the demo refund (A-1002, 189.00: waits for a support lead) parked on an
approval, confirmed through the status query, at each `--parked` level (cumulative). KB per
parked run = (RSS - idle) / parked runs.

Then the approval-to-action latency, approval Update sent → `payments.refund` started (the
server's event time), for `--samples` of the runs parked first (with a cache smaller than the
runs parked, they were evicted: the worker replays the run from its history before it acts)
and as many of the runs parked last (still cached, unless parked runs are evicted). The shop
is reset before each decision.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from benchmarks.durability_bench import (
    DEMO_SCRIPTS,
    PLAIN_WORKER,
    REFUND_TASK,
    _reset_shop,
    bench_policy,
    bounded,
    refund_started_at,
    rss_kb,
    start_workers,
    stop_workers,
    wait_for_pollers,
)
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput
from countersign.workers.decisions import send_decision, sign_decision
from countersign.workers.devstack import ensure_dev_policy_activation
from countersign.workers.identities import signer_for
from countersign.workers.logging import configure_logging
from countersign.workers.worker import check_startup
from tests.histories.record import Stack, fresh_stack

QUEUE = "bench-memory"
# Seconds before RSS is read: a worker hands the memory of the runs it evicted back to the
# system within 5 s (workers/sandbox.py).
SETTLE_S = 7


async def start_refund(client: Client, wf_id: str, task_queue: str) -> Any:
    run_input = RunInput(
        agent="support-refunds",
        task=REFUND_TASK,
        requested_by="bench",
        subject={"order_id": "A-1002"},
    )
    return await client.start_workflow(
        AgentRun.run,
        run_input.model_dump(mode="json"),
        id=wf_id,
        task_queue=task_queue,
        execution_timeout=timedelta(minutes=60),
    )


async def parked(handle: Any, wait_s: float = 300) -> tuple[str, str] | None:
    """(request id, action hash) once the run waits on an approval; None if it did not."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            pending = (await handle.query(AgentRun.status)).pending_approvals
        except RPCError:
            await asyncio.sleep(0.5)
            continue
        if pending:
            return pending[0].request_id, pending[0].action_hash
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return None
        await asyncio.sleep(0.2)
    return None


async def decision_ms(stack: Stack, handle: Any, request: tuple[str, str]) -> float:
    """Approve; ms until the server records `payments.refund` started."""
    await _reset_shop(stack)
    envelope = sign_decision(
        signer_for("alice"), handle.id, request[0], request[1], approve=True, comment="bench"
    )
    sent = time.time()
    await send_decision(stack.client, handle.id, envelope)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = await refund_started_at(handle)
        if started is not None:
            return 1000 * (started - sent)
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{handle.id}: payments.refund never started")


async def bench_cache(
    stack: Stack, cache: int, evict: int, levels: list[int], samples: int
) -> dict[str, Any]:
    tag = f"cache{cache}-evict{evict}"
    stack.settings = stack.settings.model_copy(
        update={"max_cached_workflows": cache, "evict_parked_max_events": evict}
    )
    queue = f"{QUEUE}-{tag}"
    workers = start_workers(stack, 1, queue, PLAIN_WORKER)
    pid = workers[0].process.pid
    handles: list[Any] = []
    out: dict[str, Any] = {"cache": cache, "evict": evict, "rows": []}
    try:
        await wait_for_pollers(stack.client, queue, workers)
        await _reset_shop(stack)  # an earlier cache size's decisions refunded the order
        warm = await start_refund(stack.client, f"{tag}-warm", queue)
        if await parked(warm) is None:
            raise RuntimeError("the warm-up refund did not park on an approval")
        await warm.terminate("benchmark warm-up done")
        await asyncio.sleep(SETTLE_S)
        out["idle"] = idle = rss_kb(pid)
        requests: list[tuple[str, str] | None] = []
        for level in levels:
            new = list(range(len(handles), level))
            started = await bounded(
                100, lambda i: start_refund(stack.client, f"{tag}-park-{i}", queue), new
            )
            handles += started
            requests += await bounded(50, parked, started)
            await asyncio.sleep(SETTLE_S)
            count = sum(r is not None for r in requests)
            loaded = rss_kb(pid)
            out["rows"].append((level, count, loaded, (loaded - idle) / max(count, 1)))
            print(
                f"  … cache {cache}: {count} of {level} parked, RSS {loaded / 1024:.1f} MB",
                flush=True,
            )
        ready = [(h, r) for h, r in zip(handles, requests, strict=True) if r is not None]
        out["first"] = [await decision_ms(stack, h, r) for h, r in ready[:samples]]
        out["last"] = [await decision_ms(stack, h, r) for h, r in ready[-samples:]]
    finally:

        async def terminate(handle: Any) -> None:
            with contextlib.suppress(RPCError):
                await handle.terminate("benchmark done")

        await bounded(100, terminate, handles)
        await asyncio.to_thread(stop_workers, workers)
    return out


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scripts:
        shutil.copy(DEMO_SCRIPTS / "refund.json", Path(scripts) / "refund.json")
        async with fresh_stack(scripts=Path(scripts)) as stack:
            # The runs refund the same order again and again: the default budgets would refuse
            # them after three, so the guard reads a copy of the default policy with them out of
            # reach (the rules are unchanged), activated as the dev stack activates its own.
            stack.settings = stack.settings.model_copy(
                update={"policy_path": bench_policy(Path(scripts) / "policy")}
            )
            ensure_dev_policy_activation(stack.settings)
            stack.runtime = check_startup(stack.settings)
            results = []
            for cache in args.max_cached:
                for evict in args.evict_parked:
                    results.append(
                        await bench_cache(stack, cache, evict, args.parked, args.samples)
                    )
                    show(results[-1])
            return results


def show(r: dict[str, Any]) -> None:
    print(
        f"\nworkflow cache {r['cache']} runs, parked runs evicted up to {r['evict']} events: "
        f"idle after a warm-up run {r['idle'] / 1024:.1f} MB"
    )
    for level, count, kb, per in r["rows"]:
        print(
            f"  {count:>5} of {level:>5} parked: {kb / 1024:7.1f} MB, {per:6.0f} KB per parked run"
        )
    for group in ("first", "last"):
        lat = r[group]
        if lat:
            print(
                f"  approval → refund started, {len(lat)} runs parked {group}: "
                f"median {statistics.median(lat):.1f} ms ({min(lat):.1f}..{max(lat):.1f})"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_bench")
    parser.add_argument("--parked", type=int, nargs="+", default=[200, 1000])
    parser.add_argument(
        "--max-cached", type=int, nargs="+", default=[1000], help="worker cache sizes to compare"
    )
    parser.add_argument(
        "--evict-parked",
        type=int,
        nargs="+",
        default=[100],
        help="COUNTERSIGN_EVICT_PARKED_MAX_EVENTS values to compare (0: parked runs stay cached)",
    )
    parser.add_argument("--samples", type=int, default=5, help="decisions timed per group")
    args = parser.parse_args(argv)
    configure_logging(level="WARNING", json=False)
    print("Memory per parked run: one `countersign worker` process, VmRSS with its children")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
