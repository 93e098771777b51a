"""HTTP plumbing of a replica: JSON and error responses, capped body reads, and client disconnects."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from schemas.openai import OpenAIError
from sim import openai_wire as wire

#: Status sent to a client that disconnected: nobody reads it, but access logs show what happened.
CLIENT_CLOSED = 499
_T = TypeVar("_T")


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def request_id_base(header: str | None) -> str:
    """The caller's ``x-request-id`` as the base of response ids, if it is short and plain: it is
    echoed into every chunk of the response, so an unbounded one would be repeated unbounded."""
    if header and len(header) <= 128 and _REQUEST_ID_OK.issuperset(header):
        return header
    return uuid.uuid4().hex


def error_response(exc: OpenAIError) -> Response:
    return json_response(exc.payload(), exc.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it (declared or so far received) exceeds ``limit`` bytes.

    A running cap rather than ``request.body()`` and a length check, so a chunked or lying client
    cannot make the replica buffer more than ``limit`` before it is refused.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> OpenAIError:
    return wire.refuse(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")


async def _wait_disconnect(receive: Receive) -> None:
    """Return when the client has gone (uvicorn answers ``receive`` with ``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[_T]) -> tuple[bool, _T | None]:
    """Run ``work`` unless the client leaves first, in which case it is cancelled.

    Cancelling is what aborts the request in the engine and frees its KV blocks: vLLM's
    ``with_cancellation`` does the same for non-streaming requests.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        return False, None
    return True, task.result()


class EventStream(StreamingResponse):
    """An SSE response that stops as soon as the client leaves, which aborts the request.

    Starlette's ``StreamingResponse`` watches for disconnects only under ASGI spec < 2.4; otherwise
    it notices a vanished client at the next write, which for a request queued behind a full batch
    can be minutes away while the engine keeps its KV blocks. This one always watches.
    """

    def __init__(self, body: AsyncGenerator[bytes, None]) -> None:
        super().__init__(body, media_type="text/event-stream")
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self.stream_response(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sender, watcher):
                t.cancel()
            outcome = await asyncio.gather(sender, watcher, return_exceptions=True)
            await self._body.aclose()
        exc = outcome[0]
        if isinstance(exc, Exception) and not isinstance(exc, OSError | ClientDisconnect):
            raise exc
