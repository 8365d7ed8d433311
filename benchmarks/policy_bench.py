"""How long one guard decision takes: the Cedar evaluation alone, and with the durable limits
ledger (read usage, decide, reserve, in one SQLite transaction). Prints median and p99.

    python -m benchmarks.policy_bench
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from countersign.activities.tools import REGISTRY, tool_schemas
from countersign.guardrails.ledger import Ledger
from countersign.guardrails.policy import DecisionInput, Proposal, decide, load_policy
from countersign.workers.plugins import load

# The demo's tools and agents, as a worker finds them.
load(["demo"])

POLICY = load_policy(tools=tool_schemas())
REFUND = REGISTRY["payments.refund"]
ORDER = {
    "order_id": "A-1003",
    "customer_id": "C-300",
    "status": "delivered",
    "total_cents": 89900,
    "captured_cents": 89900,
    "refunded_cents": 0,
}


def request(i: int, amount: int) -> DecisionInput:
    args = {"order_id": "A-1003", "amount_cents": amount, "reason": "broken"}
    return DecisionInput(
        proposal=Proposal(call_id=f"call_{i}", tool=REFUND.name, arguments=args),
        agent="support-refunds",
        granted_scopes=["payments:refund"],
        tool=REFUND.facts,
        arguments=args,
        arguments_error=None,
        requested_mode=None,
        workflow_id=f"wf-{i}",
        requested_by="dana",
        subject={"order_id": "A-1003"},
        facts={"order": ORDER},
        usage={c.id: 0 for c in POLICY.settings.counters},
    )


def measure(label: str, n: int, one: Callable[[int], object]) -> None:
    for i in range(50):  # warm up
        one(i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        one(i)
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    p99 = times[int(len(times) * 0.99) - 1]
    print(f"{label:<44} n={n:<6} median {statistics.median(times):8.1f} µs   p99 {p99:8.1f} µs")


def main() -> None:
    print(f"policy {POLICY.version}: {len(POLICY.rules)} rules")
    measure(
        "decide: automatic refund (Cedar only)", 5000, lambda i: decide(request(i, 4200), POLICY)
    )
    measure("decide: refund needing approval", 5000, lambda i: decide(request(i, 18900), POLICY))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite3")
        counters = POLICY.settings.counters
        measure(
            "decide + reserve limits (SQLite ledger)",
            2000,
            lambda i: ledger.decide_and_reserve(
                request(i, 10), counters, lambda d: decide(d, POLICY)
            ),
        )


if __name__ == "__main__":
    main()
