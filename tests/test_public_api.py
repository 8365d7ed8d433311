"""The public API: one distinctive name, a complete `__all__`, and nothing imported until used."""

from __future__ import annotations

import subprocess
import sys

import countersign


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in countersign.__all__:
        assert getattr(countersign, name) is not None, name
    exported = {*countersign._EXPORTS, *countersign._SUBMODULES}
    assert exported == set(countersign.__all__)


def test_importing_countersign_imports_nothing_until_a_name_is_used() -> None:
    probe = (
        "import sys; import countersign; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('temporalio', 'langgraph', 'pydantic', 'httpx', 'activities', 'agents', "
        "'guardrails', 'workers', 'demo')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        countersign.guarded_toll  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as e:
        assert "has no attribute 'guarded_toll'" in str(e)
    else:
        raise AssertionError("no AttributeError")
