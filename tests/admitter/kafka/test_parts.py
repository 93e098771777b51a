"""How the Kafka parts are wired (no broker): discovery as a part of the state, stats read through the protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from admitter.events import FanOutSink, InMemorySink
from admitter.http.app import create_app
from admitter.kafka.discovery import ReplicaDiscovery
from admitter.kafka.parts import kafka_parts
from admitter.metrics import StatsCollector
from admitter.settings import AdmitterSettings
from admitter.stats import ReportsStats, SinkStats
from tests.admitter.conftest import ent, platform, pool


def test_discover_adds_replica_discovery_to_the_kafka_parts(tmp_path: Any) -> None:
    config = platform([pool()], [ent("acme")])
    base = {"kafka_bootstrap": "127.0.0.1:1", "admitter_id": "adm-7", "spool_dir": tmp_path}
    parts = kafka_parts(AdmitterSettings(**base), config)
    assert parts.discovery is None
    parts = kafka_parts(AdmitterSettings(**base, discover=True, topic_prefix="t."), config)
    assert isinstance(parts.discovery, ReplicaDiscovery)
    assert parts.discovery.topic == "t.tokenpools.replicas"
    assert parts.discovery.client_id == "tokenpools-discovery-adm-7"
    parts.sink.spool.close()  # type: ignore[attr-defined]


class RecordingDiscovery:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def start(self, replica_sets: Mapping[str, Any]) -> None:
        self.log.append(("start", replica_sets))

    async def stop(self) -> None:
        self.log.append("stop")


async def test_a_discovery_starts_before_the_admitter_with_its_replica_sets_and_stops_after_it() -> None:
    log: list[Any] = []
    sink = InMemorySink()
    app = create_app(AdmitterSettings(backends={"p": ["http://127.0.0.1:1"]}), platform([pool()], [ent("acme")]),
                     sink=sink, discovery=RecordingDiscovery(log))  # type: ignore[arg-type]
    state = app.state.admitter
    async with app.router.lifespan_context(app):
        assert log == [("start", state.upstream.replicas)]
        assert log[0][1] is state.upstream.replicas  # the live mapping: pools added later are followed too
        assert not sink.closed
    assert log[-1] == "stop" and sink.closed


class Reporter:
    def __init__(self, topic: str) -> None:
        self.topic = topic

    async def emit(self, event: Any) -> None: ...

    async def close(self) -> None: ...

    def stats(self) -> Sequence[SinkStats]:
        return [SinkStats(topic=self.topic, emitted=3, spooled=3, sent=1, records_sent=1, send_errors=0,
                          backlog_records=2, backlog_bytes=10, oldest_pending_ts=90.0, connected=True)]


def test_metrics_read_stats_from_whatever_implements_the_protocol_nested_or_not() -> None:
    sink = FanOutSink([InMemorySink(), FanOutSink([Reporter("a")]), Reporter("b")])
    assert isinstance(sink, ReportsStats) and not isinstance(InMemorySink(), ReportsStats)
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: sink, lambda: None, wall=lambda: 100.0))
    text = generate_latest(registry).decode()
    for topic in ("a", "b"):
        assert f'tokenpools_admitter_kafka_spool_backlog_records{{topic="{topic}"}} 2.0' in text
        assert f'tokenpools_admitter_kafka_spool_oldest_age_seconds{{topic="{topic}"}} 10.0' in text
    assert "state_" not in text and "allocator" not in text
