"""Pools and entitlements from ``tokenpools.config``, the compacted topic that is the source of truth.

``ConfigSync`` reads the topic from the beginning with a plain aiokafka consumer (no group: every
admitter needs all of it), keeps the latest manifest per key, then tails it; every change is applied
to the admitter (``AdmitterState.sync_config``: pools and entitlements added, changed, deleted, with
the API key ring), so a key added at one admitter works at every other within a fetch round trip.

**Start.** ``start`` waits up to ``initial_wait`` for the topic to be read to the end offsets seen at
connect. The YAML documents (``--config``) whose key the topic does not hold are then published (the
worker's rule, ``streams.config_table.seed_config``: once written, the topic wins), read back, and
only then does the topic's view replace the YAML one, so nothing from the YAML blinks out in
between. If Kafka cannot be reached in time the admitter serves the YAML, says so in the log, and
keeps retrying; it switches to the topic as soon as it has read it.

**Admin writes.** ``write`` publishes with an ``acks=all`` producer and returns once the broker
acknowledged the record, else raises ``schemas.errors.ConfigUnavailable`` (the admin API answers 503 and changes
nothing; the unsent record expires, so it does not land later either, see ``_get_producer``). The
caller applies its write locally at once; until this follower has read past the written offset,
reconciling overlays the written value (``_pending``), so the writer never flips back to the value
before its own write.

**Bad records** are decoded by ``schemas.config_view.ConfigView`` (the pipeline's decoder too: both sides
count and skip exactly the same records), counted in ``bad`` by reason and skipped. A well-formed
document the admitter cannot apply (a guarantee the pool cannot provision, a key another tenant
holds, an unknown pool) is counted once as ``rejected`` and retried on every later change.

The topic is read by ``tokenpools.kafka.reader.CompactedReader``: its caught-up hook publishes the seed
and reads it back before the view goes live, and its positions tell when a write has been read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from admitter.stats import ConfigStats
from schemas.config_view import ConfigView
from schemas.errors import ConfigUnavailable
from schemas.specs import Entitlement, Manifest, TokenPool
from schemas.topics import Topics, config_key, config_value
from schemas.wire import BadRecords
from tokenpools.kafka.connection import bootstrap_of, connection
from tokenpools.kafka.progress import Partition
from tokenpools.kafka.reader import CompactedReader
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger("tokenpools.admitter.config")


class ConfigTarget(Protocol):
    def sync_config(self, pools: Mapping[str, TokenPool], entitlements: Mapping[str, Entitlement]) -> dict[str, str]:
        """Make the live config equal to these documents; returns ``{key: problem}`` for those it could not apply."""


class ConfigSync:
    """Follows ``tokenpools.config`` and writes admin changes to it (see the module doc)."""

    def __init__(
        self,
        bootstrap_servers: KafkaSettings | str,
        *,
        topic_prefix: str = "",
        topic: str | None = None,
        seed: Iterable[Manifest] = (),
        initial_wait: float = 10.0,
        write_timeout: float = 5.0,
        retry_backoff: float = 1.0,
        client_id: str = "tokenpools-admitter-config",
    ) -> None:
        self.kafka = bootstrap_servers
        self.bootstrap_servers = bootstrap_of(bootstrap_servers)  # for messages
        topics = Topics(topic_prefix)
        self.topic = topic or topics.config
        self.initial_wait = initial_wait
        self.write_timeout = write_timeout
        self.retry_backoff = retry_backoff
        self.client_id = client_id
        self.bad = BadRecords()
        self.view = ConfigView(self.bad, self.topic, topics.replicas)
        self.seed = {config_key(m): m for m in seed if isinstance(m, TokenPool | Entitlement)}
        self.published: list[str] = []  # keys this admitter seeded from its YAML
        self.rejected: dict[str, str] = {}  # key -> why the admitter could not apply that document
        self._target: ConfigTarget | None = None
        self._pending: dict[str, tuple[Partition, int, Manifest | None]] = {}
        self._synced_version = -1
        self._seeded = False
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self.reader = CompactedReader(
            bootstrap_servers, {self.topic: self.view.apply_config}, bad=self.bad, client_id=client_id,
            name="config follower", keeps="keeping the current config", after_batch=self._batch_done,
            on_caught_up=self._caught_up, retry_backoff=retry_backoff, logger=log)

    @property
    def ready(self) -> asyncio.Event:
        """Set once the topic was read to its end (and the YAML's absent documents published and read back)."""
        return self.reader.caught_up

    @property
    def records(self) -> int:
        return self.reader.records[self.topic]

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, target: ConfigTarget) -> None:
        """Follow the topic; wait up to ``initial_wait`` for it, else go on with the YAML config."""
        self._target = target
        if not await self.reader.start(self.initial_wait):
            log.warning("config topic %s not read within %.1f s (is Kafka at %s up?); serving the YAML config "
                        "until it is, and admin writes answer 503", self.topic, self.initial_wait,
                        self.bootstrap_servers)

    async def stop(self) -> None:
        await self.reader.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)
        for task in list(self._closing):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def stats(self) -> Sequence[ConfigStats]:
        return [ConfigStats(records=self.records, bad=dict(self.bad.counts), rejected=len(self.rejected),
                            ready=self.ready.is_set())]

    def status(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for (topic, reason), n in self.bad.counts.items():
            if topic == self.topic:
                reasons[reason] = reasons.get(reason, 0) + n
        return {"source": "kafka" if self.ready.is_set() else "yaml (config topic not read yet)",
                "topic": self.topic, "ready": self.ready.is_set(), "records": self.records,
                "documents": len(self.view.docs), "published_from_yaml": list(self.published),
                "bad_records": reasons, "rejected": dict(self.rejected)}

    # -- writes --------------------------------------------------------------------------------

    async def write(self, key: str, manifest: Manifest | None) -> None:
        """Publish a manifest (None: a tombstone) and return once Kafka acknowledged it (acks=all)."""
        if not self.ready.is_set():
            raise ConfigUnavailable(f"the config topic {self.topic} has not been read yet (Kafka at "
                                    f"{self.bootstrap_servers} unreachable?); nothing was changed, retry later")
        value = None if manifest is None else config_value(manifest)
        try:
            # aiokafka expires an unsent batch after request_timeout_ms (= write_timeout): by the time
            # this outer bound fires the record has failed for good, so a 503 is never applied later.
            async with asyncio.timeout(self.write_timeout + 1.0):
                producer = await self._get_producer()
                meta = await producer.send_and_wait(self.topic, value, key=key.encode())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._drop_producer()
            raise ConfigUnavailable(f"Kafka at {self.bootstrap_servers} did not acknowledge the write to "
                                    f"{self.topic} ({type(exc).__name__}); nothing was changed, retry later") from exc
        tp = Partition(meta.topic, meta.partition)
        if self.reader.position(tp) <= meta.offset:
            self._pending[key] = (tp, meta.offset, manifest)

    async def _get_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                # Not idempotent on purpose: aiokafka's idempotent producer never expires a batch (it
                # retries until the broker takes it), so a write answered 503 could land minutes later.
                # A plain acks=all producer fails the batch after request_timeout_ms. A retried config
                # write cannot double-count anything (same key, same value; writes here are serialised).
                producer = AIOKafkaProducer(
                    **connection(self.kafka), acks="all", enable_idempotence=False,
                    request_timeout_ms=int(self.write_timeout * 1000), client_id=f"{self.client_id}-{int(time.time())}")
                try:
                    await producer.start()
                except BaseException:
                    self._close_later(producer)
                    raise
                self._producer = producer
            return self._producer

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            self._close_later(producer)

    def _close_later(self, producer: AIOKafkaProducer) -> None:
        """Stop a failed producer without making the admin request wait for it."""
        task = asyncio.create_task(_stop_quietly(producer))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- following -----------------------------------------------------------------------------

    async def _batch_done(self) -> None:
        if self.ready.is_set():
            self._prune_pending()
            if self.view.version != self._synced_version or self.rejected:
                self._reconcile()

    async def _caught_up(self) -> dict[Partition, int] | None:
        """Read to the end: publish the seed once and read it back, then go live."""
        if not self._seeded:
            more = await self._publish_seed()
            self._seeded = True
            if more:
                return more
        self._go_live()
        return None

    async def _publish_seed(self) -> dict[Partition, int]:
        """Publish the YAML documents whose key is absent; returns the offsets to read up to as well."""
        todo = [(key, m) for key, m in self.seed.items() if key not in self.view.docs]
        if not todo:
            return {}
        producer = await self._get_producer()
        end: dict[Partition, int] = {}
        for key, manifest in todo:
            meta = await producer.send_and_wait(self.topic, config_value(manifest), key=key.encode())
            tp = Partition(meta.topic, meta.partition)
            end[tp] = max(end.get(tp, 0), meta.offset + 1)
        self.published = [key for key, _ in todo]
        log.info("config: published %d document(s) from the YAML absent on %s: %s", len(todo), self.topic,
                 ", ".join(self.published))
        return end

    def _go_live(self) -> None:
        self._reconcile()
        platform = self.view.platform
        log.info("config from %s: %d pool(s), %d entitlement(s)%s", self.topic, len(platform.pools),
                 len(platform.entitlements), f"; {len(self.rejected)} not applied" if self.rejected else "")

    def _prune_pending(self) -> None:
        done = [key for key, (tp, offset, _) in self._pending.items() if self.reader.position(tp) > offset]
        for key in done:
            del self._pending[key]

    def _reconcile(self) -> None:
        if self._target is None:
            return
        self._synced_version = self.view.version
        docs: dict[str, Manifest] = dict(self.view.docs)
        for key, (_, _, manifest) in self._pending.items():
            if manifest is None:
                docs.pop(key, None)
            else:
                docs[key] = manifest
        pools = {m.name: m for m in docs.values() if isinstance(m, TokenPool)}
        entitlements = {m.name: m for m in docs.values() if isinstance(m, Entitlement)}
        try:
            problems = self._target.sync_config(pools, entitlements)
        except Exception:  # keep following; the next change retries
            log.exception("applying the config topic failed; keeping the current config")
            return
        for key, problem in problems.items():
            if self.rejected.get(key) != problem:
                self.bad.note(self.topic, "rejected", f"{key}: {problem}")
        self.rejected = problems


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await producer.stop()
