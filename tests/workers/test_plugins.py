"""Plugins bring tools, agents, systems and policy folders from other packages; whatever is
wrong with one stops the worker's start in one line naming the plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from countersign.activities.agent_specs import AGENTS, AgentSpecError
from countersign.demo.plugin import AGENTS as DEMO_AGENTS
from countersign.settings import Settings, load_settings
from countersign.workers.plugins import PluginError, apply_plugins, installed, read_agents_file


def worker(settings: Settings, modules: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`countersign worker` with `modules` on the path; the checks come before Temporal."""
    return subprocess.run(
        [sys.executable, "-m", "countersign.workers", "worker"],
        env={
            **os.environ,
            "PYTHONPATH": str(modules),
            "COUNTERSIGN_STATE_DIR": str(settings.state_dir),
            "COUNTERSIGN_SYSTEMS__SHOP__URL": settings.systems["shop"].url,
            "COUNTERSIGN_REQUIRE_POLICY_ACTIVATION": "false",
            "COUNTERSIGN_TEMPORAL_ADDRESS": "127.0.0.1:9",  # never reached
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    return done.stderr.removeprefix("countersign: ").rstrip("\n")


def module(folder: Path, name: str, source: str) -> Path:
    (folder / f"{name}.py").write_text(dedent(source))
    return folder


def test_the_demo_is_an_installed_plugin_like_any_other() -> None:
    demo = installed()["demo"]
    assert demo.parts == {
        "tools": "countersign.demo.plugin",
        "agents": "countersign.demo.plugin:AGENTS",
        "directories": "countersign.demo:DIRECTORY",
    }
    assert all(AGENTS[spec.name] == spec for spec in DEMO_AGENTS)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "import billing_sdk\n",
            "plugin 'acme_tools': cannot import acme_tools: No module named 'billing_sdk'",
        ),
        (
            "raise RuntimeError('no config\\nsecond line')\n",
            "plugin 'acme_tools': importing acme_tools failed: RuntimeError: no config",
        ),
        (
            "from countersign import AgentSpec\nAGENTS = [AgentSpec(name='x', scopes=[])]\n",
            "plugin 'acme_tools': importing acme_tools failed: AgentSpec: description: Field "
            "required; system_prompt: Field required",
        ),
    ],
)
def test_a_plugin_that_fails_to_import_stops_the_worker_in_one_line(
    settings: Settings, tmp_path: Path, source: str, expected: str
) -> None:
    module(tmp_path, "acme_tools", source)
    done = worker(settings, tmp_path, COUNTERSIGN_PLUGINS="demo,acme_tools")
    assert one_line(done) == expected


def test_a_plugin_declaring_a_tool_another_declared_stops_the_worker(
    settings: Settings, tmp_path: Path
) -> None:
    module(
        tmp_path,
        "acme_tools",
        """
        from pydantic import BaseModel
        from countersign import ToolContext, guarded_tool

        class Args(BaseModel):
            order_id: str

        @guarded_tool("orders.lookup", scope="orders:read", read_only=True)
        async def lookup(args: Args, ctx: ToolContext) -> Args:
            '''Look up an order, again.'''
            return args
        """,
    )
    done = worker(settings, tmp_path, COUNTERSIGN_PLUGINS="demo,acme_tools")
    assert one_line(done) == (
        "plugin 'acme_tools': tool orders.lookup (acme_tools.lookup): a tool named orders.lookup "
        "is already registered (countersign.activities.shop.lookup_order)"
    )


def test_a_plugin_declaring_an_agent_another_declared_stops_the_worker(
    settings: Settings, tmp_path: Path
) -> None:
    module(
        tmp_path,
        "acme_agents",
        """
        from countersign import AgentSpec

        AGENTS = [AgentSpec(name="support-refunds", description="mine", system_prompt="x",
                            scopes=["orders:read"])]
        """,
    )
    done = worker(settings, tmp_path, COUNTERSIGN_PLUGINS="demo,acme_agents")
    assert one_line(done) == (
        "plugin 'acme_agents': agent 'support-refunds' is already declared by plugin 'demo'"
    )


def test_an_unknown_plugin_name_stops_the_worker(settings: Settings, tmp_path: Path) -> None:
    done = worker(settings, tmp_path, COUNTERSIGN_PLUGINS="demo,acme-tools")
    assert one_line(done).startswith(
        "COUNTERSIGN_PLUGINS: 'acme-tools' is neither an installed plugin (installed: "
    )


AGENT = '[[agent]]\nname = "a"\ndescription = "d"\nsystem_prompt = "p"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (AGENT, "agent.0.scopes: Field required"),
        (AGENT + 'scopes = []\nscope = "x"\n', "agent.0.scope: Extra inputs are not permitted"),
        (
            AGENT + 'scopes = []\nsubject = { order_id = "^[A-Z" }\n',
            "agent.0.subject: Value error, order_id: '^[A-Z' is not a regular expression: "
            "unterminated character set at position 1",
        ),
        ("[[agent]\n", "not valid TOML: "),
    ],
)
def test_an_agents_file_error_names_the_file_and_field(
    settings: Settings, tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    with pytest.raises(AgentSpecError) as caught:
        read_agents_file(path)
    assert str(caught.value).startswith(f"{path}: {expected}")
    done = worker(settings, tmp_path, COUNTERSIGN_AGENTS_FILE=str(path))
    assert one_line(done).startswith(f"{path}: {expected}")


def test_an_agent_whose_graph_is_not_hosted_stops_the_worker(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(
        '[[agent]]\nname = "planner"\ndescription = "d"\nsystem_prompt = "p"\n'
        'scopes = ["orders:read"]\ngraph = "plan-and-execute"\n'
    )
    done = worker(settings, tmp_path, COUNTERSIGN_AGENTS_FILE=str(path))
    assert one_line(done) == (
        "agent planner: graph 'plan-and-execute' is not hosted by this worker "
        "(graphs: guarded-loop, planner-executor)"
    )


def test_a_plugins_systems_are_defaults_that_keep_the_shop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module(
        tmp_path,
        "acme_systems",
        """
        SYSTEMS = {"billing": {"url": "http://127.0.0.1:8120", "credential": "acme-billing"}}
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("COUNTERSIGN_PLUGINS", "demo,acme_systems")
    systems = apply_plugins(load_settings()).systems
    assert sorted(systems) == ["billing", "shop"]
    assert systems["billing"].credential == "acme-billing"
    # Configured in the environment: its URL wins, the plugin's credential stays.
    monkeypatch.setenv("COUNTERSIGN_SYSTEMS__BILLING__URL", "http://billing.internal")
    systems = apply_plugins(load_settings()).systems
    assert (systems["billing"].url, systems["billing"].credential) == (
        "http://billing.internal",
        "acme-billing",
    )
    assert systems["shop"].url == "http://127.0.0.1:8101"


def test_two_plugins_with_a_policy_folder_must_be_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("acme_one", "acme_two"):
        module(tmp_path, name, f"POLICY = {str(tmp_path)!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as caught:
        apply_plugins(Settings(plugins=["demo", "acme_one", "acme_two"]))
    assert str(caught.value) == (
        "plugins acme_one and acme_two each declare a policy folder: choose one with "
        "COUNTERSIGN_POLICY_PATH"
    )
    chosen = apply_plugins(Settings(plugins=["demo", "acme_one"]))
    assert chosen.policy_path == tmp_path


def test_a_plugin_graph_with_a_node_run_as_an_activity_stops_the_worker(
    settings: Settings, tmp_path: Path
) -> None:
    module(
        tmp_path,
        "acme_graphs",
        """
        from countersign import create_guarded_agent

        def build():
            g = create_guarded_agent()
            g.nodes["tools"].metadata = {"execute_in": "activity"}
            return g

        GRAPHS = {"leaky": build}
        """,
    )
    done = worker(settings, tmp_path, COUNTERSIGN_PLUGINS="demo,acme_graphs")
    assert one_line(done).startswith(
        "graph 'leaky': node 'tools' has execute_in='activity'; every node must run in the workflow"
    )
