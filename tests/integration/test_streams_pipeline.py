"""The metering pipeline against a real Kafka: Faust workers as subprocesses (`tokenpools streams worker`).

Each test isolates itself with a topic prefix (every topic and the app id get it) and uses short
windows (1 s tumbling, 3 s hopping every 1 s) and a 0.25 s pool tick so numbers settle in seconds.
Counts are checked exactly through the cumulative totals stage 1 sends with every summary, and the
published states against the trailing window that holds the events (its peak: every event inside).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from schemas import topics
from schemas.loader import parse_manifest
from schemas.records import EntitlementState, Outcome, PoolState, RequestEvent
from schemas.topics import config_value
from tests.integration.harness import (
    ENT_YAML,
    Kafka,
    Worker,
    eventually,
    request_pair,
    totals_are,
    write_config,
)

pytestmark = pytest.mark.integration
W = 5.0  # the trailing window (the harness's 1 s one shows events for only ~1 s after their timestamp)
WINDOW = ("--tumbling-seconds", str(W))


# ---------------------------------------------------------------------------------------------


async def test_events_in_states_out_with_duplicates_and_bad_records(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    config = write_config(tmp_path / "config.yaml", {"p": [("g", "guaranteed"), ("e1", "elastic"), ("e2", "elastic")]})
    # A 5 s trailing window: the events stay wholly inside it for 4.5 s, so some tick sees all of them even
    # when a loaded machine delays them.
    w = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log", *WINDOW).start()
    workers.append(w)
    await w.wait_ready()

    # Bad records on every topic the pipeline reads come first; good ones follow.
    await kafka_io.send(topics.REQUESTS, b"{not json", b"e1")
    await kafka_io.send(topics.REQUESTS, b'{"schema_version": 99}', b"e1")
    await kafka_io.send(topics.CONFIG, b"\xff\xfe", b"TokenPool/q")
    await kafka_io.send(topics.REPLICAS, b'{"schema_version": 1, "pool": "p", "ready_replicas": -3}', b"p")
    await kafka_io.send(topics.ENTITLEMENT_USAGE, b"[1, 2]", b"p")

    t0 = time.time()
    events = []
    for i in range(20):
        events += request_pair("e1", "p", "elastic", t0, prompt=100, output=40, admitter_id=f"adm-{i % 2}")
    for _ in range(10):
        events += request_pair("e2", "p", "elastic", t0, prompt=200, output=10)
    for _ in range(5):
        events += request_pair("e2", "p", "elastic", t0, outcome=Outcome.REFUSED)
    await kafka_io.publish(events)
    await kafka_io.publish(events[:10])  # at-least-once upstream: the same ids again
    # Good records after the bad ones on the config and replica topics take effect.
    await kafka_io.send(topics.REPLICAS, orjson.dumps({"schema_version": 1, "pool": "p", "ready_replicas": 3}), b"p")
    late = ENT_YAML % {"name": "e3", "pool": "p", "tier": "spot", "guarantee": "{}"}
    await kafka_io.send(topics.CONFIG, config_value(parse_manifest(yaml.safe_load(late))), b"Entitlement/e3")

    await eventually(totals_are(kafka_io, {
        "e1": {"events": 40, "duplicates": 10, "decisions": 20, "admitted": 20, "finished": 20,
               "prompt_tokens": 2000, "output_tokens": 800},
        "e2": {"events": 25, "duplicates": 0, "decisions": 15, "refused": 5, "prompt_tokens": 2000,
               "output_tokens": 100},
    }), within=40)

    # The trailing window holding t0 reaches the allocator: at its peak, usage and demand of all the events
    # per second of the window, exactly; never more; and back to zero once the window has passed.
    async def window_gone() -> list[EntitlementState]:
        states = [s for s in await kafka_io.states() if s.id == "e1"]
        peak = max(range(len(states)), key=lambda i: states[i].usage.throughput)
        return states if states[peak].usage.throughput > 0 and states[-1].usage.throughput == 0 else []

    states = await eventually(window_gone, within=30)
    e1 = max(states, key=lambda s: s.usage.throughput)
    assert e1.usage.throughput == pytest.approx((0.5 * 2000 + 800) / W)  # weighted tokens per second
    assert e1.usage.kv == pytest.approx(20 * 200 * 0.5 / W)  # 20 requests held kv=200 for 0.5 s
    assert e1.demand.throughput == pytest.approx(20 * (0.5 * 100 + 40) / W)
    assert max(s.demand.throughput for s in states) == pytest.approx(e1.demand.throughput)
    assert set(e1.admitter_shares) == {"adm-0", "adm-1"}
    assert sum(a.throughput for a in e1.admitter_shares.values()) == pytest.approx(e1.limits.throughput)
    e2 = max((s for s in await kafka_io.states() if s.id == "e2"), key=lambda s: s.demand.throughput)
    refused_tp = 5 * (0.5 * 100 + 40)
    assert e2.demand.throughput == pytest.approx((10 * (0.5 * 200 + 10) + refused_tp) / W)  # refused work is demand

    async def pool_after_report() -> list[PoolState]:
        return [p for p in await kafka_io.pool_states() if p.ready_replicas == 3]

    (await eventually(pool_after_report, within=20))
    pools = await kafka_io.pool_states()
    assert pools[0].ready_replicas == 1 and pools[-1].capacity.throughput == 3000
    assert [p.seq for p in pools] == sorted(p.seq for p in pools)
    assert any(s.id == "e3" for s in await kafka_io.states())

    metrics = await w.metrics()
    assert metrics[("tokenpools_streams_events_total", (("verdict", "duplicate"),))] == 10
    assert metrics[("tokenpools_streams_events_total", (("verdict", "new"),))] == 65

    def bad(topic: str, reason: str) -> float:
        return metrics.get(("tokenpools_streams_bad_records_total",
                            (("reason", reason), ("topic", prefix + topic))), 0.0)

    assert bad(topics.REQUESTS, "not_json") == 1
    assert bad(topics.REQUESTS, "unknown_schema_version") == 1
    assert bad(topics.CONFIG, "not_json") == 1
    assert bad(topics.REPLICAS, "invalid") == 1
    assert bad(topics.ENTITLEMENT_USAGE, "not_an_object") == 1
    assert "skipping bad record on" in w.tail()


async def test_worker_killed_and_restarted_loses_and_doubles_nothing_and_keeps_debt(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    config = write_config(tmp_path / "config.yaml", {"p": [("hog", "elastic"), ("idle", "elastic")]})
    # A long commit interval: after the kill, up to 5 s of events are redelivered and must be skipped.
    first = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "w1.log", "--commit-interval", "5")
    workers.append(first.start())
    await first.wait_ready()

    published = 0
    stop = asyncio.Event()

    async def publish_forever() -> None:
        nonlocal published
        while not stop.is_set():
            batch = []
            for _ in range(5):  # 5 requests per 0.1 s, 100 + 400 weighted tokens each: 2500 tok/s > capacity
                batch += request_pair("hog", "p", "elastic", time.time(), prompt=200, output=400)
            await kafka_io.publish(batch)
            published += len(batch)
            await asyncio.sleep(0.1)

    publisher = asyncio.create_task(publish_forever())
    try:
        async def hog_in_debt() -> list[EntitlementState]:
            return [s for s in await kafka_io.states() if s.id == "hog" and s.debt > 0.5]

        await eventually(hog_in_debt, within=30)
        await asyncio.sleep(1.0)
        first.kill()
        before = [s for s in await kafka_io.states() if s.id == "hog"]
        last_before = max(before, key=lambda s: s.seq)
        await asyncio.sleep(1.0)
        second = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "w2.log")
        workers.append(second.start())
        await second.wait_ready()
        await asyncio.sleep(3.0)
    finally:
        stop.set()
        await publisher

    await eventually(totals_are(kafka_io, {"hog": {"events": published, "duplicates": 0}}), within=40)
    after = [s for s in await kafka_io.states() if s.id == "hog" and s.seq > last_before.seq]
    assert after, "the restarted worker published no state"
    first_after = min(after, key=lambda s: s.seq)
    assert first_after.debt >= 0.9 * last_before.debt > 0  # recovered from the changelog, not reset to 0
    assert max(s.debt for s in after) > last_before.debt  # and still growing: hog keeps over-using
    metrics = await second.metrics()
    assert metrics[("tokenpools_streams_events_total", (("verdict", "replay"),))] > 0  # redelivered, not recounted
    # --config publishes documents only if absent: the restarted worker added nothing.
    assert sorted(k for k, _ in await kafka_io.read_all(topics.CONFIG)) == [
        b"Entitlement/hog", b"Entitlement/idle", b"TokenPool/p"]


async def test_two_workers_share_the_partitions_and_count_exactly(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    pools = {f"pool{i}": [(f"p{i}-e{j}", "elastic") for j in range(4)] for i in range(3)}
    config = write_config(tmp_path / "config.yaml", pools)
    a = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "a.log", *WINDOW).start()
    b = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "b.log", *WINDOW).start()
    workers += [a, b]
    await a.wait_ready()
    await b.wait_ready()

    async def split() -> bool:
        sa, sb = await a.status(), await b.status()
        if not (sa["ready"] and sb["ready"] and sa["requests_partitions"] and sb["requests_partitions"]):
            return False
        assert not set(sa["requests_partitions"]) & set(sb["requests_partitions"])
        assert set(sa["requests_partitions"]) | set(sb["requests_partitions"]) == set(range(6))
        assert not set(sa["owned_pools"]) & set(sb["owned_pools"])
        return set(sa["owned_pools"]) | set(sb["owned_pools"]) == set(pools)

    await eventually(split, within=40)
    t0 = time.time()
    events: list[RequestEvent] = []
    expected: dict[str, dict[str, int]] = {}
    for pool, ents in pools.items():
        for k, (name, _) in enumerate(ents):
            for _ in range(k + 1):
                events += request_pair(name, pool, "elastic", t0, prompt=10, output=10)
            expected[name] = {"events": 2 * (k + 1), "prompt_tokens": 10 * (k + 1), "duplicates": 1}
    await kafka_io.publish(events)
    await kafka_io.publish([next(e for e in events if e.entitlement == name) for name in expected])  # one dup each
    await eventually(totals_are(kafka_io, expected), within=40)

    async def every_entitlement_has_usage() -> bool:
        seen = {s.id for s in await kafka_io.states() if s.usage.throughput > 0}
        return seen >= set(expected)

    await eventually(every_entitlement_has_usage, within=20)
    for pool in pools:
        seqs = [p.seq for p in await kafka_io.pool_states() if p.id == pool]
        assert seqs and seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{pool}: ticks overlapped {seqs}"
    ma, mb = await a.metrics(), await b.metrics()
    new = ("tokenpools_streams_events_total", (("verdict", "new"),))
    assert ma[new] + mb[new] == sum(v["events"] for v in expected.values())
