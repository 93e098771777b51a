"""Pools, entitlements and ready replicas as every worker sees them: the compacted config topics.

``tokenpools.config`` holds manifests keyed ``<Kind>/<name>`` (a tombstone deletes);
``tokenpools.replicas`` holds the scaler's ``ReplicasReport`` per pool. ``schemas.config_view.ConfigView``
is the pure state over them (shared with the admitter's config sync); this module adds the pipeline's
``Weights`` to it, the follower that feeds it, and the worker's seeding rule.

Why not a Faust GlobalTable: every worker needs the whole config (stage 1 for token weights, stage 2
for the allocator), a bad record must be counted and skipped by *our* decoder, and stage 2 must not
tick before the config is read to its end. ``tokenpools.kafka.reader.CompactedReader`` (no consumer
group, every partition from the beginning, a caught-up signal, reconnects) inside the worker does
all three.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaProducer

from schemas import config_view
from schemas.specs import Manifest
from schemas.topics import config_key, config_value
from schemas.wire import BadRecords
from streams.windows import Weights
from tokenpools.kafka.connection import connection
from tokenpools.kafka.reader import CompactedReader, Handler, read_compacted
from tokenpools.kafka.settings import KafkaSettings

__all__ = ["ConfigView", "TopicFollower", "read_compacted", "seed_config"]


class ConfigView(config_view.ConfigView):
    """The config topics' state, with each pool's token weights as stage 1 uses them."""

    def weights(self, pool_name: str) -> Weights:
        weights = self.token_weights(pool_name)
        return Weights() if weights is None else Weights(*weights)


class TopicFollower(CompactedReader):
    """Reads whole topics from the beginning, forever, with no consumer group, through broker outages.

    ``ready`` is set once every partition has been read up to the end offset seen at start, so
    callers can wait for a complete view before acting on it.
    """

    def __init__(self, bootstrap_servers: KafkaSettings | str, handlers: Mapping[str, Handler], bad: BadRecords,
                 client_id: str = "tokenpools-streams-config") -> None:
        super().__init__(bootstrap_servers, handlers, bad=bad, client_id=client_id, name="config follower",
                         keeps="keeping the current config")

    @property
    def ready(self) -> asyncio.Event:
        return self.caught_up


async def seed_config(bootstrap_servers: KafkaSettings | str, topic: str, manifests: Iterable[Manifest]) -> list[str]:
    """Publish the manifests whose key the config topic does not hold yet; returns the keys published.

    "If absent" on purpose: the topic is the source of truth once it holds a document (the admin API
    may have changed it since the YAML was written), so a restart with ``--config`` never reverts it.
    """
    present = await read_compacted(bootstrap_servers, topic)
    todo = [(config_key(m), config_value(m)) for m in manifests if config_key(m).encode() not in present]
    if not todo:
        return []
    producer = AIOKafkaProducer(**connection(bootstrap_servers), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in todo:
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return [key for key, _ in todo]
