"""Metering pipeline throughput: request events per second through one Faust worker, single vs batched.

Each run publishes N request events into a fresh, prefixed set of topics (6 partitions) as fast as the
producer goes, with one worker subprocess consuming them, and measures until the worker has counted
all of them (its ``tokenpools_streams_events_total{verdict="new"}``). Side by side:

- **empty agent**: ``bench.noop_worker``, a Faust agent with the pipeline's settings that only counts
  records: the ceiling Faust's per-record path puts on any agent here (records/s);
- **single**: one ``RequestEvent`` per Kafka record (what admitters sent before batching);
- **batched**: the records ``admitter.kafka.sink.KafkaSink`` sends: each pass of its sender packs the
  events of one entitlement into one ``RequestEventBatch``. A pass covers ``batch_linger`` (50 ms), so
  at 10,000 events/s from the admitters a pass holds 500 events; over 24 entitlements that is about
  21 events per record, over 100 about 5. Both are run.

Also times stage 1's own code (decode, dedup, windows, on an in-memory store) without Kafka and
Faust, on single and batched records, to show where the time goes. The machine is shared: run it a
few times and compare the ratios to the empty agent measured in the same run.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local broker started for the run (as the tests do).
Prints figures only. Run: ``python -m bench.bench_streams [N]`` (default 40,000 events per run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from admitter.kafka.sink import pack_events
from bench.kafka_parts import free_port, kafka, stop_worker
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
RATE = 10_000  # events/s the admitters produce in the batched scenarios
LINGER_S = 0.05  # KafkaSink's default batch_linger: one sender pass per 50 ms
PASS_EVENTS = int(RATE * LINGER_S)
BATCH_EVENTS, BATCH_BYTES = 200, 512 * 1024  # KafkaSink's defaults
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
Record = tuple[bytes, bytes, int]  # key, value, events in it


def make_events(n: int, now: float, entitlements: int) -> list[RequestEvent]:
    """Decision and finish of n/2 requests, round robin over the entitlements, as they arrive."""
    out = []
    for i in range(n // 2):
        ent = f"e{i % entitlements}"
        reserved = Amounts(throughput=600, kv=1500, concurrency=1)
        common = {"request_id": f"r{i}", "ts": now, "admitter_id": f"a{i % 3}", "tenant": ent, "entitlement": ent,
                  "pool": "bench", "tier": "elastic", "reserved": reserved, "prompt_tokens": 500}
        out.append(RequestEvent(phase=Phase.DECISION, outcome=Outcome.ADMITTED, max_tokens=1000, **common))
        out.append(RequestEvent(phase=Phase.FINISH, outcome=Outcome.COMPLETED, output_tokens=300, latency_s=3.0,
                                **common))
    return out


def single_records(events: Sequence[RequestEvent]) -> list[Record]:
    return [(e.entitlement.encode(), encode(e), 1) for e in events]


def batched_records(events: Sequence[RequestEvent], pass_events: int = PASS_EVENTS) -> list[Record]:
    """What KafkaSink sends: each pass over ``pass_events`` spooled events packed per entitlement."""
    encoded = [(e.entitlement.encode(), encode(e)) for e in events]
    out: list[Record] = []
    for i in range(0, len(encoded), pass_events):
        out.extend(pack_events(encoded[i:i + pass_events], BATCH_EVENTS, BATCH_BYTES))
    return out


def bench_stage1_code(records: Sequence[Record], batch: int = 1000) -> float:
    """Events/s through Stage1.process alone (no Kafka, no Faust), ``batch`` records per call as Faust hands them."""
    bad = BadRecords()
    stage = Stage1(windows=MemoryStore(), seen=MemoryStore(), config=ConfigView(bad, "c", "r"),
                   spec=WindowSpec(), topic="requests", bad=bad, metrics=PipelineMetrics(bad))
    raw = [RawMessage(0, i, key, value) for i, (key, value, _) in enumerate(records)]

    async def run() -> float:
        started = time.perf_counter()
        for i in range(0, len(raw), batch):
            await stage.process(raw[i:i + batch])
        return sum(n for _, _, n in records) / (time.perf_counter() - started)

    return asyncio.run(run())


async def pipeline_count(client: httpx.AsyncClient, port: int) -> float:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tokenpools_streams_events_total" and sample.labels.get("verdict") == "new":
                return sample.value
    return 0.0


async def noop_count(client: httpx.AsyncClient, port: int) -> float:
    return float((await client.get(f"http://127.0.0.1:{port}/count")).json()["records"])


async def wait_ready(port: int, proc: subprocess.Popen[bytes], noop: bool, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if noop:
                    if (await client.get(f"http://127.0.0.1:{port}/count")).json()["ready"]:
                        await asyncio.sleep(2.0)  # no readiness beyond "not rebalancing": let the assignment settle
                        return
                else:
                    status = (await client.get(f"http://127.0.0.1:{port}/streams/status")).json()
                    if status["ready"] and status["config_ready"]:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError("worker not ready in time")


def start_worker(bootstrap: str, prefix: str, port: int, log: Path, noop: bool) -> subprocess.Popen[bytes]:
    if noop:
        args = [sys.executable, "-m", "bench.noop_worker", bootstrap, prefix, str(port)]
    else:
        args = [sys.executable, "-m", "tokenpools.cli", "streams", "worker", "--bootstrap", bootstrap, "--topic-prefix",
                prefix, "--web-port", str(port), "--log-level", "warn"]
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux): the worker's cost, whatever else shares the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    mode: str
    events: int
    records: int
    publish_s: float
    total_s: float
    cpu_s: float  # the worker's CPU time from the first send until it had counted everything

    @property
    def events_per_s(self) -> float:
        return self.events / self.total_s

    @property
    def records_per_s(self) -> float:
        return self.records / self.total_s

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / self.cpu_s

    @property
    def records_per_cpu_s(self) -> float:
        return self.records / self.cpu_s


async def publish_and_wait(bootstrap: str, topic: str, port: int, records: Sequence[Record], noop: bool,
                           within: float = 600.0) -> tuple[float, float]:
    target = len(records) if noop else sum(n for _, _, n in records)
    count = noop_count if noop else pipeline_count
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        for key, value, _ in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    published = time.perf_counter() - started
    async with httpx.AsyncClient(timeout=5.0) as client:
        while await count(client, port) < target:
            if time.perf_counter() - started > within:
                raise RuntimeError(f"worker did not count {target} in {within:.0f}s")
            await asyncio.sleep(0.05)
    return published, time.perf_counter() - started


def bench_worker(bootstrap: str, mode: str, records: Sequence[Record], entitlements: int, workdir: Path) -> Result:
    noop = mode == "empty agent"
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    config = workdir / "config.yaml"
    config.write_text(CONFIG + "".join(ENT % (i, i) for i in range(entitlements)))
    settings = PipelineSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    asyncio.run(prepare(settings, [config]))
    port = free_port()
    proc = start_worker(bootstrap, prefix, port, workdir / "worker.log", noop)
    try:
        asyncio.run(wait_ready(port, proc, noop))
        cpu = cpu_seconds(proc.pid)
        published, total = asyncio.run(publish_and_wait(bootstrap, settings.topics.requests, port, records, noop))
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        stop_worker(proc)
    return Result(mode, sum(n for _, _, n in records), len(records), published, total, cpu)


def main(n: int | None = None) -> None:
    n = n or int(os.environ.get("BENCH_STREAMS_EVENTS", "40000"))
    now = time.time()
    few, many = make_events(n, now, 24), make_events(n, now, 100)
    code_n = min(n, 20000)
    code_single = bench_stage1_code(single_records(few[:code_n]))
    code_batched = bench_stage1_code(batched_records(few[:code_n]))
    print(f"stage 1 code alone (decode, dedup, windows; in-memory store): {code_single:,.0f} events/s single, "
          f"{code_batched:,.0f} events/s batched (24 entitlements)", flush=True)
    runs = [
        ("empty agent", single_records(few), 24),
        ("single", single_records(few), 24),
        ("batched, 24 ents", batched_records(few), 24),
        ("batched, 100 ents", batched_records(many), 100),
    ]
    results: list[Result] = []
    with kafka() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        for mode, records, entitlements in runs:
            r = bench_worker(bootstrap, mode, records, entitlements, Path(tmp))
            results.append(r)
            print(f"  {mode}: {r.events:,} events in {r.records:,} records, published in {r.publish_s:.1f}s, "
                  f"counted in {r.total_s:.1f}s using {r.cpu_s:.1f} CPU-s of the worker", flush=True)
    base = results[0].records_per_s
    print(f"\none worker, {n:,} events per run; batched = KafkaSink's packing of {PASS_EVENTS} events per pass "
          f"({RATE:,} events/s x {LINGER_S * 1000:.0f} ms); load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores. Per CPU-s: what the worker does with a whole core to itself.")
    print(f"{'mode':<18} {'events/rec':>10} {'records/s':>10} {'events/s':>9} {'vs empty':>8} "
          f"{'records/CPU-s':>13} {'events/CPU-s':>12}")
    for r in results:
        events = "-" if r.mode == "empty agent" else f"{r.events_per_s:,.0f}"
        events_cpu = "-" if r.mode == "empty agent" else f"{r.events_per_cpu_s:,.0f}"
        print(f"{r.mode:<18} {r.events / r.records:>10.1f} {r.records_per_s:>10,.0f} {events:>9} "
              f"{r.records_per_s / base:>8.2f} {r.records_per_cpu_s:>13,.0f} {events_cpu:>12}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
