"""Countersign's own demo: the shop and CRM tools and the support agents, installed as the
plugin `demo` through the same entry points a project of your own declares (pyproject.toml,
`[project.entry-points."countersign.tools"]` and `."countersign.agents"`; its directory is
`countersign.demo:DIRECTORY`, under `."countersign.directories"`)."""

from __future__ import annotations

# Importing the tool modules registers their tools.
import countersign.activities.crm
import countersign.activities.knowledge
import countersign.activities.shop

# Importing the example graph registers it (agent support-planner runs it).
import countersign.agents.planner_executor  # noqa: F401
from countersign.activities.agent_specs import AgentSpec

# Subject fields and the values each accepts (the run's subject is validated at start).
CUSTOMER_ID = r"^C-\d{3}$"
ORDER_ID = r"^[A-Z]-\d{4}$"

SUPPORT_PROMPT = """\
You are a customer-support operations agent for an online shop.
You act only through the tools you are given; every side effect is checked by a guard and
may wait for a human to countersign it. Look things up before you act, never guess amounts,
and state your reason for every action in one sentence. Money is in integer cents.
Search the knowledge base for the policy that applies and cite each passage your reason relies
on by writing its ref in square brackets, e.g. [refund-policy.md#limits:1].
When the task is done, reply with a short summary and no tool calls."""

AGENTS = [
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
        name="support-planner",
        description="Refunds like support-refunds, planning first: the example of "
        "bringing your own graph (agents/planner_executor.py).",
        graph="planner-executor",
        system_prompt=SUPPORT_PROMPT,
        scopes=["orders:read", "crm:read", "knowledge:read", "payments:refund", "crm:write"],
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
