"""`heartbeating()`: a call shorter than a third of its heartbeat timeout sends no heartbeat
(each one is a server write); a longer one keeps beating within the timeout."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from temporalio.testing import ActivityEnvironment

from countersign.activities.runtime import heartbeating


async def beats_during(seconds: float, heartbeat_timeout: float | None) -> list[float]:
    env = ActivityEnvironment()
    beat_within = None if heartbeat_timeout is None else timedelta(seconds=heartbeat_timeout)
    env.info = dataclasses.replace(env.info, heartbeat_timeout=beat_within)
    loop = asyncio.get_running_loop()
    started = loop.time()
    beats: list[float] = []
    env.on_heartbeat = lambda *_: beats.append(loop.time() - started)

    async def call() -> None:
        async with heartbeating():
            await asyncio.sleep(seconds)

    await env.run(call)
    return beats


async def test_a_short_call_sends_no_heartbeat() -> None:
    assert await beats_during(0.1, heartbeat_timeout=1.5) == []


async def test_a_long_call_beats_within_each_timeout() -> None:
    beats = await beats_during(1.0, heartbeat_timeout=0.6)
    assert len(beats) >= 3
    gaps = [b - a for a, b in zip([0.0, *beats], beats, strict=False)]
    assert max(gaps) < 0.6


async def test_a_call_with_no_heartbeat_timeout_sends_none() -> None:
    assert await beats_during(0.3, heartbeat_timeout=None) == []
