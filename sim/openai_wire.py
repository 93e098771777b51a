"""vLLM's OpenAI-compatible wire format, as pure functions (no I/O, no clock, no engine).

Kept apart from :mod:`sim.server` so that the parsing rules (what a request costs in prompt
tokens, how the emulator learns how many tokens to "generate") and the exact response shapes can
be tested and reused without starting a server: the load generator can build prompts of a known
size with :func:`prompt_text`, and anyone comparing against a real vLLM has one place to look.

Token counting (the emulator has no tokenizer, and the admitter must not be able to tell):

* text: ``max(1, ceil(len(utf8 bytes) / 4))`` (:data:`BYTES_PER_TOKEN`), the same rough average
  the workload generator uses; a completions prompt given as token ids counts one per id;
* chat: each message costs :data:`CHAT_TOKENS_PER_MESSAGE` (role header and end-of-turn markers
  of a Llama-3-style chat template) plus ``ceil(bytes / 4)`` of its text content (and of its
  ``tool_calls`` as JSON); the sum is at least 1.

Generated text is one 4-byte filler word per token (``"tok "``), so chunk contents are never
empty and re-counting the output text with the same rule gives the reported token count.

Shapes follow vLLM (0.6 - 0.10): responses and chunks carry ``stop_reason: null`` next to
``finish_reason``; the chat stream's first chunk has ``delta: {"role": "assistant", "content": ""}``
and is sent with the first token (so a client timing the first byte of content sees TTFT); the
last token chunk carries ``finish_reason``; ``stream_options.include_usage`` adds one more chunk
with ``choices: []`` and ``usage``; the stream ends with ``data: [DONE]``. Errors use the OpenAI
envelope ``{"error": {"message", "type", "param", "code"}}``.

The parts the admitter shares (the error envelope and :class:`~schemas.openai.OpenAIError`, SSE
framing and ``[DONE]``, the JSON-integer and token-id rules) come from :mod:`schemas.openai`; the
messages here are the emulator's own (vLLM's wording where a client might match on it). An
emulator error's ``type`` is ``invalid_request_error`` unless given: vLLM does not vary it by status
as the admitter does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from schemas.openai import INVALID_REQUEST, OpenAIError, is_integer, is_token_ids, sse_frame

# The token convention is shared with the load generator, which sizes prompts by it.
from schemas.openai_tokens import BYTES_PER_TOKEN, CHAT_TOKENS_PER_MESSAGE

#: One generated token's text: exactly :data:`BYTES_PER_TOKEN` bytes, so text and counts agree.
FILLER_WORD = "tok "

Kind = Literal["chat", "completion"]


def refuse(status: int, message: str, *, param: str | None = None, code: str | None = None,
           type: str = INVALID_REQUEST) -> OpenAIError:
    """A request the emulator must refuse: the status and OpenAI error fields to send."""
    return OpenAIError(status, message, code, type=type, param=param)


# ----------------------------------------------------------------------------------- counting
def text_tokens(text: str) -> int:
    """Tokens of a prompt string: ``max(1, ceil(utf8 bytes / 4))``."""
    n = len(text.encode("utf-8"))
    return max(1, -(-n // BYTES_PER_TOKEN))


def _content_bytes(content: Any, index: int) -> int:
    """UTF-8 bytes of a message's text, refusing parts a text-only model cannot take (as vLLM does)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    if isinstance(content, list):
        total = 0
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise refuse(400, "only text content parts are supported by this model",
                                param=f"messages.[{index}].content.[{j}]")
            total += len(part["text"].encode("utf-8"))
        return total
    raise refuse(400, "message content must be a string, a list of text parts or null",
                    param=f"messages.[{index}].content")


def chat_prompt_tokens(messages: list[Any]) -> int:
    """Prompt tokens of a chat request (see the module docstring for the rule)."""
    total = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise refuse(400, "each message must be an object with a string 'role'", param=f"messages.[{i}]")
        nbytes = _content_bytes(msg.get("content"), i)
        tool_calls = msg.get("tool_calls")
        if tool_calls:
            nbytes += len(orjson.dumps(tool_calls))
        total += CHAT_TOKENS_PER_MESSAGE + -(-nbytes // BYTES_PER_TOKEN)
    return max(1, total)


def completion_prompt_tokens(prompt: Any) -> int:
    """Prompt tokens of a completions request: a string, one-element list, or token ids.

    Batched prompts (several strings) are refused: they would need one choice per prompt and
    nothing in this project sends them.
    """
    if isinstance(prompt, str):
        return text_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if is_token_ids(prompt):
            return len(prompt)
        if len(prompt) == 1:
            return completion_prompt_tokens(prompt[0])
        raise refuse(400, "batched prompts are not supported by the emulator; send one prompt per request",
                        param="prompt")
    raise refuse(400, "'prompt' must be a non-empty string, list of token ids, or one-element list",
                    param="prompt")


def prompt_text(tokens: int) -> str:
    """A prompt string that counts as exactly ``tokens`` tokens (for load generators and tests)."""
    return FILLER_WORD * max(1, tokens)


def filler_text(n: int) -> str:
    """The text of ``n`` generated tokens."""
    return FILLER_WORD * n


# ------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True, slots=True)
class WireRequest:
    """What the server needs from a chat or completions body; limits are applied by the server.

    ``output_tokens`` is the emulator extension (``"emulator": {"output_tokens": N}``), ``None``
    when absent; ``max_tokens`` is ``None`` when the client did not send one.
    """

    kind: Kind
    model: str | None
    prompt_tokens: int
    max_tokens: int | None
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool
    output_tokens: int | None
    priority: int = 0


def _opt_int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not is_integer(v) or v < minimum:
        raise refuse(400, f"'{key}' must be an integer >= {minimum}", param=key)
    return v


def _opt_bool(body: dict[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise refuse(400, f"'{key}' must be a boolean", param=key)
    return v


def parse_output_tokens_header(value: str | None) -> int | None:
    """The ``x-emulator-output-tokens`` header, validated like the body field."""
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        raise refuse(400, "x-emulator-output-tokens must be an integer >= 1",
                        param="x-emulator-output-tokens") from None
    if n < 1:
        raise refuse(400, "x-emulator-output-tokens must be an integer >= 1", param="x-emulator-output-tokens")
    return n


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or a 400 the client can read."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise refuse(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise refuse(400, "request body must be a JSON object")
    return body


def parse_request(kind: Kind, body: dict[str, Any], output_tokens_header: str | None = None) -> WireRequest:
    """Validate a chat or completions body (the fields the emulator honours; others are ignored)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise refuse(400, "'model' must be a string", param="model")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise refuse(400, "'messages' is required and must be a non-empty list", param="messages")
        prompt_tokens = chat_prompt_tokens(messages)
        max_tokens = _opt_int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _opt_int(body, "max_tokens", 1)
    else:
        if "prompt" not in body or body["prompt"] is None:
            raise refuse(400, "'prompt' is required", param="prompt")
        prompt_tokens = completion_prompt_tokens(body["prompt"])
        max_tokens = _opt_int(body, "max_tokens", 1)
        if body.get("echo"):
            raise refuse(400, "'echo' is not supported by the emulator", param="echo")
    n = _opt_int(body, "n", 1)
    if n is not None and n != 1:
        raise refuse(400, "only n=1 is supported by the emulator", param="n")
    stream = _opt_bool(body, "stream")
    opts = body.get("stream_options")
    include_usage = continuous = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise refuse(400, "'stream_options' must be an object", param="stream_options")
        if not stream:
            raise refuse(400, "stream_options can only be set when stream is true", param="stream_options")
        include_usage = _opt_bool(opts, "include_usage")
        continuous = _opt_bool(opts, "continuous_usage_stats")
    priority = body.get("priority", 0)
    if priority is None:
        priority = 0
    if not is_integer(priority):
        raise refuse(400, "'priority' must be an integer", param="priority")
    ext = body.get("emulator")
    out: int | None = None
    if ext is not None:
        if not isinstance(ext, dict):
            raise refuse(400, "'emulator' must be an object", param="emulator")
        out = _opt_int(ext, "output_tokens", 1)
    if out is None:
        out = parse_output_tokens_header(output_tokens_header)
    return WireRequest(
        kind=kind, model=model, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
        min_tokens=_opt_int(body, "min_tokens", 0) or 0, ignore_eos=_opt_bool(body, "ignore_eos"),
        stream=stream, include_usage=include_usage, continuous_usage=continuous, output_tokens=out,
        priority=priority,
    )


# ---------------------------------------------------------------------------------- responses
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens}


def response_id(kind: Kind, base: str) -> str:
    """vLLM's ids: ``chatcmpl-<X-Request-Id or uuid>`` and ``cmpl-<...>``."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{base}"


def full_response(kind: Kind, rid: str, created: int, model: str, text: str, finish_reason: str | None,
                  prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` or ``text_completion``."""
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None, "finish_reason": finish_reason, "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def stream_chunk(kind: Kind, rid: str, created: int, model: str, *, text: str | None, finish_reason: str | None,
                 role: bool = False, usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """One streamed chunk with one choice; ``role=True`` gives the chat stream's opening delta."""
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish_reason, "stop_reason": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason,
                  "stop_reason": None}
        obj = "text_completion"
    chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def usage_chunk(kind: Kind, rid: str, created: int, model: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    """The ``include_usage`` chunk: empty ``choices``, the request's totals."""
    return {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created, "model": model, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def models_list(model: str, created: int, max_model_len: int) -> dict[str, Any]:
    """``GET /v1/models`` as vLLM answers it (one served model)."""
    return {"object": "list", "data": [{
        "id": model, "object": "model", "created": created, "owned_by": "vllm", "root": model,
        "parent": None, "max_model_len": max_model_len,
    }]}


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return sse_frame(orjson.dumps(obj))
