"""The wall-clock driver, sped up (no assertions on wall-clock durations)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from sim.costmodel import ReplicaCostModel
from sim.engine import Engine, Request
from sim.realtime import ModelClock, RealtimeCluster, RealtimeDriver, TokenChunk

A = 5.43


async def test_streams_tokens_for_one_request() -> None:
    async with RealtimeDriver(Engine(), ModelClock(speedup=200.0)) as drv:
        stream = drv.submit(Request("a", 100, 5))
        chunks: list[TokenChunk] = [c async for c in stream]
    assert [c.n for c in chunks] == [1, 1, 1, 1, 1]
    assert [c.total for c in chunks] == [1, 2, 3, 4, 5]
    assert [c.first for c in chunks] == [True, False, False, False, False]
    assert [c.finished for c in chunks] == [False, False, False, False, True]
    res = chunks[-1].result
    assert res is not None and res.output_tokens == 5 and res.finish_reason == "stop"
    assert res.ttft is not None and res.ttft >= A / 1000  # model seconds: at least the prefill step
    assert res.tpot is not None and res.tpot >= (A + 0.0155) / 1000
    assert all(b.time > a.time for a, b in itertools.pairwise(chunks))
    assert drv.outstanding == 0


async def test_abort_ends_stream() -> None:
    drv = RealtimeDriver(Engine(), ModelClock(speedup=100.0))
    drv.start()
    stream = drv.submit(Request("a", 100, 10_000))
    first = await stream.__anext__()
    assert first.first and first.n == 1
    res = drv.abort("a")
    assert res is not None and res.aborted
    rest = [c async for c in stream]
    assert rest[-1].finished and rest[-1].result is not None and rest[-1].result.aborted
    assert drv.engine.used_blocks == 0
    assert drv.abort("a") is None
    await drv.stop()


async def test_cluster_routes_and_generates() -> None:
    async with RealtimeCluster(2, speedup=200.0) as cl:
        streams = [cl.submit(Request(i, 50, 3)) for i in range(4)]
        assert [s.replica for s in streams] == [0, 1, 0, 1]
        results = await asyncio.gather(*(s.result() for s in streams))
        assert [r.output_tokens for r in results] == [3, 3, 3, 3]
        res = await cl.generate(Request("x", 10, 2))
        assert res.output_tokens == 2
        assert cl.outstanding == 0


async def test_cluster_drain_and_startup() -> None:
    cost = ReplicaCostModel()
    async with RealtimeCluster(1, cost, speedup=500.0) as cl:
        new = cl.add_replica(startup_delay=3600.0)  # not ready for a model hour
        s = cl.submit(Request("a", 10, 2))
        assert s.replica == 0
        assert cl.remove_replica(new) == new
        await asyncio.sleep(0)
        assert [d.replica_id for d in cl.replicas] == [0]
        assert (await s.result()).output_tokens == 2
        with pytest.raises(KeyError):
            cl.remove_replica(new)
