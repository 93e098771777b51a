"""Admission over HTTP: 429 with headers, queue then admit, queue bound, spot preemption, pass-through."""

from __future__ import annotations

import asyncio
import time

import orjson

from schemas.records import Outcome, Phase
from tests.admitter.conftest import auth, chat, ent, eventually, platform, pool, sse_events


def small_pool(conc: float = 1, max_wait: float = 0.0, tick: float = 3600.0, **kw):
    """A pool whose only allocator tick (by default) is the one at start: limits stay where tests put them."""
    return pool(per=(1e6, 1e6, conc), queue={"maxWaitSeconds": max_wait}, tickSeconds=tick, **kw)


async def test_refusal_is_429_with_retry_after_limits_remaining_and_dimension(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([small_pool(conc=10)], [ent("acme", burst=(1e6, 1e6, 1))]), backends={"p": [r.url]})
    async with adm.client() as c:
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await r.wait_reached("h")
        resp = await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))
        assert resp.status_code == 429
        err = resp.json()["error"]
        assert err["type"] == "rate_limit_exceeded" and err["code"] == "concurrency_exhausted"
        assert err["param"] is None and "concurrency" in err["message"]
        h = resp.headers
        assert h["retry-after"].isdigit() and int(h["retry-after"]) >= 1
        assert h["x-tokenpools-exhausted-dimension"] == "concurrency"
        assert h["x-ratelimit-limit-concurrency"] == "1" and h["x-ratelimit-remaining-concurrency"] == "0"
        for dim in ("throughput", "kv", "concurrency"):
            assert f"x-ratelimit-limit-{dim}" in h and f"x-ratelimit-remaining-{dim}" in h
        r.release("h")
        assert (await held).status_code == 200
    refused = [e for e in adm.sink.events if e.outcome is Outcome.REFUSED]
    assert len(refused) == 1 and refused[0].phase is Phase.DECISION
    assert refused[0].refused_dimension.value == "concurrency" and refused[0].status_code == 429
    assert len(r.received) == 1  # the refused request never reached a replica


async def test_throughput_refusal_names_throughput(replicas, admitter) -> None:
    r = await replicas()
    # Bucket depth = 50 tokens/s x 1 s; a request reserves prompt + expected output (max_tokens 40) > 50 - first
    adm = await admitter(platform([small_pool(conc=10)], [ent("acme", burst=(50, 1e6, 10))]), backends={"p": [r.url]})
    async with adm.client() as c:
        first = await c.post("/v1/chat/completions", json=chat(max_tokens=40), headers=auth("acme"))
        second = await c.post("/v1/chat/completions", json=chat(max_tokens=40), headers=auth("acme"))
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.headers["x-tokenpools-exhausted-dimension"] == "throughput"
    assert int(second.headers["retry-after"]) >= 1


async def test_queued_request_is_admitted_when_a_reservation_is_released(replicas, admitter) -> None:
    r = await replicas()
    # A held dimension is expected to free within a tick, so the tick must be within the queue bound;
    # the limit itself stays at the burst ceiling (1 sequence) whatever the ticks do.
    adm = await admitter(platform([small_pool(conc=10, max_wait=30, tick=1.0)], [ent("acme", burst=(1e6, 1e6, 1))]),
                         backends={"p": [r.url]})
    gate = adm.state.gates["p"]
    async with adm.client() as c:
        first = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                           headers={**auth("acme"), "x-fake-hold": "h"}))
        await r.wait_reached("h")
        second = asyncio.create_task(c.post("/v1/chat/completions", json=chat(), headers=auth("acme")))
        await eventually(lambda: gate.waiting == 1)
        assert len(r.received) == 1  # still waiting: nothing sent upstream
        r.release("h")
        assert (await first).status_code == 200
        resp = await second
    assert resp.status_code == 200
    decision = next(e for e in adm.sink.for_request(resp.headers["x-request-id"]) if e.phase is Phase.DECISION)
    assert decision.outcome is Outcome.QUEUED_ADMITTED and decision.queue_wait_s > 0
    assert gate.waiting == 0


async def test_queue_wait_is_bounded_then_429(replicas, admitter) -> None:
    r = await replicas()
    p = pool(per=(1e6, 1e6, 10), queue={"maxWaitSeconds": 0.3}, tickSeconds=0.1)
    adm = await admitter(platform([p], [ent("acme", burst=(1e6, 1e6, 1))]), backends={"p": [r.url]})
    async with adm.client() as c:
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await r.wait_reached("h")
        resp = await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))
        assert resp.status_code == 429
        assert resp.headers["x-tokenpools-exhausted-dimension"] == "concurrency"
        refused = next(e for e in adm.sink.events if e.outcome is Outcome.REFUSED)
        assert refused.queue_wait_s > 0
        assert adm.state.gates["p"].waiting == 0
        r.release("h")
        await held


def preemption_config():
    p = small_pool(conc=1, max_wait=5, reclaim=0.0)
    guaranteed = ent("gold", "guaranteed", guarantee=(1000, 10000, 1), burst=(1000, 10000, 1))
    spot = ent("batch", "spot", burst=(1e6, 1e6, 1))
    return platform([p], [guaranteed, spot])


async def test_guaranteed_arrival_preempts_a_running_spot_stream(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(preemption_config(), backends={"p": [r.url]})
    live = adm.state.gates["p"].live
    live.entitlements["batch"].set_limits(1e6, 1e6, 1, now=time.monotonic())  # spot may fill the pool
    async with adm.client() as c, c.stream("POST", "/v1/chat/completions", json=chat(stream=True),
                                           headers={**auth("batch"), "x-fake-hold": "spot",
                                                    "x-fake-tokens": "50"}) as spot:
        assert spot.status_code == 200
        lines = spot.aiter_lines()
        first = await anext(lines)
        assert first.startswith("data: {")  # the spot stream is under way
        gold = await c.post("/v1/chat/completions", json=chat(), headers=auth("gold"))
        assert gold.status_code == 200  # admitted at once, by preemption
        rest = "\n".join([first] + [line async for line in lines]) + "\n"
    events = sse_events(rest)
    assert events[-1] == "[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "preempted"
    spot_id = spot.headers["x-request-id"]
    await eventually(lambda: spot_id in r.aborted)  # its upstream stream was closed
    finish = (await adm.sink.wait_for(lambda e: e.request_id == spot_id and e.phase is Phase.FINISH))[0]
    assert finish.outcome is Outcome.PREEMPTED and finish.preempted_by == gold.headers["x-request-id"]
    assert adm.state.gates["p"].preemptions == 1
    await eventually(lambda: not live.reservations)


async def test_preempted_before_any_byte_gets_503_with_retry_after(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(preemption_config(), backends={"p": [r.url]})
    live = adm.state.gates["p"].live
    live.entitlements["batch"].set_limits(1e6, 1e6, 1, now=time.monotonic())  # spot may fill the pool
    async with adm.client() as c:
        spot = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                          headers={**auth("batch"), "x-fake-hold": "spot"}))
        await r.wait_reached("spot")  # at the replica, nothing answered yet
        gold = await c.post("/v1/chat/completions", json=chat(), headers=auth("gold"))
        resp = await spot
    assert gold.status_code == 200
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "preempted"
    assert resp.headers["retry-after"].isdigit()


async def test_passthrough_admits_beyond_every_limit_but_still_authenticates(replicas, admitter) -> None:
    r = await replicas()
    adm = await admitter(platform([small_pool(conc=1)], [ent("acme", burst=(1, 1, 1))]), backends={"p": [r.url]},
                         passthrough=True)
    async with adm.client() as c:
        held = [asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                           headers={**auth("acme"), "x-fake-hold": "h"})) for _ in range(3)]
        await eventually(lambda: len(r.received) == 3)
        r.release("h")
        assert [(await t).status_code for t in held] == [200, 200, 200]
        bad = await c.post("/v1/chat/completions", json=chat(), headers=auth("nobody"))
    assert bad.status_code == 401
    outcomes = sorted(e.outcome.value for e in adm.sink.events)
    assert outcomes == ["admitted"] * 3 + ["completed"] * 3
