"""Bring your own graph: the guarded parts of a LangGraph agent, for any StateGraph AgentRun hosts.

- `call_model`: the guarded model call. The `model.plan` activity with the run's transcript
  store: it sends the model only the messages added since its last reply (the conversation
  lives in the store, never in an activity input) and returns an `AIMessage` with tool calls.
- `guarded_tools`: a drop-in for LangGraph's prebuilt `ToolNode`. It takes the last
  `AIMessage`'s tool calls and runs them through guard → approvals (waiting for signed
  decisions) → act → audit, exactly as the built-in loop does, and returns one `ToolMessage`
  per call (a denial or rejection is the error text the model is shown).
- `tools_condition`, `within_limits`: routers (`async def`: the plugin's workflow loop has no
  executor for sync ones, so LangGraph's own `tools_condition` would hang the run).
- `create_guarded_agent()`: model ⇄ tools until the model answers without tool calls, or the
  agent's step or token limit stops it. The built-in `guarded-loop` is this graph.

Every node runs in the workflow (`metadata=in_workflow()`): a node run as an activity would
receive the whole graph state, conversation included, as its input on every step. The nodes
here are thin adapters over the built-in loop's own nodes (agents/graph.py), so both paths
make the same activity calls in the same order with the same inputs: the same verdicts, audit
records, approvals, undo and history.

A graph's state must extend `GuardedState` (like LangGraph's `MessagesState`, plus the
transcript's sequence number and what the run reports when it ends).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from temporalio.exceptions import ApplicationError

from countersign.agents import graph as loop
from countersign.agents.messages import add_messages
from countersign.agents.state import RunState
from countersign.guardrails.policy import Proposal

# Where a model reply came from: its transcript sequence number after the reply, kept on the
# AIMessage (`response_metadata`) so the next call knows which messages are new.
TRANSCRIPT_SEQ = "countersign_transcript_seq"
# The order the model gave its calls in (valid and malformed ones are two lists in LangChain).
CALL_ORDER = "countersign_call_order"
# Each call's own reason, as the model activity read it (else the reply's text stands for all).
CALL_REASONS = "countersign_call_reasons"


class _GuardedKeys(TypedDict, total=False):
    # Messages in the run's transcript store (see activities/transcript.py).
    seq: int
    # The model's latest text, reported as the run's final message.
    final: str
    # Why the run stopped early (max_steps, max_tokens, model_reply_refused); None: it finished.
    stop_reason: str | None
    # The latest tool results in the transcript's format, until the model is sent them: what a
    # long run's next segment carries (agents/segments.py) with `seq`.
    observations: list[dict[str, Any]]


class GuardedState(_GuardedKeys, total=False):
    """What a guarded graph's state holds. Extend it with keys of your own."""

    messages: Annotated[list[AnyMessage], add_messages]


class _NodeState(_GuardedKeys, total=False):
    """What the guarded parts read and write. LangGraph adds the state its nodes and routers
    are annotated with to the graph; `messages` here has no reducer of its own, so the parts
    fit a graph whose `messages` has another (LangGraph's `MessagesState`, GuardedState's)."""

    messages: list[AnyMessage]


def in_workflow() -> dict[str, Any]:
    """Node metadata: run the node in the workflow (a fresh dict: the plugin edits it)."""
    return {"execute_in": "workflow"}


async def call_model(state: _NodeState, runtime: Runtime[RunState]) -> dict[str, Any]:
    """The guarded model call: one `model.plan` activity, returning the reply as an AIMessage."""
    messages = list(state.get("messages", []))
    last, since = _last_reply(messages)
    new = [_openai_message(m) for m in since]
    if last is None:
        # A long run's new segment starts with the results its previous segment carried.
        new = [*state.get("observations", []), *new]
    # A state without `seq` (a plain MessagesState) still appends after the last reply,
    # never over it.
    seq = max(state.get("seq", 0), last.response_metadata[TRANSCRIPT_SEQ] if last else 0)
    out = await loop.plan({"seq": seq, "observations": new}, runtime)
    proposals = out.get("proposals", [])
    reply = AIMessage(
        content=out.get("final", ""),
        id=f"reply-{out['seq']}",
        tool_calls=[
            {"id": p.call_id, "name": p.tool, "args": p.arguments, "type": "tool_call"}
            for p in proposals
            if p.arguments is not None
        ],
        invalid_tool_calls=[
            {
                "id": p.call_id,
                "name": p.tool,
                "args": None,
                "error": p.arguments_error,
                "type": "invalid_tool_call",
            }
            for p in proposals
            if p.arguments is None
        ],
        response_metadata={
            TRANSCRIPT_SEQ: out["seq"],
            CALL_ORDER: [p.call_id for p in proposals],
            CALL_REASONS: {p.call_id: p.reason for p in proposals},
        },
    )
    update: dict[str, Any] = {
        "messages": [reply],
        "seq": out["seq"],
        "final": reply.content,
        "observations": [],
    }
    if out.get("stop_reason"):
        update["stop_reason"] = out["stop_reason"]
    return update


async def guarded_tools(state: _NodeState, runtime: Runtime[RunState]) -> dict[str, Any]:
    """The guarded tool node: guard → approvals → act for the last AIMessage's tool calls."""
    messages = state.get("messages", [])
    last = messages[-1] if messages else None
    if not isinstance(last, AIMessage):
        raise ApplicationError(
            "guarded_tools: the last message must be the model's reply (an AIMessage with "
            f"tool calls), got {type(last).__name__}: route to it with tools_condition",
            type="GraphError",
            non_retryable=True,
        )
    proposals = proposals_of(last)
    if not proposals:
        return {}
    # The built-in loop's nodes, in its order, each one's update applied as LangGraph would.
    turn: loop.LoopState = {"proposals": proposals}
    turn.update(await loop.guard(turn, runtime))
    if await loop.after_guard(turn, runtime) == "approvals":
        turn.update(await loop.approvals(turn, runtime))
    acted = await loop.act(turn, runtime)
    names = {p.call_id: p.tool for p in proposals}
    seq = last.response_metadata.get(TRANSCRIPT_SEQ)
    return {
        "observations": acted["observations"],
        "messages": [
            ToolMessage(
                content=o["content"],
                tool_call_id=o["tool_call_id"],
                name=names.get(o["tool_call_id"]),
                status="error" if "error" in json.loads(o["content"]) else "success",
                # Deterministic ids (call ids may repeat across turns; add_messages replaces
                # a message whose id it has seen).
                id=f"tool-{seq}-{i}" if seq is not None else None,
            )
            for i, o in enumerate(acted["observations"])
        ],
    }


def proposals_of(reply: AIMessage) -> list[Proposal]:
    """The reply's tool calls as proposals for the guard, in the order the model made them."""
    text = _text(reply).strip()
    reasons = reply.response_metadata.get(CALL_REASONS) or {}
    proposals = [
        Proposal(
            call_id=c["id"] or "",
            tool=c["name"],
            arguments=c["args"],
            reason=reasons.get(c["id"], text),
        )
        for c in reply.tool_calls
    ] + [
        Proposal(
            call_id=c["id"] or "",
            tool=c["name"] or "",
            arguments=None,
            arguments_error=c["error"] or "the arguments could not be parsed",
            reason=reasons.get(c["id"], text),
        )
        for c in reply.invalid_tool_calls
    ]
    order = reply.response_metadata.get(CALL_ORDER)
    if order and sorted(order) == sorted(p.call_id for p in proposals):
        proposals.sort(key=lambda p: order.index(p.call_id))
    return proposals


async def tools_condition(state: _NodeState, runtime: Runtime[RunState]) -> str:
    """To "tools" when the model's last reply has tool calls, else to the end."""
    messages = state.get("messages", [])
    last = messages[-1] if messages else None
    if isinstance(last, AIMessage) and (last.tool_calls or last.invalid_tool_calls):
        return "tools"
    return END


async def within_limits(state: _NodeState, runtime: Runtime[RunState]) -> str:
    """After the tools: back to "model"; to "stop" when the agent's step or token limit is
    reached; to the end when a long run's segment ends (it continues as new)."""
    after = await loop.after_act({}, runtime)
    return after if after in ("stop", END) else "model"


async def stop(state: _NodeState, runtime: Runtime[RunState]) -> dict[str, Any]:
    """Say which limit stopped the run."""
    return dict(await loop.stop({}, runtime))


def create_guarded_agent(
    state_schema: type[Any] = GuardedState,
) -> StateGraph[Any, RunState, Any, Any]:
    """A ReAct agent whose every tool call is guarded: model ⇄ tools, then the end.

    Nodes "model", "tools" and "stop"; returns the builder (add nodes or edges, then register
    the builder function with `agents.graph_registry.register_graph`)."""
    g: StateGraph[Any, RunState, Any, Any] = StateGraph(state_schema, context_schema=RunState)
    g.add_node("model", call_model, metadata=in_workflow())
    g.add_node("tools", guarded_tools, metadata=in_workflow())
    g.add_node("stop", stop, metadata=in_workflow())
    g.add_edge(START, "model")
    g.add_conditional_edges("model", tools_condition, ["tools", END])
    g.add_conditional_edges("tools", within_limits, ["model", "stop", END])
    g.add_edge("stop", END)
    return g


def _last_reply(
    messages: Sequence[BaseMessage],
) -> tuple[BaseMessage | None, list[BaseMessage]]:
    """The guarded model's last reply, and the messages after it: what the transcript lacks."""
    for i in range(len(messages) - 1, -1, -1):
        if TRANSCRIPT_SEQ in messages[i].response_metadata:
            return messages[i], list(messages[i + 1 :])
    return None, list(messages)


def _text(message: BaseMessage) -> str:
    content = message.content
    return content if isinstance(content, str) else json.dumps(content)


def _openai_message(message: BaseMessage) -> dict[str, Any]:
    """A message a graph added, as the transcript keeps it (OpenAI chat format)."""
    if isinstance(message, ToolMessage):
        # Exactly what the built-in loop sends, so both write the same transcript.
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": _text(message)}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": _text(message)}
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": _text(message)}
    if isinstance(message, AIMessage):
        out: dict[str, Any] = {"role": "assistant", "content": _text(message)}
        if message.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["args"])},
                }
                for c in message.tool_calls
            ]
        return out
    raise ApplicationError(
        f"a graph added a {type(message).__name__}; the model is sent only human, system, "
        "AI and tool messages",
        type="GraphError",
        non_retryable=True,
    )
