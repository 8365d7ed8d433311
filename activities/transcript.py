"""The conversation of a run, kept outside workflow history.

The model needs the whole conversation on every call; passing it through the activity input
would copy it into history on every step (history grows with the square of run length). The
workflow instead sends only the new messages and a sequence number; the model activity appends
them here and reads the conversation back. Writes are keyed by (workflow id, seq), so a retried
activity or a reset workflow rewrites the same rows instead of adding new ones.

An agent with a context window (agent_specs.ContextWindow) is sent only the latest turns and
a note standing for the older ones: a fold. A fold is stored here once, keyed by the seq it
covers up to, with the running summary (sealed, as the messages are) when the agent
summarizes; later steps read only the messages after the latest fold.

Any worker may run a run's next model call, so in a fleet this lives in the shared database
(COUNTERSIGN_STATE_DSN); the SQLite file is for one machine.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from countersign.guardrails.database import Database, open_database

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS transcript_messages (
        workflow_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (workflow_id, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS transcript_folds (
        workflow_id TEXT NOT NULL,
        covers_seq INTEGER NOT NULL,
        replies INTEGER NOT NULL,
        summary TEXT,
        PRIMARY KEY (workflow_id, covers_seq)
    )""",
    # A model call's accepted reply, kept with the reply's messages by the attempt that got it
    # when its proposals are decided in the same activity, and then the reply with its
    # verdicts (`decided`) once they are all decided. A retried attempt returns the decided
    # reply as it is; with only the reply kept, it decides the same proposals again (same
    # action hashes, same audit record ids) instead of asking the model for another reply,
    # which would leave the first reply's reservations behind.
    """CREATE TABLE IF NOT EXISTS transcript_replies (
        workflow_id TEXT NOT NULL,
        activity TEXT NOT NULL,
        reply TEXT NOT NULL,
        decided TEXT,
        PRIMARY KEY (workflow_id, activity)
    )""",
]


@dataclass(frozen=True)
class Fold:
    """Messages with seq < `covers_seq` (holding `replies` model replies) are not sent to the
    model any more; `summary` (None: not summarized) stands for them."""

    covers_seq: int
    replies: int
    summary: str | None


class TranscriptStore:
    def __init__(self, db: Database | str | Path) -> None:
        """`db`: the shared database, a `postgresql://` DSN, or a SQLite file's path."""
        # NORMAL: commits survive a crashed worker; a message lost with the machine's power
        # makes the next model call fail loudly (TranscriptIncomplete), never run on a gap.
        self.db = open_database(db, synchronous="NORMAL")
        self.db.create(_SCHEMA)

    def write_sync(
        self,
        workflow_id: str,
        start_seq: int,
        messages: list[dict[str, Any]],
        reply: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        if not messages:
            return
        with self.db.transaction() as tx:
            if reply is not None:
                # The first attempt's reply stands: a later attempt reads it (reply_of).
                tx.run(
                    "INSERT INTO transcript_replies VALUES (?, ?, ?, NULL)"
                    " ON CONFLICT (workflow_id, activity) DO NOTHING",
                    (workflow_id, reply[0], json.dumps(reply[1])),
                )
            tx.many(
                "INSERT INTO transcript_messages VALUES (?, ?, ?)"
                " ON CONFLICT (workflow_id, seq) DO UPDATE SET message = excluded.message",
                [(workflow_id, start_seq + i, json.dumps(m)) for i, m in enumerate(messages)],
            )
            # Rewriting from start_seq (a reset workflow) voids folds of the old continuation.
            tx.run(
                "DELETE FROM transcript_folds WHERE workflow_id = ? AND covers_seq > ?",
                (workflow_id, start_seq),
            )

    def read_sync(self, workflow_id: str, upto_seq: int, from_seq: int = 0) -> list[dict[str, Any]]:
        with self.db.reader() as tx:
            rows = tx.all(
                "SELECT message FROM transcript_messages WHERE workflow_id = ? AND seq >= ?"
                " AND seq < ? ORDER BY seq",
                (workflow_id, from_seq, upto_seq),
            )
        return [json.loads(r[0]) for r in rows]

    def fold_sync(self, workflow_id: str, upto_seq: int) -> Fold | None:
        with self.db.reader() as tx:
            row = tx.one(
                "SELECT covers_seq, replies, summary FROM transcript_folds"
                " WHERE workflow_id = ? AND covers_seq <= ? ORDER BY covers_seq DESC LIMIT 1",
                (workflow_id, upto_seq),
            )
        return Fold(*row) if row else None

    def write_fold_sync(self, workflow_id: str, fold: Fold) -> None:
        with self.db.transaction() as tx:
            tx.run(
                "INSERT INTO transcript_folds VALUES (?, ?, ?, ?) ON CONFLICT"
                " (workflow_id, covers_seq) DO UPDATE SET replies = excluded.replies,"
                " summary = excluded.summary",
                (workflow_id, fold.covers_seq, fold.replies, fold.summary),
            )

    def reply_of_sync(self, workflow_id: str, activity: str) -> dict[str, Any] | None:
        with self.db.reader() as tx:
            row = tx.one(
                "SELECT COALESCE(decided, reply) FROM transcript_replies"
                " WHERE workflow_id = ? AND activity = ?",
                (workflow_id, activity),
            )
        return json.loads(row[0]) if row else None

    def keep_decided_sync(self, workflow_id: str, activity: str, decided: dict[str, Any]) -> None:
        with self.db.transaction() as tx:
            # The first attempt to finish deciding stands.
            tx.run(
                "UPDATE transcript_replies SET decided = ?"
                " WHERE workflow_id = ? AND activity = ? AND decided IS NULL",
                (json.dumps(decided), workflow_id, activity),
            )

    async def write_and_read(
        self, workflow_id: str, start_seq: int, messages: list[dict[str, Any]], *, folds: bool
    ) -> tuple[Fold | None, list[dict[str, Any]]]:
        """Write `messages` from `start_seq`; then (with `folds`) the latest fold covering none
        of them, and the messages after it up to their end: one thread hop for the three."""
        upto = start_seq + len(messages)

        def both() -> tuple[Fold | None, list[dict[str, Any]]]:
            self.write_sync(workflow_id, start_seq, messages)
            fold = self.fold_sync(workflow_id, upto) if folds else None
            return fold, self.read_sync(workflow_id, upto, fold.covers_seq if fold else 0)

        return await asyncio.to_thread(both)

    async def reply_of(self, workflow_id: str, activity: str) -> dict[str, Any] | None:
        """What an earlier attempt of `activity` kept: its decided reply, else its reply, or
        None."""
        return await asyncio.to_thread(self.reply_of_sync, workflow_id, activity)

    async def keep_decided(self, workflow_id: str, activity: str, decided: dict[str, Any]) -> None:
        """Keep the reply kept for `activity` with its verdicts (the activity's result)."""
        await asyncio.to_thread(self.keep_decided_sync, workflow_id, activity, decided)

    async def read(
        self, workflow_id: str, upto_seq: int, from_seq: int = 0
    ) -> list[dict[str, Any]]:
        """Messages with from_seq <= seq < upto_seq, in order."""
        return await asyncio.to_thread(self.read_sync, workflow_id, upto_seq, from_seq)

    async def fold(self, workflow_id: str, upto_seq: int) -> Fold | None:
        """The latest fold covering no message at or after upto_seq."""
        return await asyncio.to_thread(self.fold_sync, workflow_id, upto_seq)

    async def write_fold(self, workflow_id: str, fold: Fold) -> None:
        await asyncio.to_thread(self.write_fold_sync, workflow_id, fold)
