"""Finish events name the replica that served the request and what the entitlement was charged in the end.

Through the vLLM emulator (``sim.server``) and the scriptable fake replica (``conftest.FakeReplica``),
on real loopback servers. The charge is computed here from the response's own ``usage`` and the pool
spec's token weights (deliberately not 1:1), never read back from the admitter's state; it is also
checked against the entitlement's ``used_tp`` accumulator, which ``PoolLive.release`` corrects.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from schemas.records import Outcome, Phase, RequestEvent
from schemas.specs import TokenPool
from sim import server
from tests.admitter.conftest import auth, chat, ent, eventually, platform, pool, sse_events

W_IN, W_OUT = 0.5, 3.0


def weighted_pool(name: str = "llama", **kw: Any) -> TokenPool:
    return pool(name, tokenWeights={"input": W_IN, "output": W_OUT}, **kw)


def weighted(p: TokenPool, prompt: int, output: int) -> float:
    w = p.spec.token_weights
    return w.input * prompt + w.output * output


@pytest.fixture(params=["httpx", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def emulators():
    started = []

    async def start(n: int = 1, **kw: Any) -> server.EmulatorServer:
        em = server.EmulatorServer(n, model="llama", **kw)
        await em.start()
        started.append(em)
        return em

    yield start
    for em in started:
        await em.stop()


async def finish_of(adm: Any, rid: str) -> RequestEvent:
    event = (await adm.sink.wait_for(lambda e: e.request_id == rid and e.phase is Phase.FINISH))[0]
    RequestEvent.model_validate(orjson.loads(orjson.dumps(event.model_dump(mode="json"))))  # a valid record
    return event


async def decision_of(adm: Any, rid: str) -> RequestEvent:
    return (await adm.sink.wait_for(lambda e: e.request_id == rid and e.phase is Phase.DECISION))[0]


async def test_json_and_stream_through_the_emulator_carry_replica_and_weighted_charge(emulators, admitter) -> None:
    em = await emulators(1, speedup=200)
    p = weighted_pool()
    adm = await admitter(platform([p], [ent("acme", pool_name="llama")]), backends={"llama": em.urls})
    async with adm.client() as c:
        plain = await c.post("/v1/chat/completions", json=chat(model="llama", max_tokens=64),
                             headers={**auth("acme"), "x-emulator-output-tokens": "12"})
        assert plain.status_code == 200, plain.text
        stream = await c.post("/v1/chat/completions",
                              json=chat(model="llama", max_tokens=64, stream=True,
                                        stream_options={"include_usage": True}),
                              headers={**auth("acme"), "x-emulator-output-tokens": "9"})
        assert stream.status_code == 200, stream.text
    usage_plain = plain.json()["usage"]
    usage_stream = next(orjson.loads(e)["usage"] for e in sse_events(stream.text)[:-1] if orjson.loads(e).get("usage"))
    expected_total = 0.0
    for resp, usage in ((plain, usage_plain), (stream, usage_stream)):
        rid = resp.headers["x-request-id"]
        finish = await finish_of(adm, rid)
        assert finish.outcome is Outcome.COMPLETED
        assert finish.replica == em.urls[0]
        expected = weighted(p, usage["prompt_tokens"], usage["completion_tokens"])
        assert expected > 0
        assert finish.charged is not None
        assert finish.charged.throughput == pytest.approx(expected, rel=1e-12)
        # What the request held: its reservation's KV (the prompt as estimated at admission + max_tokens)
        # and one sequence.
        decision = await decision_of(adm, rid)
        assert finish.charged.kv == finish.reserved.kv == decision.prompt_tokens + 64
        assert finish.charged.concurrency == 1.0
        expected_total += expected
        assert decision.replica == "" and decision.charged is None
    live = adm.state.gates["llama"].live
    await eventually(lambda: not live.reservations)
    assert live.entitlements["acme"].used_tp == pytest.approx(expected_total, rel=1e-12)


async def test_each_finish_names_the_replica_that_served_it(admitter, replicas) -> None:
    a, b = await replicas("a"), await replicas("b")
    p = weighted_pool("p")
    adm = await admitter(platform([p], [ent("acme")]), backends={"p": [a.url, b.url]})
    async with adm.client() as c:
        answers = await asyncio.gather(*(
            c.post("/v1/chat/completions", json=chat(max_tokens=32),
                   headers={**auth("acme"), "x-fake-tokens": str(2 + i), "x-fake-prompt-tokens": str(5 + i)})
            for i in range(6)))
    assert [r.status_code for r in answers] == [200] * 6
    served_by = {rid: fake.url for fake in (a, b) for rid in fake.finished}
    assert set(served_by.values()) == {a.url, b.url}  # both served some: the test can tell them apart
    for resp in answers:
        rid = resp.headers["x-request-id"]
        finish = await finish_of(adm, rid)
        assert finish.replica == served_by[rid]
        usage = resp.json()["usage"]
        assert finish.charged is not None
        assert finish.charged.throughput == pytest.approx(
            weighted(p, usage["prompt_tokens"], usage["completion_tokens"]), rel=1e-12)


async def test_a_retried_request_names_the_replica_that_answered(admitter, replicas) -> None:
    broken, good = await replicas("broken"), await replicas("good")
    broken.always_status = 500
    p = weighted_pool("p")
    adm = await admitter(platform([p], [ent("acme")]), backends={"p": [broken.url, good.url]})
    async with adm.client() as c:
        answers = [await c.post("/v1/chat/completions", json=chat(max_tokens=16),
                                headers={**auth("acme"), "x-fake-tokens": "4"}) for _ in range(3)]
    assert [r.status_code for r in answers] == [200] * 3
    assert broken.received  # at least one was tried there first
    for resp in answers:
        finish = await finish_of(adm, resp.headers["x-request-id"])
        assert finish.replica == good.url
        usage = resp.json()["usage"]
        assert finish.charged.throughput == pytest.approx(weighted(p, usage["prompt_tokens"], 4), rel=1e-12)


async def test_a_replica_4xx_charges_nothing_on_throughput(admitter, replicas) -> None:
    fake = await replicas()
    p = weighted_pool("p")
    adm = await admitter(platform([p], [ent("acme")]), backends={"p": [fake.url]})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(max_tokens=16),
                            headers={**auth("acme"), "x-fake-status": "400"})
    assert resp.status_code == 400
    finish = await finish_of(adm, resp.headers["x-request-id"])
    assert finish.replica == fake.url
    assert finish.charged is not None
    assert finish.charged.throughput == 0.0  # the replica rejected it without doing any work
    assert finish.charged.kv == finish.reserved.kv and finish.charged.concurrency == 1.0


async def test_unknown_usage_keeps_the_reserved_charge(admitter, replicas) -> None:
    """The client leaves while the replica holds the answer: nothing reported, the reservation's charge stays."""
    fake = await replicas()
    p = weighted_pool("p")
    adm = await admitter(platform([p], [ent("acme")]), backends={"p": [fake.url]})
    async with adm.client() as c:
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat(max_tokens=40),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await fake.wait_reached("h")
        task.cancel()
        with pytest.raises((asyncio.CancelledError, httpx.HTTPError)):
            await task
    finish = (await adm.sink.wait_for(lambda e: e.phase is Phase.FINISH))[0]
    fake.release("h")
    assert finish.outcome is Outcome.CANCELLED
    assert finish.replica == fake.url
    assert finish.charged is not None
    assert finish.charged.throughput == finish.reserved.throughput > 0
    assert finish.charged.kv == finish.reserved.kv


async def test_no_replica_picked_leaves_replica_empty(admitter) -> None:
    p = weighted_pool("p")
    adm = await admitter(platform([p], [ent("acme")]), backends={})
    adm.state.upstream.replicas.pop("p", None)  # a pool without replicas: NoReplica before any pick
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(max_tokens=16), headers=auth("acme"))
    assert resp.status_code >= 500
    finish = await finish_of(adm, resp.headers["x-request-id"])
    assert finish.outcome is Outcome.FAILED
    assert finish.replica == ""
    assert finish.charged is not None and finish.charged.throughput == finish.reserved.throughput


async def test_passthrough_charges_nothing(admitter, replicas) -> None:
    fake = await replicas()
    adm = await admitter(platform([weighted_pool("p")], [ent("acme")]), backends={"p": [fake.url]}, passthrough=True)
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(max_tokens=16), headers=auth("acme"))
    assert resp.status_code == 200
    finish = await finish_of(adm, resp.headers["x-request-id"])
    assert finish.replica == fake.url
    assert finish.charged is not None and finish.charged.as_tuple() == (0.0, 0.0, 0.0)


async def test_a_preempted_request_keeps_its_reserved_charge(admitter, replicas) -> None:
    """``decide`` releases a victim without usage (the reserved charge stays); the finish event says so."""
    fake = await replicas()
    p = weighted_pool("p", per=(1e6, 1e6, 1), reclaim=0.0, queue={"maxWaitSeconds": 5}, tickSeconds=3600.0)
    ents = [ent("gold", "guaranteed", guarantee=(1e4, 1e5, 1), burst=(1e4, 1e5, 1)),
            ent("batch", "spot", burst=(1e6, 1e6, 1))]
    adm = await admitter(platform([p], ents), backends={"p": [fake.url]})
    adm.state.gates["p"].live.entitlements["batch"].set_limits(1e6, 1e6, 1, now=time.monotonic())
    async with adm.client() as c, c.stream("POST", "/v1/chat/completions", json=chat(max_tokens=200, stream=True),
                                           headers={**auth("batch"), "x-fake-hold": "spot"}) as spot:
        lines = spot.aiter_lines()
        assert (await anext(lines)).startswith("data: {")
        gold = await c.post("/v1/chat/completions", json=chat(max_tokens=8), headers=auth("gold"))
        assert gold.status_code == 200
        rid = spot.headers["x-request-id"]
        _ = [line async for line in lines]
    fake.release("spot")
    finish = await finish_of(adm, rid)
    assert finish.outcome is Outcome.PREEMPTED
    assert finish.replica == fake.url
    assert finish.charged is not None
    assert finish.charged.throughput == finish.reserved.throughput > 0
    gold_finish = await finish_of(adm, gold.headers["x-request-id"])
    usage = gold.json()["usage"]
    assert gold_finish.charged.throughput == pytest.approx(
        weighted(p, usage["prompt_tokens"], usage["completion_tokens"]), rel=1e-12)
