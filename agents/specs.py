"""Agents: a named LangGraph graph, a system prompt, a model, and the scopes it is granted.

Pure data, importable from workflow code: adding an agent is one entry here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class AgentSpecError(Exception):
    """An agent is declared wrongly (checked when the worker starts)."""


class AgentSpec(BaseModel):
    name: str
    description: str
    graph: str = "guarded-loop"
    model: str = "gpt-4.1-mini"
    system_prompt: str
    scopes: list[str]
    max_steps: int = Field(default=12, ge=1)
    max_tokens: int = Field(default=200_000, ge=1)
    # atomic: the side effects proposed in one model turn run all or none (one denied,
    # rejected, expired, failed or blocked skips the others); independent: each on its own.
    turn: Literal["atomic", "independent"] = "atomic"


SUPPORT_PROMPT = """\
You are a customer-support operations agent for an online shop.
You act only through the tools you are given; every side effect is checked by a guard and
may wait for a human to countersign it. Look things up before you act, never guess amounts,
and state your reason for every action in one sentence. Money is in integer cents.
When the task is done, reply with a short summary and no tool calls."""

AGENTS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in [
        AgentSpec(
            name="support-refunds",
            description="Handles refund requests: looks up orders, refunds, notes the CRM.",
            system_prompt=SUPPORT_PROMPT,
            scopes=["orders:read", "crm:read", "payments:refund", "crm:write"],
        ),
        AgentSpec(
            name="support-readonly",
            description="Answers questions about orders and customers; can change nothing.",
            system_prompt=SUPPORT_PROMPT,
            scopes=["orders:read", "crm:read"],
        ),
        AgentSpec(
            name="crm-updates",
            description="Updates customer contact details and notes.",
            system_prompt=SUPPORT_PROMPT,
            scopes=["crm:read", "crm:write"],
        ),
    ]
}


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
