"""End to end through the vLLM emulator (sim/server.py): real SSE framing, usage, aborts and faults."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest

from schemas.records import Outcome, Phase
from sim import server
from tests.admitter.conftest import auth, chat, ent, eventually, platform, pool, sse_events


@pytest.fixture(params=["httpx", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def emulators():
    started = []

    async def start(n: int = 1, **kw):
        em = server.EmulatorServer(n, model="llama", **kw)
        await em.start()
        started.append(em)
        return em

    yield start
    for em in started:
        await em.stop()


async def test_stream_and_json_through_the_emulator_with_exact_usage(emulators, admitter) -> None:
    em = await emulators(2, speedup=200)
    adm = await admitter(platform([pool("llama")], [ent("acme", pool_name="llama")]), backends={"llama": em.urls})
    async with adm.client() as c:
        resp = await c.post("/v1/chat/completions", json=chat(model="llama", max_tokens=64),
                            headers={**auth("acme"), "x-emulator-output-tokens": "12"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 12
        stream = await c.post("/v1/chat/completions", json=chat(model="llama", max_tokens=64, stream=True),
                              headers={**auth("acme"), "x-emulator-output-tokens": "9"})
        assert stream.status_code == 200
    events = sse_events(stream.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(ch["choices"] for ch in chunks)  # the usage chunk the client did not ask for was dropped
    rid = stream.headers["x-request-id"]
    finish = (await adm.sink.wait_for(lambda e: e.request_id == rid and e.phase is Phase.FINISH))[0]
    assert finish.output_tokens == 9 and finish.prompt_tokens > 0 and finish.outcome is Outcome.COMPLETED
    await eventually(lambda: not adm.state.gates["llama"].live.reservations)


async def test_preempted_spot_stream_is_aborted_in_the_emulator(emulators, admitter) -> None:
    em = await emulators(1, speedup=1)  # real time: the spot stream runs for seconds
    p = pool("llama", per=(1e6, 1e6, 1), reclaim=0.0, queue={"maxWaitSeconds": 5}, tickSeconds=3600.0)
    ents = [ent("gold", "guaranteed", pool_name="llama", guarantee=(1e4, 1e5, 1), burst=(1e4, 1e5, 1)),
            ent("batch", "spot", pool_name="llama", burst=(1e6, 1e6, 1))]
    adm = await admitter(platform([p], ents), backends={"llama": em.urls})
    adm.state.gates["llama"].live.entitlements["batch"].set_limits(1e6, 1e6, 1, now=time.monotonic())
    replica = em.replicas[0]
    async with adm.client() as c, c.stream("POST", "/v1/chat/completions",
                                           json=chat(model="llama", max_tokens=2000, stream=True),
                                           headers={**auth("batch"), "x-emulator-output-tokens": "2000"}) as spot:
        lines = spot.aiter_lines()
        assert (await anext(lines)).startswith("data: {")
        gold = await c.post("/v1/chat/completions", json=chat(model="llama", max_tokens=8),
                            headers={**auth("gold"), "x-emulator-output-tokens": "4"})
        assert gold.status_code == 200
        rest = [line async for line in lines]
    events = sse_events("\n".join(rest) + "\n")
    assert orjson.loads(events[-2])["error"]["code"] == "preempted"
    await eventually(lambda: replica.stats()["aborted"] >= 1)  # the engine freed the spot request's KV


async def test_injected_500_is_retried_on_the_other_replica(emulators, admitter) -> None:
    em = await emulators(2, speedup=200)
    adm = await admitter(platform([pool("llama")], [ent("acme", pool_name="llama")]), backends={"llama": em.urls})
    async with httpx.AsyncClient() as raw:
        for url in em.urls:
            armed = await raw.post(f"{url}/emulator/faults", json={"status": 500, "count": 1})
            assert armed.status_code == 200
    async with adm.client() as c:
        results = await asyncio.gather(*(c.post("/v1/chat/completions", json=chat(model="llama", max_tokens=8),
                                                headers={**auth("acme"), "x-emulator-output-tokens": "2"})
                                         for _ in range(4)))
    assert [r.status_code for r in results] == [200] * 4
