"""A project of one's own adds a tool, an agent and policy rules with no change to
Countersign: `countersign init` creates it, it is installed as a separate package, and its own
tests pass on a real Temporal dev server with the scripted model."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.workers.test_startup_checks import countersign


def python_with_countersign(tmp_path: Path) -> str:
    """A Python that imports Countersign as a user's would, and installs into its own site.

    COUNTERSIGN_TEST_PYTHON: an interpreter with Countersign installed from a wheel (the
    packaging check). Otherwise a fresh venv that reaches this checkout's venv through a .pth
    (so the project's install lands in the fresh venv, not in the venv running this suite)."""
    given = os.environ.get("COUNTERSIGN_TEST_PYTHON")
    if given:
        return given
    venv = tmp_path / "venv"
    subprocess.run(
        [getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv],
        check=True,
    )
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(site) / "countersign-under-test.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    return str(python)


def run(*argv: str | Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_an_init_project_adds_a_tool_an_agent_and_rules_and_its_tests_pass(
    tmp_path: Path,
) -> None:
    created = countersign("init", "acme-helpdesk", "--dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    project = tmp_path / "acme-helpdesk"
    assert f"created {project}" in created.stdout

    python = python_with_countersign(tmp_path)
    installed = run(
        python,
        "-m",
        "pip",
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

    # The policy test through the real CLI finds the plugin's policy and tools.
    cases = run(
        python,
        "-c",
        "from countersign.workers.cli import main; main()",
        "policy",
        "test",
        cwd=tmp_path,
        timeout=60,
    )
    assert cases.returncode == 0, cases.stderr
    assert "acme_helpdesk/policy is valid" in cases.stdout and "every case holds" in cases.stdout

    tests = run("make", "test", f"PYTHON={python}", cwd=project, timeout=180)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "4 passed" in tests.stdout


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Acme", "project name 'Acme': use lowercase letters"),
        ("agents", "project name 'agents': agents is an import name Countersign uses"),
    ],
)
def test_init_refuses_a_bad_name_in_one_line(name: str, expected: str, tmp_path: Path) -> None:
    done = countersign("init", name, "--dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"countersign: {expected}") and done.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_init_never_overwrites_a_folder(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    done = countersign("init", "acme", "--dir", str(tmp_path))
    assert done.returncode == 2
    assert (
        done.stderr
        == f"countersign: {tmp_path / 'acme'} already exists: choose another name or folder\n"
    )
