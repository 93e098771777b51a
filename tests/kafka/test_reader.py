"""``CompactedReader``'s loop against an in-memory stand-in for aiokafka (the broker side is covered by
tests/integration: outage, late follower, bad records, discovery, scaling)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from schemas.wire import BadRecords
from tokenpools.kafka import reader as reader_module
from tokenpools.kafka.progress import Partition
from tokenpools.kafka.reader import CompactedReader, read_compacted


class Broker:
    """Topics as lists of (key, value) per partition; ``down`` makes new consumers fail to start."""

    def __init__(self, topics: dict[str, list[list[tuple[bytes | None, bytes | None]]]]) -> None:
        self.topics = topics
        self.down = False
        self.consumers: list[FakeConsumer] = []

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> int:
        log = self.topics[topic][partition]
        log.append((key, value))
        return len(log) - 1


class FakeConsumer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.positions: dict[TopicPartition, int] = {}
        self.fail_next_poll = False
        self.started_at: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        if self.broker.down:
            raise ConnectionError("broker down")

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0
            self.started_at[tp] = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset
        self.started_at[tp] = offset

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.broker.topics[tp.topic][tp.partition]) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return int(time.time() * 1000)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0.001)
        if self.fail_next_poll or self.broker.down:
            self.fail_next_poll = False
            raise ConnectionError("lost the broker")
        out: dict[TopicPartition, list[Any]] = {}
        for tp, at in self.positions.items():
            log = self.broker.topics[tp.topic][tp.partition]
            records = [SimpleNamespace(key=k, value=v, offset=i) for i, (k, v) in enumerate(log) if i >= at]
            if records:
                out[tp] = records[:max_records]
                self.positions[tp] = records[:max_records][-1].offset + 1
        return out


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    broker = Broker({"a": [[(b"k1", b"1"), (b"k2", b"2")], [(b"k1", b"3")]], "b": [[]]})

    def consumer(**_kw: Any) -> FakeConsumer:
        c = FakeConsumer(broker)
        broker.consumers.append(c)
        return c

    async def describe(_bootstrap: str, topics: Sequence[str], _client_id: str) -> dict[str, list[int]]:
        if broker.down:
            raise ConnectionError("broker down")
        return {t: list(range(len(broker.topics[t]))) for t in topics if t in broker.topics}

    monkeypatch.setattr(reader_module, "AIOKafkaConsumer", consumer)
    monkeypatch.setattr(reader_module, "describe", describe)
    return broker


async def eventually(check: Any, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_reads_every_partition_and_catches_up_at_the_end_offsets_seen_at_start(broker: Broker) -> None:
    seen: list[tuple[str, bytes | None, bytes | None]] = []
    batches = 0

    async def after_batch() -> None:
        nonlocal batches
        batches += 1

    reader = CompactedReader("fake:9092", {"a": lambda k, v: seen.append(("a", k, v)),
                                           "b": lambda k, v: seen.append(("b", k, v))}, after_batch=after_batch)
    assert await reader.start(2.0)
    try:
        assert sorted(seen) == [("a", b"k1", b"1"), ("a", b"k1", b"3"), ("a", b"k2", b"2")]
        assert reader.position(("a", 0)) == 2 and reader.position(Partition("a", 1)) == 1
        broker.append("b", 0, b"x", None)  # a tombstone arrives while tailing
        await eventually(lambda: ("b", b"x", None) in seen)
        stats = reader.stats()
        assert stats.records == {"a": 3, "b": 1} and stats.caught_up and stats.connected and batches > 0
        assert stats.reconnects == 0 and stats.last_contact is not None
    finally:
        await reader.stop()


async def test_a_failing_consumer_is_recreated_and_resumes_where_it_stopped(broker: Broker) -> None:
    seen: list[bytes | None] = []
    reader = CompactedReader("fake:9092", {"b": lambda _k, v: seen.append(v)}, retry_backoff=0.01)
    assert await reader.start(2.0)
    try:
        broker.append("b", 0, b"k", b"1")
        await eventually(lambda: seen == [b"1"])
        broker.down = True
        broker.consumers[-1].fail_next_poll = True
        await eventually(lambda: not reader.connected)
        broker.append("b", 0, b"k", b"2")
        broker.down = False
        await eventually(lambda: seen == [b"1", b"2"] and reader.connected)
        assert broker.consumers[-1].started_at == {TopicPartition("b", 0): 1}  # resumed, not replayed
        assert reader.reconnects == 1 and len(broker.consumers) >= 2
    finally:
        await reader.stop()


async def test_start_offsets_a_raising_handler_and_a_caught_up_hook_that_reads_further(broker: Broker) -> None:
    bad = BadRecords()
    seen: list[bytes | None] = []
    hooked = 0

    def handle(_key: bytes | None, value: bytes | None) -> None:
        if value == b"2":
            raise ValueError("cannot use it")
        seen.append(value)

    async def on_caught_up() -> dict[Partition, int] | None:
        nonlocal hooked
        hooked += 1
        if hooked == 1:  # the config sync's seeding: write, then read it back before going live
            return {Partition("a", 0): broker.append("a", 0, b"seed", b"4") + 1}
        assert seen[-1] == b"4"
        return None

    reader = CompactedReader("fake:9092", {"a": handle}, bad=bad, start={Partition("a", 0): 1},
                             on_caught_up=on_caught_up)
    assert await reader.start(2.0)
    try:
        assert hooked == 2 and sorted(v for v in seen if v is not None) == [b"3", b"4"]  # "1" skipped by start
        assert bad.counts == {("a", "error"): 1}  # the raising handler counted, the reader went on
    finally:
        await reader.stop()


async def test_waits_for_missing_topics_and_read_compacted_keeps_the_live_records(broker: Broker) -> None:
    reader = CompactedReader("fake:9092", {"later": lambda _k, _v: None}, retry_backoff=0.01)
    assert not await reader.start(0.05)
    broker.topics["later"] = [[]]
    try:
        assert await reader.wait_caught_up(2.0)
    finally:
        await reader.stop()
    broker.append("a", 0, b"k2", None)
    broker.append("a", 0, None, b"unkeyed")
    assert await read_compacted("fake:9092", "a", wait_s=2.0) == {b"k1": b"3"}
    with pytest.raises(RuntimeError, match="not read to the end"):
        await read_compacted("fake:9092", "missing", wait_s=0.05)
