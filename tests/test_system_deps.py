"""`make test` checks the system packages the suite drives before it runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "system-deps"


def test_system_deps_pass_on_this_machine() -> None:
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_missing_system_packages_are_named_in_one_line(tmp_path: Path) -> None:
    # A PATH with the shell's own tools but no chromium, docker-compose, docker or apt-get.
    for tool in ("bash", "ls", "id"):
        (tmp_path / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(tmp_path)},
        executable=str(tmp_path / "bash"),
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert "system packages missing for the tests: chromium docker-compose" in lines[0]
    assert "apt-get install chromium docker-compose" in lines[0]
