"""N replicas in one event loop, each on its own port: :class:`EmulatorServer` and :func:`start_emulators`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

import uvicorn

from sim.realtime import ModelClock
from sim.server.config import EmulatorConfig
from sim.server.replica import EmulatorReplica
from tokenpools.infra.slow_clients import ConnectionGuard, guarded_protocol


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that leaves signals alone: they belong to whoever owns the process
    (pytest, the CLI), and N servers in one loop must not each install handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a busy port fails here and port 0 is known at once."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


class EmulatorServer:
    """N emulated replicas on ``port, port+1, ...`` (or free ports with ``port=0``) in this loop.

    ``async with EmulatorServer(3, speedup=50) as em: em.urls`` in a test, or :meth:`start` /
    :meth:`stop` by hand; :meth:`add_replica` / :meth:`remove_replica` let a local scaler change
    the fleet while it runs. Keyword arguments other than the address are
    :class:`EmulatorConfig` fields (overriding ``config``).
    """

    def __init__(self, replicas: int = 1, *, host: str = "127.0.0.1", port: int = 0,
                 config: EmulatorConfig | None = None, log_level: str | None = None, access_log: bool = False,
                 **overrides: Any) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        if not 0 <= port <= 65535 or (port and port + replicas - 1 > 65535):
            raise ValueError("ports must be within [0, 65535]")
        cfg = config if config is not None else EmulatorConfig()
        self.config = dataclasses.replace(cfg, **overrides) if overrides else cfg
        self.host = host
        self.base_port = port
        self.initial_replicas = replicas
        self.log_level = log_level
        self.access_log = access_log
        self.clock = ModelClock(self.config.speedup)
        self.replicas: list[EmulatorReplica] = []
        self._next_index = 0

    @property
    def urls(self) -> list[str]:
        """Base URLs of the live replicas (append ``/v1`` for an OpenAI client)."""
        return [r.url for r in self.replicas]

    async def start(self) -> list[str]:
        """Bind and serve the initial replicas; their URLs. All or nothing: a busy port stops all."""
        if self.replicas:
            raise RuntimeError("already started")
        try:
            for _ in range(self.initial_replicas):
                await self.add_replica()
        except BaseException:
            await self.stop()
            raise
        return self.urls

    async def add_replica(self, port: int | None = None) -> EmulatorReplica:
        """Start one more replica (on ``port``, default the next in line or a free one); it serves on return."""
        index = self._next_index
        if port is None:
            port = self.base_port + index if self.base_port else 0
        sock = _bind(self.host, port)
        self._next_index += 1
        rep = EmulatorReplica(index, self.config, self.clock, self.host, sock.getsockname()[1])
        # The admitter's slow-client protections (head/body read timeouts, a cap on connections still
        # sending their request, default limits): uvicorn has none of its own.
        config = uvicorn.Config(rep.app, lifespan="off", log_config=None, log_level=self.log_level,
                                access_log=self.access_log, ws="none", timeout_graceful_shutdown=None,
                                http=guarded_protocol(ConnectionGuard()))
        rep.server = server = _Uvicorn(config)
        rep.driver.start()
        rep.task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]),
                                                          name=f"vllm-emulator-{rep.port}")
        self.replicas.append(rep)
        while not server.started:
            if rep.task.done():
                self.replicas.remove(rep)
                await rep.driver.stop()
                sock.close()
                exc = None if rep.task.cancelled() else rep.task.exception()
                raise RuntimeError(f"emulator replica on port {rep.port} failed to start") from exc
            await asyncio.sleep(0.002)
        return rep

    async def remove_replica(self, replica: EmulatorReplica | int | str | None = None, *,
                             drain: bool = True) -> EmulatorReplica | None:
        """Stop one replica (default: the newest): by object, index or URL.

        ``drain=True`` refuses new requests (503) and lets running ones finish, as a pod would on
        SIGTERM; ``drain=False`` aborts them (streams end with ``finish_reason: "abort"``).
        """
        if not self.replicas:
            return None
        if replica is None:
            rep = self.replicas[-1]
        elif isinstance(replica, EmulatorReplica):
            rep = replica
        else:
            found = [r for r in self.replicas if replica in (r.index, r.url)]
            if not found:
                raise KeyError(replica)
            rep = found[0]
        self.replicas.remove(rep)
        await self._stop_replica(rep, drain)
        return rep

    async def _stop_replica(self, rep: EmulatorReplica, drain: bool) -> None:
        rep._closing.set()
        if rep.server is not None:
            rep.server.config.timeout_graceful_shutdown = None if drain else 5
            rep.server.should_exit = True
        if not drain:
            await rep.driver.stop()  # ends every stream, so uvicorn's connections close
        if rep.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await rep.task
        await rep.driver.stop()

    async def stop(self, *, drain: bool = False) -> None:
        """Stop every replica (aborting what runs unless ``drain``); the server can be started again."""
        reps, self.replicas = self.replicas, []
        await asyncio.gather(*(self._stop_replica(r, drain) for r in reps))
        self._next_index = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def start_emulators(replicas: int = 1, *, port: int = 0, host: str = "127.0.0.1",
                          config: EmulatorConfig | None = None, **overrides: Any) -> AsyncIterator[list[str]]:
    """``async with start_emulators(3, speedup=50) as urls:`` N replicas in this event loop.

    The shortest way for other components' tests to get a fleet of vLLM look-alikes on free
    loopback ports; use :class:`EmulatorServer` to also reach the replicas themselves.
    """
    async with EmulatorServer(replicas, host=host, port=port, config=config, **overrides) as server:
        yield server.urls
