"""Request events to Kafka (``tokenpools.requests``) through a durable local spool.

``emit`` only appends the encoded event to the spool (``admitter.kafka.spool.Spool``): it never waits for
Kafka, so a broker outage does not slow the request path. Two background tasks do the rest:

- the flusher fsyncs the spool in small batches (every ``flush_interval`` seconds at most);
- the sender reads durable records in order and sends them with an idempotent producer
  (``enable_idempotence=True``, ``acks="all"``), key = entitlement, and advances the spool's
  committed offset only once the broker acknowledged the whole batch. On any error it backs off,
  recreates the producer and re-sends from the committed offset.

**Batched records.** The spool holds one record per event; batching happens at send time: of the
events read in one pass, those of one entitlement go out as one ``RequestEventBatch`` record (at most
``batch_events`` events and ``batch_bytes`` bytes each; a lone event goes out as a plain
``RequestEvent``). The pipeline's cost is per Kafka record, so this is what lets one worker count
10,000 events/s (docs/pipeline.md, "Throughput"). The sender starts a pass at most every
``batch_linger`` seconds so that a pass has events to pack: at 10,000 events/s, 50 ms over 24
entitlements is about 20 events per record. Acks and commits stay per pass, as before: a re-send
after an error or a restart may regroup events differently, which the pipeline's dedup by id absorbs.

A new ``KafkaSink`` on the same spool directory (an admitter restart) replays what was not acked.
Duplicates are possible (acked but not yet committed at a crash); every event has an ``id`` and the
pipeline dedups by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from admitter.kafka.spool import Spool
from admitter.stats import SinkStats
from schemas.records import RequestEvent
from schemas.topics import Topics
from schemas.wire import encode, encode_event_batch
from tokenpools.kafka.connection import bootstrap_of, connection
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger("tokenpools.admitter.kafka")


def pack_events(
    records: Sequence[tuple[bytes, bytes]], max_events: int, max_bytes: int
) -> list[tuple[bytes, bytes, int]]:
    """``(key, value, events)`` Kafka records for encoded events ``(key, value)``, one run per key.

    Events keep their order within a key (one entitlement's events stay ordered on its partition);
    the order between keys does not matter, they are independent. A run holds at most
    ``max_events`` events and ``max_bytes`` bytes of events (one larger event still goes alone).
    """
    by_key: dict[bytes, list[bytes]] = {}
    for key, value in records:
        by_key.setdefault(key, []).append(value)
    out: list[tuple[bytes, bytes, int]] = []
    for key, values in by_key.items():
        run: list[bytes] = []
        size = 0
        for value in values:
            if run and (len(run) >= max_events or size + len(value) > max_bytes):
                out.append(_record(key, run))
                run, size = [], 0
            run.append(value)
            size += len(value) + 1
        if run:
            out.append(_record(key, run))
    return out


def _record(key: bytes, run: list[bytes]) -> tuple[bytes, bytes, int]:
    return key, (run[0] if len(run) == 1 else encode_event_batch(run)), len(run)


class KafkaSink:
    """An ``EventSink`` that survives broker outages and admitter restarts (see the module doc)."""

    def __init__(
        self,
        bootstrap_servers: KafkaSettings | str,
        spool_dir: str | Path,
        *,
        topic_prefix: str = "",
        topic: str | None = None,
        flush_interval: float = 0.005,
        batch_records: int = 2000,
        batch_events: int = 200,
        batch_bytes: int = 512 * 1024,
        batch_linger: float = 0.05,
        send_timeout: float = 15.0,
        retry_backoff: float = 0.5,
        max_backoff: float = 5.0,
        close_timeout: float = 5.0,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        self.kafka = bootstrap_servers
        self.bootstrap_servers = bootstrap_of(bootstrap_servers)
        self.topic = topic or Topics(topic_prefix).requests
        self.spool = Spool(spool_dir)
        self.flush_interval = flush_interval
        if batch_events < 1 or batch_bytes < 1 or batch_records < 1 or batch_linger < 0:
            raise ValueError("batch_records, batch_events and batch_bytes must be >= 1, batch_linger >= 0")
        self.batch_records = batch_records  # events read from the spool per pass
        self.batch_events = batch_events  # events per Kafka record (1: one record per event)
        self.batch_bytes = batch_bytes
        self.batch_linger = batch_linger
        self.send_timeout = send_timeout
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.close_timeout = close_timeout
        self.producer_options = producer_options or {}
        self.emitted = 0  # events handed to ``emit`` (this instance)
        self.sent = 0  # events (spool records) acked by the broker (this instance)
        self.records_sent = 0  # Kafka records they went out in (fewer: batches)
        self.send_errors = 0
        self.connected = False
        self._producer: AIOKafkaProducer | None = None
        self._appended = asyncio.Event()
        self._durable = asyncio.Event()
        self._acked = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- EventSink -----------------------------------------------------------------------------

    async def emit(self, event: RequestEvent) -> None:
        if self._closing:
            raise RuntimeError("KafkaSink is closed")
        self.emitted += 1
        self.spool.append(event.entitlement.encode(), encode(event))
        self._appended.set()
        self._ensure_tasks()

    async def close(self) -> None:
        """Flush the spool, try to deliver the rest for ``close_timeout``, then stop (the spool keeps it)."""
        if self._closing:
            return
        self._ensure_tasks()  # a sink created and closed without emitting still drains an old spool
        await self.spool.sync()
        self._durable.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.close_timeout):
                await self.drain()
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._stop_producer()
        self.spool.close()

    # -- helpers for callers and tests ---------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks now (e.g. to replay an old spool before the first event)."""
        self._ensure_tasks()

    async def drain(self) -> None:
        """Wait until everything appended so far is acked (callers bound it with ``asyncio.timeout``)."""
        self._ensure_tasks()
        while self.spool.pending():
            self._acked.clear()
            await self._acked.wait()

    def backlog(self) -> bool:
        return self.spool.pending()

    # -- ReportsStats --------------------------------------------------------------------------

    def stats(self) -> Sequence[SinkStats]:
        spool = self.spool
        pending = spool.pending()
        # The spool counts records appended (plus those an earlier instance left unacked) and the
        # sink counts acks; the difference is the backlog without a per-record counter on the hot path.
        return [SinkStats(
            topic=self.topic, emitted=self.emitted, spooled=spool.synced, sent=self.sent,
            records_sent=self.records_sent, send_errors=self.send_errors,
            backlog_records=max(0, spool.replayed + spool.appended - self.sent) if pending else 0,
            backlog_bytes=spool.pending_bytes() if pending else 0,
            oldest_pending_ts=self._oldest_pending_ts() if pending else None,
            connected=self.connected)]

    def _oldest_pending_ts(self) -> float | None:
        record = self.spool.first_pending()
        if record is None:
            return None
        try:
            return float(orjson.loads(record.value)["ts"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # not one of our events (cannot happen: the sink encodes every record)

    # -- background ----------------------------------------------------------------------------

    def _ensure_tasks(self) -> None:
        if self._tasks or self._closing:
            return
        self._tasks = [
            asyncio.create_task(self._flusher(), name="kafka-sink-flusher"),
            asyncio.create_task(self._sender(), name="kafka-sink-sender"),
        ]

    async def _flusher(self) -> None:
        while True:
            await self._appended.wait()
            self._appended.clear()
            await asyncio.sleep(self.flush_interval)  # let a few more events join this fsync
            try:
                await self.spool.sync()
            except OSError:
                log.exception("spool fsync failed; retrying")
                self._appended.set()
                await asyncio.sleep(0.5)
                continue
            self._durable.set()

    async def _sender(self) -> None:
        backoff = self.retry_backoff
        last_pass = -math.inf
        while True:
            if not self.spool.has_unread():
                self._durable.clear()
                if not self.spool.has_unread():
                    await self._durable.wait()
                continue
            wait = last_pass + self.batch_linger - time.monotonic()
            if wait > 0:  # let events gather, so that one entitlement's go out as one record
                await asyncio.sleep(wait)
            last_pass = time.monotonic()
            batch = self.spool.read(self.batch_records)
            if not batch:
                continue
            records = pack_events([(r.key, r.value) for r in batch], self.batch_events, self.batch_bytes)
            try:
                producer = await self._get_producer()
                async with asyncio.timeout(self.send_timeout):
                    futures = [await producer.send(self.topic, value=value, key=key) for key, value, _ in records]
                    await asyncio.gather(*futures)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down, timeout, ...: re-send from the committed offset
                self.send_errors += 1
                if self.connected:
                    log.warning("sending events to %s failed (%r); spooling until Kafka is back", self.topic, exc)
                self.connected = False
                self.spool.rewind()
                await self._stop_producer()
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                continue
            backoff = self.retry_backoff
            if not self.connected:
                log.info("connected to Kafka; sending spooled events to %s", self.topic)
            self.connected = True
            await self.spool.commit(batch[-1].end)
            self.sent += len(batch)
            self.records_sent += len(records)
            self._acked.set()

    async def _get_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                **connection(self.kafka),
                enable_idempotence=True,
                acks="all",
                linger_ms=5,
                request_timeout_ms=int(self.send_timeout * 1000),
                client_id=f"tokenpools-admitter-{int(time.time())}",
                **self.producer_options,
            )
            try:
                async with asyncio.timeout(self.send_timeout):
                    await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await producer.stop()
