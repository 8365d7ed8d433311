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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from countersign.guardrails.database import Database
from countersign.guardrails.identity import Directory, Envelope, StatementRefused, verify

KillTarget = Literal["tool", "agent", "all"]


class KillSwitch(BaseModel):
    """What is switched off. As stored, `changes` is the truth: each flip is a statement signed
    by the operator who made it; `effective()` folds the ones that prove an operator with the
    authority into `tools`, `agents` and `all_side_effects`. A typed edit of the stored switch
    (or a change signed by someone without the authority) counts for nothing."""

    tools: list[str] = []
    agents: list[str] = []
    all_side_effects: bool = False
    changes: list[Envelope] = []

    def stops(self, tool: str, agent: str) -> bool:
        return self.all_side_effects or tool in self.tools or agent in self.agents

    def with_change(self, change: Envelope) -> KillSwitch:
        """The stored switch with `change` added. Nothing is dropped: an unproven change must
        never evict a proven one (flips are rare; the list stays short)."""
        return self.model_copy(update={"changes": [*self.changes, change]})

    def effective(
        self, directory: Directory, may_flip: Callable[[str], bool]
    ) -> tuple[KillSwitch, list[str]]:
        """The switch as the verified changes set it, and why the other changes count for
        nothing. `may_flip(identity)`: whether the policy gives that identity the authority."""
        switch, ignored = KillSwitch(), []
        for change in sorted(self.changes, key=lambda c: c.statement.issued_at):
            s = change.statement
            try:
                # A flip holds until the next flip: checked as of when it was made.
                if s.purpose != "kill":
                    raise StatementRefused(f"a {s.purpose!r} statement is not a kill switch change")
                who = verify(change, directory, s.issued_at).identity
                if not may_flip(who):
                    raise StatementRefused(f"{who} has no kill_switch authority in the policy")
            except StatementRefused as e:
                ignored.append(f"{s.claims} by {s.identity}: {e}")
                continue
            claims = s.claims
            switch = switch._flipped(claims.get("what"), claims.get("name"), bool(claims.get("on")))
        stated = (set(self.tools), set(self.agents), self.all_side_effects)
        if any(stated) and stated != (
            set(switch.tools),
            set(switch.agents),
            switch.all_side_effects,
        ):
            ignored.append("unsigned entries of the stored switch (edited by hand?)")
        return switch, ignored

    def _flipped(self, what: Any, name: Any, on: bool) -> KillSwitch:
        if what == "all":
            return self.model_copy(update={"all_side_effects": on})
        field = "tools" if what == "tool" else "agents" if what == "agent" else None
        if field is None or not isinstance(name, str):
            return self
        names = [n for n in getattr(self, field) if n != name] + ([name] if on else [])
        return self.model_copy(update={field: names})


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
        json.dump(switch.model_dump(mode="json"), f, indent=2)
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
