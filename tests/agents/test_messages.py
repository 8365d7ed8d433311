"""agents/messages.py: the guarded graphs' `add_messages` gives LangGraph's result, whatever the
update, at a cost that does not grow with the conversation when it only appends."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, ToolMessage
from langgraph.graph.message import add_messages as langgraph_add_messages

from countersign.agents import messages
from countersign.agents.messages import MessageList, add_messages


def step(i: int) -> list[Any]:
    return [
        AIMessage(content=f"reply {i}", id=f"reply-{i}"),
        ToolMessage(content="{}", tool_call_id=f"c{i}", id=f"tool-{i}"),
    ]


def shown(messages: list[Any]) -> list[tuple[str, Any, str | None]]:
    """Type, content and id; an id LangGraph drew at random (a uuid4) is left out."""
    return [
        (type(m).__name__, m.content, None if len(m.id or "") == 36 else m.id) for m in messages
    ]


def both(updates: list[Any]) -> tuple[list[Any], list[Any]]:
    ours: Any = []
    theirs: Any = []
    for update in updates:
        ours = add_messages(ours, update)
        theirs = langgraph_add_messages(theirs, update)
        assert shown(ours) == shown(theirs), update
    return ours, theirs


def test_same_result_as_langgraph_for_every_kind_of_update() -> None:
    ours, _ = both(
        [
            [HumanMessage(content="hi", id="h")],
            *[step(i) for i in range(5)],
            [AIMessage(content="reply 2, edited", id="reply-2")],  # replaced by id
            [RemoveMessage(id="tool-1")],  # removed
            [("user", "a tuple")],  # coerced, given an id
            [{"role": "assistant", "content": "a dict", "id": "d"}],
            [AIMessage(content="x", id="dup"), AIMessage(content="y", id="dup")],  # same id twice
            AIMessage(content="not a list", id="single"),
            step(9),
        ]
    )
    assert [m.id for m in ours][-2:] == ["reply-9", "tool-9"]


def test_a_list_edited_in_place_is_merged_as_langgraph_would() -> None:
    ours = add_messages([], step(0))
    assert isinstance(ours, MessageList)
    ours.append(AIMessage(content="appended in place", id="reply-1"))
    merged = add_messages(ours, [AIMessage(content="replaces it", id="reply-1")])
    assert merged == langgraph_add_messages(
        list(ours), [AIMessage(content="replaces it", id="reply-1")]
    )
    assert [m.content for m in merged][-1] == "replaces it"


def test_appending_new_messages_does_not_walk_the_conversation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LangGraph's reducer re-walks every message on every update; appends here touch only
    the new ones (LangGraph's is not called), whatever the conversation's length."""
    long: Any = []
    for i in range(500):
        long = add_messages(long, step(i))
    walked: list[int] = []

    def counting(left: Any, right: Any) -> Any:
        walked.append(len(left))
        return langgraph_add_messages(left, right)

    monkeypatch.setattr(messages, "langgraph_add_messages", counting)
    for i in range(500, 510):
        long = add_messages(long, step(i))
    assert walked == [] and len(long) == 1020 and isinstance(long, MessageList)
    add_messages(long, [AIMessage(content="edited", id="reply-3")])  # a replacement walks it
    assert walked == [1020]
