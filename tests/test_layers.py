"""Layers read top-down: each imports only the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top. Configuration and credentials (countersign/settings.py, credentials.py) sit on
# guardrails (the policy's default folder, the redaction of secrets) and under everything else;
# the command line runs everything, the demo scenario included.
LAYERS = ["guardrails", "config", "activities", "agents", "workers", "demo", "cli"]
CONFIG = {"settings", "credentials"}
CLI = {"workers/cli.py", "workers/__main__.py"}
# Imports still against the order: (importing file, layer it reaches up to). None remain: a new
# one fails the test (move what it needs down a layer, or pass it in).
KNOWN: set[tuple[str, str]] = set()


def _layer(module: str) -> str | None:
    """The layer of a module named inside the package (`countersign.` stripped)."""
    parts = module.removeprefix("countersign.").split(".")
    if parts[0] in CONFIG:
        return "config"
    if "/".join(parts[:2]) + ".py" in CLI:
        return "cli"
    return parts[0] if parts[0] in LAYERS else None


def _own_layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.as_posix() in CLI:
        return "cli"
    return "config" if rel.parts[0] == "countersign" else rel.parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _upward_imports() -> set[tuple[str, str]]:
    files = [ROOT / "countersign" / f"{name}.py" for name in sorted(CONFIG)]
    files += [
        p for top in LAYERS if (ROOT / top).is_dir() for p in sorted((ROOT / top).rglob("*.py"))
    ]
    found = set()
    for path in files:
        own = LAYERS.index(_own_layer(path))
        for module in _imports(path):
            layer = _layer(module)
            if layer is not None and LAYERS.index(layer) > own:
                found.add((str(path.relative_to(ROOT)), layer))
    return found


def test_each_layer_imports_only_the_ones_below_it() -> None:
    new = _upward_imports() - KNOWN
    assert new == set(), f"imports against the layers {LAYERS} (bottom first): {sorted(new)}"


def test_the_known_exceptions_still_exist() -> None:
    # Fixed ones leave the list, so it stays the record of what remains.
    assert KNOWN - _upward_imports() == set()
