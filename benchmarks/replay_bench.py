"""Replay and audit benchmark: prints figures, asserts nothing about time.

    python -m benchmarks.replay_bench                 # 10, 100, 500 agent steps; audit appends
    python -m benchmarks.replay_bench --steps 10 100 --appends 500
    python -m benchmarks.replay_bench --steps 300 --save DIR      # keep the histories
    python -m benchmarks.replay_bench --replay DIR/bench-loop-300.json --rounds 5

`--replay` replays saved histories only (no stack, no runs): how two versions compare, each
replaying its own recording of the same loop, run in turn on the same machine.

For each length, a scripted model calls a read-only tool (`orders.lookup`) N times and then
answers; the run goes through the whole guarded loop (model → guard → tool, audited) on a fresh
dev stack, then its history is replayed (three times; the median is shown, wall and CPU time
of this process).

Why a benchmark-only agent: `RunInput.max_steps` is capped at 200 so nobody types a runaway
run into the Temporal UI, and an agent's own `max_tokens` (200k) stops long runs early because
the scripted model's token estimate grows with the conversation. The benchmark registers an
agent `bench-loop` (read-only scopes, max_steps 1000, no practical token cap) in its own
process — the worker runs in-process, so the workflow and the guard see it; production agents
are unchanged.

History size is shown as the JSON file (`to_json()`, payloads in base64) and as the protobuf
the server stores and limits (warning at 10 MB, failure at 50 MB).

Audit appends: records per second for one writer and for four concurrent writers (own
connections), on SQLite and on a throwaway PostgreSQL cluster (fsync off; what is measured is
the chain's serialization, not the disk), with a signed checkpoint every 100 records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from temporalio.client import WorkflowHistory

from countersign.activities.agent_specs import AGENTS, AgentSpec
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput
from countersign.demo.plugin import SUPPORT_PROMPT
from countersign.guardrails.audit import AuditStore
from countersign.guardrails.audit_signing import CheckpointSigner, generate_signing_key
from countersign.guardrails.audit_stores import open_store
from countersign.workers.devstack import free_port, postgres_bin_dir, start_postgres
from countersign.workers.logging import configure_logging
from countersign.workers.replay import load_histories, replay, save_history
from countersign.workers.worker import build_worker
from tests.histories.record import fresh_stack

BENCH_AGENT = AgentSpec(
    name="bench-loop",
    description="Benchmark only: looks an order up again and again.",
    system_prompt=SUPPORT_PROMPT,
    scopes=["orders:read"],
    max_steps=1000,
    max_tokens=10**12,
)


def loop_script(steps: int) -> dict[str, object]:
    call = {"name": "orders.lookup", "arguments": {"order_id": "A-1001"}, "reason": "check again"}
    return {
        "name": f"loop-{steps}",
        "description": f"Benchmark: {steps} read-only tool calls, then an answer.",
        "match": rf"(?i)^benchmark loop {steps}\b",
        "turns": [{"tool_calls": [call]} for _ in range(steps)] + [{"say": "Done looking."}],
    }


async def bench_replay(step_counts: list[int], save: Path | None = None) -> list[dict[str, float]]:
    AGENTS[BENCH_AGENT.name] = BENCH_AGENT
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scripts-") as scripts:
        for n in step_counts:
            (Path(scripts) / f"loop-{n}.json").write_text(json.dumps(loop_script(n)))
        async with fresh_stack(scripts=Path(scripts)) as stack:
            queue = "bench"
            async with build_worker(
                stack.client,
                stack.settings,
                stack.runtime,
                task_queue=queue,
                max_concurrent_activities=8,
            ):
                for n in step_counts:
                    run_input = RunInput(
                        agent=BENCH_AGENT.name, task=f"Benchmark loop {n}", requested_by="bench"
                    )
                    started = time.perf_counter()
                    handle = await stack.client.start_workflow(
                        AgentRun.run,
                        run_input.model_dump(mode="json"),
                        id=f"bench-loop-{n}",
                        task_queue=queue,
                        execution_timeout=timedelta(minutes=30),
                    )
                    result = await handle.result()
                    run_seconds = time.perf_counter() - started
                    assert result.steps == n + 1, result
                    history = await handle.fetch_history()
                    if save:
                        save_history(save / f"bench-loop-{n}.json", history)
                    wall, cpu = await _replay_times(history, rounds=3)
                    size = len(history.to_json().encode())
                    # What the server stores and limits (50 MB) is protobuf, not JSON+base64.
                    proto = sum(e.ByteSize() for e in history.events)
                    rows.append(
                        {
                            "steps": n,
                            "events": len(history.events),
                            "bytes": size,
                            "proto_per_step": proto / n,
                            "bytes_per_step": size / n,
                            "run_s": run_seconds,
                            "replay_s": wall,
                            "replay_cpu_s": cpu,
                        }
                    )
                    print(f"  … {n} steps done", flush=True)
    return rows


async def _replay_times(history: WorkflowHistory, rounds: int) -> tuple[float, float]:
    """Median wall and CPU seconds of replaying `history` in this process, `rounds` times."""
    wall, cpu = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        (report,) = await replay([("bench", history)])
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
        assert report.deterministic and report.result_matches, report.divergence
    return statistics.median(wall), statistics.median(cpu)


async def replay_saved(paths: list[Path], rounds: int) -> None:
    AGENTS[BENCH_AGENT.name] = BENCH_AGENT
    print(f"{'history':>28} {'steps':>6} {'replay':>8} {'wall/step':>10} {'CPU/step':>9}")
    for path in paths:
        history = load_histories([str(path)])[0][1]
        # A step is one model call (several per model activity with read-ahead).
        (first,) = await replay([("bench", history)])  # it also imports and compiles
        steps = first.model_steps
        wall, cpu = await _replay_times(history, rounds)
        print(
            f"{path.name:>28} {steps:>6} {wall:>7.2f}s {1000 * wall / steps:>8.2f}ms "
            f"{1000 * cpu / steps:>7.2f}ms"
        )


def _append_rate(make_store: object, records: int, writers: int) -> float:
    stores: list[AuditStore] = [make_store() for _ in range(writers)]  # type: ignore[operator]
    per_writer = records // writers

    def write(w: int) -> None:
        for i in range(per_writer):
            stores[w].append_sync(
                record_id=f"w{w}-{i}",
                workflow_id=f"wf-{w}",
                run_id="run",
                kind="proposal",
                actor="bench",
                data={"tool": "orders.lookup", "arguments": {"order_id": "A-1001"}, "i": i},
            )

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    report = stores[0].verify(stores[0].signer.public_key if stores[0].signer else None)
    assert report.ok and report.records == per_writer * writers, report
    for s in stores:
        s.close()
    return per_writer * writers / elapsed


def bench_audit(records: int) -> list[tuple[str, int, float]]:
    signer = CheckpointSigner(generate_signing_key())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        for writers in (1, 4):
            path = Path(tmp) / f"audit-{writers}.sqlite3"
            rate = _append_rate(lambda p=path: open_store(p, signer=signer), records, writers)
            rows.append(("SQLite", writers, rate))
        if postgres_bin_dir() is None:
            print("  (PostgreSQL not installed: skipped)")
            return rows
        pg = start_postgres(Path(tmp) / "logs", free_port())
        try:
            import psycopg

            for writers in (1, 4):
                with psycopg.connect(pg.dsn(), autocommit=True) as db:
                    db.execute(f"CREATE DATABASE bench{writers}")  # type: ignore[arg-type]
                dsn = pg.dsn(f"bench{writers}")
                rate = _append_rate(lambda d=dsn: open_store(d, signer=signer), records, writers)
                rows.append(("PostgreSQL", writers, rate))
        finally:
            pg.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay_bench")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument(
        "--save", type=Path, help="folder to keep the histories in (to profile or replay them)"
    )
    parser.add_argument(
        "--replay", type=Path, nargs="+", help="only replay these saved histories (no stack)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="replays per saved history")
    args = parser.parse_args(argv)
    configure_logging(level="WARNING", json=False)
    if args.replay:
        asyncio.run(replay_saved(args.replay, args.rounds))
        return

    print(f"Replay: runs of {', '.join(map(str, args.steps))} agent steps (fresh dev stack)")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)  # before the runs, not after them
    rows = asyncio.run(bench_replay(args.steps, args.save))
    print(
        f"\n{'steps':>6} {'events':>7} {'JSON':>9} {'JSON/step':>10} {'proto/step':>11} "
        f"{'run':>8} {'replay':>8} {'replay/step':>12} {'CPU/step':>9}"
    )
    for r in rows:
        print(
            f"{r['steps']:>6.0f} {r['events']:>7.0f} {r['bytes'] / 1024:>7.0f}KB "
            f"{r['bytes_per_step']:>9.0f}B {r['proto_per_step']:>10.0f}B "
            f"{r['run_s']:>7.1f}s {r['replay_s']:>7.2f}s "
            f"{1000 * r['replay_s'] / r['steps']:>10.1f}ms "
            f"{1000 * r['replay_cpu_s'] / r['steps']:>7.1f}ms"
        )

    print(f"\nAudit appends: {args.appends} records, signed checkpoint every 100")
    print(f"{'store':>11} {'writers':>8} {'records/s':>10}")
    for store, writers, rate in bench_audit(args.appends):
        print(f"{store:>11} {writers:>8} {rate:>10.0f}")


if __name__ == "__main__":
    main()
