"""`connect` waits for a Temporal server that is up but still starting, and fails at once
for one that is down."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from countersign.settings import Settings
from countersign.workers import worker as worker_module
from countersign.workers.devstack import free_port
from countersign.workers.worker import STARTING_SERVER, TemporalUnreachable, connect


async def test_a_server_still_starting_is_waited_for(
    settings: Settings, temporal: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dev server's frontend answers "not healthy yet" for a moment after its port opens
    (a clean-clone CI run failed on it): the first two attempts get that answer here."""
    real_connect = Client.connect
    attempts: list[str] = []

    async def starting_then_up(address: str, **kwargs: Any) -> Client:
        attempts.append(address)
        if len(attempts) <= 2:
            raise RuntimeError(
                "Failed client connect: `get_system_info` call error after connection: "
                f'Status {{ code: Unavailable, message: "{STARTING_SERVER}" }}'
            )
        return await real_connect(address, **kwargs)

    monkeypatch.setattr(Client, "connect", starting_then_up)
    address = temporal.client.service_client.config.target_host
    client = await connect(settings.model_copy(update={"temporal_address": address}))
    assert len(attempts) == 3
    assert await client.service_client.check_health()


async def test_a_server_that_is_down_fails_at_once_with_the_address(settings: Settings) -> None:
    dead = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    started = time.monotonic()
    with pytest.raises(
        TemporalUnreachable, match=f"cannot reach Temporal at {dead.temporal_address}"
    ):
        await connect(dead)
    assert time.monotonic() - started < worker_module.STARTING_SERVER_WAIT / 3


def test_free_ports_are_distinct_bindable_and_outside_the_kernels_own_range() -> None:
    """The kernel gives outgoing connections ports from its ephemeral range: a port chosen
    there could be taken before the service binds it (a CI run failed on that)."""
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= port < floor for port in ports)
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
