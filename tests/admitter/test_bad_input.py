"""Bad input gets the right 4xx in the OpenAI error shape, never a stack trace, and reaches no replica."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admitter.conftest import auth, chat, ent, key_for, platform, pool

JSON = {"content-type": "application/json"}


@pytest.fixture
async def gateway(replicas, admitter):
    r = await replicas()
    other = pool("other")
    adm = await admitter(platform([pool(), other], [ent("acme"), ent("globex", pool_name="other")]),
                         backends={"p": [r.url], "other": [r.url]}, max_body_bytes=2048)
    async with adm.client() as c:
        yield c, r


CASES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("malformed json", {"content": b'{"model": "p", "messages": [', "headers": JSON}, 400, "invalid_json"),
    ("json not an object", {"content": b"[1, 2]", "headers": JSON}, 400, "invalid_json"),
    ("missing model", {"json": {"messages": [{"role": "user", "content": "hi"}]}}, 400, "missing_required_parameter"),
    ("missing messages", {"json": {"model": "p"}}, 400, "missing_required_parameter"),
    ("empty messages", {"json": {"model": "p", "messages": []}}, 400, "invalid_value"),
    ("message without role", {"json": {"model": "p", "messages": [{"content": "x"}]}}, 400, "invalid_value"),
    ("bad max_tokens", {"json": chat(max_tokens=0)}, 400, "invalid_value"),
    ("string max_tokens", {"json": {**chat(), "max_tokens": "10"}}, 400, "invalid_value"),
    ("bad stream flag", {"json": {**chat(), "stream": "yes"}}, 400, "invalid_value"),
    ("n > 1", {"json": {**chat(), "n": 2}}, 400, "invalid_value"),
    ("unknown model", {"json": chat(model="no-such-model")}, 404, "model_not_found"),
    ("max_tokens over context", {"json": chat(max_tokens=5000)}, 400, "context_length_exceeded"),
    ("wrong content type", {"content": b"model=p", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     415, "unsupported_media_type"),
    ("no content type", {"content": b'{"model": "p"}', "headers": {"content-type": ""}}, 415,
     "unsupported_media_type"),
    ("body over the limit", {"json": chat(text="x" * 4000)}, 413, "request_too_large"),
]


@pytest.mark.parametrize(("kwargs", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_chat_input(gateway, kwargs, status, code) -> None:
    c, r = gateway
    headers = {**auth("acme"), **kwargs.pop("headers", {})}
    resp = await c.post("/v1/chat/completions", headers=headers, **kwargs)
    assert resp.status_code == status, resp.text
    assert_openai_error(resp.json(), code)
    assert not r.received


def assert_openai_error(body: dict[str, Any], code: str | None) -> None:
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and "Traceback" not in err["message"]
    assert err["code"] == code


async def test_missing_prompt_on_completions(gateway) -> None:
    c, _r = gateway
    resp = await c.post("/v1/completions", json={"model": "p", "max_tokens": 3}, headers=auth("acme"))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"


async def test_estimated_prompt_over_context_is_400(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool(contextLength=100)], [ent("acme")]), backends={"p": [r.url]})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(text="word " * 200, max_tokens=10), headers=auth("acme"))
        ids = await c.post("/v1/completions", json={"model": "p", "prompt": list(range(101)), "max_tokens": 1},
                           headers=auth("acme"))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    assert resp.json()["error"]["param"] == "messages"
    assert ids.status_code == 400 and ids.json()["error"]["param"] == "prompt"
    assert not r.received


async def test_declared_content_length_over_the_limit_is_413_without_reading(gateway) -> None:
    c, _r = gateway

    async def body():
        yield b'{"model": "p", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}]}'

    # Chunked (no Content-Length): the running count catches it.
    resp = await c.post("/v1/chat/completions", content=body(), headers={**auth("acme"), **JSON})
    assert resp.status_code == 413
    # Declared length over the limit: refused from the header.
    resp = await c.post("/v1/chat/completions", content=b"x" * 3000, headers={**auth("acme"), **JSON})
    assert resp.status_code == 413


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong-key", f"Basic {key_for('acme')}",
                                           f"Token {key_for('acme')}"])
async def test_missing_or_invalid_key_is_401(gateway, authorization) -> None:
    c, _r = gateway
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await c.post("/v1/chat/completions", json=chat(), headers=headers)
    assert resp.status_code == 401
    assert_openai_error(resp.json(), "invalid_api_key")
    assert resp.json()["error"]["type"] == "authentication_error"


async def test_key_without_entitlement_on_that_pool_is_403(gateway) -> None:
    c, _r = gateway
    resp = await c.post("/v1/chat/completions", json=chat(model="other"), headers=auth("acme"))
    assert resp.status_code == 403
    assert_openai_error(resp.json(), "no_entitlement")


async def test_auth_is_checked_before_the_body(gateway) -> None:
    c, _r = gateway
    resp = await c.post("/v1/chat/completions", content=b"{", headers=JSON)
    assert resp.status_code == 401


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/chat/completions", 405), ("GET", "/v1/nowhere", 404), ("POST", "/v1/embeddings", 404)])
async def test_unknown_routes_and_methods_answer_in_the_openai_shape(gateway, method, path, status) -> None:
    c, _r = gateway
    resp = await c.request(method, path, headers=auth("acme"))
    assert resp.status_code == status
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
