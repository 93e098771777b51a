"""The exactly-once sink: Kafka topics into ClickHouse, no duplicate and no gap through crashes and replays.

How it holds (DESIGN.md section 6 has the measured ClickHouse facts it rests on):

- **Blocks are offset ranges.** The sink cuts each partition's records into blocks ``[first, last]``
  (at ``block_records`` records, or after ``flush_interval_s``) and inserts each block into each table
  it feeds as one insert with ``insert_deduplication_token = topic/partition/first-last``. Every table,
  rollup targets included, sets ``non_replicated_deduplication_window``, and the inserts set
  ``deduplicate_blocks_in_dependent_materialized_views``: a block inserted again adds nothing to the
  raw table *or* to a rollup, and a block that landed in the raw table but not yet in a rollup (a crash
  between the two) is completed in the rollup by the retry.
- **The plan comes first.** Before a block's rows, its range is written to ``sink_blocks``. Positions
  live there, with the data, not in Kafka: on (re)assignment a partition resumes at its last planned
  block, rebuilds exactly that range (same offsets, so the same token), and goes on after it. A crash
  anywhere (before the plan, between tables, before the commit) therefore ends in the same rows.
- **Replays are skipped by position.** Records before the last planned block are never inserted again,
  whatever the consumer group's offsets say (``--from-earliest`` re-reads the log to show it), so a
  replay older than the deduplication window cannot duplicate either. A partition with no plan starts
  at the earliest offset Kafka still has.
- **Offsets are committed after the insert**, to the consumer group: they make lag visible to Kafka's
  own tools and to ``/metrics``; a failed commit loses nothing.
- **Broker outages**: aiokafka reconnects by itself while a broker is away; a consumer that fails
  outright is recreated after a backoff. A failed insert is retried with the same blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas.topics import Topics
from streams.history.decode import BlockDecoder, Decoded
from streams.history.metrics import HistoryMetrics
from streams.history.settings import HistorySettings
from streams.history.store import HistoryStore
from tokenpools.kafka.connection import bootstrap_of, connection
from tokenpools.kafka.progress import Backoff

log = logging.getLogger("tokenpools.history.sink")

PLAN_TABLE = "sink_blocks"
# Test-only failpoints (the crash tests kill the process at a chosen step): "plan", "rows", "commit",
# optionally ":N" to fire on the N-th time. Unset in production.
FAILPOINT_ENV = "TOKENPOOLS_HISTORY_FAILPOINT"


@dataclass(frozen=True, slots=True)
class BlockRange:
    topic: str
    partition: int
    first: int
    last: int

    @property
    def token(self) -> str:
        return f"{self.topic}/{self.partition}/{self.first}-{self.last}"


@dataclass(slots=True)
class Block:
    range: BlockRange
    records: list[ConsumerRecord[bytes, bytes]]
    rebuilt: bool = False


@dataclass(slots=True)
class PartitionFeed:
    """One assigned partition: records waiting for their block, and the planned block being rebuilt."""

    tp: TopicPartition
    pending: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    since: float = 0.0  # monotonic time the oldest pending record arrived
    rebuild: BlockRange | None = None  # the last planned block, re-read after a restart
    skip_below: int = 0  # offsets before this were inserted in earlier blocks
    read_to: int = -1  # the offset after the last record consumed (for lag)

    def add(self, record: ConsumerRecord[bytes, bytes], now: float) -> Block | None:
        """Take one record; a finished rebuild block comes back as soon as a record passes its range."""
        self.read_to = record.offset + 1
        if record.offset < self.skip_below:
            return None
        done = None
        if self.rebuild is not None and record.offset > self.rebuild.last:
            done = self.finish_rebuild()
        if not self.pending:
            self.since = now
        self.pending.append(record)
        return done

    def finish_rebuild(self) -> Block:
        assert self.rebuild is not None
        block = Block(self.rebuild, self.pending, rebuilt=True)
        self.skip_below = self.rebuild.last + 1
        self.rebuild, self.pending = None, []
        return block

    def cut(self, now: float, max_records: int, max_age: float) -> Block | None:
        """The next block of new records if one is due: a full one, or the rest once the oldest is old enough.

        One block per partition per flush, planned only once the previous block's rows are in: so the
        last planned block is the only one of a partition that can be unfinished after a crash, and
        rebuilding it is all a restart needs.
        """
        if self.rebuild is not None or not self.pending:
            return None
        if len(self.pending) >= max_records:
            return self._take(max_records)
        if now - self.since >= max_age:
            return self._take(len(self.pending))
        return None

    def _take(self, n: int) -> Block:
        records, self.pending = self.pending[:n], self.pending[n:]
        self.since = time.monotonic()
        block = Block(BlockRange(self.tp.topic, self.tp.partition, records[0].offset, records[-1].offset), records)
        self.skip_below = block.range.last + 1
        return block


class Failpoints:
    """Kills the process with SIGKILL at a named step (tests only; see ``FAILPOINT_ENV``)."""

    def __init__(self, spec: str | None) -> None:
        name, _, count = (spec or "").partition(":")
        self.name = name or None
        self.remaining = int(count) if count.isdigit() else 1

    def reach(self, name: str) -> None:
        if self.name != name:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            log.warning("failpoint %s reached: killing the process", name)
            os.kill(os.getpid(), signal.SIGKILL)


class HistorySink:
    """Consumes the topics in a consumer group and writes them with ``store`` (see the module doc)."""

    def __init__(self, store: HistoryStore, settings: HistorySettings, metrics: HistoryMetrics | None = None, *,
                 from_earliest: bool = False) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics or HistoryMetrics()
        self.from_earliest = from_earliest
        self.topics = Topics(settings.kafka.prefix)
        self.decoder = BlockDecoder(self.topics)
        self.feeds: dict[TopicPartition, PartitionFeed] = {}
        self.failpoints = Failpoints(os.environ.get(FAILPOINT_ENV))
        self.backoff = Backoff(initial=settings.sink.retry_backoff_s, cap=max(5.0, settings.sink.retry_backoff_s))
        self.flushed = asyncio.Event()  # set after every flush (tests wait on it)
        self.inserted_events = 0
        self._consumer: AIOKafkaConsumer | None = None
        # Held while a flush runs: a revocation waits for it, so a partition's next owner never reads the
        # block plan while this sink is still planning or inserting on that partition.
        self._flushing = asyncio.Lock()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled, recreating the consumer whenever it fails."""
        while True:
            consumer = AIOKafkaConsumer(
                **connection(self.settings.kafka), group_id=self.settings.kafka.prefix + self.settings.sink.group_id,
                enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
                session_timeout_ms=int(self.settings.sink.session_timeout_s * 1000),
                heartbeat_interval_ms=max(100, int(self.settings.sink.session_timeout_s * 1000 / 3)),
                metadata_max_age_ms=5000, fetch_max_wait_ms=200, max_partition_fetch_bytes=4 * 1024 * 1024,
                client_id="tokenpools-history-sink",
            )
            self._consumer = consumer
            try:
                await consumer.start()
                consumer.subscribe(self.decoder.topics_read(), listener=_Listener(self))
                self.metrics.connected.set(1)
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.connected.set(0)
                self.metrics.reconnects.inc()
                delay = self.backoff.next()
                log.warning("history sink lost Kafka at %s (%r); reconnecting in %.1f s",
                            bootstrap_of(self.settings.kafka), exc, delay)
                self.feeds.clear()  # the next assignment resumes from the block plan
                await asyncio.sleep(delay)
            finally:
                self._consumer = None
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        s = self.settings.sink
        while True:
            batches = await consumer.getmany(timeout_ms=int(min(s.flush_interval_s, 0.5) * 1000), max_records=20_000)
            now = time.monotonic()
            due: dict[TopicPartition, Block] = {}  # at most one block per partition per flush (see ``cut``)
            for tp, records in batches.items():
                feed = self.feeds.get(tp)
                if feed is None:
                    continue  # revoked while the fetch was in flight
                self.metrics.records.labels(tp.topic).inc(len(records))
                for record in records:
                    done = feed.add(record, now)
                    if done is not None:
                        due[tp] = done
            for tp, feed in list(self.feeds.items()):
                if tp not in due and feed.rebuild is not None and await _position(consumer, tp) > feed.rebuild.last:
                    due[tp] = feed.finish_rebuild()  # nothing after the range yet: the position says it is read
                if tp not in due and (block := feed.cut(now, s.block_records, s.flush_interval_s)) is not None:
                    due[tp] = block
            if due:
                blocks = list(due.values())
                await self._flush_until_done(blocks)
                await self._commit(consumer, blocks)
            self._lag(consumer)
            self.backoff.reset()

    async def _flush_until_done(self, blocks: list[Block]) -> None:
        async with self._flushing:
            await self._retry_flush(blocks)

    async def _retry_flush(self, blocks: list[Block]) -> None:
        while True:
            try:
                await asyncio.to_thread(self.flush, blocks)
                return
            except Exception as exc:
                self.metrics.insert_failures.inc()
                delay = self.backoff.next()
                log.error("history insert failed (%s); retrying the same %d blocks in %.1f s",
                          str(exc).splitlines()[0][:300] if str(exc) else repr(exc), len(blocks), delay)
                await asyncio.sleep(delay)

    def flush(self, blocks: Sequence[Block]) -> None:
        """Plan the new blocks, then insert every block's rows (in a worker thread: chDB blocks)."""
        started = time.perf_counter()
        new = [b.range for b in blocks if not b.rebuilt]
        if new:
            self._plan(new)
            self.failpoints.reach("plan")
        now_ms = int(time.time() * 1000)
        for block in blocks:
            decoded = self.decoder.decode(block.range.topic, block.records, now_ms)
            self._insert(block, decoded)
            self.failpoints.reach("rows")
        self.metrics.insert_seconds.observe(time.perf_counter() - started)
        self.flushed.set()

    def _plan(self, ranges: Sequence[BlockRange]) -> None:
        token = "plan/" + hashlib.sha256("|".join(r.token for r in ranges).encode()).hexdigest()
        now_ms = int(time.time() * 1000)
        self.store.insert(PLAN_TABLE, {
            "topic": [r.topic for r in ranges], "partition": [r.partition for r in ranges],
            "first_offset": [r.first for r in ranges], "last_offset": [r.last for r in ranges],
            "records": [r.last - r.first + 1 for r in ranges], "planned_at": [now_ms] * len(ranges),
        }, token=token)

    def _insert(self, block: Block, decoded: Decoded) -> None:
        token = block.range.token
        if decoded.dead:
            self.store.insert("dead_letters", decoded.dead, token=token)
            for reason in decoded.dead["reason"]:
                self.metrics.dead.labels(block.range.topic, reason).inc()
        for table, columns in decoded.tables.items():
            n = self.store.insert(table, columns, token=token)
            self.metrics.rows.labels(table).inc(n)
            self.metrics.rate.add(n)
        self.inserted_events += decoded.events
        self.metrics.events.inc(decoded.events)
        self.metrics.blocks.labels(block.range.topic, "rebuilt" if block.rebuilt else "new").inc()

    async def _commit(self, consumer: AIOKafkaConsumer, blocks: Iterable[Block]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for b in blocks:
            tp = TopicPartition(b.range.topic, b.range.partition)
            offsets[tp] = max(offsets.get(tp, 0), b.range.last + 1)
        offsets = {tp: o for tp, o in offsets.items() if tp in self.feeds}
        if not offsets:
            return
        self.failpoints.reach("commit")
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # positions live in ClickHouse: a lost commit only delays the lag figure
            self.metrics.commit_failures.inc()
            log.warning("history sink could not commit offsets (%r); positions are safe in %s", exc, PLAN_TABLE)

    def _lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp, feed in self.feeds.items():
            end = consumer.highwater(tp)
            if end is not None and feed.read_to >= 0:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - feed.read_to))

    def caught_up(self) -> bool:
        """Every assigned partition read to the log end Kafka last reported, and nothing left to insert."""
        consumer = self._consumer
        if consumer is None or not self.feeds:
            return False
        for tp, feed in self.feeds.items():
            end = consumer.highwater(tp)
            if end is None or feed.rebuild is not None or feed.pending or max(feed.read_to, 0) < end:
                return False
        return True

    # -- assignment ----------------------------------------------------------------------------

    def last_plans(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, BlockRange]:
        wanted = list(tps)
        if not wanted:
            return {}
        result = self.store.query_write_side(
            f"SELECT topic, partition, max(first_offset), argMax(last_offset, first_offset) FROM {PLAN_TABLE} "
            "WHERE topic IN {topics:Array(String)} GROUP BY topic, partition",
            {"topics": sorted({tp.topic for tp in wanted})})
        found = {TopicPartition(t, int(p)): BlockRange(t, int(p), int(f), int(last)) for t, p, f, last in result.rows}
        return {tp: found[tp] for tp in wanted if tp in found}

    async def assigned(self, consumer: AIOKafkaConsumer, tps: set[TopicPartition]) -> None:
        plans = await asyncio.to_thread(self.last_plans, tps)
        for tp in tps:
            plan = plans.get(tp)
            feed = PartitionFeed(tp)
            if plan is not None:
                feed.rebuild, feed.skip_below = plan, plan.first
            self.feeds[tp] = feed
            if self.from_earliest or plan is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, plan.first)
        if tps:
            log.info("history sink assigned %d partitions (%d resuming from their block plan)", len(tps), len(plans))

    async def revoked(self, tps: set[TopicPartition]) -> None:
        async with self._flushing:  # a flush in progress finishes first (see __init__)
            self._forget(tps)

    def _forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self.feeds.pop(tp, None)  # its pending records were not planned: the next owner reads them again
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: HistorySink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.sink.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        consumer = self.sink._consumer
        if consumer is not None:
            await self.sink.assigned(consumer, set(assigned))


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """The next offset the consumer will fetch on ``tp`` (-1 when it is not known within a second)."""
    try:
        async with asyncio.timeout(1.0):
            return int(await consumer.position(tp))
    except Exception:  # revoked meanwhile, or still resetting: ask again next round
        return -1
