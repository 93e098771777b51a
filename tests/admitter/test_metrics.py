"""/metrics parses as Prometheus text and counts what happened."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from admitter.admission.limits import LocalAllocator
from admitter.events import FanOutSink, InMemorySink
from admitter.http.app import create_app
from admitter.kafka.sink import KafkaSink
from admitter.kafka.spool import Spool
from admitter.kafka.state_follower import StateFollower
from admitter.metrics import StatsCollector
from admitter.settings import AdmitterSettings
from capacity.live import PoolLive
from dashboards.promql import exposed_names
from schemas.records import Amounts, EntitlementState, Outcome, Phase, PoolState, RequestEvent
from schemas.wire import encode
from tests.admitter.conftest import (
    ADMIN,
    ADMIN_KEY,
    auth,
    chat,
    closed_port_url,
    ent,
    eventually,
    platform,
    pool,
    serve,
    sha,
)
from tests.factories import ent as make_ent
from tests.factories import pool as make_pool
from tests.metric_names import STANDALONE_ONLY, missing, names_used


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def test_metrics_parse_and_count_admitted_refused_and_latency(replicas, admitter) -> None:
    r = await replicas()
    p = pool(per=(1e6, 1e6, 10), queue={"maxWaitSeconds": 0})
    adm = await admitter(platform([p], [ent("acme", burst=(1e6, 1e6, 1))]), backends={"p": [r.url]})
    async with adm.client() as c:
        assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 200
        assert (await c.post("/v1/chat/completions", json=chat(stream=True), headers=auth("acme"))).status_code == 200
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await r.wait_reached("h")
        assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 429
        r.release("h")
        await held
        await eventually(lambda: not adm.state.gates["p"].live.reservations)
        await eventually(lambda: adm.state.usage.of("acme").requests.get("completed") == 3)
        resp = await c.get("/metrics", headers=ADMIN)
    assert resp.status_code == 200
    fams = families(resp.text)
    admitted = [s for s in fams["tokenpools_admitter_admitted"] if s.name.endswith("_total")]
    assert admitted[0].labels == {"pool": "p", "entitlement": "acme", "tier": "elastic"} and admitted[0].value == 3
    refused = [s for s in fams["tokenpools_admitter_refused"] if s.name.endswith("_total")]
    assert refused[0].labels["dimension"] == "concurrency" and refused[0].labels["tier"] == "elastic"
    assert refused[0].value == 1
    latency = [s for s in fams["tokenpools_admitter_added_latency_seconds"] if s.name.endswith("_count")]
    assert sum(s.value for s in latency) == 3
    assert {s.labels["stream"] for s in latency} == {"true", "false"}
    assert "tokenpools_admitter_queue_wait_seconds" in fams
    assert "tokenpools_admitter_preempted" in fams
    limits = {s.labels["dimension"]: s.value for s in fams["tokenpools_admitter_limit"]}
    assert limits["concurrency"] == 1
    assert {s.labels["dimension"] for s in fams["tokenpools_admitter_in_flight"]} == {"kv", "concurrency"}
    for bucket in ("bucket_level", "bucket_clipped_tokens", "bucket_deferred_debt_tokens", "bucket_owed_tokens"):
        assert {s.labels["entitlement"] for s in fams[f"tokenpools_admitter_{bucket}"]} == {"acme"}
    tokens = {s.labels["direction"]: s.value for s in fams["tokenpools_admitter_tokens"] if s.name.endswith("_total")}
    assert tokens == {"input": 21, "output": 9}


async def test_public_metrics_flag_serves_without_the_admin_token(admitter) -> None:
    adm = await admitter(platform([pool()], [ent("acme")]), public_metrics=True)
    async with adm.client() as c:
        resp = await c.get("/metrics")
    assert resp.status_code == 200 and families(resp.text)


async def test_a_standalone_admitter_exports_the_metrics_only_it_has_that_rules_read(admitter) -> None:
    """The names a dashboard or alert rule reads that only an admitter without Kafka exports (the rest are
    checked on the running parts of ``tokenpools up``, tests/integration/test_up.py)."""
    adm = await admitter(platform([pool()], [ent("acme")]))
    async with adm.client() as c:
        resp = await c.get("/metrics", headers=ADMIN)
    assert resp.status_code == 200
    exposed = exposed_names(resp.text)
    assert set(names_used()) >= STANDALONE_ONLY, "a standalone-only name no dashboard or rule reads any more"
    assert not missing(exposed, only=set(STANDALONE_ONLY)), missing(exposed, only=set(STANDALONE_ONLY))


# -- the Kafka path: sink, spool and state follower ------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def one(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def scrape(collector: StatsCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return samples(generate_latest(registry).decode())


def old_event(ts: float) -> RequestEvent:
    return RequestEvent(request_id="req-old", phase=Phase.DECISION, outcome=Outcome.ADMITTED, ts=ts,
                        admitter_id="test-admitter", tenant="acme", entitlement="acme", pool="p", tier="elastic")


async def test_kafka_metrics_show_the_backlog_while_the_broker_is_unreachable(replicas, tmp_path: Path) -> None:
    """No broker at all (a closed port): every event stays in the spool and /metrics says so."""
    r = await replicas()
    sink = KafkaSink(closed_port_url().removeprefix("http://"), tmp_path / "spool", topic="events",
                     send_timeout=0.5, retry_backoff=0.05, max_backoff=0.1, close_timeout=0.1)
    settings = AdmitterSettings(backends={"p": [r.url]}, admin_key_sha256=sha(ADMIN_KEY), admitter_id="test-admitter")
    served = await serve(create_app(settings, platform([pool()], [ent("acme")]), sink=sink))
    try:
        await sink.emit(old_event(time.time() - 100))  # the oldest unacked event is 100 s old
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as c:
            for _ in range(3):
                assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 200
            await eventually(lambda: sink.spool.synced == 7 and sink.send_errors >= 1)  # 1 + decision and finish x3
            values = samples((await c.get("/metrics", headers=ADMIN)).text)
    finally:
        await served.stop()
    topic = {"topic": "events"}
    assert one(values, "tokenpools_admitter_kafka_events_emitted_total", **topic) == 7
    assert one(values, "tokenpools_admitter_kafka_events_spooled_total", **topic) == 7
    assert one(values, "tokenpools_admitter_kafka_events_sent_total", **topic) == 0
    assert one(values, "tokenpools_admitter_kafka_records_sent_total", **topic) == 0
    assert one(values, "tokenpools_admitter_kafka_send_errors_total", **topic) >= 1
    assert one(values, "tokenpools_admitter_kafka_spool_backlog_records", **topic) == 7
    on_disk = sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.log"))
    assert one(values, "tokenpools_admitter_kafka_spool_backlog_bytes", **topic) == on_disk > 0
    assert 100 <= one(values, "tokenpools_admitter_kafka_spool_oldest_age_seconds", **topic) < 3600
    assert one(values, "tokenpools_admitter_kafka_producer_connected", **topic) == 0
    assert not [k for k in values if k[0].startswith("tokenpools_admitter_state_")]  # local limits: no follower

    # A restarted admitter counts what the old spool left before it sends anything.
    again = KafkaSink("127.0.0.1:1", tmp_path / "spool", topic="events", close_timeout=0.1)
    try:
        values = scrape(StatsCollector(lambda: FanOutSink([InMemorySink(), again]), LocalAllocator))
        assert one(values, "tokenpools_admitter_kafka_spool_backlog_records", **topic) == 7
        assert one(values, "tokenpools_admitter_kafka_events_emitted_total", **topic) == 0
        assert one(values, "tokenpools_admitter_kafka_spool_backlog_bytes", **topic) == on_disk
    finally:
        again.spool.close()


def test_spool_backlog_helpers_across_rolled_segments(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path, segment_bytes=100)
        for i in range(12):
            spool.append(b"k", f"value-{i:02d}".encode())
            await spool.sync()  # small segments: rolls several times
        assert spool.synced == 12 and len(list(tmp_path.glob("*.log"))) > 2  # noqa: ASYNC240 - a tmp dir
        first = spool.read(max_records=100)
        # Ack up to the end of a segment: the oldest pending record is the first of the next one.
        end_of_segment = max(r.end for r in first if r.end.segment == first[0].end.segment)
        acked = sum(1 for r in first if r.end <= end_of_segment)
        await spool.commit(end_of_segment)
        assert spool.first_pending().value == f"value-{acked:02d}".encode()
        # The acked segment stays until the commit moves past it; its bytes are not pending.
        on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.log")) - end_of_segment.offset  # noqa: ASYNC240
        assert spool.pending_bytes() == on_disk > 0
        spool.close()
        again = Spool(tmp_path, segment_bytes=100)
        assert again.replayed == 12 - acked and again.appended == 0
        assert again.pending_bytes() == on_disk
        await again.commit(first[-1].end)
        assert again.first_pending() is None and again.pending_bytes() == 0 and not again.pending()
        again.close()

    asyncio.run(run())


class Target:
    def __init__(self, live: PoolLive) -> None:
        self.live = live

    def limits_changed(self) -> None:
        pass


def ent_state(name: str, seq: int, pool_name: str = "p") -> bytes:
    return encode(EntitlementState(id=name, pool=pool_name, tier="elastic", seq=seq, ts=time.time(),
                                   limits=Amounts(throughput=100.0, kv=1000.0, concurrency=1.0)))


async def test_state_follower_metrics_count_records_and_staleness_per_pool() -> None:
    """Records are fed to ``handle`` as the consumer would (no broker: the follower never connects)."""
    now = [1000.0]
    follower = StateFollower("127.0.0.1:1", "adm-1", initial_wait=0.0, retry_backoff=0.05, clock=lambda: now[0])
    targets = {name: Target(PoolLive(make_pool(name), [make_ent(f"e-{name}", pool_name=name)], now=0.0))
               for name in ("p", "q")}
    await follower.start(targets)
    try:
        topic = follower.entitlement_topic
        now[0] = 1005.0
        follower.handle(topic, b"e-p", ent_state("e-p", 6))
        follower.handle(topic, b"e-p", ent_state("e-p", 7))
        follower.handle(topic, b"other", ent_state("other", 9, pool_name="elsewhere"))  # not served here
        follower.handle(topic, b"gone", None)
        follower.handle(topic, b"e-p", b"{not json")
        follower.handle(follower.pool_topic, b"p", encode(PoolState(id="p", seq=7, ts=time.time(), ready_replicas=2,
                                                                    capacity=Amounts(), guarantees=Amounts())))
        now[0] = 1012.0
        follower.refresh("p")  # a re-apply brings nothing new: staleness keeps growing
        values = scrape(StatsCollector(InMemorySink, lambda: follower))
    finally:
        await follower.stop()
    name = "tokenpools_admitter_state_records_total"
    assert one(values, name, kind="entitlement", result="applied") == 2
    assert one(values, name, kind="entitlement", result="ignored") == 1
    assert one(values, name, kind="entitlement", result="deleted") == 1
    assert one(values, name, kind="pool", result="applied") == 1
    assert one(values, "tokenpools_admitter_state_bad_records_total", topic=topic, reason="not_json") == 1
    assert one(values, "tokenpools_admitter_state_staleness_seconds", pool="p") == 7.0
    assert one(values, "tokenpools_admitter_state_staleness_seconds", pool="q") == 12.0  # since start
    assert one(values, "tokenpools_admitter_state_seq", pool="p") == 7
    # e-p's records list no admitter: each apply (two records and the refresh) is an even-split fallback
    assert one(values, "tokenpools_admitter_state_fallback_shares_total", pool="p", kind="empty") == 3
    assert ("tokenpools_admitter_state_seq", (("pool", "q"),)) not in values
    assert one(values, "tokenpools_admitter_state_caught_up") == 0
    assert one(values, "tokenpools_admitter_state_connected") == 0
    assert one(values, "tokenpools_admitter_state_reconnects_total") == 0
    assert not [k for k in values if k[0].startswith("tokenpools_admitter_kafka_")]  # in-memory sink
