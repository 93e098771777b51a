"""Creating the topics (``schemas.topics`` says what they are) idempotently, with explicit partitions
and configs: the pipeline worker does it at start, and ``tokenpools up`` before anything else."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.topics import TopicSpec
from tokenpools.kafka.connection import connection
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


async def create_topics(bootstrap_servers: KafkaSettings | str,
                        specs: list[TopicSpec], replication: int = 1) -> list[str]:
    """Create what is missing; existing topics are left as they are. Returns the names created."""
    admin = AIOKafkaAdminClient(**connection(bootstrap_servers), client_id="tokenpools-topics")
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
