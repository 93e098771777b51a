"""Prometheus metrics on the admitter's own registry.

Counters and histograms are updated on the request path through cached label children (a dict
lookup, no label parsing per request). Limits, in-flight amounts, bucket levels and debt are read
from the live state at scrape time by a collector, so the request path never touches a gauge. The
background parts (the Kafka sink and its spool, the state follower, the config sync, the local
allocator) are read the same way, through the small stats protocol they implement
(``admitter.stats``, ``watch_stats``). Every metric is listed in docs/observability.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from admitter.stats import AllocatorStats, ConfigStats, Counts, ReportsStats, SinkStats, StateStats

if TYPE_CHECKING:
    from admitter.admission.gate import PoolGate
    from admitter.upstream.replicas import ReplicaSet
    from tokenpools.infra.slow_clients import ConnectionGuard

Gates = Callable[[], Mapping[str, "PoolGate"]]
Replicas = Callable[[], Mapping[str, "ReplicaSet"]]

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
PREFIX = "tokenpools_admitter_"


class AdmitterMetrics:
    def __init__(self, gates: Gates, replicas: Replicas) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ("pool", "entitlement", "tier")
        self.admitted = Counter(PREFIX + "admitted", "Requests admitted (at once or after a wait)", labels, registry=r)
        self.queued = Counter(PREFIX + "queued", "Requests that had to wait in the queue", labels, registry=r)
        self.refused = Counter(PREFIX + "refused", "Requests refused with 429", (*labels, "dimension"), registry=r)
        self.preempted = Counter(PREFIX + "preempted", "Running spot requests preempted", labels, registry=r)
        self.finished = Counter(PREFIX + "finished", "Admitted requests by how they ended", (*labels, "outcome"),
                                registry=r)
        self.upstream_errors = Counter(PREFIX + "upstream_errors", "Replica failures by kind", ("pool", "kind"),
                                       registry=r)
        self.tokens = Counter(PREFIX + "tokens", "Tokens processed (backend usage)", (*labels, "direction"),
                              registry=r)
        self.queue_wait = Histogram(PREFIX + "queue_wait_seconds", "Time admitted requests spent queued",
                                    ("pool", "tier"), buckets=WAIT_BUCKETS, registry=r)
        self.added_latency = Histogram(
            PREFIX + "added_latency_seconds",
            "Admitter overhead to the first byte: time to first byte minus queue wait and the replica call "
            "(request sent to first response byte)",
            ("pool", "stream"), buckets=LATENCY_BUCKETS, registry=r)
        r.register(_LiveCollector(gates, replicas))
        self._children: dict[tuple[object, ...], object] = {}

    def watch_stats(self, *sources: Callable[[], object]) -> None:
        """Export what the app's parts report (``admitter.stats``): the Kafka sink's, the limit source's and
        the config sync's counters, each read at scrape time; a part that reports nothing exports nothing."""
        self.registry.register(StatsCollector(*sources))

    def watch_connections(self, guard: ConnectionGuard) -> None:
        """Export the slow-client guard's counters (``tokenpools.infra.slow_clients``) of the server serving us."""
        self.registry.register(_ConnectionCollector(guard))

    def child(self, metric: Counter | Histogram, *values: str) -> Counter | Histogram:
        key = (id(metric), *values)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*values)
        return c  # type: ignore[return-value]


class _LiveCollector(Collector):
    """Gauges read from ``PoolLive`` at scrape time."""

    def __init__(self, gates: Gates, replicas: Replicas) -> None:
        self._gates = gates
        self._replicas = replicas

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        ent_labels = ["pool", "entitlement", "tier", "dimension"]
        limit = GaugeMetricFamily(PREFIX + "limit", "Current limit per entitlement and dimension", labels=ent_labels)
        in_flight = GaugeMetricFamily(PREFIX + "in_flight", "Held now per entitlement and dimension", labels=ent_labels)
        bucket = GaugeMetricFamily(PREFIX + "bucket_level", "Throughput bucket level (weighted tokens)",
                                   labels=["pool", "entitlement", "tier"])
        clipped = CounterMetricFamily(PREFIX + "bucket_clipped_tokens",
                                      "Throughput bucket credit dropped because a cut left the level above the new "
                                      "depth (debt is never clipped: a negative level is repaid whole)",
                                      labels=["pool", "entitlement", "tier"])
        deferred = CounterMetricFamily(PREFIX + "bucket_deferred_debt_tokens",
                                       "Throughput bucket debt a large cut of the whole limit took out of the level "
                                       "(so the tenant waits at most one burst window) and carried as owed, collected "
                                       "from the next raises", labels=["pool", "entitlement", "tier"])
        owed = GaugeMetricFamily(PREFIX + "bucket_owed_tokens", "Throughput bucket debt owed now (see "
                                 "bucket_deferred_debt_tokens_total)", labels=["pool", "entitlement", "tier"])
        debt = GaugeMetricFamily(PREFIX + "debt", "Elastic fairness debt", labels=["pool", "entitlement", "tier"])
        weight = GaugeMetricFamily(PREFIX + "effective_weight", "Weight after debt",
                                   labels=["pool", "entitlement", "tier"])
        capacity = GaugeMetricFamily(PREFIX + "pool_capacity", "Pool capacity this admitter fills",
                                     labels=["pool", "dimension"])
        pool_in_flight = GaugeMetricFamily(PREFIX + "pool_in_flight", "Held now in the pool",
                                           labels=["pool", "dimension"])
        waiting = GaugeMetricFamily(PREFIX + "queue_length", "Requests waiting for room", labels=["pool"])
        outstanding = GaugeMetricFamily(PREFIX + "replica_outstanding", "Requests in flight per replica",
                                        labels=["pool", "replica"])
        for name, gate in self._gates().items():
            live = gate.live
            for e in live.entitlements.values():
                base = [name, e.name, e.tier.value]
                limit.add_metric([*base, "throughput"], e.limit_tp)
                limit.add_metric([*base, "kv"], e.limit_kv)
                limit.add_metric([*base, "concurrency"], e.limit_conc)
                in_flight.add_metric([*base, "kv"], e.kv_in_flight)
                in_flight.add_metric([*base, "concurrency"], e.seqs_in_flight)
                bucket.add_metric(base, e.bucket.level)
                clipped.add_metric(base, e.bucket.clipped)
                deferred.add_metric(base, e.bucket.deferred)
                owed.add_metric(base, e.bucket.owed)
                debt.add_metric(base, e.debt)
                weight.add_metric(base, e.effective_weight)
            capacity.add_metric([name, "throughput"], live.cap_tp)
            capacity.add_metric([name, "kv"], live.cap_kv)
            capacity.add_metric([name, "concurrency"], live.cap_conc)
            pool_in_flight.add_metric([name, "kv"], live.kv_in_flight)
            pool_in_flight.add_metric([name, "concurrency"], live.seqs_in_flight)
            waiting.add_metric([name], gate.waiting)
        for name, replica_set in self._replicas().items():
            for replica in replica_set:
                outstanding.add_metric([name, replica.url], replica.outstanding)
        yield from (limit, in_flight, bucket, clipped, deferred, owed, debt, weight, capacity, pool_in_flight, waiting,
                    outstanding)


class _ConnectionCollector(Collector):
    """Slow clients: connections closed for a read timeout, dropped over the cap, and still unread now."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        stats = self._guard.stats
        closed = CounterMetricFamily(PREFIX + "slow_connections_closed",
                                     "Connections closed because the client was too slow to send its request",
                                     labels=["reason"])
        closed.add_metric(["header_timeout"], stats.head_timeouts)
        closed.add_metric(["body_timeout"], stats.body_timeouts)
        closed.add_metric(["over_cap"], stats.evicted)
        unread = GaugeMetricFamily(PREFIX + "unauthenticated_connections",
                                   "Connections still sending their request (not yet read in full)")
        unread.add_metric([], len(self._guard.unadmitted))
        yield from (closed, unread)


class StatsCollector(Collector):
    """The background parts read at scrape time through their ``stats()`` (``admitter.stats``).

    Each source is called at every scrape (the app's parts can be swapped after start-up); one that
    does not implement ``ReportsStats`` (an in-memory sink) exports nothing.
    """

    def __init__(self, *sources: Callable[[], object], wall: Callable[[], float] = time.time) -> None:
        self._sources = sources
        self._wall = wall

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        reported = [s for source in self._sources if isinstance(part := source(), ReportsStats) for s in part.stats()]
        yield from self._sink_metrics([s for s in reported if isinstance(s, SinkStats)])
        for stats in reported:
            if isinstance(stats, StateStats):
                yield from _state_metrics(stats)
            elif isinstance(stats, AllocatorStats):
                yield from _allocator_metrics(stats)
            elif isinstance(stats, ConfigStats):
                yield from _config_metrics(stats)

    def _sink_metrics(self, sinks: list[SinkStats]) -> Iterable[Metric]:
        if not sinks:
            return
        t = ["topic"]
        emitted = CounterMetricFamily(PREFIX + "kafka_events_emitted", "Events handed to the Kafka sink", labels=t)
        spooled = CounterMetricFamily(PREFIX + "kafka_events_spooled",
                                      "Events fsynced to the local spool (durable, readable by the sender)", labels=t)
        sent = CounterMetricFamily(PREFIX + "kafka_events_sent", "Events acknowledged by Kafka (acks=all)", labels=t)
        kafka_records = CounterMetricFamily(PREFIX + "kafka_records_sent",
                                            "Kafka records those events went out in (one entitlement's events of a "
                                            "pass share a record)", labels=t)
        errors = CounterMetricFamily(PREFIX + "kafka_send_errors",
                                     "Failed send attempts (each rewinds to the last acked event and backs off)",
                                     labels=t)
        records = GaugeMetricFamily(PREFIX + "kafka_spool_backlog_records",
                                    "Events in the spool not yet acknowledged by Kafka", labels=t)
        size = GaugeMetricFamily(PREFIX + "kafka_spool_backlog_bytes",
                                 "Spool bytes (with record headers) not yet acknowledged by Kafka", labels=t)
        age = GaugeMetricFamily(PREFIX + "kafka_spool_oldest_age_seconds",
                                "Age of the oldest event not yet acknowledged (0 when none)", labels=t)
        connected = GaugeMetricFamily(PREFIX + "kafka_producer_connected",
                                      "1 if the last send was acknowledged, 0 after a failure or before the first ack",
                                      labels=t)
        for sink in sinks:
            label = [sink.topic]
            emitted.add_metric(label, sink.emitted)
            spooled.add_metric(label, sink.spooled)
            sent.add_metric(label, sink.sent)
            kafka_records.add_metric(label, sink.records_sent)
            errors.add_metric(label, sink.send_errors)
            records.add_metric(label, sink.backlog_records)
            size.add_metric(label, sink.backlog_bytes)
            oldest = sink.oldest_pending_ts
            age.add_metric(label, 0.0 if oldest is None else max(0.0, self._wall() - oldest))
            connected.add_metric(label, 1.0 if sink.connected else 0.0)
        yield from (emitted, spooled, sent, kafka_records, errors, records, size, age, connected)


def _allocator_metrics(a: AllocatorStats) -> Iterable[Metric]:
    """The in-process allocator's rejected ticks: its inputs or results were not finite, so the pool
    kept its previous limits (``capacity.allocator``); any at all means a bug or a bad input got in."""
    family = CounterMetricFamily(PREFIX + "allocator_rejected_ticks",
                                 "In-process allocator ticks that kept the previous limits because their inputs "
                                 "or results were not finite, by pool and reason", labels=["pool", "reason"])
    for (pool, reason), n in sorted(a.rejected.items()):
        family.add_metric([pool, reason], n)
    yield family


def _state_metrics(f: StateStats) -> Iterable[Metric]:
    records = CounterMetricFamily(PREFIX + "state_records",
                                  "State records read, by kind (entitlement, pool) and result (applied to a pool "
                                  "this admitter serves, ignored, deleted by a tombstone)", labels=["kind", "result"])
    for (kind, result), n in sorted(f.records.items()):
        records.add_metric([kind, result], n)
    bad = _bad_records("state", f.bad)
    caught_up = GaugeMetricFamily(PREFIX + "state_caught_up",
                                  "1 once the state topics were read to the end offsets seen at start")
    caught_up.add_metric([], 1.0 if f.caught_up else 0.0)
    connected = GaugeMetricFamily(PREFIX + "state_connected",
                                  "1 if the follower had a fetch response from Kafka within its contact timeout")
    connected.add_metric([], 1.0 if f.connected else 0.0)
    reconnects = CounterMetricFamily(PREFIX + "state_reconnects", "Times Kafka came back after the follower lost it")
    reconnects.add_metric([], f.reconnects)
    staleness = GaugeMetricFamily(PREFIX + "state_staleness_seconds",
                                  "Seconds since a new state of the pool was applied (since start if none yet)",
                                  labels=["pool"])
    for pool, seconds in sorted(f.staleness.items()):
        staleness.add_metric([pool], seconds)
    seq = GaugeMetricFamily(PREFIX + "state_seq", "Pipeline tick number of the newest state applied, per pool",
                            labels=["pool"])
    for pool, n in sorted(f.last_seq.items()):
        seq.add_metric([pool], n)
    fallbacks = CounterMetricFamily(
        PREFIX + "state_fallback_shares",
        "Entitlement states applied with a share not named in the record, by pool and kind (unlisted: the "
        "record lists other admitters, so this one enforces nothing; empty: it lists none, limits / n each)",
        labels=["pool", "kind"])
    for (pool, kind), n in sorted(f.fallbacks.items()):
        fallbacks.add_metric([pool, kind], n)
    yield from (records, bad, caught_up, connected, reconnects, staleness, seq, fallbacks)


def _config_metrics(c: ConfigStats) -> Iterable[Metric]:
    records = CounterMetricFamily(PREFIX + "config_records", "Records read from the config topic")
    records.add_metric([], c.records)
    bad = _bad_records("config", c.bad)
    rejected = GaugeMetricFamily(PREFIX + "config_rejected_documents",
                                 "Documents on the config topic this admitter could not apply (see GET /admin/config)")
    rejected.add_metric([], c.rejected)
    ready = GaugeMetricFamily(PREFIX + "config_ready", "1 once the config topic was read to its end")
    ready.add_metric([], 1.0 if c.ready else 0.0)
    yield from (records, bad, rejected, ready)


def _bad_records(kind: str, bad: Counts) -> Metric:
    family = CounterMetricFamily(PREFIX + f"{kind}_bad_records",
                                 f"{kind.capitalize()} records skipped as bad, by topic and reason",
                                 labels=["topic", "reason"])
    for (topic, reason), n in sorted(bad.items()):
        family.add_metric([topic, reason], n)
    return family
