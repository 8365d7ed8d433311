"""The conversation of a run, kept outside workflow history.

The model needs the whole conversation on every call; passing it through the activity input
would copy it into history on every step (history grows with the square of run length). The
workflow instead sends only the new messages and a sequence number; the model activity appends
them here and reads the conversation back. Writes are keyed by (workflow id, seq), so a retried
activity or a reset workflow rewrites the same rows instead of adding new ones.

Any worker may run a run's next model call, so in a fleet this lives in the shared database
(COUNTERSIGN_STATE_DSN); the SQLite file is for one machine.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from guardrails.database import Database, open_database

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS transcript_messages (
        workflow_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (workflow_id, seq)
    )"""
]


class TranscriptStore:
    def __init__(self, db: Database | str | Path) -> None:
        """`db`: the shared database, a `postgresql://` DSN, or a SQLite file's path."""
        # NORMAL: commits survive a crashed worker; a message lost with the machine's power
        # makes the next model call fail loudly (TranscriptIncomplete), never run on a gap.
        self.db = open_database(db, synchronous="NORMAL")
        self.db.create(_SCHEMA)

    def _write(self, workflow_id: str, start_seq: int, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        with self.db.transaction() as tx:
            tx.many(
                "INSERT INTO transcript_messages VALUES (?, ?, ?)"
                " ON CONFLICT (workflow_id, seq) DO UPDATE SET message = excluded.message",
                [(workflow_id, start_seq + i, json.dumps(m)) for i, m in enumerate(messages)],
            )

    def _read(self, workflow_id: str, upto_seq: int) -> list[dict[str, Any]]:
        with self.db.reader() as tx:
            rows = tx.all(
                "SELECT message FROM transcript_messages WHERE workflow_id = ? AND seq < ?"
                " ORDER BY seq",
                (workflow_id, upto_seq),
            )
        return [json.loads(r[0]) for r in rows]

    async def write(self, workflow_id: str, start_seq: int, messages: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._write, workflow_id, start_seq, messages)

    async def read(self, workflow_id: str, upto_seq: int) -> list[dict[str, Any]]:
        """Messages with seq < upto_seq, in order."""
        return await asyncio.to_thread(self._read, workflow_id, upto_seq)
