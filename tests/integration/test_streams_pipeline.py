"""The metering pipeline against a real Kafka: Faust workers as subprocesses (`tokenpools streams worker`).

Each test isolates itself with a topic prefix (every topic and the app id get it) and uses short
windows (1 s tumbling, 3 s hopping every 1 s) and a 0.25 s pool tick so numbers settle in seconds.
Counts are checked exactly through the cumulative totals stage 1 sends with every summary, and the
published states are checked against the window that holds the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from schemas.loader import parse_manifest
from schemas.records import Amounts, EntitlementState, Outcome, Phase, PoolState, RequestEvent
from schemas.wire import encode
from streams import topics
from streams.config_table import config_value

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TICK_S = 0.25

POOLS_YAML = """\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {name: %(pool)s}
spec:
  model: m-%(pool)s
  perReplica: {throughput: 1000, kv: 100000, concurrency: 100}
  targetUtilisation: {throughput: 1.0, kv: 1.0, concurrency: 1.0}
  replicas: {min: 1, max: 8, initial: 1}
  tokenWeights: {input: 0.5, output: 1.0}
  reclaimBuffer: 0.0
  tickSeconds: %(tick)s
"""
ENT_YAML = """\
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {name: %(name)s}
spec:
  pool: %(pool)s
  tenant: t-%(name)s
  tier: %(tier)s
  guarantee: %(guarantee)s
  burst: {throughput: 100000, kv: 1000000, concurrency: 1000}
  weight: 1
"""


def write_config(path: Path, pools: dict[str, list[tuple[str, str]]]) -> Path:
    docs = []
    for pool, ents in pools.items():
        docs.append(POOLS_YAML % {"pool": pool, "tick": TICK_S})
        for name, tier in ents:
            guarantee = "{throughput: 100, kv: 1000, concurrency: 1}" if tier == "guaranteed" else "{}"
            docs.append(ENT_YAML % {"name": name, "pool": pool, "tier": tier, "guarantee": guarantee})
    path.write_text("---\n".join(docs))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Worker:
    """One `python -m tokenpools.cli streams worker` subprocess."""

    def __init__(self, bootstrap: str, prefix: str, config: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.log = log
        self.args = [
            sys.executable, "-m", "tokenpools.cli", "streams", "worker", "--bootstrap", bootstrap,
            "--config", str(config), "--web-port", str(self.port), "--topic-prefix", prefix,
            "--tumbling-seconds", "1", "--hop-size-seconds", "3", "--hop-step-seconds", "1", "--grace-seconds", "0.2",
            "--summary-interval", "0.25", "--commit-interval", "0.5", "--session-timeout", "6", "--log-level", "warn",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit (what a crash looks like)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return await client.get(f"http://127.0.0.1:{self.port}{path}")

    async def status(self) -> dict[str, Any]:
        return (await self.get("/streams/status")).json()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await self.get("/metrics")).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def wait_ready(self, within: float = 90.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                status = await self.status()
                if status["ready"] and status["config_ready"]:
                    return
            await asyncio.sleep(0.3)
        raise AssertionError(f"worker not ready after {within}s:\n{self.tail()}")


def event(ent: str, pool: str, tier: str, phase: Phase, outcome: Outcome, ts: float, **kw: Any) -> RequestEvent:
    return RequestEvent(
        request_id=kw.pop("request_id", uuid.uuid4().hex), phase=phase, outcome=outcome, ts=ts,
        admitter_id=kw.pop("admitter_id", "adm-1"), tenant=f"t-{ent}", entitlement=ent, pool=pool, tier=tier, **kw,
    )


def request_pair(ent: str, pool: str, tier: str, ts: float, *, prompt: int = 100, output: int = 40,
                 admitter_id: str = "adm-1", outcome: Outcome = Outcome.ADMITTED) -> list[RequestEvent]:
    reserved = Amounts(throughput=0.5 * prompt + output, kv=prompt + 100, concurrency=1)
    decision = event(ent, pool, tier, Phase.DECISION, outcome, ts, reserved=reserved, prompt_tokens=prompt,
                     max_tokens=100, admitter_id=admitter_id)
    if outcome is Outcome.REFUSED:
        return [decision]
    done = event(ent, pool, tier, Phase.FINISH, Outcome.COMPLETED, ts, request_id=decision.request_id,
                 reserved=reserved, prompt_tokens=prompt, output_tokens=output, latency_s=0.5, admitter_id=admitter_id)
    return [decision, done]


class Kafka:
    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.producer: AIOKafkaProducer | None = None

    def topic(self, name: str) -> str:
        return self.prefix + name

    async def send(self, topic: str, value: bytes | None, key: bytes | None) -> None:
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
            await self.producer.start()
        await self.producer.send(self.topic(topic), value, key=key)

    async def publish(self, events: list[RequestEvent]) -> None:
        for ev in events:
            await self.send(topics.REQUESTS, encode(ev), ev.entitlement.encode())
        assert self.producer is not None
        await self.producer.flush()

    async def read_all(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Every record of a topic, from the beginning to its current end."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            cluster = await consumer._client.fetch_all_metadata()
            tps = [TopicPartition(self.topic(topic), p) for p in cluster.partitions_for_topic(self.topic(topic)) or ()]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            out: list[tuple[bytes | None, bytes | None]] = []
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    out.extend((r.key, r.value) for r in records)
            return out
        finally:
            await consumer.stop()

    async def totals(self) -> dict[str, dict[str, Any]]:
        """Latest cumulative totals per entitlement (summed over requests partitions) from stage 1's summaries."""
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        for _, value in await self.read_all(topics.ENTITLEMENT_USAGE):
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                s = orjson.loads(value or b"")
                key = (s["entitlement"], s["partition"])
                if key not in latest or latest[key]["ts"] <= s["ts"]:
                    latest[key] = s
        out: dict[str, dict[str, Any]] = {}
        for (ent, _), s in latest.items():
            acc = out.setdefault(ent, {})
            for k, v in s["totals"].items():
                acc[k] = acc.get(k, 0) + v
        return out

    async def states(self) -> list[EntitlementState]:
        return [EntitlementState.model_validate_json(v) for _, v in await self.read_all(topics.ENTITLEMENT_STATE) if v]

    async def pool_states(self) -> list[PoolState]:
        return [PoolState.model_validate_json(v) for _, v in await self.read_all(topics.POOL_STATE) if v]

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 30.0, every: float = 0.5) -> Any:
    """Await ``check()`` until it returns a truthy value (or its assertion passes)."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = await check()
            if result:
                return result
            problem: BaseException | None = None
        except AssertionError as exc:
            problem = exc
        if time.monotonic() > deadline:
            if problem is not None:
                raise problem
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
async def kafka_io(kafka: Any, prefix: str) -> AsyncIterator[Kafka]:
    io = Kafka(kafka.bootstrap_servers, prefix)
    yield io
    await io.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def totals_are(io: Kafka, expected: dict[str, dict[str, int]]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        got = await io.totals()
        for ent, want in expected.items():
            have = {k: got.get(ent, {}).get(k) for k in want}
            assert have == want, f"{ent}: {have} != {want}"
        return True

    return check


# ---------------------------------------------------------------------------------------------


async def test_events_in_states_out_with_duplicates_and_bad_records(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    config = write_config(tmp_path / "config.yaml", {"p": [("g", "guaranteed"), ("e1", "elastic"), ("e2", "elastic")]})
    w = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log").start()
    workers.append(w)
    await w.wait_ready()

    # Bad records on every topic the pipeline reads come first; good ones follow.
    await kafka_io.send(topics.REQUESTS, b"{not json", b"e1")
    await kafka_io.send(topics.REQUESTS, b'{"schema_version": 99}', b"e1")
    await kafka_io.send(topics.CONFIG, b"\xff\xfe", b"TokenPool/q")
    await kafka_io.send(topics.REPLICAS, b'{"schema_version": 1, "pool": "p", "ready_replicas": -3}', b"p")
    await kafka_io.send(topics.ENTITLEMENT_USAGE, b"[1, 2]", b"p")

    t0 = time.time()
    events = []
    for i in range(20):
        events += request_pair("e1", "p", "elastic", t0, prompt=100, output=40, admitter_id=f"adm-{i % 2}")
    for _ in range(10):
        events += request_pair("e2", "p", "elastic", t0, prompt=200, output=10)
    for _ in range(5):
        events += request_pair("e2", "p", "elastic", t0, outcome=Outcome.REFUSED)
    await kafka_io.publish(events)
    await kafka_io.publish(events[:10])  # at-least-once upstream: the same ids again
    # Good records after the bad ones on the config and replica topics take effect.
    await kafka_io.send(topics.REPLICAS, orjson.dumps({"schema_version": 1, "pool": "p", "ready_replicas": 3}), b"p")
    late = ENT_YAML % {"name": "e3", "pool": "p", "tier": "spot", "guarantee": "{}"}
    await kafka_io.send(topics.CONFIG, config_value(parse_manifest(yaml.safe_load(late))), b"Entitlement/e3")

    await eventually(totals_are(kafka_io, {
        "e1": {"events": 40, "duplicates": 10, "decisions": 20, "admitted": 20, "finished": 20,
               "prompt_tokens": 2000, "output_tokens": 800},
        "e2": {"events": 25, "duplicates": 0, "decisions": 15, "refused": 5, "prompt_tokens": 2000,
               "output_tokens": 100},
    }), within=40)

    # The tumbling window holding t0 reaches the allocator: usage and demand of that window, exactly.
    async def window_state() -> list[EntitlementState]:
        return [s for s in await kafka_io.states() if s.id == "e1" and s.usage.throughput > 0]

    e1 = (await eventually(window_state, within=20))[0]
    assert e1.usage.throughput == pytest.approx(0.5 * 2000 + 800)  # weighted tokens per second of a 1 s window
    assert e1.usage.kv == pytest.approx(20 * 200 * 0.5)  # 20 requests held kv=200 for 0.5 s
    assert e1.demand.throughput == pytest.approx(20 * (0.5 * 100 + 40))
    assert set(e1.admitter_shares) == {"adm-0", "adm-1"}
    assert sum(a.throughput for a in e1.admitter_shares.values()) == pytest.approx(e1.limits.throughput)
    e2 = next(s for s in await kafka_io.states() if s.id == "e2" and s.demand.throughput > 0)
    refused_tp = 5 * (0.5 * 100 + 40)
    assert e2.demand.throughput == pytest.approx(10 * (0.5 * 200 + 10) + refused_tp)  # refused work is demand

    async def pool_after_report() -> list[PoolState]:
        return [p for p in await kafka_io.pool_states() if p.ready_replicas == 3]

    (await eventually(pool_after_report, within=20))
    pools = await kafka_io.pool_states()
    assert pools[0].ready_replicas == 1 and pools[-1].capacity.throughput == 3000
    assert [p.seq for p in pools] == sorted(p.seq for p in pools)
    assert any(s.id == "e3" for s in await kafka_io.states())

    metrics = await w.metrics()
    assert metrics[("tokenpools_streams_events_total", (("verdict", "duplicate"),))] == 10
    assert metrics[("tokenpools_streams_events_total", (("verdict", "new"),))] == 65

    def bad(topic: str, reason: str) -> float:
        return metrics.get(("tokenpools_streams_bad_records_total",
                            (("reason", reason), ("topic", prefix + topic))), 0.0)

    assert bad(topics.REQUESTS, "not_json") == 1
    assert bad(topics.REQUESTS, "unknown_schema_version") == 1
    assert bad(topics.CONFIG, "not_json") == 1
    assert bad(topics.REPLICAS, "invalid") == 1
    assert bad(topics.ENTITLEMENT_USAGE, "not_an_object") == 1
    assert "skipping bad record on" in w.tail()


async def test_worker_killed_and_restarted_loses_and_doubles_nothing_and_keeps_debt(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    config = write_config(tmp_path / "config.yaml", {"p": [("hog", "elastic"), ("idle", "elastic")]})
    # A long commit interval: after the kill, up to 5 s of events are redelivered and must be skipped.
    first = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "w1.log", "--commit-interval", "5")
    workers.append(first.start())
    await first.wait_ready()

    published = 0
    stop = asyncio.Event()

    async def publish_forever() -> None:
        nonlocal published
        while not stop.is_set():
            batch = []
            for _ in range(5):  # 5 requests per 0.1 s, 100 + 400 weighted tokens each: 2500 tok/s > capacity
                batch += request_pair("hog", "p", "elastic", time.time(), prompt=200, output=400)
            await kafka_io.publish(batch)
            published += len(batch)
            await asyncio.sleep(0.1)

    publisher = asyncio.create_task(publish_forever())
    try:
        async def hog_in_debt() -> list[EntitlementState]:
            return [s for s in await kafka_io.states() if s.id == "hog" and s.debt > 0.5]

        await eventually(hog_in_debt, within=30)
        await asyncio.sleep(1.0)
        first.kill()
        before = [s for s in await kafka_io.states() if s.id == "hog"]
        last_before = max(before, key=lambda s: s.seq)
        await asyncio.sleep(1.0)
        second = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "w2.log")
        workers.append(second.start())
        await second.wait_ready()
        await asyncio.sleep(3.0)
    finally:
        stop.set()
        await publisher

    await eventually(totals_are(kafka_io, {"hog": {"events": published, "duplicates": 0}}), within=40)
    after = [s for s in await kafka_io.states() if s.id == "hog" and s.seq > last_before.seq]
    assert after, "the restarted worker published no state"
    first_after = min(after, key=lambda s: s.seq)
    assert first_after.debt >= 0.9 * last_before.debt > 0  # recovered from the changelog, not reset to 0
    assert max(s.debt for s in after) > last_before.debt  # and still growing: hog keeps over-using
    metrics = await second.metrics()
    assert metrics[("tokenpools_streams_events_total", (("verdict", "replay"),))] > 0  # redelivered, not recounted
    # --config publishes documents only if absent: the restarted worker added nothing.
    assert sorted(k for k, _ in await kafka_io.read_all(topics.CONFIG)) == [
        b"Entitlement/hog", b"Entitlement/idle", b"TokenPool/p"]


async def test_two_workers_share_the_partitions_and_count_exactly(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    pools = {f"pool{i}": [(f"p{i}-e{j}", "elastic") for j in range(4)] for i in range(3)}
    config = write_config(tmp_path / "config.yaml", pools)
    a = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "a.log").start()
    b = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "b.log").start()
    workers += [a, b]
    await a.wait_ready()
    await b.wait_ready()

    async def split() -> bool:
        sa, sb = await a.status(), await b.status()
        if not (sa["ready"] and sb["ready"] and sa["requests_partitions"] and sb["requests_partitions"]):
            return False
        assert not set(sa["requests_partitions"]) & set(sb["requests_partitions"])
        assert set(sa["requests_partitions"]) | set(sb["requests_partitions"]) == set(range(6))
        assert not set(sa["owned_pools"]) & set(sb["owned_pools"])
        return set(sa["owned_pools"]) | set(sb["owned_pools"]) == set(pools)

    await eventually(split, within=40)
    t0 = time.time()
    events: list[RequestEvent] = []
    expected: dict[str, dict[str, int]] = {}
    for pool, ents in pools.items():
        for k, (name, _) in enumerate(ents):
            for _ in range(k + 1):
                events += request_pair(name, pool, "elastic", t0, prompt=10, output=10)
            expected[name] = {"events": 2 * (k + 1), "prompt_tokens": 10 * (k + 1), "duplicates": 1}
    await kafka_io.publish(events)
    await kafka_io.publish([next(e for e in events if e.entitlement == name) for name in expected])  # one dup each
    await eventually(totals_are(kafka_io, expected), within=40)

    async def every_entitlement_has_usage() -> bool:
        seen = {s.id for s in await kafka_io.states() if s.usage.throughput > 0}
        return seen >= set(expected)

    await eventually(every_entitlement_has_usage, within=20)
    for pool in pools:
        seqs = [p.seq for p in await kafka_io.pool_states() if p.id == pool]
        assert seqs and seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{pool}: ticks overlapped {seqs}"
    ma, mb = await a.metrics(), await b.metrics()
    new = ("tokenpools_streams_events_total", (("verdict", "new"),))
    assert ma[new] + mb[new] == sum(v["events"] for v in expected.values())
