"""Metering pipeline throughput: request events per second through one Faust worker.

Publishes N request events as fast as the producer can into a fresh, prefixed set of topics, with one
`tokenpools streams worker` subprocess consuming them, and measures until the worker has counted all
of them (its ``tokenpools_streams_events_total{verdict="new"}``). Also times stage 1's own code
(decode, dedup, windows, on an in-memory store) without Kafka and Faust, to show where the time goes.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local broker started for the run (as the tests do).
Prints figures only. Run: ``python -m bench.bench_streams [N]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from schemas.wire import BadRecords, encode
from streams.codec import RawMessage
from streams.config_table import ConfigView
from streams.metrics import PipelineMetrics
from streams.settings import PipelineSettings
from streams.stage1 import Stage1
from streams.store import MemoryStore
from streams.windows import WindowSpec
from streams.worker import prepare

REPO = Path(__file__).resolve().parents[1]
N_ENTITLEMENTS = 24
CONFIG = """\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {name: bench}
spec:
  model: bench
  perReplica: {throughput: 20000, kv: 500000, concurrency: 256}
  replicas: {min: 1, max: 8, initial: 4}
"""
ENT = """\
---
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {name: e%d}
spec: {pool: bench, tenant: t%d, tier: elastic, burst: {throughput: 100000, kv: 1000000, concurrency: 1000}}
"""


def make_events(n: int, now: float) -> list[RequestEvent]:
    out = []
    for i in range(n // 2):
        ent = f"e{i % N_ENTITLEMENTS}"
        reserved = Amounts(throughput=600, kv=1500, concurrency=1)
        common = {"request_id": f"r{i}", "ts": now, "admitter_id": f"a{i % 3}", "tenant": ent, "entitlement": ent,
                  "pool": "bench", "tier": "elastic", "reserved": reserved, "prompt_tokens": 500}
        out.append(RequestEvent(phase=Phase.DECISION, outcome=Outcome.ADMITTED, max_tokens=1000, **common))
        out.append(RequestEvent(phase=Phase.FINISH, outcome=Outcome.COMPLETED, output_tokens=300, latency_s=3.0,
                                **common))
    return out


def bench_stage1_code(events: list[RequestEvent], batch: int = 1000) -> float:
    """Events/s through Stage1.process alone (no Kafka, no Faust)."""
    bad = BadRecords()
    stage = Stage1(windows=MemoryStore(), seen=MemoryStore(), config=ConfigView(bad, "c", "r"),
                   spec=WindowSpec(), topic="requests", bad=bad, metrics=PipelineMetrics(bad))
    raw = [RawMessage(0, i, e.entitlement.encode(), encode(e)) for i, e in enumerate(events)]

    async def run() -> float:
        started = time.perf_counter()
        for i in range(0, len(raw), batch):
            await stage.process(raw[i:i + batch])
        return len(raw) / (time.perf_counter() - started)

    return asyncio.run(run())


@contextlib.contextmanager
def kafka() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    from tokenpools.infra.kafka_local import LocalKafka

    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        broker = LocalKafka(tmp).start()
        try:
            yield broker.bootstrap_servers
        finally:
            broker.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def counted(port: int) -> float:
    async with httpx.AsyncClient(timeout=2.0) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tokenpools_streams_events_total" and sample.labels.get("verdict") == "new":
                return sample.value
    return 0.0


async def wait_ready(port: int, proc: subprocess.Popen[bytes], within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                status = (await client.get(f"http://127.0.0.1:{port}/streams/status")).json()
                if status["ready"] and status["config_ready"]:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("worker not ready in time")


def start_worker(bootstrap: str, prefix: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tokenpools.cli", "streams", "worker", "--bootstrap", bootstrap, "--topic-prefix",
             prefix, "--web-port", str(port), "--log-level", "warn"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def publish_and_wait(bootstrap: str, topic: str, port: int, events: list[RequestEvent]) -> dict[str, float]:
    payloads = [(e.entitlement.encode(), encode(e)) for e in events]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    started = time.perf_counter()
    for key, value in payloads:
        await producer.send(topic, value, key=key)
    await producer.flush()
    published = time.perf_counter() - started
    await producer.stop()
    while True:
        if await counted(port) >= len(events):
            break
        await asyncio.sleep(0.05)
    done = time.perf_counter() - started
    return {"events": len(events), "publish_s": published, "publish_rate": len(events) / published,
            "total_s": done, "rate": len(events) / done}


def bench_worker(bootstrap: str, events: list[RequestEvent], workdir: Path) -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    config = workdir / "config.yaml"
    config.write_text(CONFIG + "".join(ENT % (i, i) for i in range(N_ENTITLEMENTS)))
    settings = PipelineSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    asyncio.run(prepare(settings, [config]))
    port = free_port()
    proc = start_worker(bootstrap, prefix, port, workdir / "worker.log")
    try:
        asyncio.run(wait_ready(port, proc))
        return asyncio.run(publish_and_wait(bootstrap, settings.requests_topic, port, events))
    finally:
        stop_worker(proc)


def main(n: int | None = None) -> None:
    n = n or int(os.environ.get("BENCH_STREAMS_EVENTS", "40000"))
    events = make_events(n, time.time())
    code_rate = bench_stage1_code(make_events(min(n, 20000), time.time()))
    print(f"stage 1 code alone (decode, dedup, windows; in-memory store): {code_rate:,.0f} events/s", flush=True)
    with kafka() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        r = bench_worker(bootstrap, events, Path(tmp))
    print(f"published {r['events']:,} events in {r['publish_s']:.1f}s ({r['publish_rate']:,.0f}/s)")
    print(f"one Faust worker counted all of them {r['total_s']:.1f}s after the first send: "
          f"{r['rate']:,.0f} events/s end to end")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
