"""Pooled HTTP clients for activities.

Building an httpx client costs ~10 ms of CPU (a new TLS context loads the whole CA bundle), more
than a complete agent step on loopback, and a fresh client opens a fresh connection each call.
So activities share one client per event loop and target. Credentials are read per request,
so a rotated secret takes effect on the next call without a worker restart.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Generator
from typing import Protocol, TypeVar

import httpx

from countersign.credentials import get_secret


class BearerFromKeyring(httpx.Auth):
    """`Authorization: Bearer <secret>`, the secret looked up on every request."""

    def __init__(self, credential: str) -> None:
        self.credential = credential

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {get_secret(self.credential)}"
        yield request


class _Client(Protocol):
    """httpx's or httpx2's AsyncClient (the openai client is built on httpx2)."""

    @property
    def is_closed(self) -> bool: ...

    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Client)


class HttpClients:
    """One long-lived HTTP client per (event loop, key).

    Keyed by loop because a client's connection pool belongs to the loop it first ran on; a
    worker has one loop, tests may run several in turn.
    """

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Client]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, key: str, build: Callable[[], C]) -> C:
        """The client for `key` on this loop; `build` makes it on first use. The caller never
        closes it."""
        clients = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        client = clients.get(key)
        # Closed by mistake (e.g. `AsyncOpenAI.close()` closes the client it was given): a
        # fresh one, rather than every later call on this worker failing.
        if client is None or client.is_closed:
            client = clients[key] = build()
        return client  # type: ignore[return-value]  # one key, one type: the builder's

    async def aclose(self) -> None:
        """Close this loop's clients (worker shutdown)."""
        clients = self._by_loop.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.aclose()
