"""Replica discovery: a pool's backends follow the scaler's reports on ``tokenpools.replicas``.

``ReplicaDiscovery`` reads the compacted replicas topic with ``tokenpools.kafka.reader.CompactedReader``
(no group: every admitter needs every pool, and the partition is read whole from the beginning, then
tailed).
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
import logging
from collections.abc import Mapping

from admitter.upstream.replicas import ReplicaSet
from schemas.records import ReplicasReport
from schemas.topics import Topics
from schemas.wire import BadRecords, decode
from tokenpools.kafka.connection import bootstrap_of
from tokenpools.kafka.reader import CompactedReader
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger("tokenpools.admitter.discovery")


class ReplicaDiscovery:
    """Keeps each pool's ``ReplicaSet`` equal to the endpoints of its latest ``ReplicasReport``."""

    def __init__(
        self,
        bootstrap_servers: KafkaSettings | str,
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
        self.bootstrap_servers = bootstrap_of(bootstrap_servers)
        self.replica_sets: Mapping[str, ReplicaSet] = {} if replica_sets is None else replica_sets
        self.topic = topic or Topics(topic_prefix).replicas
        self.client_id = client_id
        self.initial_wait = initial_wait
        self.retry_backoff = retry_backoff
        self.bad = BadRecords()
        self.reports: dict[str, ReplicasReport] = {}  # latest per pool, served here or not (yet)
        self._applied: dict[str, ReplicaSet] = {}  # the set each pool's report was last applied to
        self.changes = 0  # membership changes applied
        self.reader = CompactedReader(
            bootstrap_servers, {self.topic: self.handle}, bad=self.bad, client_id=client_id,
            name="replica discovery", keeps="keeping the current replicas", after_batch=self._batch_done,
            on_caught_up=self._caught_up, retry_backoff=retry_backoff, logger=log)

    @property
    def caught_up(self) -> asyncio.Event:
        return self.reader.caught_up

    async def start(self, replica_sets: Mapping[str, ReplicaSet] | None = None) -> None:
        """Start following (``AdmitterState.start`` does, before anything else, with the upstream's sets,
        so the members are current when the first request comes)."""
        if replica_sets is not None:
            self.replica_sets = replica_sets
        if not await self.reader.start(self.initial_wait):
            log.warning("replicas topic %s not read within %.1f s; routing to the configured backends until it is",
                        self.topic, self.initial_wait)

    async def stop(self) -> None:
        await self.reader.stop()

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

    async def _batch_done(self) -> None:
        self.apply_pending()

    async def _caught_up(self) -> None:
        log.info("replica discovery caught up: %d pools reported", len(self.reports))
