"""An actuator for one machine: replica servers started and stopped in this process.

Each pool gets its own ``ReplicaServer`` (created on first use by ``server_factory``): the CLI passes
the vLLM emulator (``sim.server.EmulatorServer``). The scaler only knows the protocol below, so it
does not import the emulator (services sit side by side in the layering contract, pyproject.toml).
``scale`` adds replicas with ``add_replica`` (it returns once the replica serves) and removes the
newest ones with ``remove_replica``, draining as a pod does on SIGTERM: a removed replica answers
new requests with 503 and finishes those it has. Draining runs in the background, like a pod's
graceful termination after its Deployment is scaled down: ``scale`` returns as soon as the
replicas have left the live set, so the scaler can tell admitters (``endpoints``) at once instead of
after the slowest request. ``on_change(pool, urls)`` is called after each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

log = logging.getLogger("tokenpools.scaler.local")

UrlsCallback = Callable[[str, list[str]], Any]


class Replica(Protocol):
    url: str


class ReplicaServer(Protocol):
    """What the actuator needs of one pool's replicas (``sim.server.EmulatorServer`` is one)."""

    @property
    def replicas(self) -> Sequence[Replica]: ...

    @property
    def urls(self) -> list[str]: ...

    async def add_replica(self) -> Any:
        """Start one more replica; return once it serves."""

    async def remove_replica(self, replica: Any, *, drain: bool = True) -> None:
        """Take ``replica`` out of ``replicas`` before the first await, then stop it (finishing its work)."""

    async def stop(self) -> None: ...


class LocalActuator:
    """Implements ``scaler.actuator.Actuator`` and ``EndpointSource`` with in-process emulator replicas."""

    def __init__(
        self,
        pools: Mapping[str, int] | None = None,
        *,
        server_factory: Callable[[str], ReplicaServer],
        on_change: UrlsCallback | None = None,
        drain: bool = True,
        drain_timeout: float = 30.0,
    ) -> None:
        """``pools``: the pools managed (name -> replicas to start with at ``start``); others raise KeyError.

        ``server_factory(pool)``: the replica server of a pool, with no replicas yet.
        ``drain_timeout``: how long ``close`` waits for draining replicas before cancelling them.
        """
        self.initial = dict(pools or {})
        self.servers: dict[str, ReplicaServer] = {}
        self._factory = server_factory
        self.on_change = on_change
        self.drain = drain
        self.drain_timeout = drain_timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._draining: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        for pool, replicas in self.initial.items():
            await self.scale(pool, replicas)

    def _server(self, pool: str) -> ReplicaServer:
        if pool not in self.initial:
            raise KeyError(pool)
        server = self.servers.get(pool)
        if server is None:
            server = self.servers[pool] = self._factory(pool)
        return server

    def urls(self, pool: str) -> list[str]:
        server = self.servers.get(pool)
        return server.urls if server is not None else []

    @property
    def draining(self) -> int:
        """Replicas removed from a pool that are still finishing their requests."""
        return len(self._draining)

    async def current(self, pool: str) -> int:
        return len(self._server(pool).replicas)

    async def ready(self, pool: str) -> int:
        # add_replica returns once the replica serves, and a draining one has left the list: all listed are ready.
        return len(self._server(pool).replicas)

    async def endpoints(self, pool: str) -> list[str]:
        return list(self._server(pool).urls)

    async def scale(self, pool: str, replicas: int) -> None:
        server = self._server(pool)
        lock = self._locks.setdefault(pool, asyncio.Lock())
        async with lock:
            before = len(server.replicas)
            while len(server.replicas) < replicas:
                await server.add_replica()
            victims = server.replicas[max(0, replicas):]
            for rep in victims:
                self._remove(server, rep)
            # remove_replica takes the replica out of the list before its first await; let each task get there.
            while any(rep in server.replicas for rep in victims):  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0)
            if len(server.replicas) != before and self.on_change is not None:
                result = self.on_change(pool, server.urls)
                if asyncio.iscoroutine(result):
                    await result

    def _remove(self, server: ReplicaServer, rep: Replica) -> None:
        task = asyncio.create_task(server.remove_replica(rep, drain=self.drain), name=f"drain-{rep.url}")
        self._draining.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._draining.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("replica %s did not stop cleanly: %r", rep.url, t.exception())

        task.add_done_callback(done)

    async def close(self) -> None:
        if self._draining:
            _, pending = await asyncio.wait(set(self._draining), timeout=self.drain_timeout)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        for server in self.servers.values():
            await server.stop()
        self.servers.clear()
