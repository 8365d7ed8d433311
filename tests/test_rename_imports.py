"""scripts/rename-imports: what code written against the bare folder names becomes, and that a
second run changes nothing."""

# rename-imports: leave this file (its examples hold the old names on purpose)

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rename-imports"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("rename_imports", str(SCRIPT))
    spec = importlib.util.spec_from_loader("rename_imports", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


BEFORE = '''\
"""Run `python -m workers worker` or `python -m demo.shop`."""
import sys
import workers.worker  # noqa: F401
import activities.crm
from agents import search_attributes as sa
from agents.state import (
    RunState,
)
from workers.settings import Settings
from workers.credentials import get_secret

with passthrough():
    from guardrails.policy import decide

BACKEND = "workers.credentials.SecretFiles"
AGENTS_FILE = "agents.toml"
FIELD = {"agents": [], "workers": 3}


def main(monkeypatch, workers, demo):
    # see workers.settings, agents.state and `python -m workers dev`
    monkeypatch.setattr("activities.shop.lookup", None)
    importlib.import_module("activities.shop")
    argv = [sys.executable, "-m", "workers", "worker"]
    argv += [sys.executable, "-m",
             "demo.model_server"]
    workers.append(demo.stdout)
    text = f"{demo.stdout} from activities.shop"
    return activities.crm.REFUND, sa, agents.__file__
'''

AFTER = '''\
"""Run `python -m countersign.workers worker` or `python -m countersign.demo.shop`."""
import sys
import countersign.workers.worker  # noqa: F401
import countersign.activities.crm
from countersign.agents import search_attributes as sa
from countersign.agents.state import (
    RunState,
)
from countersign.settings import Settings
from countersign.credentials import get_secret

with passthrough():
    from countersign.guardrails.policy import decide

BACKEND = "countersign.credentials.SecretFiles"
AGENTS_FILE = "agents.toml"
FIELD = {"agents": [], "workers": 3}


def main(monkeypatch, workers, demo):
    # see countersign.settings, agents.state and `python -m countersign.workers dev`
    monkeypatch.setattr("countersign.activities.shop.lookup", None)
    importlib.import_module("countersign.activities.shop")
    argv = [sys.executable, "-m", "countersign.workers", "worker"]
    argv += [sys.executable, "-m",
             "countersign.demo.model_server"]
    workers.append(demo.stdout)
    text = f"{demo.stdout} from countersign.activities.shop"
    return countersign.activities.crm.REFUND, sa, agents.__file__
'''


def test_python_imports_strings_and_commands_are_renamed_and_code_names_kept(
    script: ModuleType,
) -> None:
    assert script.rewrite_python(BEFORE) == AFTER


def test_a_second_run_changes_nothing(script: ModuleType) -> None:
    assert script.rewrite_python(AFTER) == AFTER
    text = script.rewrite_text(CONFIG_BEFORE)
    assert script.rewrite_text(text) == text


CONFIG_BEFORE = """\
[project.scripts]
countersign = "workers.cli:main"
[project.entry-points."countersign.tools"]
demo = "demo.shop"
    entrypoint: ["python", "-m", "demo.shop"]
    COUNTERSIGN_KEYRING_BACKEND: workers.credentials.SecretFiles
	$(BIN)/python -m workers worker
from activities.tools import guarded_tool
from agents import specs
see `workers/settings.py`, `agents/run.py`, https://example.com/workers.html, two workers.
"""

CONFIG_AFTER = """\
[project.scripts]
countersign = "countersign.workers.cli:main"
[project.entry-points."countersign.tools"]
demo = "countersign.demo.shop"
    entrypoint: ["python", "-m", "countersign.demo.shop"]
    COUNTERSIGN_KEYRING_BACKEND: countersign.credentials.SecretFiles
	$(BIN)/python -m countersign.workers worker
from countersign.activities.tools import guarded_tool
from countersign.agents import specs
see `countersign/settings.py`, `agents/run.py`, https://example.com/workers.html, two workers.
"""


def test_docs_and_configuration_are_renamed(script: ModuleType) -> None:
    assert script.rewrite_text(CONFIG_BEFORE) == CONFIG_AFTER
