"""OpenAI-style errors: one exception type, its JSON body, and the handlers FastAPI needs.

Clients of an OpenAI-compatible API parse ``{"error": {"message", "type", "param", "code"}}``;
every failure the admitter produces (bad input, auth, 429, upstream trouble, our own bugs) has that
shape and never a stack trace. Unexpected exceptions are logged here, server-side only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from schemas.echo import echo_str

log = logging.getLogger("tokenpools.admitter")

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_exceeded"
SERVER = "server_error"
UPSTREAM = "upstream_error"
OVERLOADED = "service_unavailable"

_TYPE_BY_STATUS = {
    400: INVALID_REQUEST, 401: AUTHENTICATION, 403: PERMISSION, 404: NOT_FOUND, 405: INVALID_REQUEST,
    409: INVALID_REQUEST, 413: INVALID_REQUEST, 415: INVALID_REQUEST, 422: INVALID_REQUEST, 429: RATE_LIMIT,
    502: UPSTREAM, 503: OVERLOADED, 504: UPSTREAM,
}


class OpenAIError(Exception):
    """An error response in the OpenAI shape; raise it anywhere before the response has started."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status, SERVER if status >= 500 else INVALID_REQUEST)
        self.param = param
        self.headers = dict(headers or {})

    def payload(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status, headers=self.headers, media_type="application/json")

    async def send(self, send: Send, extra_headers: Mapping[str, str] | None = None) -> None:
        """Write this error as a whole response on a raw ASGI ``send`` (the proxy routes use it)."""
        body = self.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        for name, value in self.headers.items():
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        for name, value in (extra_headers or {}).items():
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def sse(self) -> bytes:
        """The same error as a server-sent event followed by ``[DONE]``, for a stream already under way."""
        return b"data: " + self.body() + b"\n\ndata: [DONE]\n\n"


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

    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return OpenAIError(400, _validation_message(exc), "invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code)
        err = OpenAIError(exc.status_code, echo_str(str(exc.detail)), code, headers=exc.headers)
        return err.response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return OpenAIError(500, "internal error in the admitter", "internal_error").response()
