"""The graphs AgentRun can host, by name: an agent names one (`AgentSpec.graph`).

A graph is registered as a function that builds a fresh, uncompiled `StateGraph` (the
LangGraph plugin edits the graph it is given, so every worker builds its own):

    from agents.graph_registry import guarded_graph

    @guarded_graph("planner-executor")
    def build() -> StateGraph: ...

or `register_graph("planner-executor", build)`. A plugin's module registers its graphs as it
is imported (workers/plugins.py: entry point `countersign.graphs`, or any module the plugin
loads). The worker builds every registered graph at start-up and checks that each node runs
in the workflow (see agents/guarded.py: an activity node would copy the conversation into
history), and that every agent's graph is registered (activities.agent_specs.check_agent_graphs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.graph import StateGraph

from countersign.activities.agent_specs import AgentSpecError
from countersign.agents.graph import GRAPH_NAME, build_graph

GraphBuilder = Callable[[], StateGraph[Any, Any, Any, Any]]

_BUILDERS: dict[str, GraphBuilder] = {}

# Where a worker's StateGraph keeps its compiled graph (see `compiled`).
_COMPILED = "_countersign_compiled"


class GraphRegistryError(AgentSpecError):
    """A graph is registered or built wrongly (raised at registration or worker start-up);
    an agent's declaration error, as agents are their graphs."""


def register_graph(name: str, builder: GraphBuilder) -> GraphBuilder:
    """Make the graph `builder` builds available to agents as `name`; returns `builder`."""
    if not isinstance(name, str) or not name.strip():
        raise GraphRegistryError(f"graph name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise GraphRegistryError(f"graph {name!r}: {builder!r} is not a function building it")
    existing = _BUILDERS.get(name)
    if existing is not None and existing is not builder:
        raise GraphRegistryError(
            f"graph {name!r} is already registered by {_where(existing)}; "
            f"{_where(builder)} cannot take the name"
        )
    _BUILDERS[name] = builder
    return builder


def compiled(builder: StateGraph[Any, Any, Any, Any]) -> Any:
    """The graph `builder` compiles to, compiled once per worker and kept on it: compiling
    takes milliseconds and ~14 KB, on every run and every replay, and a compiled graph holds
    no run's state (each invocation makes its own loop), so the worker's runs share one."""
    app = builder.__dict__.get(_COMPILED)
    if app is None:
        app = builder.compile()
        setattr(builder, _COMPILED, app)
    return app


def guarded_graph(name: str) -> Callable[[GraphBuilder], GraphBuilder]:
    """Decorator form of `register_graph`."""
    return lambda builder: register_graph(name, builder)


def unregister_graph(name: str) -> None:
    """Forget a graph (for tests that register their own)."""
    _BUILDERS.pop(name, None)


def graph_names() -> list[str]:
    return sorted(_BUILDERS)


def build_graphs() -> dict[str, StateGraph[Any, Any, Any, Any]]:
    """A fresh graph of every registered name, each checked to run its nodes in the workflow."""
    graphs = {}
    for name, builder in _BUILDERS.items():
        g = builder()
        if not isinstance(g, StateGraph):
            raise GraphRegistryError(
                f"graph {name!r}: {_where(builder)} returned {type(g).__name__}; it must "
                "return the StateGraph builder, not compile it"
            )
        for node_name, node in g.nodes.items():
            where = (node.metadata or {}).get("execute_in")
            if where != "workflow":
                raise GraphRegistryError(
                    f"graph {name!r}: node {node_name!r} has execute_in={where!r}; every node "
                    "must run in the workflow (metadata=in_workflow(), agents/guarded.py): an "
                    "activity node gets the whole graph state, conversation included, as its "
                    "input. Call the activities a node needs from inside it."
                )
        graphs[name] = g
    return graphs


def _where(builder: GraphBuilder) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', builder)}"


register_graph(GRAPH_NAME, build_graph)
