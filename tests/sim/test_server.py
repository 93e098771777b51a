"""The emulator as vLLM's OpenAI-compatible server: real uvicorn servers on loopback, httpx clients.

Replicas run with a high ``speedup`` so requests finish in milliseconds; nothing here asserts on
wall-clock durations (waits are bounded polls, and hang tests expect a client timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.openai import OpenAIError
from sim import openai_wire as wire
from sim.costmodel import ReplicaCostModel
from sim.server import EmulatorConfig, EmulatorServer, Faults, build_cost_model, start_emulators
from tests.raw import send_chunked

pytestmark = pytest.mark.timeout(60)

FAST = 50.0
MODEL = "llama-3-8b"
VLLM_METRICS = (
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
    "vllm:time_per_output_token_seconds_bucket",
)


@pytest.fixture
async def em() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(2, speedup=FAST) as server:
        yield server


@pytest.fixture
async def client(em: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=em.urls[0], timeout=20) as c:
        yield c


def chat_body(content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def read_sse(response: httpx.Response) -> list[Any]:
    """Events of an SSE body: parsed JSON objects, and the literal "[DONE]"."""
    events: list[Any] = []
    async for line in response.aiter_lines():
        if not line:
            continue
        assert line.startswith("data: ")
        data = line[len("data: "):]
        events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


async def poll(check: Callable[[], Awaitable[bool]], what: str, deadline: float = 10.0) -> None:
    """Wait until ``check()`` holds; a bound, not a timing assertion."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await check():
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/emulator/stats")
    assert r.status_code == 200
    out: dict[str, Any] = r.json()
    return out


# ----------------------------------------------------------------------------- wire format
def test_prompt_token_rule() -> None:
    assert wire.text_tokens("") == 1
    assert wire.text_tokens("abcd") == 1
    assert wire.text_tokens("abcde") == 2
    assert wire.text_tokens("é" * 4) == 2  # 8 UTF-8 bytes
    assert wire.text_tokens(wire.prompt_text(37)) == 37
    msgs = [{"role": "system", "content": "x" * 8}, {"role": "user", "content": [{"type": "text", "text": "abc"}]}]
    assert wire.chat_prompt_tokens(msgs) == 2 * wire.CHAT_TOKENS_PER_MESSAGE + 2 + 1
    assert wire.completion_prompt_tokens([1, 2, 3]) == 3
    assert wire.completion_prompt_tokens(["abcdefgh"]) == 2
    with pytest.raises(OpenAIError):
        wire.completion_prompt_tokens(["a", "b"])
    with pytest.raises(OpenAIError):
        wire.chat_prompt_tokens([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_faults_count_down() -> None:
    f = Faults()
    f.arm(status=500, count=2)
    assert [f.take()[0] for _ in range(3)] == [500, 500, None]
    f.arm(delay_seconds=3.0, count=1)
    assert f.take() == (None, 3.0) and f.take() == (None, 0.0)
    f.arm(fail_rate=1.0, fail_status=503)
    assert f.take()[0] == 503
    f.clear()
    assert f.take() == (None, 0.0)
    with pytest.raises(ValueError):
        f.arm(status=200)


def test_cost_model_options(tmp_path: Any) -> None:
    cost = build_cost_model(kv_tokens=4096, max_num_seqs=10_000)
    assert cost.kv_capacity_tokens == 4096 and cost.max_num_seqs == 10_000 and cost.max_num_batched_tokens == 10_000
    path = tmp_path / "cost.json"
    path.write_text('{"decode_base_ms": 10.0, "kv_capacity_tokens": 1600}')
    assert build_cost_model(path) == ReplicaCostModel(decode_base_ms=10.0, kv_capacity_tokens=1600)
    assert EmulatorConfig(cost_model=ReplicaCostModel(kv_capacity_tokens=1600)).context_length == 1600
    with pytest.raises(ValueError):
        EmulatorConfig(max_model_len=10_000_000)


# ------------------------------------------------------------------------- non-streaming
async def test_chat_non_streaming(client: httpx.AsyncClient) -> None:
    body = chat_body("x" * 40, max_tokens=100, emulator={"output_tokens": 7})
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == MODEL and out["id"].startswith("chatcmpl-")
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "tok " * 7
    assert out["usage"] == {"prompt_tokens": wire.CHAT_TOKENS_PER_MESSAGE + 10, "completion_tokens": 7,
                            "total_tokens": wire.CHAT_TOKENS_PER_MESSAGE + 17}


async def test_completions_non_streaming_header_target(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"model": MODEL, "prompt": wire.prompt_text(30), "max_tokens": 64},
                          headers={"x-emulator-output-tokens": "5", "x-request-id": "req-42"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and out["id"] == "cmpl-req-42"
    assert out["choices"][0]["text"].split() == ["tok"] * 5
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}


async def test_max_tokens_cuts_output(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "emulator": {"output_tokens": 50}})
    out = r.json()
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 3


async def test_concurrent_requests_are_batched(client: httpx.AsyncClient) -> None:
    targets = list(range(1, 31))
    rs = await asyncio.gather(*(
        client.post("/v1/chat/completions", json=chat_body(max_tokens=64, emulator={"output_tokens": n}))
        for n in targets))
    assert [r.json()["usage"]["completion_tokens"] for r in rs] == targets
    s = await stats(client)
    assert s["finished"] == 30 and s["outstanding"] == 0 and s["used_blocks"] == 0
    assert s["steps"] < sum(targets)  # requests shared steps (continuous batching)


# ----------------------------------------------------------------------------- streaming
async def test_chat_streaming_with_usage(client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True}, emulator={"output_tokens": 6})
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = await read_sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:-1]
    assert all(c["choices"][0]["delta"]["content"] for c in content)  # never empty
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == "tok " * 6
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * (len(content) - 1) + ["stop"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert usage["usage"]["prompt_tokens"] == wire.chat_prompt_tokens(body["messages"])
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 6


async def test_completions_streaming_without_usage(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "once upon a time", "stream": True, "max_tokens": 4,
            "emulator": {"output_tokens": 9}}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        events = await read_sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "tok " * 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) == 4  # one engine step per token for a lone request


async def test_continuous_usage_stats(client: httpx.AsyncClient) -> None:
    body = {"prompt": "x", "stream": True, "emulator": {"output_tokens": 3},
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        events = await read_sse(r)
    assert [e["usage"]["completion_tokens"] for e in events[:-1]] == [1, 2, 3, 3]


# --------------------------------------------------------------------- output lengths, limits
async def test_output_length_modes() -> None:
    async with EmulatorServer(1, speedup=FAST, seed=7, mean_output_tokens=20) as em, \
            httpx.AsyncClient(base_url=em.urls[0]) as c:
        lengths = []
        for _ in range(20):
            r = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1000})
            lengths.append(r.json()["usage"]["completion_tokens"])
        assert all(1 <= n <= 1000 for n in lengths) and len(set(lengths)) > 1  # drawn, not fixed
        assert sum(lengths) / len(lengths) < 100  # around the configured mean, far below max_tokens
        r = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 12, "ignore_eos": True})
        assert r.json()["usage"]["completion_tokens"] == 12 and r.json()["choices"][0]["finish_reason"] == "length"
        r = await c.post("/v1/completions", json={"prompt": "x"})  # default max_tokens caps the draw
        assert 1 <= r.json()["usage"]["completion_tokens"] <= 256
    async with EmulatorServer(1, speedup=FAST, output_tokens_mode="max-tokens") as em, \
            httpx.AsyncClient(base_url=em.urls[0]) as c:
        r = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 9, "emulator": {"output_tokens": 2}})
        assert r.json()["usage"]["completion_tokens"] == 9


async def test_context_length_caps_max_tokens() -> None:
    async with start_emulators(1, speedup=FAST, max_model_len=64) as (url,), httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/completions", json={"prompt": wire.prompt_text(60), "max_tokens": 100,
                                                  "emulator": {"output_tokens": 100}})
        assert r.json()["usage"]["completion_tokens"] == 4
        assert r.json()["choices"][0]["finish_reason"] == "length"
        r = await c.post("/v1/completions", json={"prompt": wire.prompt_text(64)})
        assert r.status_code == 400 and "context length" in r.json()["error"]["message"]
        models = (await c.get("/v1/models")).json()
        assert models["data"][0]["max_model_len"] == 64


async def test_priority_field() -> None:
    async with start_emulators(1, speedup=FAST) as (url,), httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/completions", json={"prompt": "x", "priority": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "priority"
    cost = ReplicaCostModel(max_num_seqs=1, scheduling_policy="priority")
    async with start_emulators(1, speedup=FAST, cost_model=cost) as (url,), \
            httpx.AsyncClient(base_url=url, timeout=20) as c, httpx.AsyncClient(base_url=url) as watcher:
        def send(out: int, priority: int) -> asyncio.Task[httpx.Response]:
            body = {"prompt": "x", "max_tokens": 5000, "priority": priority, "emulator": {"output_tokens": out}}
            return asyncio.create_task(c.post("/v1/completions", json=body))

        blocker = send(400, 0)
        await poll(lambda: _has(watcher, running=1), "the blocker to run")
        low = send(100, 10)  # long enough that its finish cannot be mistaken for the short one's
        await poll(lambda: _has(watcher, waiting=1), "the low-priority request to queue")
        high = send(2, -1)
        await poll(lambda: _has(watcher, waiting=2), "the high-priority request to queue")
        done, _ = await asyncio.wait((low, high), return_when=asyncio.FIRST_COMPLETED)
        assert done == {high}
        for t in (blocker, low, high):
            assert (await t).status_code == 200


async def _has(client: httpx.AsyncClient, **expected: int) -> bool:
    s = await stats(client)
    return all(s[k] == v for k, v in expected.items())


# ------------------------------------------------------------------ models, health, metrics
async def test_models_health_version(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "list" and [m["id"] for m in out["data"]] == [MODEL]
    assert out["data"][0]["object"] == "model"
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/version")).status_code == 200
    assert (await client.get("/nope")).status_code == 404


async def test_metrics_use_vllm_names(client: httpx.AsyncClient) -> None:
    for n in (3, 4):
        await client.post("/v1/completions", json={"prompt": wire.prompt_text(10), "emulator": {"output_tokens": n}})
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            assert s.labels.get("model_name") == MODEL
            samples.setdefault(s.name, []).append(s)
    for name in VLLM_METRICS:
        assert name in samples, name

    def value(name: str, **labels: str) -> float:
        return float(sum(s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())))

    assert value("vllm:prompt_tokens_total") == 20
    assert value("vllm:generation_tokens_total") == 7
    assert value("vllm:request_success_total", finished_reason="stop") == 2
    assert value("vllm:time_to_first_token_seconds_count") == 2
    assert value("vllm:e2e_request_latency_seconds_count") == 2
    assert value("vllm:time_per_output_token_seconds_count") == 5  # tokens after the first
    assert value("vllm:num_requests_running") == 0 and value("vllm:gpu_cache_usage_perc") == 0


async def test_replicas_are_independent(em: EmulatorServer) -> None:
    assert len(set(em.urls)) == 2
    async with httpx.AsyncClient(base_url=em.urls[1]) as c:
        await c.post("/v1/completions", json={"prompt": "x", "emulator": {"output_tokens": 2}})
        assert (await stats(c))["finished"] == 1
    async with httpx.AsyncClient(base_url=em.urls[0]) as c:
        assert (await stats(c))["finished"] == 0
        metrics = (await c.get("/metrics")).text
        assert 'vllm:generation_tokens_total{model_name="llama-3-8b"} 0.0' in metrics


# ------------------------------------------------------------------------------- aborts
async def test_stream_disconnect_aborts_in_engine() -> None:
    # real time (speedup 1): the request would run for about a minute if it were not aborted
    async with EmulatorServer(1, speedup=1.0) as em, httpx.AsyncClient(base_url=em.urls[0], timeout=20) as c:
        body = {"prompt": wire.prompt_text(2000), "stream": True, "max_tokens": 6000,
                "emulator": {"output_tokens": 6000}}
        async with c.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break
            s = await stats(c)
            assert s["running"] == 1 and s["used_blocks"] > 0
        # leaving the block closes the connection mid-stream

        async def freed() -> bool:
            s = await stats(c)
            return bool(s["outstanding"] == 0 and s["running"] == 0)
        await poll(freed, "the aborted request to leave the engine")
        s = await stats(c)
        assert s["used_blocks"] == 0 and s["finished"] == 0 and s["aborted"] == 1


async def test_non_streaming_disconnect_aborts_running_and_waiting() -> None:
    cost = ReplicaCostModel(max_num_seqs=1)
    async with EmulatorServer(1, speedup=1.0, cost_model=cost) as em, \
            httpx.AsyncClient(base_url=em.urls[0], timeout=20) as c, \
            httpx.AsyncClient(base_url=em.urls[0], timeout=20) as watcher:
        body = {"prompt": "x", "max_tokens": 6000, "emulator": {"output_tokens": 6000}}
        running = asyncio.create_task(c.post("/v1/completions", json=body))
        waiting = asyncio.create_task(c.post("/v1/completions", json=body))

        async def queued() -> bool:
            s = await stats(watcher)
            return bool(s["running"] == 1 and s["waiting"] == 1)
        await poll(queued, "one running and one waiting request")
        waiting.cancel()

        async def waiting_gone() -> bool:
            return bool((await stats(watcher))["waiting"] == 0)
        await poll(waiting_gone, "the waiting request to be aborted")
        assert (await stats(watcher))["running"] == 1
        running.cancel()

        async def all_gone() -> bool:
            s = await stats(watcher)
            return bool(s["outstanding"] == 0 and s["used_blocks"] == 0)
        await poll(all_gone, "the running request to be aborted")
        for t in (running, waiting):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        assert (await stats(watcher))["finished"] == 0


async def test_admin_abort_ends_stream(client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, max_tokens=8000, emulator={"output_tokens": 8000})
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers={"x-request-id": "victim"}) as r:
        lines = r.aiter_lines()
        first = await anext(lines)
        assert orjson.loads(first[len("data: "):])["id"] == "chatcmpl-victim"
        async with httpx.AsyncClient(base_url=str(client.base_url)) as admin:
            res = await admin.post("/emulator/abort", json={"id": "chatcmpl-victim"})
            assert res.json() == {"id": "chatcmpl-victim", "aborted": True}
        rest = [line async for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert orjson.loads(rest[-2][len("data: "):])["choices"][0]["finish_reason"] == "abort"
    s = await stats(client)
    assert s["outstanding"] == 0 and s["used_blocks"] == 0


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("path", "content", "status", "param"), [
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", b"[1, 2]", 400, None),
    ("/v1/chat/completions", b'{"model": "llama-3-8b"}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"content": "no role"}]}', 400, "messages.[0]"),
    ("/v1/completions", b'{"model": "llama-3-8b"}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "ten"}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "n": 2}', 400, "n"),
    ("/v1/completions", b'{"prompt": "x", "emulator": {"output_tokens": 0}}', 400, "output_tokens"),
    ("/v1/completions", b'{"prompt": "x", "model": "gpt-4"}', 404, "model"),
    ("/v1/chat/completions", b'{"model": "other", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
])
async def test_bad_input(client: httpx.AsyncClient, path: str, content: bytes, status: int, param: str | None) -> None:
    r = await client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert "Traceback" not in r.text


async def test_bad_output_tokens_header(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"prompt": "x"}, headers={"x-emulator-output-tokens": "many"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-emulator-output-tokens"


# ------------------------------------------------------------------------------- faults
async def test_fault_status_then_recovery(client: httpx.AsyncClient) -> None:
    r = await client.post("/emulator/faults", json={"status": 500, "count": 2})
    assert r.status_code == 200 and r.json()["status"] == 500
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json=chat_body(stream=True))
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    r = await client.post("/v1/chat/completions", json=chat_body(emulator={"output_tokens": 2}))
    assert r.status_code == 200
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/emulator/faults", json={"status": 200})).status_code == 400
    assert (await client.post("/emulator/faults", json={"bogus": 1})).status_code == 400


async def test_fault_delay_hangs_until_cleared(em: EmulatorServer, client: httpx.AsyncClient) -> None:
    await client.post("/emulator/faults", json={"delay_seconds": 60, "health_status": 503})
    assert (await client.get("/health")).status_code == 503
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/completions", json={"prompt": "x"}, timeout=0.3)
    assert (await client.delete("/emulator/faults")).json()["delay_seconds"] == 0
    r = await client.post("/v1/completions", json={"prompt": "x", "emulator": {"output_tokens": 1}})
    assert r.status_code == 200 and (await client.get("/health")).status_code == 200
    em.replicas[1].faults.arm(status=503)  # programmatic arming, for in-process tests
    async with httpx.AsyncClient(base_url=em.urls[1]) as other:
        assert (await other.post("/v1/completions", json={"prompt": "x"})).status_code == 503


async def test_fail_rate_option() -> None:
    async with start_emulators(1, speedup=FAST, fail_rate=1.0) as (url,), httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 500 and r.json()["error"]["message"]


# ------------------------------------------------------------------- ports and lifecycle
def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = int(a.getsockname()[1])
            if p >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
            return p
    pytest.skip("no two adjacent free ports")


async def test_consecutive_ports_and_busy_port() -> None:
    base = _free_port_pair()
    async with EmulatorServer(2, port=base, speedup=FAST) as em:
        assert em.urls == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
        with pytest.raises(OSError, match="cannot listen"):
            await EmulatorServer(1, port=base).start()
        async with httpx.AsyncClient() as c:
            for u in em.urls:
                assert (await c.get(u + "/health")).status_code == 200


async def test_add_and_remove_replicas() -> None:
    async with EmulatorServer(1, speedup=FAST) as em, httpx.AsyncClient() as c:
        rep = await em.add_replica()
        assert len(em.urls) == 2 and rep.url == em.urls[1]
        assert (await c.get(rep.url + "/health")).status_code == 200
        body = {"prompt": "x", "stream": True, "max_tokens": 20, "emulator": {"output_tokens": 20}}
        async with c.stream("POST", rep.url + "/v1/completions", json=body) as r:
            lines = r.aiter_lines()
            await anext(lines)
            remove = asyncio.create_task(em.remove_replica(rep))  # drains: the stream still completes
            events = [line async for line in lines if line]
        await remove
        assert events[-1] == "data: [DONE]"
        assert orjson.loads(events[-2][6:])["choices"][0]["finish_reason"] == "stop"
        assert em.urls == [em.replicas[0].url]
        with pytest.raises(httpx.ConnectError):
            await c.get(rep.url + "/health")


async def test_stop_aborts_streams() -> None:
    em = EmulatorServer(1, speedup=FAST)
    (url,) = await em.start()
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        body = {"prompt": "x", "stream": True, "max_tokens": 8000, "emulator": {"output_tokens": 8000}}
        async with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.aiter_lines()
            await anext(lines)
            stopping = asyncio.create_task(em.stop())
            events = [line async for line in lines if line]
        await stopping
    assert events[-1] == "data: [DONE]"
    assert orjson.loads(events[-2][6:])["choices"][0]["finish_reason"] == "abort"


# ------------------------------------------------------------------------------------ CLI
async def test_cli_subprocess_smoke() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenpools.cli", "emulate", "--replicas", "2", "--port", "0", "--speedup", "50",
        "--kv-tokens", "100000", "--max-num-seqs", "32",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        urls = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip() for _ in range(2)]
        assert all(u.startswith("http://127.0.0.1:") for u in urls) and urls[0] != urls[1]
        async with httpx.AsyncClient(timeout=20) as c:
            for u in urls:
                assert (await c.get(u + "/health")).status_code == 200
                r = await c.post(u + "/v1/chat/completions", json=chat_body(emulator={"output_tokens": 3}))
                assert r.json()["usage"]["completion_tokens"] == 3
            s = (await c.get(urls[0] + "/emulator/stats")).json()
            assert s["kv_tokens"] == 100000 and s["max_num_seqs"] == 32
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (await proc.stderr.read()).decode()
    assert "Traceback" not in err


async def test_cli_rejects_bad_options() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenpools.cli", "emulate", "--port", "0", "--speedup", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"speedup" in err and b"Traceback" not in err


# ------------------------------------------------------------------ body limit and slow clients
def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_body_limit_declared_and_chunked() -> None:
    async with EmulatorServer(1, speedup=FAST, max_body_bytes=2000) as em, \
            httpx.AsyncClient(base_url=em.urls[0], timeout=20) as c:
        ok = await c.post("/v1/chat/completions", json=chat_body(emulator={"output_tokens": 2}))
        assert ok.status_code == 200
        declared = await c.post("/v1/chat/completions", content=b"{" + b" " * 3000 + b"}",
                                headers={"content-type": "application/json"})

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" " * 100

        chunked = await c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        faults = await c.post("/emulator/faults", content=b" " * 3000)
    for r in (declared, chunked, faults):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "request_too_large"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(ValueError, match="max_body_bytes"):
        EmulatorConfig(max_body_bytes=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
async def test_a_100_mb_chunked_body_is_refused_without_buffering_it() -> None:
    """Unbounded, the emulator went from 82 to 409 MB; with the (default 4 MiB) running cap it stays put."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenpools.cli", "emulate", "--port", "0", "--speedup", "50",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        async with httpx.AsyncClient(timeout=20) as c:  # warm: first-request allocations are not the body's
            assert (await c.post(url + "/v1/chat/completions", json=chat_body())).status_code == 200
        baseline = _peak_mb(proc.pid)
        host, port = url.removeprefix("http://").split(":")
        raw, sent = await send_chunked(host, int(port), "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                       "Content-Type: application/json\r\n", 100 * 1000 * 1000)
        peak = _peak_mb(proc.pid)
        assert peak - baseline < 40, (baseline, peak, sent)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), raw[:300]
        assert orjson.loads(body)["error"]["code"] == "request_too_large"
        assert sent < 100 * 1000 * 1000  # answered before it was all sent: never read in full
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_slow_clients_are_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admitter's slow-client guard (tokenpools.infra.slow_clients), here with short timeouts."""
    from tokenpools.infra import slow_clients

    monkeypatch.setattr("sim.server.fleet.ConnectionGuard", lambda: slow_clients.ConnectionGuard(
        head_timeout=0.5, body_idle_timeout=0.5, body_timeout=1.0, max_unadmitted=8))
    async with EmulatorServer(1, speedup=FAST) as em:
        port = em.replicas[0].port
        head_r, head_w = await asyncio.open_connection("127.0.0.1", port)
        body_r, body_w = await asyncio.open_connection("127.0.0.1", port)
        head_w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        body_w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000\r\n\r\n" + b"x" * 40)
        try:
            head, body = await asyncio.wait_for(asyncio.gather(head_r.read(), body_r.read()), 30)
        finally:
            head_w.close()
            body_w.close()
    assert head == b""
    status_line, _, payload = body.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 408")
    assert orjson.loads(payload)["error"]["code"] == "request_timeout"


async def test_client_values_are_not_echoed_unbounded(client: httpx.AsyncClient) -> None:
    """The emulator quotes a 1 MB model name, a huge priority and unknown fault fields back only
    clipped, and a long or odd x-request-id is not repeated into the response id."""
    big = "m" * 1_000_000
    r = await client.post("/v1/completions", json={"model": big, "prompt": "hi", "max_tokens": 1})
    assert r.status_code == 404 and len(r.content) < 1000
    r = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "priority": 10**4000})
    assert r.status_code == 400 and len(r.content) < 1000
    r = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1},
                          headers={"x-request-id": "r" * 10_000})
    assert r.status_code == 200 and len(r.json()["id"]) < 100
    r = await client.post("/emulator/faults", json={big: 1})
    assert r.status_code == 400 and len(r.content) < 1000
