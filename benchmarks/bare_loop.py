"""Benchmark only: the same model → tool loop with no Countersign in it.

`plain_loop` runs it as ordinary in-process LangGraph; `BareLoop` runs the same graph under
Temporal through the `temporalio-langgraph` plugin, both nodes as activities (the plugin's
default way), with no guard, no audit, no transcript store. Both do exactly the I/O a
Countersign step does — one chat completion through the `openai` client, one GET to the shop
with a bearer token, both over pooled clients — so the differences the benchmark reports
are orchestration.

Nodes are module-level and the router is `async` (the plugin's workflow loop has no executor
for sync routers). The endpoints live in a module global set by the benchmark process, which
also hosts the worker: no URL or token goes through a history.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from temporalio.langgraph import graph

    from countersign.activities.http import HttpClients

BARE_GRAPH = "bare-loop"


@dataclass
class Endpoints:
    model_url: str
    shop_url: str
    shop_token: str
    model_key: str
    tools: list[dict[str, Any]]


ENDPOINTS: Endpoints | None = None
# Pooled clients, as Countersign's activities use (activities.http): the comparison is about
# orchestration, not about who builds more TLS contexts.
HTTP = HttpClients()


class BareState(TypedDict, total=False):
    messages: Annotated[list[dict[str, Any]], operator.add]


def _endpoints() -> Endpoints:
    if ENDPOINTS is None:
        raise RuntimeError("benchmarks.bare_loop.ENDPOINTS is not set")
    return ENDPOINTS


async def model_node(state: BareState) -> BareState:
    import openai

    ep = _endpoints()
    client = openai.AsyncOpenAI(
        base_url=ep.model_url,
        api_key=ep.model_key,
        max_retries=0,
        http_client=HTTP.get("openai", openai.DefaultAsyncHttpxClient),
    )
    response = await client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=cast(Any, state["messages"]),
        tools=cast(Any, ep.tools),
    )
    reply = response.choices[0].message
    assistant: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        assistant["tool_calls"] = [c.model_dump(mode="json") for c in reply.tool_calls]
    return {"messages": [assistant]}


async def tool_node(state: BareState) -> BareState:
    import httpx

    ep = _endpoints()
    shop = HTTP.get(
        "shop",
        lambda: httpx.AsyncClient(
            base_url=ep.shop_url, headers={"Authorization": f"Bearer {ep.shop_token}"}
        ),
    )
    out = []
    for call in state["messages"][-1].get("tool_calls", []):
        order_id = json.loads(call["function"]["arguments"])["order_id"]
        r = await shop.get(f"/orders/{order_id}")
        r.raise_for_status()
        out.append({"role": "tool", "tool_call_id": call["id"], "content": r.text})
    return {"messages": out}


async def route(state: BareState) -> str:
    return "tool" if state["messages"][-1].get("tool_calls") else END


def build_bare_graph(execute_in: str | None = "activity") -> StateGraph[Any, Any, Any, Any]:
    """`execute_in=None`: no plugin metadata, for plain in-process LangGraph."""
    g: StateGraph[Any, Any, Any, Any] = StateGraph(BareState)
    meta = (
        {"execute_in": execute_in, "start_to_close_timeout": timedelta(seconds=60)}
        if execute_in
        else None
    )
    g.add_node("model", model_node, metadata=meta)
    g.add_node("tool", tool_node, metadata=meta)
    g.add_edge(START, "model")
    g.add_conditional_edges("model", route, ["tool", END])
    g.add_edge("tool", "model")
    return g


def first_messages(task: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a benchmark."},
        {"role": "user", "content": task},
    ]


@workflow.defn(name="BareLoop")
class BareLoop:
    @workflow.run
    async def run(self, task: str) -> int:
        app = graph(BARE_GRAPH).compile()
        final = await app.ainvoke(
            {"messages": first_messages(task)}, config={"recursion_limit": 10_000}
        )
        return len(final["messages"])
