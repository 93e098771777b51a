"""KafkaSink against a real broker: events survive a broker outage and an admitter restart, go out in
batch records, and a pipeline worker counts each of them once however often they are re-sent."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from admitter.kafka.sink import KafkaSink
from admitter.kafka.spool import Spool
from schemas import topics
from schemas.records import EVENT_BATCH, Outcome, Phase, RequestEvent
from schemas.wire import encode
from tests.integration.harness import KAFKA_WAIT_S, Kafka, Worker, event, request_pair, settled, write_config

pytestmark = pytest.mark.integration


def events(n: int, start: int = 0) -> list[RequestEvent]:
    return [event(f"ent-{i % 5}", "pool-a", "elastic", Phase.DECISION, Outcome.ADMITTED, time.time(),
                  request_id=f"req-{start + i}") for i in range(n)]


async def read_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, dict[str, Any]]] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend((r.key, orjson.loads(r.value or b"{}")) for r in records)
        return out
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    """(key, event) for every event on the topic, batch records unpacked in their order."""
    out: list[tuple[bytes | None, dict[str, Any]]] = []
    for key, value in await read_records(bootstrap, topic):
        if value.get("type") == EVENT_BATCH:
            out.extend((key, ev) for ev in value["events"])
        else:
            out.append((key, value))
    return out


def ids_arrived(bootstrap: str, topic: str, expected: set[str]):
    async def check() -> bool:
        got = {v["id"] for _, v in await read_topic(bootstrap, topic)}
        assert got == expected, f"missing {len(expected - got)}, unexpected {len(got - expected)}"
        return True
    return check


async def test_events_survive_a_broker_outage(kafka: Any, make_topic: Any, tmp_path: Path) -> None:
    topic = await make_topic(partitions=3)
    sink = KafkaSink(kafka.bootstrap_servers, tmp_path / "spool", topic=topic, send_timeout=5.0, max_backoff=1.0)
    first, second = events(40), events(30, start=40)
    try:
        for ev in first:
            await sink.emit(ev)
        async with asyncio.timeout(KAFKA_WAIT_S):
            await sink.drain()
        await kafka.astop()
        try:
            for ev in second:  # the request path keeps working while Kafka is down
                async with asyncio.timeout(1):
                    await sink.emit(ev)
            await asyncio.sleep(0.5)
            assert sink.backlog()
        finally:
            await kafka.astart()
        async with asyncio.timeout(KAFKA_WAIT_S):
            await sink.drain()
    finally:
        await sink.close()
    expected = {e.id for e in first + second}
    await settled(ids_arrived(kafka.bootstrap_servers, topic, expected))
    records = await read_topic(kafka.bootstrap_servers, topic)
    assert all(k == v["entitlement"].encode() for k, v in records)  # keyed by entitlement


async def test_spooled_events_are_sent_by_the_next_sink(kafka: Any, make_topic: Any, tmp_path: Path) -> None:
    topic = await make_topic(partitions=2)
    spool = tmp_path / "spool"
    evs = events(25)
    await kafka.astop()
    try:
        sink = KafkaSink(kafka.bootstrap_servers, spool, topic=topic, send_timeout=2.0, close_timeout=0.5)
        for ev in evs:
            await sink.emit(ev)
        await sink.close()  # broker down: the events stay in the spool
    finally:
        await kafka.astart()
    again = KafkaSink(kafka.bootstrap_servers, spool, topic=topic)
    try:
        await again.start()
        async with asyncio.timeout(KAFKA_WAIT_S):
            await again.drain()
        assert again.sent == len(evs)
        # One pass over the spool: the events of each of the 5 entitlements go out as one record.
        assert again.records_sent == 5
    finally:
        await again.close()
    await settled(ids_arrived(kafka.bootstrap_servers, topic, {e.id for e in evs}))
    # In spool order per entitlement (one entitlement's events stay ordered on its partition).
    records = await read_topic(kafka.bootstrap_servers, topic)
    assert len(await read_records(kafka.bootstrap_servers, topic)) == 5
    for ent in {e.entitlement for e in evs}:
        sent = [v["request_id"] for k, v in records if k == ent.encode()]
        assert sent == [e.request_id for e in evs if e.entitlement == ent]


async def test_a_worker_counts_batched_events_once_when_they_are_sent_again(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    """Two sinks send the same spool (an admitter that died between the broker's ack and its spool commit),
    regrouped into batches of a different size, and one batch record is published twice more: a real
    pipeline worker counts every event once and the repeats as duplicates."""
    ents = ["e1", "e2", "e3"]
    config = write_config(tmp_path / "config.yaml", {"p": [(e, "elastic") for e in ents]})
    w = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log").start()
    workers.append(w)
    t0 = time.time()
    evs = [ev for i in range(30) for ev in request_pair(ents[i % 3], "p", "elastic", t0)]
    spool = Spool(tmp_path / "spool")
    for ev in evs:
        spool.append(ev.entitlement.encode(), encode(ev))
    spool.close()
    shutil.copytree(tmp_path / "spool", tmp_path / "spool-copy")
    await w.wait_ready()
    topic = kafka_io.topic(topics.REQUESTS)
    sent = []
    for directory, batch_events in (("spool", 200), ("spool-copy", 7)):
        sink = KafkaSink(kafka.bootstrap_servers, tmp_path / directory, topic=topic, batch_events=batch_events)
        try:
            await sink.start()
            async with asyncio.timeout(KAFKA_WAIT_S):
                await sink.drain()
            sent.append((sink.sent, sink.records_sent))
        finally:
            await sink.close()
    assert sent == [(60, 3), (60, 9)]  # 20 events per entitlement: 1 record each, then 7 + 7 + 6
    key, value = (await read_records(kafka.bootstrap_servers, topic))[0]
    assert value["type"] == EVENT_BATCH
    for _ in range(2):  # the very same batch record, published again
        await kafka_io.send(topics.REQUESTS, orjson.dumps(value), key)

    async def counted_once() -> bool:
        m = await w.metrics()
        verdicts = {v: m.get(("tokenpools_streams_events_total", (("verdict", v),))) for v in ("new", "duplicate")}
        # 60 originals; 60 sent again by the second sink and 2 x 20 in the re-published batch record.
        assert verdicts == {"new": 60, "duplicate": 100}, verdicts
        assert not [k for k, v in m.items() if k[0] == "tokenpools_streams_bad_records_total" and v]
        return True

    await settled(counted_once)
