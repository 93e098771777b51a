"""The OpenAI wire conventions both HTTP servers of the project speak: the admitter and the vLLM emulator.

One place for what must be the same on both sides of the admitter's upstream connection (the
admitter parses the emulator's errors and streams, and its clients parse the admitter's):

- the error envelope ``{"error": {"message", "type", "param", "code"}}`` (:func:`error_body`), the
  ``type`` each status gets by default (:data:`TYPE_BY_STATUS`), and the one error type that carries
  an HTTP answer, :class:`OpenAIError`;
- server-sent events: one event (:func:`sse_frame`), the ``data: [DONE]`` that ends a stream, and an
  error reported inside a stream that has already started (:meth:`OpenAIError.sse`);
- the request-field rules both apply the same way (:func:`is_integer`, :func:`is_token_ids`).

What each server says in its messages stays its own (the emulator's are vLLM's wording); the token
convention is in :mod:`schemas.openai_tokens`. Pure: no I/O, no framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from schemas.errors import TokenPoolsError

# -- error types (the envelope's ``type``) ---------------------------------------------------------
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_exceeded"
SERVER = "server_error"
UPSTREAM = "upstream_error"
OVERLOADED = "service_unavailable"

TYPE_BY_STATUS: Mapping[int, str] = {
    400: INVALID_REQUEST, 401: AUTHENTICATION, 403: PERMISSION, 404: NOT_FOUND, 405: INVALID_REQUEST,
    409: INVALID_REQUEST, 413: INVALID_REQUEST, 415: INVALID_REQUEST, 422: INVALID_REQUEST, 429: RATE_LIMIT,
    502: UPSTREAM, 503: OVERLOADED, 504: UPSTREAM,
}


def error_type(status: int) -> str:
    """The default ``type`` of an error answered with ``status``."""
    return TYPE_BY_STATUS.get(status, SERVER if status >= 500 else INVALID_REQUEST)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope; clients (the openai SDK, the admitter) read ``error.message``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class OpenAIError(TokenPoolsError):
    """An answer in the OpenAI error shape, HTTP status included: raised by code that is answering an
    HTTP request (the admitter's edge, the emulator), and what the admitter's edge maps domain errors to.

    ``type`` defaults by status (:func:`error_type`); ``headers`` go on the response; ``problems``
    (the admitter's admin API, 409 and 422) adds one line per problem next to ``error``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        problems: Sequence[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or error_type(status)
        self.param = param
        self.headers = dict(headers or {})
        self.problems = list(problems) if problems is not None else None

    def payload(self) -> dict[str, Any]:
        payload = error_body(self.message, type=self.type, param=self.param, code=self.code)
        if self.problems is not None:
            payload["problems"] = self.problems
        return payload

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def sse(self) -> bytes:
        """This error as the last event of a stream already under way, followed by ``[DONE]``."""
        return sse_frame(self.body()) + SSE_DONE


# -- server-sent events ------------------------------------------------------------------------------
DONE_EVENT = b"data: [DONE]"  # how the last event of a stream starts
SSE_DONE = DONE_EVENT + b"\n\n"
ERROR_EVENT = b'data: {"error"'  # how an in-band error event starts (as both servers write it)


def sse_frame(data: bytes) -> bytes:
    """One server-sent event carrying ``data`` (one line of JSON)."""
    return b"data: " + data + b"\n\n"


# -- request fields both servers read ----------------------------------------------------------------
def is_integer(value: object) -> bool:
    """A JSON integer: ``bool`` is an ``int`` to Python but not a number to JSON (and orjson yields
    exactly ``int``)."""
    return type(value) is int


def is_token_ids(prompt: object) -> bool:
    """A completions prompt given as token ids: a non-empty array of integers (counted one token each)."""
    return isinstance(prompt, list) and bool(prompt) and all(type(t) is int for t in prompt)

