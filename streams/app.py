"""The Faust app: agents, tables and timers of the two-stage metering pipeline.

Topology (every name gets ``--topic-prefix``; ``<app>`` is the prefixed app id)::

  tokenpools.requests (key entitlement, N partitions)
     -> agent ``ingest`` (stage 1): windows + dedup      tables <app>-entitlement-windows, <app>-seen-ids
     -> timers ``emit_summaries`` (every record, every summary interval) and
        ``emit_changed_summaries`` (records whose trailing demand moved, every change check)
  tokenpools.entitlement-usage (key pool, M partitions, internal)
     -> agent ``collect`` (stage 2): latest summary      table  <app>-pool-inputs
     -> timer ``run_ticks``: allocator per owned pool    table  <app>-pool-ticks (seq, debt)
        (every tickSeconds, or early when its inputs moved)
  -> tokenpools.entitlement-state (key entitlement, compacted)
  -> tokenpools.pool-state (key pool, compacted)

  tokenpools.config + tokenpools.replicas (compacted, 1 partition) are read whole by every worker
  (``streams.config_table``), outside the consumer group.

Processing guarantee: at-least-once (Faust's default), made exact by the pipeline itself: window
records carry the last applied offset (replays are skipped), event ids are remembered (duplicates
are skipped, ``streams.dedup``), and records Faust fails to deliver after a rebalance are read back
(``streams.gaps``). Faust's ``exactly_once`` was tried (faust-streaming 0.15.3, aiokafka 0.14,
Kafka 4.1.1) and does not work here: Faust picks the transactional producer by the *destination*
partition, so as soon as two workers share the partitions, stage 1's send of a summary to a usage
partition the other worker owns crashes the worker (``ProducerSendError: No transaction producer
found``). It can still be selected (``processing_guarantee="exactly_once"``) for experiments with
one worker. Details in docs/pipeline.md.

All topics are consumed with raw serializers and decoded by our code (``schemas.wire.decode``), so a
bad record is counted by topic and reason and skipped, never fatal. Each worker's web server binds
127.0.0.1 on its own port (Faust's default 0.0.0.0:6066 makes two workers collide).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.auth import SASLCredentials, SSLCredentials

from schemas.wire import BadRecords
from streams.allocate import PoolTick
from streams.codec import RawMessage, partition_for
from streams.config_table import ConfigView, TopicFollower
from streams.dedup import SeenBatch
from streams.fetch_wait import set_fetch_max_wait
from streams.gaps import KafkaGapSource
from streams.metrics import PipelineMetrics
from streams.records import UsageSummary
from streams.settings import PipelineSettings
from streams.stage1 import Stage1
from streams.stage2 import Stage2
from streams.store import FaustTableStore
from streams.windows import EntitlementWindows
from tokenpools.kafka.connection import connection
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """The Faust app plus the pieces tests and the CLI reach for."""

    app: faust.App
    settings: PipelineSettings
    bad: BadRecords
    metrics: PipelineMetrics
    config: ConfigView
    follower: TopicFollower
    stage1: Stage1
    stage2: Stage2
    requests_partitions: int
    usage_partitions: int

    def ready(self) -> bool:
        """Partitions assigned and tables recovered: safe to read state and act on it."""
        recovery = self.app.tables.recovery
        return not self.app.rebalancing and recovery.completed.is_set()

    def active_partitions(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def owned_pools(self) -> dict[str, int]:
        """Pools whose usage-topic partition this worker holds: name -> partition."""
        mine = self.active_partitions(self.settings.topics.entitlement_usage)
        out = {}
        for name in self.config.platform.pools:
            p = partition_for(name, self.usage_partitions)
            if p in mine:
                out[name] = p
        return out


def _requests_lag(app: faust.App, topic: str, stage1: Stage1) -> list[tuple[str, int, int]]:
    """(topic, partition, records behind the log end) for each requests partition assigned here that stage 1
    has had a record of; read at scrape time, so nothing on the event path pays for it."""
    delivered = stage1.delivered()
    out = []
    for tp in app.consumer.assignment():
        if tp.topic != topic or tp.partition not in delivered:
            continue
        end = app.consumer.highwater(tp)
        if end is not None and end >= 0:
            out.append((topic, tp.partition, max(0, end - delivered[tp.partition] - 1)))
    return out


def _raw(events: Sequence[Any]) -> list[RawMessage]:
    return [RawMessage(e.message.partition, e.message.offset, e.message.key, e.message.value) for e in events]


def faust_credentials(kafka: KafkaSettings) -> SASLCredentials | SSLCredentials | None:
    """Faust's ``broker_credentials`` for the Kafka block (faust hands them to its aiokafka consumer,
    producer and admin client): None with PLAINTEXT; ``SSLCredentials(context)`` with SSL;
    ``SASLCredentials(username, password, mechanism)`` with SASL_PLAINTEXT, plus ``ssl_context`` with
    SASL_SSL (faust then says SASL_SSL). The SSL context is the one ``connection`` builds (``ssl_cafile``
    or the system's CAs), so the worker's Faust clients and its own aiokafka clients verify alike."""
    kwargs = connection(kafka)
    if kafka.security_protocol == "PLAINTEXT":
        return None
    if kafka.security_protocol == "SSL":
        return SSLCredentials(kwargs["ssl_context"])
    return SASLCredentials(username=kwargs["sasl_plain_username"], password=kwargs["sasl_plain_password"],
                           mechanism=kwargs["sasl_mechanism"], ssl_context=kwargs.get("ssl_context"))


def faust_settings(s: PipelineSettings) -> dict[str, Any]:
    """``faust.App`` settings of a pipeline worker (the benchmark's empty-agent baseline uses them too);
    ``broker_credentials`` only when the Kafka block is not PLAINTEXT."""
    credentials = faust_credentials(s.kafka)
    return dict(
        **({"broker_credentials": credentials} if credentials is not None else {}),
        broker=[f"kafka://{h.strip()}" for h in s.bootstrap_servers.split(",") if h.strip()],
        store="memory://",  # tables recover from their changelogs at start: no RocksDB needed
        datadir=str(s.faust_data_dir),
        processing_guarantee=s.processing_guarantee,
        autodiscover=False,
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=s.web_port,
        table_standby_replicas=0,  # a standby copy would be iterated as if it were ours
        topic_disable_leader=True,
        topic_replication_factor=s.replication,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=s.commit_interval_s,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=max(0.5, s.session_timeout_s / 5),
        stream_recovery_delay=0.2,
        stream_buffer_maxsize=8192,
        broker_max_poll_records=2000,
        # Changelog writes of a batch go to few partitions: large producer batches keep `await send`
        # from waiting for a full batch to drain (16 KiB by default, about ten window records).
        producer_max_batch_size=1024 * 1024,
    )


def create_pipeline_app(
    settings: PipelineSettings,
    *,
    requests_partitions: int,
    usage_partitions: int,
) -> Pipeline:
    """Build the worker's Faust app. Topics must exist (``streams.worker.prepare`` creates them)."""
    s = settings
    app = faust.App(s.full_app_id, **faust_settings(s))
    set_fetch_max_wait(app, s.fetch_max_wait_s)
    bad = BadRecords()
    metrics = PipelineMetrics(bad)
    config = ConfigView(bad, s.topics.config, s.topics.replicas)
    follower = TopicFollower(
        s.kafka, {s.topics.config: config.apply_config, s.topics.replicas: config.apply_replicas}, bad,
        client_id=f"{s.full_app_id}-config",
    )

    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    requests = app.topic(s.topics.requests, partitions=requests_partitions, **raw)
    usage = app.topic(s.topics.entitlement_usage, partitions=usage_partitions, **raw)
    entitlement_state = app.topic(s.topics.entitlement_state, **raw)
    pool_state = app.topic(s.topics.pool_state, **raw)
    table_args: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    windows_table = app.Table("entitlement-windows", partitions=requests_partitions, **table_args)
    horizon_ms = int(s.dedup_horizon_s * 1000)
    seen_table = app.Table(
        "seen-ids", partitions=requests_partitions, **table_args,
        # Keys are unique per batch: nothing to compact; the broker deletes ids past the horizon.
        extra_topic_configs={
            "cleanup.policy": "delete",
            "retention.ms": str(int(horizon_ms * 1.5) + 60_000),
            "segment.ms": str(max(60_000, horizon_ms // 2)),
        },
    )
    inputs_table = app.Table("pool-inputs", partitions=usage_partitions, **table_args)
    ticks_table = app.Table("pool-ticks", partitions=usage_partitions, **table_args)

    stage1 = Stage1(
        windows=FaustTableStore(windows_table, lambda _k, v: EntitlementWindows.from_json(v)),
        seen=FaustTableStore(seen_table, SeenBatch.from_json),
        config=config, spec=s.windows, topic=s.topics.requests, bad=bad, metrics=metrics,
        dedup_horizon_s=s.dedup_horizon_s, dedup_max_ids=s.dedup_max_ids,
        gaps=KafkaGapSource(s.kafka, s.topics.requests, s.full_app_id),
    )

    async def publish(topic: str, key: str, value: bytes) -> None:
        channel = entitlement_state if topic == s.topics.entitlement_state else pool_state
        await channel.send(key=key.encode(), value=value)

    stage2 = Stage2(
        inputs=FaustTableStore(inputs_table, lambda _k, v: UsageSummary.model_validate_json(v)),
        ticks=FaustTableStore(ticks_table, lambda _k, v: PoolTick.from_json(v)),
        config=config, topic=s.topics.entitlement_usage, entitlement_state_topic=s.topics.entitlement_state,
        pool_state_topic=s.topics.pool_state, publish=publish, bad=bad, metrics=metrics,
        stale_after_s=s.stale_after, max_dt_s=s.max_dt, admitter_horizon_s=s.admitter_horizon_s,
        change_threshold=s.change_threshold, min_tick_gap_s=s.min_tick_gap_s,
    )
    pipeline = Pipeline(app, s, bad, metrics, config, follower, stage1, stage2, requests_partitions,
                        usage_partitions)
    metrics.follow_lag(lambda: _requests_lag(app, s.topics.requests, stage1))

    for table in (windows_table, seen_table):
        table.on_recover(_async(stage1.reset))
    for table in (inputs_table, ticks_table):
        table.on_recover(_async(stage2.reset))

    @app.agent(requests, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_max, within=s.batch_within_s):
            batch = _raw(events)
            # The batch is acknowledged when this body returns: never return before it is persisted.
            while True:
                try:
                    await stage1.process(batch)
                    break
                except Exception:
                    log.exception("stage 1 could not persist a batch; retrying in 1 s")
                    await asyncio.sleep(1.0)

    @app.agent(usage, name="collect")
    async def collect(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_max, within=s.batch_within_s):
            try:
                await stage2.process(_raw(events))
            except Exception:  # summaries are re-sent every interval: losing a batch costs one tick
                log.exception("stage 2 could not store a batch of summaries")

    async def send_summaries(summaries: list[UsageSummary], *, hand_over: bool = False) -> None:
        """To stage 2 through the usage topic; with ``hand_over``, those of pools this worker ticks also
        go straight to its stage 2 (Faust's consumer path adds about 0.3 s; the Kafka copy then changes
        nothing, since stage 2 keeps a summary only if it is newer than the one it has)."""
        owned = pipeline.owned_pools() if hand_over else {}
        local: list[RawMessage] = []
        for summary in summaries:
            key, value = summary.pool.encode(), summary.model_dump_json().encode()
            await usage.send(key=key, value=value)
            metrics.summaries_sent.inc()
            if summary.pool in owned:
                local.append(RawMessage(owned[summary.pool], -1, key, value))
        if local:
            await stage2.process(local)

    @app.timer(s.summary_interval_s, name="emit_summaries")
    async def emit_summaries() -> None:
        if not pipeline.ready():
            return
        now = time.time()
        try:
            stage1.expire(now)
            await send_summaries(stage1.summaries(now, pipeline.active_partitions(s.topics.requests)))
        except Exception:  # the next interval sends them all again
            log.exception("sending window summaries failed")

    # The early path: a record whose trailing demand moved goes out now, not at the next interval.
    @app.timer(s.change_check_s or s.summary_interval_s, name="emit_changed_summaries")
    async def emit_changed_summaries() -> None:
        if not s.change_check_s or not pipeline.ready():
            return
        try:
            await send_summaries(stage1.changed_summaries(
                time.time(), pipeline.active_partitions(s.topics.requests), s.change_threshold), hand_over=True)
        except Exception:  # the regular interval sends them anyway
            log.exception("sending changed window summaries failed")

    @app.timer(s.scheduler_interval_s, name="run_ticks")
    async def run_ticks() -> None:
        metrics.config_ready.set(1 if follower.ready.is_set() else 0)
        if not (follower.ready.is_set() and pipeline.ready()):
            return
        owned = pipeline.owned_pools()
        metrics.owned_pools.set(len(owned))
        now = time.time()
        due = stage2.due(sorted(owned), now)
        if not due:
            return
        grouped = stage2.inputs_by_entitlement(now)
        for name in due:
            try:
                await stage2.tick(name, owned[name], now, grouped.get(name, {}))
            except Exception:  # one pool's failure must not stop the others (or the worker)
                log.exception("allocator tick failed for pool %s", name)

    @app.task
    async def follow_config() -> None:
        await follower.run()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/streams/status")
    async def status_page(web: Any, request: Any) -> Any:
        return web.json({
            "ready": pipeline.ready(),
            "config_ready": follower.ready.is_set(),
            "pools": sorted(config.platform.pools),
            "owned_pools": sorted(pipeline.owned_pools()),
            "requests_partitions": sorted(pipeline.active_partitions(s.topics.requests)),
            "usage_partitions": sorted(pipeline.active_partitions(s.topics.entitlement_usage)),
            "bad_records": {f"{t}|{r}": n for (t, r), n in bad.counts.items()},
        })

    del ingest, collect, emit_summaries, emit_changed_summaries, run_ticks, follow_config, metrics_page, status_page
    return pipeline


def _async(fn: Any) -> Any:
    async def call() -> None:
        fn()
        await asyncio.sleep(0)

    return call
