"""Real servers on loopback for admitter tests: a scriptable fake replica and the admitter itself.

Both run under uvicorn in the test's event loop on pre-bound 127.0.0.1 sockets (no port races).
The fake replica speaks the OpenAI wire format (JSON, SSE with ``stream_options.include_usage``)
and is driven per request by ``x-fake-*`` headers, which the admitter forwards:

- ``x-fake-tokens: N``       output tokens (default 3)
- ``x-fake-status: 500``     answer with this status and an error body
- ``x-fake-hold: NAME``      after the first token (stream) or before answering (JSON), wait until
                             the test calls ``replica.release(NAME)``: exact timing, no sleeps
- ``x-fake-hang: 1``         never answer (timeouts)
- ``x-fake-break: 1``        close the stream after the first token, without ``[DONE]``

and records what it received, which streams finished, and which were aborted by the admitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from admitter.events import InMemorySink
from admitter.http.app import create_app
from admitter.settings import AdmitterSettings
from admitter.state import AdmitterState
from schemas.loader import PlatformConfig
from schemas.specs import Entitlement, TokenPool
from tests.factories import ent as make_ent
from tests.factories import pool as make_pool

ADMIN_KEY = "tp-admin-test-secret"


@pytest.fixture(autouse=True)
def standalone_admitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tokenpools admitter`` reads ``--kafka`` from ``KAFKA_BOOTSTRAP_SERVERS``: with the variable set
    (a shared cluster for the integration tests) these standalone tests would silently join it."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_for(tenant: str) -> str:
    return f"tp-test-{tenant}-0123456789abcdef"


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_for(tenant)}"}


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def keyed(entitlement: Entitlement, *keys: str) -> Entitlement:
    """An entitlement with API keys (the default key of its tenant when none are given)."""
    doc = entitlement.model_dump(by_alias=True, mode="json")
    doc["spec"]["apiKeys"] = [{"sha256": sha(k)} for k in (keys or (key_for(entitlement.spec.tenant),))]
    return Entitlement.model_validate(doc)


def ent(name: str, tier: str = "elastic", **kw: Any) -> Entitlement:
    return keyed(make_ent(name, tier, **kw))


def platform(pools: list[TokenPool], ents: list[Entitlement]) -> PlatformConfig:
    return PlatformConfig(pools={p.name: p for p in pools}, entitlements={e.name: e for e in ents})


def pool(name: str = "p", **kw: Any) -> TokenPool:
    kw.setdefault("contextLength", 4096)
    return make_pool(name, **kw)


def free_socket() -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # uvicorn's separate header and body writes meet delayed ACKs (40 ms per response on loopback).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)


async def serve(app: Any) -> Served:
    sock = free_socket()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    host, port = sock.getsockname()[:2]
    return Served(f"http://{host}:{port}", server, task)


@dataclass
class FakeReplica:
    """One scriptable OpenAI-compatible replica."""

    name: str = "replica"
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    always_status: int | None = None
    holds: dict[str, asyncio.Event] = field(default_factory=dict)
    reached: dict[str, asyncio.Event] = field(default_factory=dict)
    url: str = ""

    def hold(self, name: str) -> asyncio.Event:
        return self.holds.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        self.hold(name).set()

    async def wait_reached(self, name: str) -> None:
        """Wait (5 s at most) until a request holding on ``name`` got there (its first token is out, if streaming)."""
        async with asyncio.timeout(5):
            await self.reached.setdefault(name, asyncio.Event()).wait()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._answer(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._answer(request, chat=False)

        return app

    async def _answer(self, request: Request, chat: bool) -> Response:
        body = orjson.loads(await request.body())
        h = {k.lower(): v for k, v in request.headers.items()}
        self.received.append(body)
        self.headers.append(h)
        rid = h.get("x-request-id", "?")
        status = self.always_status or int(h.get("x-fake-status", "200"))
        if status != 200:
            return Response(orjson.dumps({"error": {"message": f"fake {status}", "type": "server_error",
                                                    "param": None, "code": None}}),
                            status_code=status, media_type="application/json")
        if h.get("x-fake-hang"):
            await asyncio.Event().wait()
        n = int(h.get("x-fake-tokens", "3"))
        prompt_tokens = int(h.get("x-fake-prompt-tokens", "7"))
        hold = h.get("x-fake-hold")
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            if hold:
                self.reached.setdefault(hold, asyncio.Event()).set()
                await self.hold(hold).wait()
            choice = ({"index": 0, "message": {"role": "assistant", "content": "tok " * n}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": "tok " * n, "finish_reason": "length"})
            self.finished.append(rid)
            return Response(orjson.dumps({"id": rid, "object": obj, "model": body["model"], "choices": [choice],
                                          "usage": usage}), media_type="application/json")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        brk = bool(h.get("x-fake-break"))

        async def events() -> AsyncIterator[bytes]:
            done = False
            try:
                for i in range(n):
                    delta = {"content": "tok "} if chat else None
                    choice = ({"index": 0, "delta": delta, "finish_reason": None} if chat
                              else {"index": 0, "text": "tok ", "finish_reason": None})
                    if i == n - 1:
                        choice["finish_reason"] = "length"
                    chunk: dict[str, Any] = {"id": rid, "object": obj + ".chunk", "choices": [choice]}
                    if include_usage:
                        chunk["usage"] = None
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                    if i == 0 and brk:
                        done = True
                        return
                    if i == 0 and hold:
                        self.reached.setdefault(hold, asyncio.Event()).set()
                        await self.hold(hold).wait()
                    else:
                        await asyncio.sleep(0)
                if include_usage:
                    yield b"data: " + orjson.dumps({"id": rid, "object": obj + ".chunk", "choices": [],
                                                    "usage": usage}) + b"\n\n"
                yield b"data: [DONE]\n\n"
                done = True
            finally:
                (self.finished if done else self.aborted).append(rid)

        return StreamingResponse(events(), media_type="text/event-stream")


@dataclass
class Admitter:
    url: str
    app: FastAPI
    sink: InMemorySink
    served: Served

    @property
    def state(self) -> AdmitterState:
        return self.app.state.admitter  # type: ignore[no-any-return]

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kw)


StartReplica = Callable[..., Any]


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[..., Any]]:
    """``await start(name)`` -> a running FakeReplica with ``.url``."""
    running: list[Served] = []

    async def start(name: str = "replica") -> FakeReplica:
        fake = FakeReplica(name)
        served = await serve(fake.app())
        fake.url = served.url
        running.append(served)
        return fake

    yield start
    for s in running:
        await s.stop()


@pytest.fixture
def upstream_client() -> str:
    """Which replica client the admitter uses; modules covering the relay run with both."""
    return "httpx"


@pytest.fixture
async def admitter(upstream_client: str) -> AsyncIterator[Callable[..., Any]]:
    """``await start(config, backends={pool: [urls]}, **settings)`` -> a running Admitter."""
    running: list[Served] = []

    async def start(config: PlatformConfig, backends: dict[str, list[str]] | None = None, **settings: Any) -> Admitter:
        settings.setdefault("upstream_client", upstream_client)
        settings.setdefault("admin_key_sha256", sha(ADMIN_KEY))
        settings.setdefault("admitter_id", "test-admitter")
        s = AdmitterSettings(backends=backends or {}, **settings)
        sink = InMemorySink()
        app = create_app(s, config, sink=sink)
        served = await serve(app)
        running.append(served)
        return Admitter(served.url, app, sink, served)

    yield start
    for s in running:
        await s.stop()


def chat(max_tokens: int = 16, stream: bool = False, model: str = "p", text: str = "hello there",
         **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition that follows a response asynchronously (e.g. the release after the last byte).

    Polling because the conditions are plain state (counters, dicts) with no event to wait on.
    """
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - see above
            await asyncio.sleep(0.005)


def sse_events(text: str) -> list[str]:
    return [block[len("data: "):] for block in text.split("\n\n") if block.startswith("data: ")]


@pytest.fixture
def capture_all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
