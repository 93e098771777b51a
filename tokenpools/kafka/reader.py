"""The one reader of compacted topics: every partition, no consumer group, from the beginning, forever.

``CompactedReader`` reads every partition of its topics (waiting until all of them exist; names come
from ``schemas.topics.Topics``) and hands each record to the handler of its topic as ``(key, value)``
(a tombstone's value is None). What every follower in the tree needs from it:

- **Resume positions.** The first consumer starts at the beginning, or at the ``start`` offsets given;
  a consumer recreated after a failure resumes where the previous one stopped, so nothing is replayed
  or skipped (``Progress``).
- **Caught up.** ``caught_up`` is set once every partition has been read up to the end offsets seen
  when the first consumer connected; ``on_caught_up`` may return more offsets to read first (the
  config sync reads back what it just seeded).
- **Reconnect.** aiokafka reconnects by itself while a broker is away (``getmany`` just returns
  nothing); a consumer that fails outright is stopped and recreated after a backoff (``Backoff``).
  ``connected`` is read from the last fetch response (``Contact``), so an outage shows.
- **Metadata through public API only** (``AIOKafkaAdminClient.describe_topics``).
- **Counters**: records per topic, bad records (the owner's ``schemas.wire.BadRecords``: a handler that
  raises is counted as ``error`` and skipped, it never stops the reader), reconnects, last contact.
  ``stats()`` returns them for the services' metrics.

``after_batch`` runs after every poll (records or not), then the caught-up check; ``on_assigned``
after every (re)assignment. ``read_compacted`` and ``read_records`` read topics once, to their end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.wire import BadRecords
from tokenpools.kafka.connection import bootstrap_of, connection
from tokenpools.kafka.progress import Backoff, Contact, Partition, Progress, partitions_in
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger("tokenpools.kafka.reader")

Handler = Callable[[bytes | None, bytes | None], object]
Hook = Callable[[], Awaitable[None]]
CaughtUpHook = Callable[[], Awaitable[Mapping[Partition, int] | None]]


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """What a reader has done, for the services' metrics."""

    records: Mapping[str, int]  # per topic, tombstones and bad records included
    bad: Mapping[tuple[str, str], int]  # (topic, reason)
    caught_up: bool
    connected: bool
    reconnects: int
    last_contact: float | None  # wall time of the last fetch response


class CompactedReader:
    """Follows whole topics (see the module doc)."""

    def __init__(
        self,
        bootstrap_servers: KafkaSettings | str,
        handlers: Mapping[str, Handler],
        *,
        bad: BadRecords | None = None,
        client_id: str = "tokenpools-reader",
        name: str = "reader",
        keeps: str = "keeping what it read",
        start: Mapping[Partition, int] | None = None,
        after_batch: Hook | None = None,
        on_assigned: Hook | None = None,
        on_caught_up: CaughtUpHook | None = None,
        retry_backoff: float = 1.0,
        max_backoff: float = 5.0,
        contact_timeout: float = 5.0,
        fetch_max_wait_ms: int = 500,
        logger: logging.Logger | None = None,
    ) -> None:
        """``name`` and ``keeps`` word the log lines ("state follower lost Kafka; keeping the last limits");
        ``start``: offsets to resume from instead of the beginning; ``bootstrap_servers``: the Kafka block (or a
        PLAINTEXT bootstrap string), see ``tokenpools.kafka.connection``."""
        self.kafka = bootstrap_servers
        self.bootstrap_servers = bootstrap_of(bootstrap_servers)  # for log lines
        self.handlers = dict(handlers)
        self.bad = bad if bad is not None else BadRecords()
        self.client_id = client_id
        self.name = name
        self.keeps = keeps
        self.after_batch = after_batch
        self.on_assigned = on_assigned
        self.on_caught_up = on_caught_up
        self.retry_backoff = retry_backoff
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.log = logger or log
        self.progress = Progress(positions=dict(start or {}))
        self.contact = Contact(timeout=contact_timeout)
        self.backoff = Backoff(initial=retry_backoff, cap=max(retry_backoff, max_backoff))
        self.records: Counter[str] = Counter()
        self.caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, wait: float = 0.0) -> bool:
        """Run in a task; wait up to ``wait`` seconds to be caught up. Returns whether it is."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.client_id)
        return await self.wait_caught_up(wait)

    async def wait_caught_up(self, within: float) -> bool:
        """Wait up to ``within`` seconds to be caught up; returns whether it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.caught_up.wait()
        return self.caught_up.is_set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self) -> ReaderStats:
        return ReaderStats(records=dict(self.records), bad=dict(self.bad.counts), caught_up=self.caught_up.is_set(),
                           connected=self.contact.connected, reconnects=self.contact.reconnects,
                           last_contact=self.contact.last_contact)

    @property
    def connected(self) -> bool:
        return self.contact.connected

    @property
    def reconnects(self) -> int:
        return self.contact.reconnects

    def position(self, tp: Partition | tuple[str, int]) -> int:
        """The next offset this reader will read on ``tp`` (0 if it has read nothing there)."""
        return self.progress.position(Partition(*tp))

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read until cancelled, recreating the consumer whenever it fails."""
        while True:
            consumer = AIOKafkaConsumer(**connection(self.kafka), group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest",
                                        fetch_max_wait_ms=self.fetch_max_wait_ms, client_id=self.client_id)
            try:
                await consumer.start()
                await self._follow(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note(self.contact.lost())
                delay = self.backoff.next()
                self.log.warning("%s lost Kafka at %s (%r); %s and reconnecting in %.1f s", self.name,
                                 self.bootstrap_servers, exc, self.keeps, delay)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await consumer.stop()

    async def _follow(self, consumer: Any) -> None:
        tps = await self._assign(consumer)
        if not self.caught_up.is_set():
            end = await consumer.end_offsets([TopicPartition(*tp) for tp in tps])
            self.progress.aim({Partition(tp.topic, tp.partition): offset for tp, offset in end.items()})
        if self.on_assigned is not None:
            await self.on_assigned()
        self.backoff.reset()
        await self._check_caught_up(consumer)
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            polled = [t for tp in tps if (t := consumer.last_poll_timestamp(TopicPartition(*tp))) is not None]
            self._note(self.contact.polled(max(polled) / 1000 if polled else None, time.time()))
            for tp, records in batches.items():
                for record in records:
                    self._handle(tp.topic, record.key, record.value)
                    self.progress.read(Partition(tp.topic, tp.partition), record.offset + 1)
            if self.after_batch is not None:
                await self.after_batch()
            await self._check_caught_up(consumer)

    async def _assign(self, consumer: Any) -> list[Partition]:
        """Assign every partition of the topics (waiting until they all exist), each at its position."""
        topics = list(self.handlers)
        while True:
            parts = await describe(self.kafka, topics, f"{self.client_id}-metadata")
            missing = [t for t in topics if t not in parts]
            if not missing:
                break
            self.log.info("%s waiting for %s to exist", self.name, " and ".join(missing))
            await asyncio.sleep(self.retry_backoff)
        tps = [Partition(t, p) for t in topics for p in parts[t]]
        consumer.assign([TopicPartition(*tp) for tp in tps])
        fresh, known = self.progress.resume(tps)
        if fresh:
            await consumer.seek_to_beginning(*(TopicPartition(*tp) for tp in fresh))
        for tp, offset in known.items():
            consumer.seek(TopicPartition(*tp), offset)
        return tps

    async def _check_caught_up(self, consumer: Any) -> None:
        while not self.caught_up.is_set():
            for tp in self.progress.lagging():  # the position also moves past gaps (compacted, or markers)
                self.progress.read(tp, await consumer.position(TopicPartition(*tp)))
            if not self.progress.reached():
                return
            more = await self.on_caught_up() if self.on_caught_up is not None else None
            if more:
                self.progress.extend(more)
                continue
            self.progress.settle()
            self.caught_up.set()

    def _handle(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.records[topic] += 1
        try:
            self.handlers[topic](key, value)
        except Exception as exc:  # a record must never stop the reader
            self.bad.note(topic, "error", repr(exc))

    def _note(self, change: str | None) -> None:
        if change == "reconnected":
            self.log.info("%s reconnected to Kafka", self.name)
        elif change == "lost":
            self.log.warning("%s lost Kafka; %s", self.name, self.keeps)


async def describe(bootstrap_servers: KafkaSettings | str,
                   topics: Sequence[str], client_id: str) -> dict[str, list[int]]:
    """Partition ids of those of ``topics`` that exist, from fresh cluster metadata (all topics are asked
    for, so a broker that auto-creates topics never creates one here)."""
    admin = AIOKafkaAdminClient(**connection(bootstrap_servers), client_id=client_id)
    await admin.start()
    try:
        return partitions_in(await admin.describe_topics(), topics)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def read_records(bootstrap_servers: KafkaSettings | str, topics: Sequence[str], *, wait_s: float = 30.0,
                       client_id: str = "tokenpools-read-once") -> list[tuple[str, bytes | None, bytes | None]]:
    """Every record of ``topics`` as ``(topic, key, value)``, from the beginning to their ends when read;
    raises ``RuntimeError`` if that takes longer than ``wait_s`` (a topic that does not exist, say)."""
    out: list[tuple[str, bytes | None, bytes | None]] = []

    def collect(topic: str) -> Handler:
        return lambda key, value: out.append((topic, key, value))

    reader = CompactedReader(bootstrap_servers, {t: collect(t) for t in topics}, client_id=client_id,
                             name="one-shot reader", keeps="retrying", retry_backoff=0.2, fetch_max_wait_ms=100)
    try:
        if not await reader.start(wait_s):
            raise RuntimeError(f"{', '.join(topics)} not read to the end within {wait_s} s (do they exist?)")
    finally:
        await reader.stop()
    return out


async def read_compacted(bootstrap_servers: KafkaSettings | str,
                         topic: str, wait_s: float = 30.0) -> dict[bytes, bytes]:
    """The live (non-tombstoned) records of a topic, read once up to its current end."""
    live: dict[bytes, bytes] = {}
    for _, key, value in await read_records(bootstrap_servers, [topic], wait_s=wait_s):
        if key is None:
            continue
        if value is None:
            live.pop(key, None)
        else:
            live[key] = value
    return live
