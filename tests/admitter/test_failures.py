"""Failures: client disconnects, replica errors, refused connections and timeouts."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from schemas.records import Outcome, Phase
from tests.admitter.conftest import auth, chat, closed_port_url, ent, eventually, platform, pool, sse_events


@pytest.fixture(params=["httpx", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_client_disconnect_mid_stream_cancels_upstream_and_releases_at_once(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    live = adm.state.gates["p"].live
    async with adm.client() as c:
        async with c.stream("POST", "/v1/chat/completions", json=chat(stream=True),
                            headers={**auth("acme"), "x-fake-hold": "h", "x-fake-tokens": "50"}) as resp:
            rid = resp.headers["x-request-id"]
            assert (await anext(resp.aiter_lines())).startswith("data: ")
            assert rid in live.reservations
        # Leaving the block closes the connection mid-stream.
        await eventually(lambda: rid not in live.reservations)
        await eventually(lambda: rid in r.aborted)  # the replica's stream was closed too
    finish = (await adm.sink.wait_for(lambda e: e.request_id == rid and e.phase is Phase.FINISH))[0]
    assert finish.outcome is Outcome.CANCELLED
    assert live.seqs_in_flight == 0


async def test_client_disconnect_while_waiting_for_a_replica_releases(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    live = adm.state.gates["p"].live
    async with adm.client() as c:
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await r.wait_reached("h")
        assert live.seqs_in_flight == 1
        task.cancel()
    await eventually(lambda: live.seqs_in_flight == 0 and not live.reservations)
    await adm.sink.wait_for(lambda e: e.outcome is Outcome.CANCELLED)


async def test_client_disconnect_while_queued_leaves_the_queue(replicas, admitter) -> None:
    r = await replicas()
    p = pool(per=(1e6, 1e6, 10), queue={"maxWaitSeconds": 30})
    adm = await admitter(platform([p], [ent("acme", burst=(1e6, 1e6, 1))]), backends={"p": [r.url]})
    gate = adm.state.gates["p"]
    async with adm.client() as c:
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await r.wait_reached("h")
        async with adm.client() as c2:
            queued = asyncio.create_task(c2.post("/v1/chat/completions", json=chat(), headers=auth("acme")))
            await eventually(lambda: gate.waiting == 1)
            queued.cancel()
        await eventually(lambda: gate.waiting == 0)
        r.release("h")
        assert (await held).status_code == 200
    await eventually(lambda: not gate.live.reservations)
    assert len(r.received) == 1


async def test_replica_5xx_is_retried_on_another_replica(replicas, admitter) -> None:
    bad, good = await replicas("bad"), await replicas("good")
    bad.always_status = 500
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [bad.url, good.url]})
    async with adm.client() as c:
        for stream in (False, True, False, True):
            resp = await c.post("/v1/chat/completions", json=chat(stream=stream), headers=auth("acme"))
            assert resp.status_code == 200, resp.text
    assert len(good.received) == 4
    assert bad.received  # tried first at least once (ties rotate), then retried on the good one
    await eventually(lambda: not adm.state.gates["p"].live.reservations)


async def test_every_replica_failing_gives_502_and_releases(replicas, admitter) -> None:
    bad = await replicas("bad")
    bad.always_status = 503
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [bad.url]})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))
    assert resp.status_code == 502
    err = resp.json()["error"]
    assert err["code"] == "upstream_error" and "Traceback" not in resp.text
    await eventually(lambda: not adm.state.gates["p"].live.reservations)
    finish = (await adm.sink.wait_for(lambda e: e.phase is Phase.FINISH))[0]
    assert finish.outcome is Outcome.FAILED and finish.status_code == 502


async def test_refused_connection_gives_502_and_falls_over_to_a_live_replica(replicas, admitter) -> None:
    dead = closed_port_url()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [dead]})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_unavailable"
    await eventually(lambda: not adm.state.gates["p"].live.reservations)

    good = await replicas()
    adm2 = await admitter(platform([pool()], [ent("acme")]), backends={"p": [dead, good.url]})
    async with adm2.client() as c:
        for _ in range(3):
            assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 200
    assert len(good.received) == 3


async def test_replica_timeout_gives_504_and_releases(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]}, read_timeout=0.2)
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(), headers={**auth("acme"), "x-fake-hang": "1"})
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_timeout"
    assert len(r.received) == 1  # not retried: the replica may still be working on it
    await eventually(lambda: not adm.state.gates["p"].live.reservations)


async def test_stream_stalling_after_it_started_ends_with_an_error_event(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]}, read_timeout=0.2)
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(stream=True),
                            headers={**auth("acme"), "x-fake-hold": "never"})
    assert resp.status_code == 200  # the stream had started
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]" and orjson.loads(events[-2])["error"]["code"] == "upstream_timeout"
    r.release("never")
    await eventually(lambda: not adm.state.gates["p"].live.reservations)


async def test_stream_broken_by_the_replica_ends_with_an_error_event(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(stream=True),
                            headers={**auth("acme"), "x-fake-break": "1"})
    events = sse_events(resp.text)
    assert orjson.loads(events[-2])["error"]["code"] == "upstream_error"
    finish = (await adm.sink.wait_for(lambda e: e.phase is Phase.FINISH))[0]
    assert finish.outcome is Outcome.FAILED and finish.output_tokens == 1


async def test_replica_4xx_is_passed_through(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [r.url]})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(), headers={**auth("acme"), "x-fake-status": "400"})
    assert resp.status_code == 400 and resp.json()["error"]["message"] == "fake 400"
    assert len(r.received) == 1


async def test_unconfigured_backends_give_503(admitter) -> None:
    adm = await admitter(platform([pool()], [ent("acme")]))
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_backend"


async def test_httpx_is_happy_with_our_error_bodies(admitter) -> None:
    adm = await admitter(platform([pool()], [ent("acme")]))
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", content=b"{", headers={**auth("acme"),
                                                                          "content-type": "application/json"})
    assert resp.status_code == 400
    assert httpx.Response(400, content=resp.content).json()["error"]["type"] == "invalid_request_error"
