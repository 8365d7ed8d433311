"""Agents: a named LangGraph graph, a system prompt, a model, and the scopes it is granted.

Pure data, importable from workflow code: adding an agent is one entry here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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


# Subject fields and the values each accepts (the run's subject is validated at start).
CUSTOMER_ID = r"^C-\d{3}$"
ORDER_ID = r"^[A-Z]-\d{4}$"


class AgentSpecError(Exception):
    """An agent is declared wrongly (checked when the worker starts)."""


class AgentSpec(BaseModel):
    name: str
    description: str
    graph: str = "guarded-loop"
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


SUPPORT_PROMPT = """\
You are a customer-support operations agent for an online shop.
You act only through the tools you are given; every side effect is checked by a guard and
may wait for a human to countersign it. Look things up before you act, never guess amounts,
and state your reason for every action in one sentence. Money is in integer cents.
Search the knowledge base for the policy that applies and cite each passage your reason relies
on by writing its ref in square brackets, e.g. [refund-policy.md#limits:1].
When the task is done, reply with a short summary and no tool calls."""

AGENTS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in [
        AgentSpec(
            name="support-refunds",
            description="Handles refund requests: looks up orders, refunds, notes the CRM.",
            system_prompt=SUPPORT_PROMPT,
            scopes=["orders:read", "crm:read", "knowledge:read", "payments:refund", "crm:write"],
            subject={"customer_id": CUSTOMER_ID, "order_id": ORDER_ID},
        ),
        AgentSpec(
            name="support-readonly",
            description="Answers questions about orders and customers; can change nothing.",
            system_prompt=SUPPORT_PROMPT,
            scopes=["orders:read", "crm:read", "knowledge:read"],
            subject={"customer_id": CUSTOMER_ID, "order_id": ORDER_ID},
        ),
        AgentSpec(
            name="crm-updates",
            description="Updates customer contact details and notes.",
            system_prompt=SUPPORT_PROMPT,
            scopes=["crm:read", "knowledge:read", "crm:write"],
            subject={"customer_id": CUSTOMER_ID},
        ),
    ]
}


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
