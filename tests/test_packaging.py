"""Our top-level packages must be ours: popular distributions claim the same names."""

from __future__ import annotations

import importlib
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ["workers", "activities", "agents", "guardrails"]


def test_no_installed_distribution_provides_our_package_names() -> None:
    clashes = {}
    for dist in distributions():
        if dist.metadata["Name"] == "countersign":
            continue
        tops = (dist.read_text("top_level.txt") or "").split()
        for name in OURS:
            if name in tops:
                clashes[name] = dist.metadata["Name"]
    assert clashes == {}


def test_our_packages_resolve_to_this_repository() -> None:
    for name in OURS:
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == ROOT / name
