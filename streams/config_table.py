"""Pools, entitlements and ready replicas as every worker sees them: the compacted config topics.

``tokenpools.config`` holds manifests (``model_dump(mode="json", by_alias=True)`` of TokenPool and
Entitlement documents) keyed ``<Kind>/<name>``; a tombstone deletes. ``tokenpools.replicas`` holds
the scaler's ``ReplicasReport`` per pool.

Why not a Faust GlobalTable: every worker needs the whole config (stage 1 for token weights, stage 2
for the allocator), a bad record must be counted and skipped by *our* decoder, and stage 2 must not
tick before the config is read to its end. A plain aiokafka reader without a consumer group, started
from the beginning of both (single-partition, compacted) topics inside the worker, does all three
in a few lines; ``ConfigView`` is the pure state it maintains, tested without Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.echo import echo
from schemas.loader import ConfigError, PlatformConfig, parse_manifest
from schemas.records import ReplicasReport
from schemas.specs import Entitlement, Manifest, TokenPool
from schemas.topics import config_key, config_value
from schemas.wire import BadRecords, decode
from streams.windows import Weights

log = logging.getLogger(__name__)

Handler = Callable[[bytes | None, bytes | None], None]


class ConfigView:
    """The latest pools, entitlements and replica reports, applied record by record."""

    def __init__(self, bad: BadRecords, config_topic: str, replicas_topic: str) -> None:
        self.bad = bad
        self.config_topic = config_topic
        self.replicas_topic = replicas_topic
        self.docs: dict[str, Manifest] = {}
        self.replicas: dict[str, int] = {}
        self.version = 0
        self._platform: PlatformConfig | None = None

    # -- applying records ---------------------------------------------------------------------

    def apply_config(self, key: bytes | None, value: bytes | None) -> None:
        topic = self.config_topic
        if key is None:
            self.bad.note(topic, "no_key", "config records are keyed <Kind>/<name>")
            return
        skey = key.decode("utf-8", "replace")
        if value is None:
            if self.docs.pop(skey, None) is not None:
                self._changed()
            return
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            self.bad.note(topic, "not_json", f"{skey}: {exc}")
            return
        if not isinstance(doc, dict):
            self.bad.note(topic, "not_an_object", f"{skey}: {echo(doc)}")
            return
        try:
            manifest = parse_manifest(doc)
        except ConfigError as exc:
            self.bad.note(topic, "invalid", f"{skey}: {exc}".replace("\n", "; "))
            return
        if config_key(manifest) != skey:
            self.bad.note(topic, "key_mismatch", f"key {skey!r} holds {config_key(manifest)!r}")
            return
        self.docs[skey] = manifest
        self._changed()

    def apply_replicas(self, key: bytes | None, value: bytes | None) -> None:
        topic = self.replicas_topic
        if value is None:
            if key is not None and self.replicas.pop(key.decode("utf-8", "replace"), None) is not None:
                self._changed()
            return
        report = decode(ReplicasReport, value, topic, self.bad)
        if report is None:
            return
        if key is not None and key.decode("utf-8", "replace") != report.pool:
            self.bad.note(topic, "key_mismatch", f"key {key!r} holds pool {report.pool!r}")
            return
        self.replicas[report.pool] = report.ready_replicas
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._platform = None

    # -- reading -----------------------------------------------------------------------------

    @property
    def platform(self) -> PlatformConfig:
        if self._platform is None:
            config = PlatformConfig()
            for doc in self.docs.values():
                if isinstance(doc, TokenPool):
                    config.pools[doc.name] = doc
                elif isinstance(doc, Entitlement):
                    config.entitlements[doc.name] = doc
            self._platform = config
        return self._platform

    def pool(self, name: str) -> TokenPool | None:
        return self.platform.pools.get(name)

    def entitlements_of(self, pool: str) -> list[Entitlement]:
        return sorted(self.platform.entitlements_of(pool), key=lambda e: e.name)

    def ready_replicas(self, pool: TokenPool) -> int:
        """The scaler's latest report, else the pool's initial (or minimum) replica count."""
        return self.replicas.get(pool.name, pool.spec.replicas.start)

    def weights(self, pool_name: str) -> Weights:
        pool = self.pool(pool_name)
        if pool is None:
            return Weights()
        return Weights(pool.spec.token_weights.input, pool.spec.token_weights.output)


class TopicFollower:
    """Reads whole topics from the beginning, forever, with no consumer group.

    ``ready`` is set once every partition has been read up to the end offset seen at start, so
    callers can wait for a complete view before acting on it.
    """

    def __init__(self, bootstrap_servers: str, handlers: dict[str, Handler], bad: BadRecords,
                 client_id: str = "tokenpools-streams-config") -> None:
        self.bootstrap_servers = bootstrap_servers
        self.handlers = handlers
        self.bad = bad
        self.client_id = client_id
        self.ready = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, client_id=self.client_id, group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = await self._assign(consumer)
            end = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if end[tp] > 0}
            if not pending:
                self.ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                for tp, records in batches.items():
                    for record in records:
                        self._handle(tp.topic, record.key, record.value)
                if pending:
                    pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
                    if not pending:
                        self.ready.set()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            parts = {topic: await partitions_of(consumer, topic) for topic in self.handlers}
            tps = [TopicPartition(topic, p) for topic, ps in parts.items() for p in ps]
            missing = [t for t, ps in parts.items() if not ps]
            if not missing:
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                return tps
            log.warning("waiting for topics %s to exist", ", ".join(missing))
            await asyncio.sleep(1.0)

    def _handle(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        try:
            self.handlers[topic](key, value)
        except Exception as exc:  # a record must never stop the follower
            self.bad.note(topic, "error", repr(exc))


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """Fresh partition ids of ``topic`` (``consumer.topics()`` fetches metadata but does not keep it)."""
    cluster = await consumer._client.fetch_all_metadata()
    return sorted(cluster.partitions_for_topic(topic) or ())


async def read_compacted(bootstrap_servers: str, topic: str, wait_s: float = 30.0) -> dict[bytes, bytes]:
    """The live (non-tombstoned) records of a topic, read once up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:  # a topic created a moment ago may not be in this client's metadata yet
            tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
            if tps:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"topic {topic} does not exist")
            await asyncio.sleep(0.2)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        live: dict[bytes, bytes] = {}
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    if record.key is None:
                        continue
                    if record.value is None:
                        live.pop(record.key, None)
                    else:
                        live[record.key] = record.value
        return live
    finally:
        await consumer.stop()


async def seed_config(bootstrap_servers: str, topic: str, manifests: Iterable[Manifest]) -> list[str]:
    """Publish the manifests whose key the config topic does not hold yet; returns the keys published.

    "If absent" on purpose: the topic is the source of truth once it holds a document (the admin API
    may have changed it since the YAML was written), so a restart with ``--config`` never reverts it.
    """
    present = await read_compacted(bootstrap_servers, topic)
    todo = [(config_key(m), config_value(m)) for m in manifests if config_key(m).encode() not in present]
    if not todo:
        return []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in todo:
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return [key for key, _ in todo]
