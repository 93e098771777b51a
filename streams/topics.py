"""The topics token pools uses, created idempotently with explicit partitions and configs.

Events are keyed by entitlement, so one entitlement's events stay ordered on one partition and one
worker. State topics are compacted: the latest record per key is the state, and a reader that
starts late replays it from the beginning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

REQUESTS = "tokenpools.requests"
CONFIG = "tokenpools.config"
ENTITLEMENT_STATE = "tokenpools.entitlement-state"
POOL_STATE = "tokenpools.pool-state"
# The scaler's report of ready replicas per pool (compacted, key = pool name): the pipeline's
# capacity belief. Without a report a pool counts ``spec.replicas.initial`` (else ``min``).
REPLICAS = "tokenpools.replicas"
# Internal: stage 1 (partitioned by entitlement) sends per-entitlement window summaries keyed by
# pool, so stage 2 (partitioned by pool) sees a whole pool on one worker. Short retention: only the
# latest summary per entitlement matters, and stage 1 re-sends every tick.
ENTITLEMENT_USAGE = "tokenpools.entitlement-usage"

COMPACTED = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
    "min.compaction.lag.ms": "0",
}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(partitions: int = 6, replication: int = 1, prefix: str = "") -> list[TopicSpec]:
    """Every topic with its settings; ``prefix`` isolates test runs sharing one broker."""
    del replication  # carried by create_topics, kept here for a uniform call site
    return [
        TopicSpec(prefix + REQUESTS, partitions, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
        TopicSpec(prefix + CONFIG, 1, dict(COMPACTED)),
        TopicSpec(prefix + ENTITLEMENT_STATE, partitions, dict(COMPACTED)),
        TopicSpec(prefix + POOL_STATE, 1, dict(COMPACTED)),
        TopicSpec(prefix + REPLICAS, 1, dict(COMPACTED)),
        TopicSpec(prefix + ENTITLEMENT_USAGE, partitions, {"retention.ms": str(3600 * 1000)}),
    ]


async def create_topics(bootstrap_servers: str, specs: list[TopicSpec], replication: int = 1) -> list[str]:
    """Create what is missing; existing topics are left as they are. Returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="tokenpools-topics")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        try:
            await admin.create_topics(
                [NewTopic(s.name, s.partitions, replication, topic_configs=s.config) for s in missing]
            )
        except TopicAlreadyExistsError:
            log.info("topics created concurrently by another process")
        return [s.name for s in missing]
    finally:
        await admin.close()
