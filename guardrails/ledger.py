"""Durable running totals for stateful limits, with reservations.

"At most 2,000.00 refunded per agent per day" must hold across runs, workers and hosts, and
under concurrency: the usage is read, the decision made and the amount reserved in one
transaction that holds a lock on every (counter, key, window) it reads (PostgreSQL: an advisory
lock per place, so unrelated limits never wait for each other; SQLite: `BEGIN IMMEDIATE`). A
reservation counts until it is released (the action was rejected, expired or failed); executed
actions keep it.

Which place a decision counts against (`key_of`, `window_of`) is computed apart from storage.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from countersign.guardrails.database import Database, open_database
from countersign.guardrails.policy import Counter, DecisionInput, Verdict, action_hash

# "window" is a keyword in PostgreSQL: always quoted.
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS reservations (
        action_hash TEXT NOT NULL,
        counter_id TEXT NOT NULL,
        key TEXT NOT NULL,
        "window" TEXT NOT NULL,
        amount BIGINT NOT NULL,
        released INTEGER NOT NULL DEFAULT 0,
        workflow_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (action_hash, counter_id)
    )""",
    'CREATE INDEX IF NOT EXISTS reservations_by_window ON reservations (counter_id, key, "window")',
]


def window_of(counter: Counter, workflow_id: str, now: datetime) -> str:
    if counter.window == "run":
        return workflow_id
    if counter.window == "week":
        year, week, _ = now.isocalendar()
        return f"{year}-W{week:02d}"
    return now.date().isoformat()


# The key of calls that lack the value a counter is kept per: they share one total.
NO_KEY = "(none)"


def key_of(counter: Counter, d: DecisionInput) -> str:
    """Which total a call counts against: its agent, its run, or the value at a path into its
    arguments, facts or subject ("args.order_id", "facts.order.customer_id", ...)."""
    if counter.per == "run":
        return d.workflow_id
    if counter.per == "agent":
        return d.agent
    if counter.per == "customer":  # the call's customer, else its order's customer
        return key_at(d, "args.customer_id") or key_at(d, "facts.order.customer_id") or NO_KEY
    return key_at(d, counter.per) or NO_KEY


def key_at(d: DecisionInput, path: str) -> str | None:
    root, *rest = path.split(".")
    value: object = {
        "args": d.arguments or {},
        "facts": d.facts,
        "subject": d.subject,
        "subject_facts": d.subject_facts,
    }.get(root)
    for part in rest:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


class Ledger:
    def __init__(self, db: Database | str | Path) -> None:
        """`db`: the shared database, a `postgresql://` DSN, or a SQLite file's path."""
        # FULL: a reservation is money not yet spent; it must survive a power cut.
        self.db = open_database(db, synchronous="FULL")
        self.db.create(_SCHEMA)

    def decide_and_reserve(
        self,
        d: DecisionInput,
        counters: list[Counter],
        decide: Callable[[DecisionInput], Verdict],
        now: datetime | None = None,
    ) -> tuple[Verdict, DecisionInput]:
        """Read usage, decide, and reserve what the decision lets through, atomically.

        A retried call (same action hash) neither counts its own reservation nor adds another;
        an action whose reservation was given back and is decided again reserves again.
        """
        now = now or datetime.now(UTC)
        applicable = [c for c in counters if d.tool is not None and c.tool == d.tool.name]
        places = {c.id: (key_of(c, d), window_of(c, d.workflow_id, now)) for c in counters}
        locks = [f"ledger:{c}:{key}:{window}" for c, (key, window) in places.items()]
        with self.db.transaction(locks) as tx:
            usage = {c.id: 0 for c in counters}
            for c in counters:
                row = tx.one(
                    "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE counter_id = ?"
                    ' AND key = ? AND "window" = ? AND released = 0 AND action_hash != ?',
                    (c.id, *places[c.id], _hash_of(d)),
                )
                usage[c.id] = int(row[0]) if row else 0
            d = d.model_copy(update={"usage": usage})
            verdict = decide(d)
            if verdict.outcome in ("allow", "needs_approval") and verdict.action_hash:
                for c in applicable:
                    amount = int((d.arguments or {}).get(c.sum, 0)) if c.sum else 1
                    # A live reservation of the same action (a retried decision) stays as it
                    # is; one given back is taken again: the action may happen after all.
                    tx.run(
                        "INSERT INTO reservations VALUES (?, ?, ?, ?, ?, 0, ?, ?)"
                        " ON CONFLICT (action_hash, counter_id) DO UPDATE SET released = 0,"
                        ' key = excluded.key, "window" = excluded."window",'
                        " amount = excluded.amount, created_at = excluded.created_at"
                        " WHERE reservations.released = 1",
                        (
                            verdict.action_hash,
                            c.id,
                            *places[c.id],
                            amount,
                            d.workflow_id,
                            now.isoformat(),
                        ),
                    )
        return verdict, d

    def release(self, action_hash: str, workflow_id: str) -> int:
        """Give back what an action of run `workflow_id` that will not happen had reserved.
        Only that run's: an action hash is no secret (it is in the run's history), and a
        result forged into another run must not free this one's limits."""
        with self.db.transaction() as tx:
            return tx.run(
                "UPDATE reservations SET released = 1 WHERE action_hash = ? AND workflow_id = ?",
                (action_hash, workflow_id),
            )

    def total(self, counter_id: str, key: str, window: str) -> int:
        with self.db.reader() as tx:
            row = tx.one(
                "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE counter_id = ?"
                ' AND key = ? AND "window" = ? AND released = 0',
                (counter_id, key, window),
            )
        return int(row[0]) if row else 0

    def entries(
        self, counter_id: str, key: str, window: str, exclude: str = ""
    ) -> list[tuple[str, int, datetime]]:
        """What makes up a total: (workflow id, amount, when) of each reservation that counts,
        oldest first, without the action `exclude` (the one being decided)."""
        with self.db.reader() as tx:
            rows = tx.all(
                "SELECT workflow_id, amount, created_at FROM reservations WHERE counter_id = ?"
                ' AND key = ? AND "window" = ? AND released = 0 AND action_hash != ?'
                " ORDER BY created_at",
                (counter_id, key, window, exclude),
            )
        return [(str(w), int(a), datetime.fromisoformat(str(c))) for w, a, c in rows]


def _hash_of(d: DecisionInput) -> str:
    if d.tool is None or d.arguments is None:
        return ""
    return action_hash(d.workflow_id, d.proposal.call_id, d.tool.name, d.arguments)
