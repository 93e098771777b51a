"""An actuator for one machine: emulator replicas started and stopped in this process.

Each pool gets its own ``sim.server.EmulatorServer`` (created on first use by ``server_factory``);
``scale`` adds or removes replicas with ``add_replica`` / ``remove_replica`` (draining, as a pod does
on SIGTERM). ``urls(pool)`` lists the live replicas, and ``on_change(pool, urls)`` is called after
each change so an admitter can route to the new fleet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from sim.server import EmulatorServer

UrlsCallback = Callable[[str, list[str]], Any]


class LocalActuator:
    """Implements ``scaler.actuator.Actuator`` with in-process emulator replicas."""

    def __init__(
        self,
        pools: Mapping[str, int] | None = None,
        *,
        server_factory: Callable[[str], EmulatorServer] | None = None,
        on_change: UrlsCallback | None = None,
        drain: bool = True,
        **emulator_options: Any,
    ) -> None:
        """``pools``: the pools managed (name -> replicas to start with at ``start``); others raise KeyError."""
        self.initial = dict(pools or {})
        self.servers: dict[str, EmulatorServer] = {}
        self._factory = server_factory or (lambda pool: EmulatorServer(0, model=pool, **emulator_options))
        self.on_change = on_change
        self.drain = drain
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        for pool, replicas in self.initial.items():
            await self.scale(pool, replicas)

    def _server(self, pool: str) -> EmulatorServer:
        if pool not in self.initial:
            raise KeyError(pool)
        server = self.servers.get(pool)
        if server is None:
            server = self.servers[pool] = self._factory(pool)
        return server

    def urls(self, pool: str) -> list[str]:
        server = self.servers.get(pool)
        return server.urls if server is not None else []

    async def current(self, pool: str) -> int:
        return len(self._server(pool).replicas)

    async def ready(self, pool: str) -> int:
        # add_replica returns once the replica serves, and a removed one is gone: all live ones are ready.
        return len(self._server(pool).replicas)

    async def scale(self, pool: str, replicas: int) -> None:
        server = self._server(pool)
        lock = self._locks.setdefault(pool, asyncio.Lock())
        async with lock:
            before = len(server.replicas)
            while len(server.replicas) < replicas:
                await server.add_replica()
            while len(server.replicas) > max(0, replicas):
                await server.remove_replica(drain=self.drain)
            if len(server.replicas) != before and self.on_change is not None:
                result = self.on_change(pool, server.urls)
                if asyncio.iscoroutine(result):
                    await result

    async def close(self) -> None:
        for server in self.servers.values():
            await server.stop()
        self.servers.clear()
