"""Replica discovery: a pool's backends follow the scaler's reports on ``tokenpools.replicas``.

``ReplicaDiscovery`` reads the compacted replicas topic with a plain aiokafka consumer (no group:
every admitter needs every pool, and the partition is read whole from the beginning, then tailed).
For each ``ReplicasReport`` of a pool this admitter serves that carries ``endpoints``, the pool's
``ReplicaSet`` members become those URLs (``ReplicaSet.replace``): a new replica gets new requests at
once, and a removed one gets no new ones while the requests it has finish (it is draining).

What it leaves alone, so an admitter never loses its backends to a report it cannot use:

- a report without ``endpoints`` (a Kubernetes actuator: discovery is the Service's job there) and
  a tombstone keep the current members;
- a pool this admitter does not serve is kept aside, and applied if the pool appears later (added
  through the config topic);
- bad records (not JSON, unknown ``schema_version``, invalid, key not the pool) are counted in
  ``bad`` (``schemas.wire.BadRecords``) and skipped.

An admitter started without Kafka simply has no ``ReplicaDiscovery`` and keeps its configured
backends. If Kafka goes away the members stay as they are; a consumer that fails outright is
recreated and resumes from the offsets it had reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from admitter.kafka.compacted import assign_resuming, reached
from admitter.upstream.replicas import ReplicaSet
from schemas.records import ReplicasReport
from schemas.wire import BadRecords, decode
from streams.topics import REPLICAS

log = logging.getLogger("tokenpools.admitter.discovery")


class ReplicaDiscovery:
    """Keeps each pool's ``ReplicaSet`` equal to the endpoints of its latest ``ReplicasReport``."""

    def __init__(
        self,
        bootstrap_servers: str,
        replica_sets: Mapping[str, ReplicaSet] | None = None,
        *,
        topic_prefix: str = "",
        topic: str | None = None,
        client_id: str = "tokenpools-discovery",
        initial_wait: float = 5.0,
        retry_backoff: float = 1.0,
    ) -> None:
        """``replica_sets``: the sets to keep current (an admitter's are given to ``start`` instead).
        ``initial_wait``: how long ``start`` waits to have read the topic to its end before going on."""
        self.bootstrap_servers = bootstrap_servers
        self.replica_sets: Mapping[str, ReplicaSet] = {} if replica_sets is None else replica_sets
        self.topic = topic or topic_prefix + REPLICAS
        self.client_id = client_id
        self.initial_wait = initial_wait
        self.retry_backoff = retry_backoff
        self.bad = BadRecords()
        self.reports: dict[str, ReplicasReport] = {}  # latest per pool, served here or not (yet)
        self._applied: dict[str, ReplicaSet] = {}  # the set each pool's report was last applied to
        self.changes = 0  # membership changes applied
        self.caught_up = asyncio.Event()
        self._positions: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, replica_sets: Mapping[str, ReplicaSet] | None = None) -> None:
        """Start following (``AdmitterState.start`` does, before anything else, with the upstream's sets,
        so the members are current when the first request comes)."""
        if replica_sets is not None:
            self.replica_sets = replica_sets
        self._task = asyncio.create_task(self._run(), name="replica-discovery")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.initial_wait):
                await self.caught_up.wait()
        if not self.caught_up.is_set():
            log.warning("replicas topic %s not read within %.1f s; routing to the configured backends until it is",
                        self.topic, self.initial_wait)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def handle(self, key: bytes | None, value: bytes | None) -> bool:
        """One record; True if a pool's members changed."""
        if value is None:  # a tombstone: the scaler gave the pool up, but its replicas may still serve
            return False
        report = decode(ReplicasReport, value, self.topic, self.bad)
        if report is None:
            return False
        if key is not None and key.decode("utf-8", "replace") != report.pool:
            self.bad.note(self.topic, "key_mismatch", f"key {key!r} holds pool {report.pool!r}")
            return False
        self.reports[report.pool] = report
        return self._apply(report.pool)

    def apply_pending(self) -> bool:
        """Apply kept reports to pools that appeared since (a pool added through the config topic)."""
        changed = False
        for pool in self.reports:
            replicas = self.replica_sets.get(pool)
            if replicas is not None and self._applied.get(pool) is not replicas:
                changed |= self._apply(pool)
        return changed

    def _apply(self, pool: str) -> bool:
        report = self.reports[pool]
        replicas = self.replica_sets.get(pool)
        if replicas is None or report.endpoints is None:
            return False
        self._applied[pool] = replicas
        added, removed = replicas.replace(report.endpoints)
        if not added and not removed:
            return False
        self.changes += 1
        log.info("pool %s: %d replicas (added %s, removed %s)", pool, len(replicas),
                 " ".join(added) or "-", " ".join(removed) or "-")
        return True

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest",
                                        client_id=self.client_id)
            try:
                await consumer.start()
                tps = await assign_resuming(consumer, (self.topic,), self._positions,
                                            retry_backoff=self.retry_backoff, log=log)
                end = await consumer.end_offsets(tps) if not self.caught_up.is_set() else {}
                while True:
                    if end and not self.caught_up.is_set() and await reached(consumer, end):
                        self.caught_up.set()
                        log.info("replica discovery caught up: %d pools reported", len(self.reports))
                    batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                    for tp, records in batches.items():
                        for r in records:
                            self.handle(r.key, r.value)
                            self._positions[tp] = r.offset + 1
                    self.apply_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica discovery lost Kafka; keeping the current replicas and reconnecting")
                await asyncio.sleep(self.retry_backoff)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await consumer.stop()
