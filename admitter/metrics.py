"""Prometheus metrics on the admitter's own registry.

Counters and histograms are updated on the request path through cached label children (a dict
lookup, no label parsing per request). Limits, in-flight amounts, bucket levels and debt are read
from the live state at scrape time by a collector, so the request path never touches a gauge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from admitter.gate import PoolGate
    from admitter.proxy import ReplicaSet

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
        yield from (limit, in_flight, bucket, debt, weight, capacity, pool_in_flight, waiting, outstanding)
