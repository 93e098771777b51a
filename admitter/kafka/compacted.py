"""Reading compacted topics whole, then tailing them: what the admitter's three followers share.

``StateFollower`` (limits), ``ConfigSync`` (config) and ``ReplicaDiscovery`` (backends) each read
every partition of their topics without a consumer group: from the beginning on first start, and
after a reconnect from where the previous consumer stopped, so a new consumer neither replays nor
skips what the old one applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition


async def assign_resuming(consumer: AIOKafkaConsumer, topics: Sequence[str], positions: Mapping[TopicPartition, int],
                          *, retry_backoff: float, log: logging.Logger) -> list[TopicPartition]:
    """Assign every partition of ``topics`` (waiting until all of them exist), each at its position in
    ``positions``, or at the beginning if it has none."""
    while True:
        # Fresh metadata: ``consumer.topics()`` fetches it but does not keep it.
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
        if {tp.topic for tp in tps} == set(topics):
            break
        log.info("waiting for %s to exist", " and ".join(topics))
        await asyncio.sleep(retry_backoff)
    consumer.assign(tps)
    fresh = [tp for tp in tps if tp not in positions]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
    for tp in tps:
        if tp in positions:
            consumer.seek(tp, positions[tp])
    return tps


async def reached(consumer: AIOKafkaConsumer, end: Mapping[TopicPartition, int]) -> bool:
    """Whether the consumer has read up to ``end`` (the end offsets taken when it started) everywhere."""
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True
