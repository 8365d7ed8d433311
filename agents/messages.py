"""`add_messages` for a guarded graph's conversation state, without its cost per step.

LangGraph's `add_messages` reducer re-checks every message already in the state on every
update (it coerces the whole list and indexes it by id), and LangGraph runs it again to read
the state for each router: a step cost that grows with the conversation, paid on every
workflow activation and every replay, and several times slower inside the workflow sandbox
(whose `isinstance` is a wrapper). This reducer gives the same result: the list it returns
remembers the ids it holds, so appending new messages (what a guarded loop does on every
step) touches only them; anything else (replacing or removing a message by id, raw dicts or
tuples, a list it did not make) is LangGraph's own `add_messages`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage, RemoveMessage
from langgraph.graph.message import add_messages as langgraph_add_messages


class MessageList(list[Any]):
    """A list of messages `add_messages` built, with the ids it holds."""

    __slots__ = ("ids",)

    def __init__(self, messages: list[Any], ids: frozenset[str]) -> None:
        super().__init__(messages)
        self.ids = ids


def _appended(left: MessageList, right: list[Any]) -> MessageList | None:
    """`left` and `right` merged, when `right` only appends new messages; else None."""
    ids: list[str] = []
    for m in right:
        if not isinstance(m, BaseMessage) or isinstance(m, RemoveMessage) or m.id is None:
            return None
        ids.append(m.id)
    if len(set(ids)) != len(ids) or not left.ids.isdisjoint(ids):
        return None  # a replacement by id: LangGraph's rules
    return MessageList([*left, *right], left.ids.union(ids))


def add_messages(left: Any, right: Any) -> Any:
    """LangGraph's `add_messages`: the same result, at a cost that does not grow with `left`."""
    if (
        type(left) is MessageList
        and len(left.ids) == len(left)  # not edited in place since it was made
        and type(right) is list
        and right
        and (merged := _appended(left, right)) is not None
    ):
        return merged
    out: Any = langgraph_add_messages(left, right)
    ids = frozenset(str(m.id) for m in out)
    return MessageList(out, ids) if len(ids) == len(out) else out
