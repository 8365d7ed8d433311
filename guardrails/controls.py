"""The kill switch: stop every side effect of a tool, of an agent, or of everything, now.

It is operational state, not versioned policy: ops flip it with `countersign kill …` and the
guard and every tool activity read it on each call, so it takes effect on the next proposal
(and the next execution) of every running workflow without restarting workers.

Where the switch is kept is one small, replaceable piece (`KillSwitchStore`: read and write a
`KillSwitch`): a JSON file in the state folder on one machine, or a row in the shared database
(COUNTERSIGN_STATE_DSN), so that flipping it through any host stops every host.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from guardrails.database import Database


class KillSwitch(BaseModel):
    tools: list[str] = []
    agents: list[str] = []
    all_side_effects: bool = False

    def stops(self, tool: str, agent: str) -> bool:
        return self.all_side_effects or tool in self.tools or agent in self.agents


def read_kill_switch(path: Path) -> KillSwitch:
    try:
        return KillSwitch.model_validate_json(path.read_text())
    except FileNotFoundError:
        return KillSwitch()


def write_kill_switch(path: Path, switch: KillSwitch) -> None:
    """Replace the file atomically: a reader never sees half a switch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kill-switch")
    with os.fdopen(fd, "w") as f:
        json.dump(switch.model_dump(), f, indent=2)
    os.replace(tmp, path)


class KillSwitchStore(Protocol):
    location: str

    def read(self) -> KillSwitch: ...
    def write(self, switch: KillSwitch) -> None: ...


class KillSwitchFile:
    """The switch as a JSON file (one machine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def read(self) -> KillSwitch:
        return read_kill_switch(self.path)

    def write(self, switch: KillSwitch) -> None:
        write_kill_switch(self.path, switch)


_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS kill_switch (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        switch TEXT NOT NULL,
        changed_at TEXT NOT NULL
    )"""
]


class KillSwitchTable:
    """The switch as one row of the shared database (a fleet): every host reads it on every
    proposal and every execution, so a flip through any host holds everywhere at once."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.location = db.location
        db.create(_SCHEMA)

    def read(self) -> KillSwitch:
        with self.db.reader() as tx:
            row = tx.one("SELECT switch FROM kill_switch WHERE id = 1")
        return KillSwitch.model_validate_json(row[0]) if row else KillSwitch()

    def write(self, switch: KillSwitch) -> None:
        with self.db.transaction() as tx:
            tx.run(
                "INSERT INTO kill_switch VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET switch = excluded.switch,"
                " changed_at = excluded.changed_at",
                (switch.model_dump_json(), datetime.now(UTC).isoformat()),
            )
