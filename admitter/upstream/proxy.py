"""The upstream side: pick a replica, send the request, relay the answer.

- Replica choice (``replicas.ReplicaSet.pick``): fewest outstanding requests from this admitter;
  ties rotate so sequential traffic spreads. A replica that refused a connection is tried last for
  a short cool-down.
- Connections: ``clients.HttpxClient`` by default (pooled keep-alive httpx connections), or
  ``clients.AiohttpClient``; see ``clients.py`` for why and what each costs.
- Retries only where they are safe: the connection was refused (nothing was sent) or the
  replica answered 5xx before any byte reached the client. A timeout is not retried (the replica
  may still be working on it): the client gets 504.
- Streams are relayed event by event as they arrive (never buffered whole). Upstream is always
  asked for ``stream_options.include_usage`` so the admitter learns the real usage; the usage-only
  chunk is dropped for clients that did not ask for it.

``relay`` raises an ``UpstreamError`` (``schemas.errors``: what went wrong, no HTTP status) only
before the response has started; after that, trouble is reported in-band (an SSE error event) and
recorded on the ``Exchange``. The statuses and codes are the HTTP edge's (``admitter.http.errors``).
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio
import orjson
from starlette.types import Send

from admitter.http.body import ParsedRequest
from admitter.http.errors import send_stream_error
from admitter.upstream.clients import (
    UpstreamBroken,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeout,
)
from admitter.upstream.replicas import Replica, ReplicaSet
from schemas.errors import (
    NoReplica,
    ReplicaFailed,
    ReplicaTimeout,
    ReplicaUnavailable,
    UpstreamError,
    UpstreamProtocolError,
)
from schemas.openai import DONE_EVENT, ERROR_EVENT
from schemas.records import Outcome

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_USAGE = b'"usage"'
_NULL_USAGE = (b'"usage":null', b'"usage": null')


class Closable(Protocol):
    closing: bool


class Exchange:
    """Per-request proxy state, filled as the request goes (read by events and metrics at the end)."""

    __slots__ = (
        "chunks", "failure", "flight", "output_tokens", "parsed", "path", "prompt_tokens", "replica", "request_id",
        "saw_done", "send", "started", "status", "t_client_first", "t_upstream_first", "t_upstream_start",
        "upstream_time",
    )

    def __init__(self, request_id: str, path: str, parsed: ParsedRequest, send: Send, flight: Closable) -> None:
        self.request_id = request_id
        self.flight = flight  # its ``closing`` is set just before the last bytes go out
        self.path = path
        self.parsed = parsed
        self.send = send
        self.started = False  # response headers sent to the client
        self.status: int | None = None
        self.prompt_tokens: int | None = None  # from the replica's usage
        self.output_tokens: int | None = None
        self.chunks = 0  # content events relayed (a lower bound on output tokens if usage never comes)
        self.saw_done = False
        self.failure: Outcome | None = None
        self.replica: Replica | None = None
        self.t_upstream_start = 0.0
        self.t_upstream_first = 0.0
        self.t_client_first = 0.0
        self.upstream_time = 0.0  # replica's share of the time to the first byte

    @property
    def usage_known(self) -> bool:
        return self.output_tokens is not None


class Upstream:
    """The replica client and each pool's replicas."""

    def __init__(self, replicas: dict[str, ReplicaSet], client: UpstreamClient) -> None:
        self.replicas = replicas
        self.client = client

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    async def relay(self, ex: Exchange, pool: str, body: bytes, headers: list[tuple[bytes, bytes]],
                    reply_headers: list[tuple[bytes, bytes]]) -> None:
        """Forward to a replica (retrying where safe) and relay its answer to ``ex.send``."""
        replicas = self.replicas.get(pool)
        if not replicas:
            raise NoReplica(f"no replica is configured for pool '{pool}'")
        client = self.client
        tried: list[Replica] = []
        last_error: UpstreamError | None = None
        while True:
            replica = replicas.pick(tried)
            if replica is None:
                assert last_error is not None
                raise last_error
            tried.append(replica)
            ex.replica = replica
            replica.outstanding += 1
            replica.requests += 1
            try:
                ex.t_upstream_start = time.perf_counter()
                try:
                    response = await client.send(replica, ex.path, body, headers)
                except UpstreamConnectError as exc:
                    replicas.mark_down(replica)
                    last_error = (
                        ReplicaTimeout("timed out connecting to a model replica") if exc.timeout else
                        ReplicaUnavailable("could not connect to a model replica"))
                    continue
                except UpstreamTimeout:
                    raise ReplicaTimeout("the model replica did not answer in time") from None
                except UpstreamBroken:
                    raise ReplicaFailed("the connection to the model replica failed") from None
                try:
                    if response.status >= 500:
                        replica.failures += 1
                        last_error = ReplicaFailed(f"the model replica failed (HTTP {response.status})")
                        continue
                    if ex.parsed.stream and response.status == 200:
                        await _relay_stream(ex, response, reply_headers)
                    else:
                        await _relay_whole(ex, response, reply_headers)
                    return
                finally:
                    # Closing an unread response drops its connection: that tells a replica to stop.
                    # Shielded: this runs while the request's scope is being cancelled.
                    with anyio.CancelScope(shield=True):
                        await response.close()
            finally:
                replica.outstanding -= 1


async def _relay_whole(ex: Exchange, response: UpstreamResponse, reply_headers: list[tuple[bytes, bytes]]) -> None:
    try:
        data = await response.read()
    except UpstreamTimeout:
        raise ReplicaTimeout("the model replica did not answer in time") from None
    except UpstreamBroken:
        raise ReplicaFailed("the connection to the model replica failed") from None
    now = time.perf_counter()
    ex.t_upstream_first = now
    ex.upstream_time = now - ex.t_upstream_start
    status = response.status
    if status == 200:
        _usage_from(ex, data)
    content_type = response.content_type.encode("latin-1")
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *reply_headers]
    ex.status = status
    ex.t_client_first = time.perf_counter()
    ex.started = True
    ex.flight.closing = True
    await ex.send({"type": "http.response.start", "status": status, "headers": headers})
    await ex.send({"type": "http.response.body", "body": data})
    if status >= 400:
        ex.failure = Outcome.FAILED


def _usage_from(ex: Exchange, data: bytes) -> None:
    try:
        usage = orjson.loads(data).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return
    _take_usage(ex, usage)


def _take_usage(ex: Exchange, usage: object) -> None:
    if isinstance(usage, dict):
        prompt, output = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            ex.prompt_tokens = prompt
        if isinstance(output, int):
            ex.output_tokens = output


async def _relay_stream(ex: Exchange, response: UpstreamResponse, reply_headers: list[tuple[bytes, bytes]]) -> None:
    send = ex.send
    ex.status = 200
    ex.started = True
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *reply_headers]})
    wants_usage = ex.parsed.client_wants_usage
    buffer = b""
    try:
        async for chunk in response.chunks():
            if not ex.t_upstream_first:
                ex.t_upstream_first = time.perf_counter()
                ex.upstream_time = ex.t_upstream_first - ex.t_upstream_start
            if b"\r" in chunk:
                chunk = chunk.replace(b"\r\n", b"\n")
            buffer = buffer + chunk if buffer else chunk
            out: list[bytes] = []
            while (end := buffer.find(b"\n\n")) >= 0:
                event = buffer[: end + 2]
                buffer = buffer[end + 2:]
                if _keep_event(ex, event, wants_usage):
                    out.append(event)
            if out:
                if not ex.t_client_first:
                    ex.t_client_first = time.perf_counter()
                await send({"type": "http.response.body", "body": out[0] if len(out) == 1 else b"".join(out),
                            "more_body": True})
    except UpstreamTimeout:
        ex.failure = Outcome.FAILED
        ex.flight.closing = True
        await send_stream_error(send, ReplicaTimeout("the model replica stopped answering"))
        return
    except UpstreamBroken:
        ex.failure = Outcome.FAILED
        ex.flight.closing = True
        await send_stream_error(send, ReplicaFailed("the model replica's stream broke off"))
        return
    if not ex.saw_done:
        ex.failure = Outcome.FAILED
        ex.flight.closing = True
        await send_stream_error(send, UpstreamProtocolError("the model replica's stream ended early"))
        return
    ex.flight.closing = True
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _keep_event(ex: Exchange, event: bytes, wants_usage: bool) -> bool:
    """Inspect one SSE event cheaply (substring tests; JSON is parsed only for the usage chunk)."""
    if event.startswith(DONE_EVENT):
        ex.saw_done = True
        return True
    if _USAGE in event and _NULL_USAGE[0] not in event and _NULL_USAGE[1] not in event:
        payload = event[5:].strip() if event.startswith(b"data:") else b""
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return True
        if isinstance(obj, dict):
            _take_usage(ex, obj.get("usage"))
            # Drop the usage-only chunk when the client did not ask for it.
            return wants_usage or bool(obj.get("choices"))
    if event.startswith(ERROR_EVENT):
        ex.failure = Outcome.FAILED
        return True
    ex.chunks += 1
    return True

