"""One import name, `countersign`: the wheel claims nothing else, installs beside openai-agents
(which claims `agents`), and no code of ours imports the card's folders by their bare names."""

from __future__ import annotations

import ast
import importlib
import itertools
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from importlib.metadata import distribution, distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The card's folders: subpackages of `countersign`, never top-level names of their own.
FOLDERS = ["agents", "activities", "guardrails", "workers", "demo"]
# What a build needs from the checkout (the Dockerfile copies the same).
BUILD_INPUTS = ["pyproject.toml", "README.md", "countersign", *FOLDERS]
# Filled by `make` (.venv/bin/.installed): openai-agents and its dependencies, so the test
# installs them with no network.
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
# Python files of ours: the package (through the card's folders), tests, benchmarks.
OUR_CODE = ["countersign", *FOLDERS, "tests", "benchmarks"]


def _python_files() -> list[Path]:
    return sorted(p for top in OUR_CODE for p in (ROOT / top).rglob("*.py") if p.is_file())


def _bare(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in FOLDERS


def _names_a_module(dotted: str) -> bool:
    """`workers.cli`, not `agents.toml` (a file name)."""
    folder, first = dotted.split(".")[:2]
    moved = folder == "workers" and first in ("settings", "credentials")
    return moved or (ROOT / folder / f"{first}.py").is_file() or (ROOT / folder / first).is_dir()


def _bare_references(path: Path) -> list[str]:
    """Imports of a bare name, and strings that name a module by one (`python -m`, dotted
    paths for monkeypatch, importlib, entry points, keyring backends)."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _bare(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _bare(node.module):
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.List | ast.Tuple):
            items = node.elts
            for flag, value in itertools.pairwise(items):
                is_m = isinstance(flag, ast.Constant) and flag.value == "-m"
                if is_m and isinstance(value, ast.Constant) and _bare(str(value.value)):
                    found.append(f"-m {value.value}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.split(":")[0]
            dotted = "." in text and all(part.isidentifier() for part in text.split("."))
            if dotted and _bare(text) and _names_a_module(text):
                found.append(repr(node.value))
    return [f"{path.relative_to(ROOT)}:{ref}" for ref in found]


def test_no_code_names_a_folder_by_its_bare_name() -> None:
    # A module imported both as `agents.state` and `countersign.agents.state` is two modules:
    # two RunState classes, which pydantic and the workflow sandbox treat as different types.
    found = [ref for path in _python_files() for ref in _bare_references(path)]
    assert found == [], "run scripts/rename-imports:\n" + "\n".join(found)


def test_the_running_stack_imports_no_bare_name() -> None:
    # From the repo root, where the bare names would resolve: nothing must reach for them.
    probe = (
        "import sys\n"
        "import countersign.workers.cli, countersign.workers.worker, countersign.workers.gateway\n"
        "import countersign.workers.devstack, countersign.demo.scenario, tests.conftest\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FOLDERS!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_card_folders_are_countersign_subpackages_from_this_repository() -> None:
    for name in FOLDERS:
        module = importlib.import_module(f"countersign.{name}")
        assert Path(module.__file__).resolve().parent == ROOT / name


def test_installed_distributions_claim_countersign_only_for_us() -> None:
    ours = (distribution("countersign").read_text("top_level.txt") or "").split()
    assert ours in ([], ["countersign"])  # an editable install may list none
    others = [
        d.metadata["Name"]
        for d in distributions()
        if d.metadata["Name"] != "countersign"
        and "countersign" in (d.read_text("top_level.txt") or "").split()
    ]
    assert others == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, offline (setuptools from the dev extras)."""
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=_build_junk)
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src],
        check=True,
        capture_output=True,
    )
    return next(out.glob("countersign-*.whl"))


def _build_junk(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def test_the_wheel_claims_one_import_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tops = {n.split("/")[0] for n in names}
        top_level = z.read(next(n for n in names if n.endswith("/top_level.txt"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith("/entry_points.txt"))).decode()
    assert tops == {"countersign", "countersign-0.1.0.dist-info"}
    assert top_level.split() == ["countersign"]
    assert "countersign = countersign.workers.cli:main" in entry_points
    # Every folder's files, and the data the code reads beside them.
    for name in FOLDERS:
        assert f"countersign/{name}/__init__.py" in names
    assert "countersign/guardrails/policies/default/policy.toml" in names
    assert "countersign/guardrails/policies/default/refunds.cedar" in names
    assert "countersign/demo/scripts/refund.json" in names
    assert any(n.startswith("countersign/demo/knowledge/") and n.endswith(".md") for n in names)


@dataclass(frozen=True)
class WheelEnv:
    """A fresh venv holding openai-agents and Countersign's wheel, as a user's would."""

    python: Path
    site: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def wheel_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> WheelEnv:
    if not any(WHEELHOUSE.glob("openai_agents-*.whl")):
        pytest.fail(f"no openai-agents wheel in {WHEELHOUSE}: run `make .venv/bin/.installed`")
    venv = tmp_path_factory.mktemp("wheel-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    offline = ["install", "-q", "--no-compile", "--no-index", "--find-links", str(WHEELHOUSE)]
    subprocess.run([*pip, *offline, "openai-agents"], check=True, capture_output=True)
    subprocess.run([*pip, *offline, "--no-deps", str(wheel)], check=True, capture_output=True)
    # Countersign's own dependencies come from this environment, after the new one's packages
    # (a .pth adds a folder to the end of the path without running that folder's .pth hooks,
    # so the editable install of this checkout stays out).
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "zz-countersign-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("COUNTERSIGN_")
    }
    return WheelEnv(python, site, env)


def test_the_wheel_installs_beside_openai_agents(wheel_env: WheelEnv, tmp_path: Path) -> None:
    python, site, env = wheel_env.python, wheel_env.site, wheel_env.env
    probe = (
        "import importlib.util, sys\n"
        "import agents\n"
        "from agents import Agent, Runner\n"
        "import countersign\n"
        "from countersign.agents.run import AgentRun\n"
        "from countersign.activities.tools import guarded_tool\n"
        "print(agents.__file__)\n"
        "print(countersign.__file__)\n"
        "print([n for n in ('guardrails', 'activities', 'workers', 'demo')"
        " if importlib.util.find_spec(n)])\n"
    )
    out = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    agents_file, countersign_file, claimed = out.stdout.splitlines()
    assert Path(agents_file).is_relative_to(site)  # openai-agents' `agents`, not ours
    assert Path(countersign_file).is_relative_to(site)  # the wheel, not this checkout
    assert claimed == "[]"
    help = subprocess.run(
        [python.parent / "countersign", "--help"], cwd=tmp_path, env=env, capture_output=True
    )
    assert help.returncode == 0, help.stderr


def test_an_init_project_passes_its_tests_against_the_installed_wheel(
    wheel_env: WheelEnv, tmp_path: Path
) -> None:
    """`countersign init` from the wheel, the project installed beside it, and its own tests
    (a real dev server, the scripted model) green: no source checkout involved."""
    python, env = wheel_env.python, {**wheel_env.env, "PYTHONDONTWRITEBYTECODE": "1"}

    def run(*argv: str | Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    created = run(python.parent / "countersign", "init", "acme-desk", cwd=tmp_path, timeout=60)
    assert created.returncode == 0, created.stderr
    project = tmp_path / "acme-desk"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    installed = run(
        *pip,
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-e",
        project,
        cwd=tmp_path,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    where = run(
        python, "-c", "import countersign; print(countersign.__file__)", cwd=project, timeout=30
    )
    assert Path(where.stdout.strip()).is_relative_to(wheel_env.site), where.stdout
    tests = run("make", "test", f"PYTHON={python}", cwd=project, timeout=240)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "4 passed" in tests.stdout
