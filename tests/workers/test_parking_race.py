"""A parked run leaves the worker's cache (workers/sandbox.py Parking); whatever reaches it
while that happens (a signal, an Update accepted or rejected by the run, a query) must be
handled at once, never after a workflow-task timeout (10 s).

Each round: a refused signal sent about when the run, parked, is evicted (`Parking.QUIET_S`
after it parked, ±30 ms), then once its refusal is recorded (the task that parks the run again
is in flight), five more at once: two signals, an Update the run refuses, an Update rejected
before acceptance, a query. The server hands those back with its reply to that task. Before
the fix a run evicted right after that reply lost the task it had just been handed (one burst
in four waited 10 s). `evict-at-once` evicts as soon as a run parks, so every burst meets an
eviction in flight; its query goes after the burst, not with it: a query and an event that
both reach a run during the few milliseconds of its eviction can still lose the event's task
(Temporal's core, for any eviction: see Parking).

Stress (prints figures; BENCHMARKS.md, section 5): COUNTERSIGN_PARK_STRESS_ROUNDS=200,
COUNTERSIGN_PARK_STRESS_MIXED=1 (one event at a time, 0-50 ms apart, and a burst every fourth
round), COUNTERSIGN_PARK_STRESS_QUERIES=1 (the query in every burst), COUNTERSIGN_CORE_DEBUG=1
(core's debug log on stderr), `pytest -s -k evict-at-once`."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.settings import Settings
from countersign.workers.sandbox import Parking
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import start_run, worker_for

if os.environ.get("COUNTERSIGN_CORE_DEBUG"):  # before any client: the default runtime's log
    from temporalio.runtime import LoggingConfig, TelemetryConfig, TelemetryFilter
    from temporalio.runtime import Runtime as CoreRuntime

    CoreRuntime.set_default(
        CoreRuntime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(
                    filter=TelemetryFilter(core_level="DEBUG", other_level="WARN")
                )
            )
        ),
        error_if_already_set=False,
    )

ROUNDS = int(os.environ.get("COUNTERSIGN_PARK_STRESS_ROUNDS", "8"))
MIXED = bool(os.environ.get("COUNTERSIGN_PARK_STRESS_MIXED"))
QUERIES_IN_BURSTS = bool(os.environ.get("COUNTERSIGN_PARK_STRESS_QUERIES"))
# Rounds per run: each refusal adds history, and only short histories are evicted.
ROUNDS_PER_RUN = 8
LATE_S = 3.0

# A decision that proves nothing: refused, audited, and the run parks again.
BAD = {"statement": {"identity": "alice"}, "signature": "x"}

Events = list[tuple[str, float]]


async def one(kind: str, handle: WorkflowHandle[Any, Any], runtime: Runtime) -> float:
    """Send one event of `kind`; seconds until the run handled it."""
    sent = time.monotonic()
    if kind == "signal":  # done when its refusal is recorded (the record names the payload)
        marker = uuid.uuid4().hex
        await handle.signal("decision", {**BAD, "marker": marker})
        for _ in range(20_000):  # 2 ms apart: at most ~40 s
            records = runtime.audit.find(handle.id, "approval.refused")
            if any(marker in r.data["payload"] for r in records):
                break
            await asyncio.sleep(0.002)
    elif kind == "update refused":  # accepted, then failed by its handler (audited)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("decide", BAD, id=uuid.uuid4().hex)
    elif kind == "update rejected":  # rejected before acceptance: its argument cannot decode
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("rollback", "not a rollback", id=uuid.uuid4().hex)
    else:
        assert (await handle.query(AgentRun.status)).stage == "waiting for approval"
    return time.monotonic() - sent


async def parked_run(temporal: WorkflowEnvironment, task_queue: str) -> WorkflowHandle[Any, Any]:
    handle = await start_run(temporal.client, task_queue, task="Refund order A-1002: leaks.")
    await wait_for_pending(handle)
    for _ in range(200):
        if (await handle.query(AgentRun.status)).stage == "waiting for approval":
            return handle
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} did not park")


async def burst_round(
    handle: WorkflowHandle[Any, Any], runtime: Runtime, rng: random.Random, with_query: bool
) -> Events:
    await asyncio.sleep(max(0.0, Parking.QUIET_S + rng.uniform(-0.03, 0.03)))
    out = [("signal at eviction", await one("signal", handle, runtime))]
    await asyncio.sleep(rng.uniform(0, 0.005))
    kinds = ["signal", "signal", "update refused", "update rejected"]
    kinds += ["query"] if with_query else []
    latencies = await asyncio.gather(*(one(k, handle, runtime) for k in kinds))
    out += [(f"burst {k}", t) for k, t in zip(kinds, latencies, strict=True)]
    if not with_query:
        out.append(("query", await one("query", handle, runtime)))
    return out


async def mixed_round(
    handle: WorkflowHandle[Any, Any], runtime: Runtime, rng: random.Random
) -> Events:
    out = []
    for kind in rng.sample(["signal", "update refused", "update rejected", "query"], 4):
        # Half of them within 10 ms: while the task that parked the run is in flight.
        await asyncio.sleep(rng.uniform(0, 0.01 if rng.random() < 0.5 else 0.05))
        out.append((kind, await one(kind, handle, runtime)))
    return out


async def hammer(
    temporal: WorkflowEnvironment,
    task_queue: str,
    runtime: Runtime,
    rng: random.Random,
    with_query: bool,
) -> Events:
    out: Events = []
    handle = None
    for i in range(ROUNDS):
        if i % ROUNDS_PER_RUN == 0:
            if handle is not None:
                await handle.terminate("test done")
            handle = await parked_run(temporal, task_queue)
        assert handle is not None
        if MIXED and i % 4 != 3:
            out += await mixed_round(handle, runtime, rng)
        else:
            out += await burst_round(handle, runtime, rng, with_query)
    if handle is not None:
        await handle.terminate("test done")
    return out


def summary(events: Events) -> str:
    lat = sorted(t for _, t in events)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    lines = [
        f"{len(lat)} events, {sum(t > 2.0 for t in lat)} over 2 s, max {lat[-1]:.3f} s, "
        f"p99 {p99:.3f} s, median {statistics.median(lat):.3f} s"
    ]
    for kind in sorted({k for k, _ in events}):
        ts = [t for k, t in events if k == kind]
        lines.append(f"  {kind:24} {len(ts):5} events, max {max(ts):.3f} s")
    return "\n".join(lines)


@pytest.mark.parametrize("quiet_s", [Parking.QUIET_S, 0.0], ids=["shipped", "evict-at-once"])
async def test_a_parked_run_handles_what_reaches_it_during_its_eviction(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
    quiet_s: float,
) -> None:
    monkeypatch.setattr(Parking, "QUIET_S", quiet_s)
    evicting = settings.model_copy(update={"evict_parked_max_events": 10_000})
    seed = int(os.environ.get("COUNTERSIGN_PARK_STRESS_SEED", time.time_ns() % 10_000))
    async with worker_for(temporal.client, evicting, runtime, task_queue) as worker:
        with_query = quiet_s > 0 or QUERIES_IN_BURSTS
        events = await hammer(temporal, task_queue, runtime, random.Random(seed), with_query)
    bridge: Any = worker._bridge_worker
    print(f"\nseed {seed}, quiet {quiet_s} s: {summary(events)}")
    print(f"evictions requested {bridge.evictions}, tasks failed to be retried {bridge.repairs}")
    late = [(k, round(t, 3)) for k, t in events if t > LATE_S]
    assert not late, f"seed {seed}: late (kind, seconds): {late}"
    assert bridge.evictions > 0  # the events did meet evictions
