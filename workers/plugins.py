"""Plugins: the tools, agents, policy folder and systems of record a worker runs, from the
packages installed beside Countersign. Nothing is added by editing Countersign.

A package declares a plugin under one name in its pyproject.toml (`countersign init` writes
this for you; Countersign's own demo is the plugin `demo`):

    [project.entry-points."countersign.tools"]
    acme = "acme.tools"              # a module: importing it registers its @guarded_tools
    [project.entry-points."countersign.agents"]
    acme = "acme.plugin:AGENTS"      # a list of AgentSpec, or the Path of an agents file
    [project.entry-points."countersign.policies"]
    acme = "acme.plugin:POLICY"      # the Path of a policy folder
    [project.entry-points."countersign.systems"]
    acme = "acme.plugin:SYSTEMS"     # {"tickets": {"url": "http://...", "credential": "..."}}
    [project.entry-points."countersign.graphs"]
    acme = "acme.graphs"             # a module: importing it registers its @guarded_graphs
    [project.entry-points."countersign.directories"]
    acme = "acme.plugin:DIRECTORY"   # the Path of an identity directory file (directory.toml)

A module named in COUNTERSIGN_PLUGINS is a plugin too: importing it registers its tools (and
graphs), and it may define AGENTS, POLICY, SYSTEMS, DIRECTORY and GRAPHS ({name: build
function}) as above. COUNTERSIGN_PLUGINS="demo,acme" loads only those; unset, every installed
plugin is loaded. COUNTERSIGN_AGENTS_FILE names an agents file of your project. An agents file
holds `[[agent]]` tables with AgentSpec's fields.

A plugin's policy folder is the policy unless COUNTERSIGN_POLICY_PATH says otherwise (two
plugins with one each must be told apart with it). A plugin's systems are defaults: a system
configured in the environment keeps them and overrides the fields it sets. A plugin's
directory (its people and integrations: keys, email, Slack user) joins the deployment's
directory file: one name in both must be one identity, or the start stops
(guardrails/identity.py). On a developer machine (`countersign dev`, the tests) everyone the
policy names who has no key gets a development key (workers/identities.py).

Anything wrong (a module that fails to import, a tool or agent another plugin already
declared, a malformed agents file) stops the start in one line naming the plugin.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from countersign.activities.agent_specs import AgentSpec, AgentSpecError, register_agents
from countersign.guardrails.errors import describe
from countersign.guardrails.identity import IdentityError, load_directory
from countersign.guardrails.policy import DEFAULT_POLICY_PATH
from countersign.settings import Settings, SystemSettings

KINDS = ("tools", "agents", "policies", "systems", "graphs", "directories")


class PluginError(Exception):
    """A plugin cannot be loaded; the message names the plugin and what to fix."""


@dataclass
class Plugin:
    """One plugin: what it declares, by kind ("tools", ...), as `module` or `module:attr`.
    A module named in COUNTERSIGN_PLUGINS declares everything under kind "module"."""

    name: str
    parts: dict[str, str] = field(default_factory=dict)


@dataclass
class Loaded:
    """What the loaded plugins add besides their tools and agents (registered as they load)."""

    plugins: list[str] = field(default_factory=list)
    policies: dict[str, Path] = field(default_factory=dict)  # plugin -> policy folder
    systems: dict[str, SystemSettings] = field(default_factory=dict)
    directories: dict[str, Path] = field(default_factory=dict)  # plugin -> directory file


def installed() -> dict[str, Plugin]:
    """Every plugin the installed distributions declare, by name."""
    found: dict[str, Plugin] = {}
    for kind in KINDS:
        for ep in entry_points(group=f"countersign.{kind}"):
            found.setdefault(ep.name, Plugin(ep.name)).parts[kind] = ep.value
    return found


def select(names: list[str] | None) -> list[Plugin]:
    """The plugins to load: those named (installed plugin names or module paths), or every
    installed one."""
    available = installed()
    if names is None:
        return [available[n] for n in sorted(available)]
    chosen = []
    for name in names:
        if name in available:
            chosen.append(available[name])
        elif all(part.isidentifier() for part in name.split(".")):
            chosen.append(Plugin(name, {"module": name}))
        else:
            raise PluginError(
                f"COUNTERSIGN_PLUGINS: {name!r} is neither an installed plugin "
                f"(installed: {', '.join(sorted(available)) or 'none'}) nor a module path"
            )
    return chosen


def load(names: list[str] | None) -> Loaded:
    """Import the selected plugins: their tools and agents are registered; their policy
    folders and systems are returned."""
    loaded = Loaded()
    for plugin in select(names):
        _load_one(plugin, loaded)
        loaded.plugins.append(plugin.name)
    return loaded


def directories_only(settings: Settings) -> Settings:
    """The settings with the selected plugins' directory files, importing only what declares
    them (the gateway verifies people; it runs no tools)."""
    loaded = Loaded()
    for plugin in select(settings.plugins):
        target = plugin.parts.get("directories")
        if "module" in plugin.parts:
            _load_one(plugin, loaded)
        elif target is not None:
            try:
                value = resolve(target)
            except Exception as e:
                first = (str(e).splitlines() or [""])[0]
                raise PluginError(
                    f"plugin {plugin.name!r}: cannot import {target} (entry point "
                    f"countersign.directories): {type(e).__name__}: {first}"
                ) from None
            try:
                loaded.directories[plugin.name] = _directory(value, target)
            except (PluginError, IdentityError) as e:
                raise PluginError(f"plugin {plugin.name!r}: {e}") from None
    return _with_directories(settings, loaded, {})


def _load_one(plugin: Plugin, loaded: Loaded) -> None:
    # Imported here: LangGraph (the graph registry's) is slow to import, and the gateway, which
    # reads only the plugins' directories (directories_only), never needs it.
    from countersign.activities.tools import ToolDeclarationError
    from countersign.agents.graph_registry import GraphRegistryError

    def fail(message: str) -> PluginError:
        return PluginError(f"plugin {plugin.name!r}: {message}")

    for kind, target in plugin.parts.items():
        where = "" if kind == "module" else f" (entry point countersign.{kind} = {target!r})"
        try:
            value = resolve(target)
        except ModuleNotFoundError as e:
            raise fail(f"cannot import {target}{where}: {e}") from None
        except (ToolDeclarationError, AgentSpecError, GraphRegistryError) as e:
            raise fail(str(e)) from None
        except ValidationError as e:  # e.g. an AgentSpec declared wrongly in the module
            raise fail(f"importing {target}{where} failed: {e.title}: {describe(e)}") from None
        except Exception as e:
            first = (str(e).splitlines() or [""])[0]
            raise fail(f"importing {target}{where} failed: {type(e).__name__}: {first}") from None
        try:
            if kind == "module":
                _declarations(plugin.name, value, loaded)
            elif kind == "agents":
                register_agents(agent_specs(value, target), plugin.name)
            elif kind == "policies":
                loaded.policies[plugin.name] = _folder(value, target)
            elif kind == "systems":
                _add_systems(plugin.name, value, target, loaded)
            elif kind == "graphs" and isinstance(value, dict):
                _register_graphs(value)
            elif kind == "directories":
                loaded.directories[plugin.name] = _directory(value, target)
        except (AgentSpecError, PluginError, GraphRegistryError, IdentityError) as e:
            raise fail(str(e)) from None


def _declarations(name: str, module: Any, loaded: Loaded) -> None:
    """What a module plugin defines besides its tools."""
    if hasattr(module, "AGENTS"):
        register_agents(agent_specs(module.AGENTS, f"{module.__name__}.AGENTS"), name)
    if hasattr(module, "POLICY"):
        loaded.policies[name] = _folder(module.POLICY, f"{module.__name__}.POLICY")
    if hasattr(module, "SYSTEMS"):
        _add_systems(name, module.SYSTEMS, f"{module.__name__}.SYSTEMS", loaded)
    if hasattr(module, "GRAPHS"):
        _register_graphs(module.GRAPHS)
    if hasattr(module, "DIRECTORY"):
        loaded.directories[name] = _directory(module.DIRECTORY, f"{module.__name__}.DIRECTORY")


def _register_graphs(graphs: dict[str, Any]) -> None:
    """A plugin's {name: build function} (a graphs module registers its own as it loads)."""
    for graph_name, builder in graphs.items():
        from countersign.agents.graph_registry import register_graph

        register_graph(graph_name, builder)


def resolve(target: str) -> Any:
    """`module` or `module:attr.attr`, imported."""
    module_name, _, attrs = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for attr in filter(None, attrs.split(".")):
        value = getattr(value, attr)
    return value


def agent_specs(value: Any, where: str) -> list[AgentSpec]:
    """Agents from a list or dict of AgentSpec, a module with AGENTS, or an agents file."""
    if isinstance(value, Path):
        return read_agents_file(value)
    if hasattr(value, "AGENTS") and not isinstance(value, list | dict):
        value = value.AGENTS
    specs = list(value.values()) if isinstance(value, dict) else value
    if not isinstance(specs, list | tuple) or not all(isinstance(s, AgentSpec) for s in specs):
        raise PluginError(
            f"{where} must be a list of AgentSpec, a module defining AGENTS, or the Path of an "
            f"agents file (got {type(value).__name__})"
        )
    return list(specs)


class AgentsFile(BaseModel):
    """An agents file: `[[agent]]` tables, each an AgentSpec."""

    model_config = ConfigDict(extra="forbid")

    agent: list[AgentSpec] = []


def read_agents_file(path: Path) -> list[AgentSpec]:
    """The agents an agents file declares; AgentSpecError naming the file and field."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AgentSpecError(f"{path}: agents file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise AgentSpecError(f"{path}: not valid TOML: {e}") from None
    try:
        return AgentsFile.model_validate(raw).agent
    except ValidationError as e:
        raise AgentSpecError(f"{path}: {describe(e, '(top level)')}") from None


def _folder(value: Any, where: str) -> Path:
    if not isinstance(value, str | Path) or not Path(value).is_dir():
        raise PluginError(f"{where} must be the path of a policy folder (got {value!r})")
    return Path(value)


def _directory(value: Any, where: str) -> Path:
    """A plugin's directory file, read now so a malformed entry stops the start here."""
    if not isinstance(value, str | Path) or not Path(value).is_file():
        raise PluginError(f"{where} must be the path of an identity directory file (got {value!r})")
    load_directory(Path(value))
    return Path(value)


def _add_systems(plugin: str, value: Any, where: str, loaded: Loaded) -> None:
    if not isinstance(value, dict):
        raise PluginError(f"{where} must be a dict of system name -> settings")
    for name, conf in value.items():
        if name in loaded.systems:
            raise PluginError(f"system {name!r} is already declared by another plugin")
        try:
            system = SystemSettings.model_validate(conf)
        except ValidationError as e:
            raise PluginError(f"{where}[{name!r}]: {describe(e)}") from None
        loaded.systems[name] = (
            system if system.credential else system.model_copy(update={"credential": name})
        )


def apply_plugins(settings: Settings) -> Settings:
    """Load the plugins the settings select and the project's agents file; return the settings
    with the plugins' systems, policy folder and directory files."""
    loaded = load(settings.plugins)
    if settings.agents_file is not None:
        register_agents(read_agents_file(settings.agents_file), str(settings.agents_file))
    update: dict[str, Any] = {}
    if loaded.systems:
        systems = dict(loaded.systems)
        for name, conf in settings.systems.items():
            default = systems.get(name)
            # Configured in the environment: its fields win, the plugin's fill the rest (a
            # credential equal to the system name is the settings' default, not a choice).
            given = {
                k: getattr(conf, k)
                for k in conf.model_fields_set
                if not (k == "credential" and conf.credential == name and default)
            }
            systems[name] = default.model_copy(update=given) if default else conf
        update["systems"] = systems
    if loaded.policies and settings.policy_path == DEFAULT_POLICY_PATH:
        if len(loaded.policies) > 1:
            raise PluginError(
                f"plugins {' and '.join(sorted(loaded.policies))} each declare a policy folder: "
                "choose one with COUNTERSIGN_POLICY_PATH"
            )
        update["policy_path"] = next(iter(loaded.policies.values()))
    return _with_directories(settings, loaded, update)


def _with_directories(settings: Settings, loaded: Loaded, update: dict[str, Any]) -> Settings:
    known = {p.resolve() for p in settings.extra_directories}
    directories = [p for p in loaded.directories.values() if p.resolve() not in known]
    if directories:
        update["extra_directories"] = [*settings.extra_directories, *directories]
    return settings.model_copy(update=update) if update else settings
