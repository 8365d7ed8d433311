"""The workflow sandbox workers and the replayer use (workers/sandbox.py): Temporal's own, with
its restrictions, answering the SDK's serialization-context lookups without re-entering it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from countersign.workers import sandbox
from countersign.workers.replay import load_histories, replay
from tests.histories.variants import AgentRunThatReadsTheClock

HISTORY = Path(__file__).parents[1] / "histories" / "approved.json"


async def test_the_sandbox_still_refuses_the_wall_clock() -> None:
    (report,) = await replay(load_histories([HISTORY]), workflows=[AgentRunThatReadsTheClock])
    assert not report.deterministic
    assert "datetime.datetime.now" in (report.divergence or ""), report.divergence


async def test_contexts_are_the_ones_the_stock_sandbox_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every lookup answered directly equals the stock sandbox's answer (asked inside it)."""
    asked: list[str] = []
    stock = sandbox._SandboxInstance
    direct_ser = sandbox._Instance.get_serialization_context
    direct_store = sandbox._Instance.get_external_store_context

    def ser(self: Any, info: Any) -> Any:
        got = direct_ser(self, info)
        assert got == stock.get_serialization_context(self, info)
        asked.append(type(got).__name__)
        return got

    def store(self: Any, info: Any) -> Any:
        got = direct_store(self, info)
        assert got == stock.get_external_store_context(self, info)
        return got

    monkeypatch.setattr(sandbox._Instance, "get_serialization_context", ser)
    monkeypatch.setattr(sandbox._Instance, "get_external_store_context", store)
    (report,) = await replay(load_histories([HISTORY]))
    assert report.deterministic and report.result_matches, report.divergence
    assert {"WorkflowSerializationContext", "ActivitySerializationContext"} <= set(asked)
