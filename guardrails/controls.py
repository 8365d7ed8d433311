"""The kill switch: stop every side effect of a tool, of an agent, or of everything, now.

It is operational state, not versioned policy: ops flip it with `countersign kill …` and the
guard and every tool activity read it on each call, so it takes effect on the next proposal
(and the next execution) of every running workflow without restarting workers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel


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
