"""Prometheus metrics of the history process (sink and server), in a registry of its own."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "tokenpools_history"


class RowRate:
    """Rows per second over about the last ``span`` seconds (what an on-call page shows without PromQL)."""

    def __init__(self, span: float = 10.0, now: float | None = None) -> None:
        self.span = span
        self.total = 0
        self._marks: deque[tuple[float, int]] = deque([(time.monotonic() if now is None else now, 0)])

    def add(self, rows: int, now: float | None = None) -> None:
        self.total += rows
        self._marks.append((time.monotonic() if now is None else now, self.total))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        # Keep the newest mark at or before the span's start as the base.
        while len(self._marks) > 1 and self._marks[1][0] <= now - self.span:
            self._marks.popleft()
        t0, n0 = self._marks[0]
        return (self.total - n0) / (now - t0) if now > t0 else 0.0


class HistoryMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.records = Counter(f"{PREFIX}_sink_records", "Kafka records the sink consumed, by topic",
                               ["topic"], registry=r)
        self.rows = Counter(f"{PREFIX}_sink_rows", "Rows inserted, by table (deduplicated retries included)",
                            ["table"], registry=r)
        self.events = Counter(f"{PREFIX}_sink_events", "Request events written to request_events", registry=r)
        self.blocks = Counter(f"{PREFIX}_sink_blocks", "Insert blocks by topic and kind (new, or rebuilt after a "
                              "restart from the block plan)", ["topic", "kind"], registry=r)
        self.dead = Counter(f"{PREFIX}_sink_dead_letters", "Records or events sent to dead_letters",
                            ["topic", "reason"], registry=r)
        self.insert_seconds = Histogram(f"{PREFIX}_sink_insert_seconds", "Time to decode and insert one flush",
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                        registry=r)
        self.lag = Gauge(f"{PREFIX}_sink_lag_records", "Records between the sink's position and the log end",
                         ["topic", "partition"], registry=r)
        self.rows_per_second = Gauge(f"{PREFIX}_sink_rows_per_second", "Rows inserted per second, last 10 s",
                                     registry=r)
        self.connected = Gauge(f"{PREFIX}_sink_kafka_connected", "1 while the sink's consumer reaches Kafka",
                               registry=r)
        self.reconnects = Counter(f"{PREFIX}_sink_reconnects", "Times the sink recreated its consumer", registry=r)
        self.commit_failures = Counter(f"{PREFIX}_sink_commit_failures", "Offset commits that failed (positions "
                                       "live in ClickHouse; commits only show lag)", registry=r)
        self.insert_failures = Counter(f"{PREFIX}_sink_insert_failures", "Flushes that failed and were retried",
                                       registry=r)
        self.rate = RowRate()
        self.rows_per_second.set_function(self.rate.rate)
