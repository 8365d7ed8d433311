"""Countersign's public API: import what you build on from here.

    from countersign import AgentSpec, ToolContext, guarded_tool

Every name is imported on first use (PEP 562), so `import countersign` costs nothing and
pulls nothing into a Temporal workflow sandbox. `countersign.testing` holds the helpers a
project's tests need (a real dev server, the scripted model, a worker with your plugins).

`countersign` is the one import name Countersign claims. The repository keeps the card's
folders (`agents/`, `activities/`, `guardrails/`, `workers/`, `demo/`) at its root; they are
this package's subpackages (`countersign.agents`, ...), linked here, so nothing installs under
their bare names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # tools
    "guarded_tool": "activities.tools",
    "ToolContext": "activities.tools",
    "Undo": "activities.tools",
    "Personal": "activities.tools",
    "Secret": "activities.tools",
    # agents
    "AgentSpec": "agents.specs",
    "ContextWindow": "agents.specs",
    # systems of record
    "SystemSettings": "workers.settings",
    # guarded graph parts: your own LangGraph graphs, every tool call guarded
    "GuardedState": "agents.guarded",
    "call_model": "agents.guarded",
    "create_guarded_agent": "agents.guarded",
    "guarded_tools": "agents.guarded",
    "in_workflow": "agents.guarded",
    "stop": "agents.guarded",
    "tools_condition": "agents.guarded",
    "within_limits": "agents.guarded",
    "GraphRegistryError": "agents.graph_registry",
    "guarded_graph": "agents.graph_registry",
    "register_graph": "agents.graph_registry",
    # errors a developer meets, each with a one-line message saying what to fix
    "ToolDeclarationError": "activities.tools",
    "AgentSpecError": "agents.specs",
    "PolicyError": "guardrails.policy",
    "PluginError": "workers.plugins",
    "SettingsError": "workers.settings",
    "CredentialError": "workers.credentials",
}
_SUBMODULES = ("testing",)

__all__ = [
    "AgentSpec",
    "AgentSpecError",
    "ContextWindow",
    "CredentialError",
    "GraphRegistryError",
    "GuardedState",
    "Personal",
    "PluginError",
    "PolicyError",
    "Secret",
    "SettingsError",
    "SystemSettings",
    "ToolContext",
    "ToolDeclarationError",
    "Undo",
    "call_model",
    "create_guarded_agent",
    "guarded_graph",
    "guarded_tool",
    "guarded_tools",
    "in_workflow",
    "register_graph",
    "stop",
    "testing",
    "tools_condition",
    "within_limits",
]

if TYPE_CHECKING:
    import countersign.testing as testing
    from activities.tools import (
        Personal,
        Secret,
        ToolContext,
        ToolDeclarationError,
        Undo,
        guarded_tool,
    )
    from agents.graph_registry import GraphRegistryError, guarded_graph, register_graph
    from agents.guarded import (
        GuardedState,
        call_model,
        create_guarded_agent,
        guarded_tools,
        in_workflow,
        stop,
        tools_condition,
        within_limits,
    )
    from agents.specs import AgentSpec, AgentSpecError, ContextWindow
    from guardrails.policy import PolicyError
    from workers.credentials import CredentialError
    from workers.plugins import PluginError
    from workers.settings import SettingsError, SystemSettings


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'countersign' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
