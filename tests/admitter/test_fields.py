"""Known request fields are type- and range-checked as the OpenAI API checks them; unknown ones pass.

Each bad case is a 400 with ``param`` naming the field and code ``invalid_type`` (a JSON type the
field never has) or ``invalid_value`` (the right type, out of range), and reaches no replica.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.admitter.conftest import auth, chat, ent, platform, pool
from tests.admitter.test_bad_input import assert_openai_error

T, V = "invalid_type", "invalid_value"

CHAT_BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", V),
    ({"messages": [{"role": "user", "content": "a"}, {"role": 7, "content": "b"}]}, "messages.1.role", T),
    ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages.0.role", T),
    ({"temperature": "hot"}, "temperature", T),
    ({"temperature": True}, "temperature", T),  # a boolean is not a number
    ({"temperature": 2.5}, "temperature", V),
    ({"temperature": -0.1}, "temperature", V),
    ({"top_p": 1.5}, "top_p", V),
    ({"top_p": [1]}, "top_p", T),
    ({"presence_penalty": -3}, "presence_penalty", V),
    ({"frequency_penalty": "0"}, "frequency_penalty", T),
    ({"logprobs": "x"}, "logprobs", T),
    ({"logprobs": 1}, "logprobs", T),  # a flag on chat, not a count
    ({"top_logprobs": 21}, "top_logprobs", V),
    ({"top_logprobs": 2.0}, "top_logprobs", T),
    ({"seed": "42"}, "seed", T),
    ({"seed": 1.5}, "seed", T),
    ({"seed": False}, "seed", T),
    ({"stop": 5}, "stop", T),
    ({"stop": ["a", 1]}, "stop", T),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", V),
    ({"user": 123}, "user", T),
    ({"logit_bias": [1, 2]}, "logit_bias", T),
    ({"logit_bias": {"50256": "ban"}}, "logit_bias.50256", T),
    ({"logit_bias": {"50256": -101}}, "logit_bias.50256", V),
    ({"response_format": "json"}, "response_format", T),
    ({"response_format": {"type": 1}}, "response_format.type", T),
    ({"tools": {"type": "function"}}, "tools", T),
    ({"tools": ["f"]}, "tools", T),
    ({"tool_choice": 1}, "tool_choice", T),
    ({"tool_choice": "sometimes"}, "tool_choice", V),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", T),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", T),
]

CHAT_GOOD: list[dict[str, Any]] = [
    {"temperature": 0}, {"temperature": 2}, {"temperature": 0.7}, {"temperature": None}, {"top_p": 1},
    {"presence_penalty": -2, "frequency_penalty": 2.0}, {"logprobs": True, "top_logprobs": 20}, {"seed": -1},
    {"stop": "\n"}, {"stop": ["a", "b", "c", "d"]}, {"stop": []}, {"user": "u-1"},
    {"logit_bias": {"1": -100, "2": 5.5}},
    {"response_format": {"type": "json_object"}}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"tool_choice": "auto"}, {"tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"messages": [{"role": r, "content": "x"} for r in ("system", "developer", "user", "assistant", "tool",
                                                         "function")]},
    {"some_vllm_extension": "anything", "top_k": "unchecked"},  # unknown fields pass through
    {"echo": "not checked on chat", "suffix": 1},  # completions-only fields are unknown to chat
]

COMPLETIONS_BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"echo": "yes"}, "echo", T),
    ({"suffix": 1}, "suffix", T),
    ({"logprobs": True}, "logprobs", T),  # a count here, not a flag
    ({"logprobs": 6}, "logprobs", V),
    ({"logprobs": "x"}, "logprobs", T),
    ({"temperature": "hot"}, "temperature", T),
    ({"stop": [1]}, "stop", T),
]
COMPLETIONS_GOOD: list[dict[str, Any]] = [{"echo": False, "suffix": "end", "logprobs": 5}, {"logprobs": 0},
                                          {"temperature": 1, "seed": 7, "stop": ["x"]}]


@pytest.fixture
async def gateway(replicas, admitter):
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    async with adm.client() as c:
        yield c, r


def _ids(cases: list[tuple[dict[str, Any], str, str]]) -> list[str]:
    return [f"{param}={next(iter(fields.values()))!r}"[:60] for fields, param, _ in cases]


@pytest.mark.parametrize(("fields", "param", "code"), CHAT_BAD, ids=_ids(CHAT_BAD))
async def test_bad_known_chat_fields_are_400(gateway, fields, param, code) -> None:
    c, r = gateway
    resp = await c.post("/v1/chat/completions", json=chat(**fields), headers=auth("acme"))
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert_openai_error(body, code)
    assert body["error"]["param"] == param
    assert not r.received


@pytest.mark.parametrize("fields", CHAT_GOOD, ids=[",".join(f) for f in CHAT_GOOD])
async def test_good_and_unknown_chat_fields_pass(gateway, fields) -> None:
    c, r = gateway
    resp = await c.post("/v1/chat/completions", json=chat(**fields), headers=auth("acme"))
    assert resp.status_code == 200, resp.text
    assert all(r.received[-1][k] == v for k, v in fields.items())  # forwarded as sent


@pytest.mark.parametrize(("fields", "param", "code"), COMPLETIONS_BAD, ids=_ids(COMPLETIONS_BAD))
async def test_bad_known_completions_fields_are_400(gateway, fields, param, code) -> None:
    c, r = gateway
    resp = await c.post("/v1/completions", json={"model": "p", "prompt": "hi", "max_tokens": 2, **fields},
                        headers=auth("acme"))
    assert resp.status_code == 400, resp.text
    assert_openai_error(resp.json(), code)
    assert resp.json()["error"]["param"] == param
    assert not r.received


@pytest.mark.parametrize("fields", COMPLETIONS_GOOD, ids=[",".join(f) for f in COMPLETIONS_GOOD])
async def test_good_completions_fields_pass(gateway, fields) -> None:
    c, _r = gateway
    resp = await c.post("/v1/completions", json={"model": "p", "prompt": "hi", "max_tokens": 2, **fields},
                        headers=auth("acme"))
    assert resp.status_code == 200, resp.text
