"""Reading and checking an OpenAI request body before anything is reserved for it.

Every check answers with the 4xx an OpenAI client expects (415, 413, 400) instead of letting a bad
body reach a replica. The body is read off the raw ASGI channel with a running size cap, so a
client that lies about (or omits) Content-Length cannot make the admitter buffer more than the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Receive

from schemas.echo import echo
from schemas.openai import OpenAIError, is_integer, is_token_ids

CHAT = "chat"
COMPLETIONS = "completions"


async def read_body(receive: Receive, content_length: int | None, limit: int) -> bytes:
    """The whole request body, or 413 as soon as it (declared or actual) exceeds ``limit`` bytes."""
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ClientGone(Exception):
    """The client went away while we were still reading its request."""


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"request body exceeds the limit of {limit} bytes", "request_too_large")


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise OpenAIError(
            415, f"Content-Type must be application/json, got {echo(media) if media else 'nothing'}",
            "unsupported_media_type"
        )


@dataclass(slots=True)
class ParsedRequest:
    """What the admitter needs to know about a body; ``data`` is forwarded (possibly rewritten)."""

    data: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool
    max_tokens: int | None
    prompt_bytes: int
    prompt_tokens: int | None = None  # exact when the prompt is given as token ids


def parse_body(raw: bytes, kind: str) -> ParsedRequest:
    """Decode and check one chat or completions body (400 with the offending field otherwise)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc.msg}", "invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "request body must be a JSON object", "invalid_json")
    model = data.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "must be a non-empty string")
    exact_tokens: int | None = None
    if kind == CHAT:
        prompt_bytes = _messages_bytes(data.get("messages"))
        max_tokens = data.get("max_completion_tokens")
        max_field = "max_completion_tokens"
        if max_tokens is None:
            max_tokens, max_field = data.get("max_tokens"), "max_tokens"
    else:
        prompt = data.get("prompt")
        if is_token_ids(prompt):
            exact_tokens = len(prompt)
            prompt_bytes = 0  # counted exactly: nothing for the bytes estimator to learn
        else:
            prompt_bytes = _prompt_bytes(prompt)
        max_tokens, max_field = data.get("max_tokens"), "max_tokens"
    if max_tokens is not None and (not is_integer(max_tokens) or max_tokens < 1):
        raise _invalid(max_field, "must be an integer >= 1")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream", "must be true or false")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("stream_options", "must be an object")
    wants_usage = bool(options.get("include_usage")) if options else False
    if options:
        include = options.get("include_usage")
        if include is not None and type(include) is not bool:
            raise _wrong("stream_options.include_usage", "true or false", include, INVALID_TYPE)
    for field in ("n", "best_of"):
        value = data.get(field)
        if value is not None and value != 1:
            raise _invalid(field, "only 1 is supported here (each choice would need its own reservation)")
    # Known fields are checked as the OpenAI API checks them; unknown ones pass through to the
    # replica (vLLM's extensions). One dict lookup per key present, nothing for fields not sent.
    checks = _FIELD_CHECKS[kind]
    for key, value in data.items():
        if value is not None:  # null means "the default" for every optional field, as in OpenAI's API
            check = checks.get(key)
            if check is not None:
                check(key, value)
    return ParsedRequest(data, model, stream, wants_usage, max_tokens, prompt_bytes, exact_tokens)


def _messages_bytes(messages: Any) -> int:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "must be a non-empty array of messages")
    size = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _invalid(f"messages.{i}", "must be an object with role and content")
        role = msg.get("role")
        if role is None:
            raise _invalid(f"messages.{i}.role", "is required and must be a string")
        if type(role) is not str:
            raise _wrong(f"messages.{i}.role", _ROLE_NAMES, role, INVALID_TYPE)
        if role not in _ROLES:
            raise _wrong(f"messages.{i}.role", _ROLE_NAMES, role, INVALID_VALUE)
        size += len(role) + _content_bytes(msg.get("content"), f"messages.{i}.content")
    return size


def _content_bytes(content: Any, where: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    if isinstance(content, list):
        size = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    size += len(text.encode("utf-8"))
            elif isinstance(part, str):
                size += len(part.encode("utf-8"))
        return size
    raise _invalid(where, "must be a string or an array of content parts")


def _prompt_bytes(prompt: Any) -> int:
    if prompt is None:
        raise _missing("prompt")
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8"))
    if isinstance(prompt, list) and prompt:  # token ids were taken by the caller
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return len(prompt[0].encode("utf-8"))
        raise _invalid("prompt", "batched prompts are not supported through this gateway; send one prompt per request")
    raise _invalid("prompt", "must be a string or an array of token ids")


def _missing(field: str) -> OpenAIError:
    return OpenAIError(400, f"'{field}' is a required property", "missing_required_parameter", param=field)


def _invalid(field: str, why: str) -> OpenAIError:
    return OpenAIError(400, f"'{field}' {why}", "invalid_value", param=field)


INVALID_TYPE = "invalid_type"  # a JSON type the field never has (a string temperature)
INVALID_VALUE = "invalid_value"  # the right type, out of range or not among the allowed values

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
_ROLE_NAMES = "one of " + ", ".join(sorted(_ROLES))


def _wrong(field: str, expected: str, value: Any, code: str) -> OpenAIError:
    """400 naming the field, what it must be and (bounded: see ``schemas.echo``) what was sent."""
    return OpenAIError(400, f"'{field}' must be {expected}, got {echo(value)}", code, param=field)


# A check takes the field's name and its (non-null) value and raises ``_wrong`` or returns.
# ``type(v) is int`` rather than isinstance: booleans are ints to Python but not numbers to JSON,
# and orjson yields exactly int, float, str, bool, list, dict.
Check = Callable[[str, Any], None]


def _number(lo: float, hi: float) -> Check:
    expected = f"a number from {lo:g} to {hi:g}"

    def check(field: str, value: Any) -> None:
        kind = type(value)
        if kind is not float and kind is not int:
            raise _wrong(field, expected, value, INVALID_TYPE)
        if not lo <= value <= hi:
            raise _wrong(field, expected, value, INVALID_VALUE)
    return check


def _integer(lo: int, hi: int) -> Check:
    expected = f"an integer from {lo} to {hi}"

    def check(field: str, value: Any) -> None:
        if type(value) is not int:
            raise _wrong(field, expected, value, INVALID_TYPE)
        if not lo <= value <= hi:
            raise _wrong(field, expected, value, INVALID_VALUE)
    return check


def _of_type(kind: type, expected: str) -> Check:
    def check(field: str, value: Any) -> None:
        if type(value) is not kind:
            raise _wrong(field, expected, value, INVALID_TYPE)
    return check


_boolean = _of_type(bool, "true or false")
_string = _of_type(str, "a string")
_object = _of_type(dict, "an object")


def _stop(field: str, value: Any) -> None:
    expected = "a string or an array of at most 4 strings"
    if type(value) is str:
        return
    if type(value) is not list or not all(type(s) is str for s in value):
        raise _wrong(field, expected, value, INVALID_TYPE)
    if len(value) > 4:
        raise _wrong(field, expected, value, INVALID_VALUE)


def _logit_bias(field: str, value: Any) -> None:
    if type(value) is not dict:
        raise _wrong(field, "an object of token ids to numbers from -100 to 100", value, INVALID_TYPE)
    for token, bias in value.items():
        _BIAS(f"{field}.{token[:20]}", bias)


_BIAS = _number(-100, 100)


def _response_format(field: str, value: Any) -> None:
    if type(value) is not dict:
        raise _wrong(field, "an object such as {\"type\": \"json_object\"}", value, INVALID_TYPE)
    if type(value.get("type")) is not str:
        raise _wrong(f"{field}.type", "a string", value.get("type"), INVALID_TYPE)


def _tools(field: str, value: Any) -> None:
    if type(value) is not list or not all(type(t) is dict for t in value):
        raise _wrong(field, "an array of objects", value, INVALID_TYPE)


def _choice(modes: frozenset[str]) -> Check:
    """``tool_choice``/``function_call``: one of a few strings, or an object naming the function."""
    expected = f"one of {', '.join(sorted(modes))} or an object"

    def check(field: str, value: Any) -> None:
        kind = type(value)
        if kind is dict:
            return
        if kind is not str:
            raise _wrong(field, expected, value, INVALID_TYPE)
        if value not in modes:
            raise _wrong(field, expected, value, INVALID_VALUE)
    return check


_COMMON: dict[str, Check] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "seed": _integer(-(2**63), 2**63 - 1),
    "stop": _stop,
    "user": _string,
    "logit_bias": _logit_bias,
}
_FIELD_CHECKS: dict[str, dict[str, Check]] = {
    CHAT: {
        **_COMMON,
        "logprobs": _boolean,
        "top_logprobs": _integer(0, 20),
        "response_format": _response_format,
        "tools": _tools,
        "tool_choice": _choice(frozenset({"none", "auto", "required"})),
        "parallel_tool_calls": _boolean,
        "functions": _tools,
        "function_call": _choice(frozenset({"none", "auto"})),
    },
    COMPLETIONS: {
        **_COMMON,
        "echo": _boolean,
        "suffix": _string,
        "logprobs": _integer(0, 5),  # a count of alternatives here, a flag on chat
    },
}
