"""Start one pipeline worker: create missing topics, seed the config, run the Faust worker.

Faust apps are usually started with ``faust -A module worker``; here the app is built from settings
(topic names and partition counts are only known at run time) and handed to ``faust.Worker``
directly, which is what the ``faust worker`` command does after parsing its options. Any number of
workers with the same app id share the partitions; each needs its own ``web_port``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import faust
from aiokafka.admin import AIOKafkaAdminClient

from schemas.loader import load_config
from schemas.topics import TopicSpec
from streams.app import Pipeline, create_pipeline_app
from streams.config_table import seed_config
from streams.settings import PipelineSettings
from streams.topics import create_topics
from tokenpools.kafka.connection import connection
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


async def partition_counts(bootstrap_servers: KafkaSettings | str,
                           topics: Sequence[str], wait_s: float = 30.0) -> dict[str, int]:
    """Partitions of each topic, waiting for freshly created topics to show up in metadata."""
    admin = AIOKafkaAdminClient(**connection(bootstrap_servers), client_id="tokenpools-streams-setup")
    await admin.start()
    try:
        async with asyncio.timeout(wait_s):
            while True:
                described = await admin.describe_topics(list(topics))
                counts = {t["topic"]: len(t.get("partitions") or []) for t in described if t.get("error_code", 0) == 0}
                if all(counts.get(t, 0) > 0 for t in topics):
                    return counts
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def prepare(settings: PipelineSettings, config_paths: Sequence[Path] = ()) -> dict[str, int]:
    """Create missing topics, publish absent config documents; returns partitions per topic."""
    specs = settings.topics.specs(settings.partitions)
    created = await create_topics(settings.kafka, specs, settings.replication)
    if created:
        log.info("created topics: %s", ", ".join(created))
    counts = await partition_counts(settings.kafka, [spec.name for spec in specs])
    if config_paths:
        platform = load_config(*config_paths)
        manifests = [*platform.pools.values(), *platform.entitlements.values()]
        published = await seed_config(settings.kafka, settings.topics.config, manifests)
        log.info("config: published %d absent document(s) to %s", len(published), settings.topics.config)
    return counts


def build(settings: PipelineSettings, counts: dict[str, int]) -> Pipeline:
    return create_pipeline_app(
        settings,
        requests_partitions=counts[settings.topics.requests],
        usage_partitions=counts[settings.topics.entitlement_usage],
    )


def changelog_specs(app: faust.App) -> list[TopicSpec]:
    """The changelog topic of every table, configured as Faust would create it."""
    specs = []
    for table in app.tables.values():
        topic = table.changelog_topic
        cleanup = [policy for policy, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on]
        config = {"cleanup.policy": ",".join(cleanup)} if cleanup else {}
        config.update({k: str(v) for k, v in (topic.config or {}).items()})
        specs.append(TopicSpec(topic.get_topic_name(), table.partitions or app.conf.topic_partitions, config))
    return specs


async def create_changelogs(settings: PipelineSettings, app: faust.App) -> None:
    """Create the tables' changelog topics before Faust starts, and wait until metadata lists them.

    Faust would create them itself at start, but two workers starting together race to do it, and a
    worker whose consumer joins the group before a changelog is in its metadata leaves that table
    out of recovery ("Ignoring missing topic") until its metadata refreshes. For ``pool-ticks``
    that restarted a pool's tick sequence and debt from zero on the worker that took the pool over
    (seen as two tick sequences from 1 in ``test_two_workers_share_the_partitions_and_count_exactly``).
    """
    specs = changelog_specs(app)
    created = await create_topics(settings.kafka, specs, settings.replication)
    if created:
        log.info("created changelog topics: %s", ", ".join(created))
    await partition_counts(settings.kafka, [spec.name for spec in specs])


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed: Faust's per-record path costs about a quarter less CPU on it
    (``bench/bench_streams.py``); the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_worker(settings: PipelineSettings, config_paths: Sequence[Path] = ()) -> None:
    """Blocks until the worker stops (SIGINT/SIGTERM)."""
    counts = asyncio.run(prepare(settings, config_paths))
    asyncio.set_event_loop(new_event_loop())  # asyncio.run closed its loop; Faust needs a fresh one
    settings.faust_data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    pipeline = build(settings, counts)
    asyncio.get_event_loop().run_until_complete(create_changelogs(settings, pipeline.app))
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=pipeline.metrics.registry)
    pipeline.app.finalize()
    worker = faust.Worker(pipeline.app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
