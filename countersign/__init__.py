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
    "guarded_tool": "countersign.activities.tools",
    "ToolContext": "countersign.activities.tools",
    "Undo": "countersign.activities.tools",
    "Personal": "countersign.activities.tools",
    "Secret": "countersign.activities.tools",
    # agents
    "AgentSpec": "countersign.activities.agent_specs",
    "ContextWindow": "countersign.activities.agent_specs",
    # systems of record
    "SystemSettings": "countersign.settings",
    # guarded graph parts: your own LangGraph graphs, every tool call guarded
    "GuardedState": "countersign.agents.guarded",
    "call_model": "countersign.agents.guarded",
    "create_guarded_agent": "countersign.agents.guarded",
    "guarded_tools": "countersign.agents.guarded",
    "in_workflow": "countersign.agents.guarded",
    "stop": "countersign.agents.guarded",
    "tools_condition": "countersign.agents.guarded",
    "within_limits": "countersign.agents.guarded",
    "GraphRegistryError": "countersign.agents.graph_registry",
    "guarded_graph": "countersign.agents.graph_registry",
    "register_graph": "countersign.agents.graph_registry",
    # errors a developer meets, each with a one-line message saying what to fix
    "ToolDeclarationError": "countersign.activities.tools",
    "AgentSpecError": "countersign.activities.agent_specs",
    "PolicyError": "countersign.guardrails.policy",
    "PluginError": "countersign.workers.plugins",
    "SettingsError": "countersign.settings",
    "CredentialError": "countersign.credentials",
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
    from countersign.activities.agent_specs import AgentSpec, AgentSpecError, ContextWindow
    from countersign.activities.tools import (
        Personal,
        Secret,
        ToolContext,
        ToolDeclarationError,
        Undo,
        guarded_tool,
    )
    from countersign.agents.graph_registry import GraphRegistryError, guarded_graph, register_graph
    from countersign.agents.guarded import (
        GuardedState,
        call_model,
        create_guarded_agent,
        guarded_tools,
        in_workflow,
        stop,
        tools_condition,
        within_limits,
    )
    from countersign.credentials import CredentialError
    from countersign.guardrails.policy import PolicyError
    from countersign.settings import SettingsError, SystemSettings
    from countersign.workers.plugins import PluginError


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
