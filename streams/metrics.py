"""Prometheus metrics of one pipeline worker, in a registry of its own.

Served on the worker's Faust web server at ``/metrics`` (127.0.0.1:``--web-port``) and, with
``--metrics-port``, by prometheus_client's own HTTP server on 127.0.0.1. Bad records are exported
straight from ``schemas.wire.BadRecords`` (by topic and reason), so the log line and the metric can
never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.wire import BadRecords

PREFIX = "tokenpools_streams"


class _BadRecordsCollector(Collector):
    def __init__(self, bad: BadRecords) -> None:
        self.bad = bad

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_bad_records", "Records skipped because they could not be decoded or made no sense",
            labels=["topic", "reason"],
        )
        for (topic, reason), n in sorted(self.bad.counts.items()):
            family.add_metric([topic, reason], n)
        yield family


LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _ConsumerLagCollector(Collector):
    """Records between what stage 1 applied and the end of each requests partition it holds, read at
    scrape time from the consumer (``lag()`` yields ``(topic, partition, records)``)."""

    def __init__(self, lag: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.lag = lag

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(f"{PREFIX}_consumer_lag_records", "Records on a requests partition this "
                                   "worker holds that stage 1 has not applied yet", labels=["topic", "partition"])
        for topic, partition, records in sorted(self.lag()):
            family.add_metric([topic, str(partition)], records)
        yield family


class PipelineMetrics:
    def __init__(self, bad: BadRecords) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(f"{PREFIX}_events", "Request events by what dedup decided (new events are counted)",
                              ["verdict"], registry=r)
        self.new = self.events.labels("new")
        self.replays = self.events.labels("replay")
        self.duplicates = self.events.labels("duplicate")
        self.gap_records = Counter(f"{PREFIX}_gap_records", "Records Faust did not deliver, read directly from "
                                   "Kafka and processed (see streams.gaps)", registry=r)
        self.late = Counter(f"{PREFIX}_late_events", "Events too old or too far ahead for any window "
                            "(still in the totals)", registry=r)
        self.batch_seconds = Histogram(f"{PREFIX}_batch_seconds", "Stage 1: time to process one batch of events",
                                       registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.summaries_sent = Counter(f"{PREFIX}_summaries_sent", "Stage 1: window summaries sent to stage 2",
                                      registry=r)
        self.summaries_received = Counter(f"{PREFIX}_summaries_received",
                                          "Stage 2: window summaries received", registry=r)
        self.ticks = Counter(f"{PREFIX}_ticks", "Stage 2: allocator ticks run", ["pool"], registry=r)
        self.rejected_ticks = Counter(
            f"{PREFIX}_rejected_ticks", "Stage 2: allocator ticks whose inputs or results were not finite; "
            "nothing was published, so the pool's last limits stay in force", ["pool", "reason"], registry=r,
        )
        self.tick_seconds = Histogram(
            f"{PREFIX}_tick_seconds", "Stage 2: time of one pool tick (allocate, split, publish)", ["pool"],
            registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
        )
        # Event-to-limit lag, in its two legs: an event's trip from the admitter to stage 1 (the newest
        # new event of each batch, admitter clock to worker clock), then from the newest usage summary a
        # tick used to the limits that tick published. The summary interval sits between the two.
        self.event_delay = Histogram(
            f"{PREFIX}_event_delay_seconds", "Stage 1: age of the newest new event of a batch when it was applied "
            "(admitter's ts to now)", registry=r, buckets=LAG_BUCKETS)
        self.summary_age = Histogram(
            f"{PREFIX}_summary_age_seconds", "Stage 2: age of the newest usage summary a published tick used, at "
            "publication", ["pool"], registry=r, buckets=LAG_BUCKETS)
        self.states_published = Counter(f"{PREFIX}_states_published", "State records published", ["kind"],
                                        registry=r)
        self.dedup_ids = Gauge(f"{PREFIX}_dedup_ids", "Event ids remembered for deduplication", registry=r)
        self.dedup_evicted = Gauge(f"{PREFIX}_dedup_evicted_early",
                                   "Ids forgotten before the horizon because the id memory was full", registry=r)
        self.owned_pools = Gauge(f"{PREFIX}_owned_pools", "Pools this worker runs the allocator for", registry=r)
        self.config_ready = Gauge(f"{PREFIX}_config_ready", "1 once the config topics were read to their end",
                                  registry=r)
        r.register(_BadRecordsCollector(bad))
        self._lag: Callable[[], Iterable[tuple[str, int, int]]] = lambda: ()
        r.register(_ConsumerLagCollector(lambda: self._lag()))

    def follow_lag(self, lag: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        """Where the consumer-lag gauge reads from (the app sets it once its consumer exists)."""
        self._lag = lag

    def render(self) -> bytes:
        return generate_latest(self.registry)
