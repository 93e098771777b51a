"""Prometheus metrics of the global loop service, in a registry of its own (``--metrics-port``).

- ``tokenpools_regional_reports_total{entitlement,region,verdict}``: reports observed, by the loop's verdict
  (``applied``, ``duplicate``: a replay, MirrorMaker's after a restart included, ``stale``, ``foreign``);
- ``tokenpools_regional_share{entitlement,kind,dimension}``: the share this region enforces (``kind`` burst
  or guarantee);
- ``tokenpools_regional_status{entitlement,status}``: 1 for the current status (waiting, split, holding);
- ``tokenpools_regional_lost_regions{entitlement}``: peers taken for lost;
- ``tokenpools_regional_split_epoch{entitlement}``: the epoch of the split last moved to (-1 before any);
- ``tokenpools_regional_writes_total{entitlement}``: regional shares written to the config topic
  (tombstones included);
- ``tokenpools_regional_bad_records_total{topic,reason}``: records skipped, from ``schemas.wire.BadRecords``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from capacity.global_loop import Enforced
from schemas.wire import BadRecords
from streams.regional.rules import STATUSES, Shown

PREFIX = "tokenpools_regional"
DIMENSIONS = ("throughput", "kv", "concurrency")


class _BadRecordsCollector(Collector):
    def __init__(self, bad: BadRecords) -> None:
        self.bad = bad

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(f"{PREFIX}_bad_records", "Records skipped because they could not be decoded "
                                     "or made no sense", labels=["topic", "reason"])
        for (topic, reason), n in sorted(self.bad.counts.items()):
            family.add_metric([topic, reason], n)
        yield family


class RegionalMetrics:
    def __init__(self, bad: BadRecords) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reports = Counter(f"{PREFIX}_reports", "Region reports observed, by the loop's verdict",
                               ["entitlement", "region", "verdict"], registry=r)
        self.share = Gauge(f"{PREFIX}_share", "The share of the global entitlement this region enforces",
                           ["entitlement", "kind", "dimension"], registry=r)
        self.status = Gauge(f"{PREFIX}_status", "1 for the loop's current status", ["entitlement", "status"],
                            registry=r)
        self.lost = Gauge(f"{PREFIX}_lost_regions", "Peer regions taken for lost", ["entitlement"], registry=r)
        self.split_epoch = Gauge(f"{PREFIX}_split_epoch", "Epoch of the split last moved to (-1 before any)",
                                 ["entitlement"], registry=r)
        self.writes = Counter(f"{PREFIX}_writes", "Regional shares written to the config topic (tombstones too)",
                              ["entitlement"], registry=r)
        r.register(_BadRecordsCollector(bad))

    def verdict(self, entitlement: str, region: str, verdict: str) -> None:
        self.reports.labels(entitlement, region, verdict).inc()

    def enforced(self, entitlement: str, enforced: Enforced, shown: Shown) -> None:
        for kind, share in (("burst", enforced.burst), ("guarantee", enforced.guarantee)):
            for dim, value in zip(DIMENSIONS, share, strict=True):
                self.share.labels(entitlement, kind, dim).set(value)
        for status in STATUSES:
            self.status.labels(entitlement, status).set(1 if status == shown else 0)
        self.lost.labels(entitlement).set(len(enforced.lost))
        self.split_epoch.labels(entitlement).set(-1 if enforced.epoch is None else enforced.epoch)

    def wrote(self, entitlement: str) -> None:
        self.writes.labels(entitlement).inc()

    def forget(self, entitlement: str) -> None:
        """Drop an entitlement's gauges (its loop ended); counters stay, as counters do."""
        for kind in ("burst", "guarantee"):
            for dim in DIMENSIONS:
                self._remove(self.share, entitlement, kind, dim)
        for status in STATUSES:
            self._remove(self.status, entitlement, status)
        self._remove(self.lost, entitlement)
        self._remove(self.split_epoch, entitlement)

    @staticmethod
    def _remove(gauge: Gauge, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's value (tests and status pages); None if absent."""
        return self.registry.get_sample_value(name, labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
