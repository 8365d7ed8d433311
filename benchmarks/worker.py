"""`countersign worker`, plus the benchmark-only agent `bench-loop`:

    python -m benchmarks.worker      # settings from the environment, as `countersign worker`

The durability benchmark runs its throughput workers as separate processes. Runs of
`bench-loop` (benchmarks.replay_bench.BENCH_AGENT) need the agent in the worker's AGENTS
registry, which the benchmark's own process cannot reach; this module registers it and then
runs the real CLI command, so everything else (settings, logging, startup checks, the worker)
is what `countersign worker` does. Production agents are unchanged.
"""

from benchmarks.replay_bench import BENCH_AGENT
from countersign.activities.agent_specs import AGENTS
from countersign.workers.cli import main

if __name__ == "__main__":
    AGENTS[BENCH_AGENT.name] = BENCH_AGENT
    main(["worker"])
