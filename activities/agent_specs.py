"""Agents: a named LangGraph graph, a system prompt, a model, and the scopes it is granted.

Pure data, importable from workflow code. Agents come from plugins (workers/plugins.py): a
list of AgentSpec in a module, or an agents file (agents.toml). It sits with the activities,
its lowest readers (the model call, the guard, the tools); workflows and workers read it from
above.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ContextWindow(BaseModel):
    """How much of a long conversation the model is sent on each step.

    The model always gets the system prompt and the task, then the last `keep_last_turns`
    turns (a turn: one model reply and the tool results answering it, never split), and before
    them one note standing for the older turns: a running summary written by the model itself
    (`summarize`, an audited call) or only how many turns were left out. Older turns are folded
    into that note `fold_every` at a time, so the model sees between `keep_last_turns` and
    `keep_last_turns + fold_every - 1` turns and the summary is made once per fold, not per
    step. The full transcript stays in the store for audit and replay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last_turns: int = Field(ge=1)
    summarize: bool = True
    fold_every: int = Field(default=8, ge=1)


# The built-in graph (agents/guarded.py create_guarded_agent), every agent's by default.
GUARDED_LOOP = "guarded-loop"
# Steps the built-in graph's model call may take ahead (AgentSpec.read_ahead).
DEFAULT_READ_AHEAD = 8


class AgentSpecError(Exception):
    """An agent is declared wrongly (checked when the worker starts)."""


class AgentSpec(BaseModel):
    # A misspelt field in an agents file is an error, not a setting silently ignored.
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    graph: str = GUARDED_LOOP
    model: str = "gpt-4.1-mini"
    system_prompt: str
    scopes: list[str]
    # What a run of this agent can be about: subject field -> pattern its value must match.
    # The policy binds every side effect to the run's subject (`context.run.subject.<field>`);
    # a run without the subject a rule needs can read but not act.
    subject: dict[str, str] = {}
    max_steps: int = Field(default=12, ge=1)
    max_tokens: int = Field(default=200_000, ge=1)
    # atomic: the side effects proposed in one model turn run all or none (one denied,
    # rejected, expired, failed or blocked skips the others); independent: each on its own.
    turn: Literal["atomic", "independent"] = "atomic"
    # None: the model is sent the whole conversation on every step.
    context: ContextWindow | None = None
    # Long runs: continue as new every this many steps (agents/segments.py), so each history
    # segment stays bounded and a run may take up to MAX_LONG_RUN_STEPS steps. None: one
    # history, and a run's `max_steps` is at most MAX_RUN_STEPS.
    segment_steps: int | None = Field(default=None, ge=1)
    # Read-ahead: after a reply whose every tool call is a read the guard allowed, the model
    # activity sends the model the reads' results itself, up to this many more steps per call
    # (each model call, verdict and read audited as ever; the workflow goes through each step
    # and takes it only if it would have sent the model the same). One workflow task for
    # several lookups. 0: one model call per activity. None: see `steps_ahead`.
    read_ahead: int | None = Field(default=None, ge=0, le=100)

    @property
    def steps_ahead(self) -> int:
        """`read_ahead`, by default DEFAULT_READ_AHEAD for the built-in guarded loop (its next
        step sends the model the reads' results and nothing else) and 0 for other graphs (a
        graph that sends more would have the steps taken ahead asked again)."""
        if self.read_ahead is not None:
            return self.read_ahead
        return DEFAULT_READ_AHEAD if self.graph == GUARDED_LOOP else 0

    @field_validator("subject")
    @classmethod
    def _patterns_compile(cls, subject: dict[str, str]) -> dict[str, str]:
        # A pattern that does not compile would fail every run's start, not this one.
        for name, pattern in subject.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{name}: {pattern!r} is not a regular expression: {e}") from None
        return subject


# A run's `max_steps` (RunInput): at most this many for an agent that keeps one history…
MAX_RUN_STEPS = 200
# … and this many for one that continues as new (AgentSpec.segment_steps).
MAX_LONG_RUN_STEPS = 1_000_000


# Every declared agent, by name: filled at start-up from the installed plugins
# (workers/plugins.py; Countersign's own demo agents are the `demo` plugin, demo/plugin.py).
AGENTS: dict[str, AgentSpec] = {}
# Who declared each agent (a plugin's name), to name both sides of a duplicate.
_DECLARED_BY: dict[str, str] = {}


def register_agents(specs: list[AgentSpec], plugin: str) -> None:
    """Add a plugin's agents; a name another plugin already declared is an AgentSpecError."""
    for spec in specs:
        first = _DECLARED_BY.get(spec.name)
        if first is not None and first != plugin:
            raise AgentSpecError(f"agent {spec.name!r} is already declared by plugin {first!r}")
        AGENTS[spec.name] = spec
        _DECLARED_BY[spec.name] = plugin


def subject_fields() -> list[str]:
    """Every subject field any agent declares: the keys of `context.run.subject` in policies."""
    return sorted({f for spec in AGENTS.values() for f in spec.subject})


def check_agent_scopes(agents: dict[str, AgentSpec], tool_scopes: set[str]) -> None:
    """Every scope an agent is granted must match a registered tool: a misspelt scope would
    silently leave the agent without the tools it was meant to have."""
    for agent in agents.values():
        for scope in agent.scopes:
            if scope not in tool_scopes:
                raise AgentSpecError(
                    f"agent {agent.name}: scope {scope!r} matches no registered tool "
                    f"(tool scopes: {', '.join(sorted(tool_scopes))})"
                )


def check_agent_graphs(agents: dict[str, AgentSpec], hosted: set[str]) -> None:
    """Every agent's graph is one the worker hosts: otherwise its runs would start and fail."""
    for agent in agents.values():
        if agent.graph not in hosted:
            raise AgentSpecError(
                f"agent {agent.name}: graph {agent.graph!r} is not hosted by this worker "
                f"(graphs: {', '.join(sorted(hosted))})"
            )
