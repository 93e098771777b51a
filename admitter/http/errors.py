"""The HTTP edge's errors: the one mapping from domain errors to OpenAI answers, and FastAPI's handlers.

Clients of an OpenAI-compatible API parse ``{"error": {"message", "type", "param", "code"}}``
(``schemas.openai``); every failure the admitter produces (bad input, auth, 429, upstream trouble,
our own bugs) has that shape and never a stack trace. Unexpected exceptions are logged here,
server-side only.

Code inside the admitter raises domain errors (``schemas.errors``: no HTTP status); code that is
already answering a request (body checks, credentials) raises ``OpenAIError`` directly. Both reach
the client through :func:`openai_error`, the only place a domain error gets its status, ``code``
and headers: the completion route calls it, the proxy's in-band stream errors go through it
(:func:`send_stream_error`), and FastAPI's handler for ``TokenPoolsError`` serves the admin routes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from schemas.echo import echo_str
from schemas.errors import (
    AdmissionRefused,
    ConfigUnavailable,
    EntitlementConflict,
    EntitlementInvalid,
    NoReplica,
    Preempted,
    ReplicaFailed,
    ReplicaTimeout,
    ReplicaUnavailable,
    TokenPoolsError,
)
from schemas.loader import ConfigError
from schemas.openai import OpenAIError

log = logging.getLogger("tokenpools.admitter")

CONFIG_RETRY_AFTER_S = 5  # a broker restart or leader move usually takes seconds


def _refused(exc: AdmissionRefused) -> OpenAIError:
    """429 with Retry-After and the entitlement's limits and what remained of them."""
    dim = exc.dimension
    retry = retry_after_header(exc.retry_after)
    limit_tp, limit_kv, limit_conc = exc.limits
    left_tp, left_kv, left_conc = exc.remaining
    headers = {
        "retry-after": retry,
        "x-ratelimit-limit-throughput": _whole(limit_tp),
        "x-ratelimit-limit-kv": _whole(limit_kv),
        "x-ratelimit-limit-concurrency": _whole(limit_conc),
        "x-ratelimit-remaining-throughput": _whole(left_tp),
        "x-ratelimit-remaining-kv": _whole(left_kv),
        "x-ratelimit-remaining-concurrency": _whole(left_conc),
        "x-tokenpools-exhausted-dimension": dim,
    }
    return OpenAIError(
        429, f"rate limit reached for entitlement '{exc.entitlement}' ({exc.tier}): {dim} exhausted; "
        f"retry after {retry}s", f"{dim}_exhausted", headers=headers)


def _whole(x: float) -> str:
    return str(int(x)) if x < 1e18 else "inf"


def _problems(status: int, code: str) -> Callable[[Any], OpenAIError]:
    """The admin API's refusals of a manifest: one line per problem, in the message and in ``problems``."""
    def answer(exc: Any) -> OpenAIError:
        problems = [str(p) for p in exc.problems]
        return OpenAIError(status, "\n".join(problems), code, problems=problems)
    return answer


def _upstream(status: int, code: str) -> Callable[[Any], OpenAIError]:
    def answer(exc: Any) -> OpenAIError:
        return OpenAIError(status, exc.message, code)
    return answer


# The one table from domain error to answer. Looked up along the error's MRO, so a subclass without
# a row of its own (UpstreamProtocolError) answers as its parent (ReplicaFailed).
_ANSWERS: dict[type[TokenPoolsError], Callable[[Any], OpenAIError]] = {
    AdmissionRefused: _refused,
    Preempted: lambda exc: OpenAIError(
        503, "this spot request was preempted to make room for guaranteed work; retry later", "preempted",
        headers={"retry-after": retry_after_header(exc.retry_after)}),
    NoReplica: _upstream(503, "no_backend"),
    ReplicaUnavailable: _upstream(502, "upstream_unavailable"),
    ReplicaTimeout: _upstream(504, "upstream_timeout"),
    ReplicaFailed: _upstream(502, "upstream_error"),
    EntitlementInvalid: _problems(422, "invalid_manifest"),
    ConfigError: _problems(422, "invalid_manifest"),
    EntitlementConflict: _problems(409, "conflict"),
    ConfigUnavailable: lambda exc: OpenAIError(
        503, str(exc), "config_unavailable", headers={"retry-after": str(CONFIG_RETRY_AFTER_S)}),
}


def openai_error(exc: TokenPoolsError) -> OpenAIError:
    """The OpenAI answer to ``exc``: itself if it is one, else its row in the table; an error without a
    row is a bug here, answered 500 (and logged) like any unexpected exception."""
    if isinstance(exc, OpenAIError):
        return exc
    for cls in type(exc).__mro__:
        answer = _ANSWERS.get(cls)
        if answer is not None:
            return answer(exc)
    log.error("no HTTP answer for %s", type(exc).__name__, exc_info=exc)
    return OpenAIError(500, "internal error in the admitter", "internal_error")


def error_response(err: OpenAIError) -> Response:
    return Response(err.body(), status_code=err.status, headers=err.headers, media_type="application/json")


async def send_error(send: Send, err: OpenAIError, extra_headers: Mapping[str, str] | None = None) -> None:
    """Write ``err`` as a whole response on a raw ASGI ``send`` (the completion routes use it)."""
    body = err.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for name, value in err.headers.items():
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    for name, value in (extra_headers or {}).items():
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_stream_error(send: Send, exc: TokenPoolsError) -> None:
    """End a stream that already started with ``exc`` as an error event and ``[DONE]``."""
    await send({"type": "http.response.body", "body": openai_error(exc).sse(), "more_body": False})


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds; round up so a client that obeys it does not come back too early."""
    if not math.isfinite(seconds):
        seconds = 60.0
    return str(max(1, math.ceil(seconds)))


def _validation_message(exc: RequestValidationError) -> str:
    """At most five problems, each location and message cut to a bounded echo: a location can hold a
    client's key and a message a client's value, of any size."""
    parts = []
    for err in exc.errors()[:5]:
        loc = echo_str(".".join(str(p) for p in err.get("loc", ()) if p != "body"))
        msg = echo_str(str(err.get("msg")))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """Every error path answers in the OpenAI shape; the catch-all logs the traceback server-side only."""

    @app.exception_handler(TokenPoolsError)
    async def _ours(_: Request, exc: TokenPoolsError) -> Response:
        return error_response(openai_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(OpenAIError(400, _validation_message(exc), "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code)
        return error_response(OpenAIError(exc.status_code, echo_str(str(exc.detail)), code, headers=exc.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(OpenAIError(500, "internal error in the admitter", "internal_error"))
