"""Proxying through real servers: routing by key and model, JSON and SSE relay, usage, release, events."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from schemas.records import Outcome, Phase, RequestEvent
from tests.admitter.conftest import auth, chat, ent, eventually, platform, pool, sse_events


@pytest.fixture(params=["httpx", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_non_streaming_is_relayed_and_the_reservation_corrected(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(), headers={**auth("acme"), "x-fake-tokens": "5"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    rid = resp.headers["x-request-id"]
    assert r.received[0]["model"] == "p" and r.headers[0]["x-request-id"] == rid
    assert "authorization" not in r.headers[0]  # the tenant key never goes upstream
    live = adm.state.gates["p"].live
    await eventually(lambda: not live.reservations)
    assert live.seqs_in_flight == 0 and live.kv_in_flight == 0
    events = await adm.sink.wait_for(lambda e: e.request_id == rid and e.phase is Phase.FINISH)
    finish = events[0]
    assert finish.outcome is Outcome.COMPLETED and finish.prompt_tokens == 7 and finish.output_tokens == 5
    assert finish.tenant == "acme" and finish.entitlement == "acme" and finish.pool == "p"
    assert finish.status_code == 200 and finish.latency_s is not None
    decision = [e for e in adm.sink.for_request(rid) if e.phase is Phase.DECISION]
    assert [d.outcome for d in decision] == [Outcome.ADMITTED]
    assert decision[0].max_tokens == 16 and decision[0].reserved.concurrency == 1


async def test_streaming_relays_every_event_and_strips_usage_the_client_did_not_ask_for(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    async with adm.client() as c, c.stream("POST", "/v1/chat/completions", json=chat(stream=True),
                                           headers={**auth("acme"), "x-fake-tokens": "4"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.aread()).decode()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) == 4 and all(ch["choices"] for ch in chunks)
    # The admitter asked upstream for usage anyway and learned it.
    assert r.received[0]["stream_options"] == {"include_usage": True}
    rid = resp.headers["x-request-id"]
    finish = (await adm.sink.wait_for(lambda e: e.request_id == rid and e.phase is Phase.FINISH))[0]
    assert finish.output_tokens == 4 and finish.prompt_tokens == 7 and finish.ttft_s is not None


async def test_streaming_keeps_the_usage_chunk_when_asked(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    body = chat(stream=True, stream_options={"include_usage": True})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=body, headers={**auth("acme"), "x-fake-tokens": "2"})
    events = sse_events(resp.text)
    usage_chunk = orjson.loads(events[-2])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 2


async def test_text_completions_and_model_alias_by_pool_name(replicas, admitter) -> None:
    r = await replicas()
    p = pool("small", model="org/model-7b")
    adm = await admitter(platform([p], [ent("acme", pool_name="small")]), backends={"small": [r.url]})
    async with adm.client() as c:
        resp = await c.post("/v1/completions", json={"model": "small", "prompt": "once upon", "max_tokens": 4},
                            headers=auth("acme"))
        models = await c.get("/v1/models", headers=auth("acme"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"]
    assert r.received[0]["model"] == "org/model-7b"  # routed by pool name, sent with the served model name
    assert [m["id"] for m in models.json()["data"]] == ["org/model-7b"]


async def test_least_loaded_replica_gets_the_next_request(replicas, admitter) -> None:
    a, b = await replicas("a"), await replicas("b")
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [a.url, b.url]})
    async with adm.client() as c:
        first = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                           headers={**auth("acme"), "x-fake-hold": "h1"}))
        await eventually(lambda: len(a.received) + len(b.received) == 1)
        busy, idle = (a, b) if a.received else (b, a)
        for _ in range(3):  # each finishes before the next: the busy replica keeps 1 outstanding
            resp = await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))
            assert resp.status_code == 200
        assert len(idle.received) == 3 and len(busy.received) == 1
        busy.release("h1")
        assert (await first).status_code == 200


async def test_estimator_learns_from_reported_usage(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    gate = adm.state.gates["p"]
    before = gate.estimator.bytes_per_token
    async with adm.client() as c:
        for _ in range(3):
            # 400 bytes of content reported as 200 prompt tokens: 2 bytes/token, below the prior of 4
            await c.post("/v1/chat/completions", json=chat(text="x" * 396),
                         headers={**auth("acme"), "x-fake-prompt-tokens": "200"})
    await eventually(lambda: gate.estimator.bytes_per_token < before)


async def test_every_emitted_event_is_a_valid_record(replicas, admitter) -> None:
    """Events are built without validation on the hot path; they must still match the schema."""
    r = await replicas()
    adm = await admitter(platform([pool(queue={"maxWaitSeconds": 0})], [ent("acme", burst=(1e6, 1e6, 1))]),
                         backends={"p": [r.url]})
    async with adm.client() as c:
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(stream=True),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await r.wait_reached("h")
        assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 429
        r.release("h")
        await held
        assert (await c.post("/v1/completions", json={"model": "p", "prompt": "x", "max_tokens": 2},
                             headers=auth("acme"))).status_code == 200
    await eventually(lambda: len(adm.sink.finished()) == 2)
    events = list(adm.sink.events)
    assert len(events) == 5 and len({e.id for e in events}) == 5
    for event in events:
        again = RequestEvent.model_validate_json(event.model_dump_json())
        assert again == event
