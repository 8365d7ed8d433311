"""What one shared PostgreSQL costs a fleet (issue 13), against the SQLite default, side by
side in one run. Prints figures, asserts nothing about time.

    python -m benchmarks.fleet_bench                     # both parts
    python -m benchmarks.fleet_bench --only deciders --deciders 1 4 16

1. deciders: guard decision + limit reservation (`Ledger.decide_and_reserve` with the default
   policy's two counters, Cedar deciding) by 1, 4 and 16 concurrent deciders, each a thread
   with its own database connection, all refunding the same customer through the same agent:
   both counters hot, so every decision waits for the one before it on that counter (the
   advisory locks on PostgreSQL, the write lock on SQLite); then each decider with its own
   agent and customer (PostgreSQL's per-counter locks no longer meet; SQLite's one write
   lock still serializes). Latency per decision (median, p99) and decisions per second
   over the whole batch. PostgreSQL is Debian's 15, local,
   started by `workers.devstack.start_postgres` (fsync off: the figures are the locking and
   round trips, not the disk).
2. overhead: ms per agent step (a model call + a read-only lookup, guarded and audited) of a
   Countersign AgentRun with all state (ledger, transcripts, kill switch, audit) in SQLite
   files against the same run with all state in that PostgreSQL (COUNTERSIGN_STATE_DSN), on
   one fresh dev stack (tuned dev server), two in-process workers, runs alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

from benchmarks.durability_bench import _agent_run, bench_policy, spread
from benchmarks.policy_bench import request
from benchmarks.replay_bench import BENCH_AGENT, loop_script
from countersign.activities.agent_specs import AGENTS
from countersign.activities.runtime import Runtime
from countersign.activities.stores import close_shared_databases
from countersign.activities.tools import tool_schemas
from countersign.guardrails.database import open_database
from countersign.guardrails.ledger import Ledger
from countersign.guardrails.policy import decide, load_policy
from countersign.workers.devstack import Postgres, free_port, start_postgres
from countersign.workers.logging import configure_logging
from countersign.workers.plugins import load
from countersign.workers.worker import build_worker, check_startup
from tests.histories.record import fresh_stack

# The demo's tools and agents, as a worker finds them.
load(["demo"])

PARTS = ["deciders", "overhead"]


def new_database(cluster: Postgres) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return cluster.dsn(name)


# --- 1. deciders ------------------------------------------------------------------------------


def bench_deciders(location: str, deciders: int, total: int, hot: bool) -> dict[str, float]:
    """`deciders` threads, `total` decisions between them; each thread its own connection.
    `hot`: all for one agent and one customer; else each decider its own agent and customer."""
    policy = load_policy(tools=tool_schemas())
    counters = policy.settings.counters
    per_thread = max(total // deciders, 50)
    ledgers = [Ledger(open_database(location)) for _ in range(deciders)]

    def one(n: int, i: int) -> None:
        d = request(n * 1_000_000 + i, 10)
        if not hot:
            order = {**d.facts["order"], "customer_id": f"C-{n}"}
            d = d.model_copy(update={"agent": f"agent-{n}", "facts": {"order": order}})
        ledgers[n].decide_and_reserve(d, counters, lambda d: decide(d, policy))

    for i in range(20):  # warm up connections and Cedar
        one(0, 900_000 + i)
    latencies: list[list[float]] = [[] for _ in range(deciders)]
    start = threading.Barrier(deciders + 1)

    def decider(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            t = time.perf_counter()
            one(n, i)
            latencies[n].append((time.perf_counter() - t) * 1000)

    threads = [threading.Thread(target=decider, args=(n,)) for n in range(deciders)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    for ledger in ledgers:
        ledger.db.close()
    times = sorted(x for per in latencies for x in per)
    return {
        "n": len(times),
        "median_ms": statistics.median(times),
        "p99_ms": times[int(len(times) * 0.99) - 1],
        "per_s": len(times) / wall,
    }


def report_deciders(cluster: Postgres, counts: list[int], total: int) -> None:
    print("\n1. guard decision + limit reservation, concurrent deciders")
    print("| counters | store | deciders | decisions | median ms | p99 ms | decisions/s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        for hot in (True, False):
            for n in counts:
                for store in ("SQLite file", "PostgreSQL"):
                    location = (
                        str(Path(tmp) / f"ledger-{hot}-{n}.sqlite3")
                        if store == "SQLite file"
                        else new_database(cluster)
                    )
                    r = bench_deciders(location, n, total, hot)
                    print(
                        f"| {'one agent, one customer' if hot else 'one each'} | {store} | {n} "
                        f"| {r['n']:.0f} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} "
                        f"| {r['per_s']:.0f} |",
                        flush=True,
                    )


# --- 2. per-step overhead -----------------------------------------------------------------------


async def bench_overhead(cluster: Postgres, steps: int, repeats: int) -> dict[str, list[float]]:
    AGENTS[BENCH_AGENT.name] = BENCH_AGENT
    out: dict[str, list[float]] = {"SQLite files": [], "PostgreSQL": []}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scripts:
        (Path(scripts) / "loop.json").write_text(json.dumps(loop_script(steps)))
        async with fresh_stack(scripts=Path(scripts)) as stack:
            policy = bench_policy(Path(scripts) / "policy")
            sqlite = stack.settings.model_copy(update={"policy_path": policy})
            fields = sqlite.model_dump()
            fields.update(state_dsn=new_database(cluster), state_dir=sqlite.state_dir / "pg")
            pg = type(sqlite)(**fields)
            pg.state_dir.mkdir(parents=True)
            shutil.copy(sqlite.keyring_path, pg.state_dir / "keyring.cfg")
            runtimes: dict[str, Runtime] = {
                "SQLite files": check_startup(sqlite),
                "PostgreSQL": check_startup(pg),
            }
            queues = {name: f"bench-fleet-{i}" for i, name in enumerate(runtimes)}
            workers = [
                build_worker(stack.client, rt.settings, rt, task_queue=queues[name])
                for name, rt in runtimes.items()
            ]
            async with workers[0], workers[1]:
                for r in range(repeats + 1):  # round 0 warms up and is dropped
                    for name in runtimes:
                        t = time.perf_counter()
                        handle = await _agent_run(
                            stack.client,
                            f"fleet-{name[:2]}-{r}",
                            f"Benchmark loop {steps}",
                            task_queue=queues[name],
                        )
                        result = await handle.result()
                        took = time.perf_counter() - t
                        assert result.steps == steps + 1, result
                        if r:
                            out[name].append(1000 * took / steps)
                    print(f"  … overhead round {r} done", flush=True)
            for rt in runtimes.values():
                rt.audit.close()
            close_shared_databases()
    return out


def report_overhead(results: dict[str, list[float]], steps: int) -> None:
    print(f"\n2. per agent step, all state in SQLite files vs in PostgreSQL (N = {steps})")
    print("| state | ms per step | vs SQLite |")
    print("|---|---|---|")
    base = statistics.median(results["SQLite files"])
    for name, values in results.items():
        print(f"| {name} | {spread(values)} | {statistics.median(values) / base:.2f}x |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=PARTS, default=PARTS)
    p.add_argument("--deciders", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--decisions", type=int, default=2000, help="per batch (default 2000)")
    p.add_argument("--steps", type=int, default=20, help="agent steps per run (default 20)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    configure_logging(json=False)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-pg-") as logs:
        cluster = start_postgres(Path(logs), free_port())
        try:
            print("PostgreSQL 15 (Debian), local, fsync off; SQLite files in WAL mode")
            if "deciders" in args.only:
                report_deciders(cluster, args.deciders, args.decisions)
            if "overhead" in args.only:
                results = asyncio.run(bench_overhead(cluster, args.steps, args.repeats))
                report_overhead(results, args.steps)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
