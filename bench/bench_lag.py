"""Event-to-limit propagation lag: from an admitter's event to the new limit visible at another admitter.

Setup (default pipeline settings, one ``tokenpools streams worker`` subprocess, prefixed topics):
one pool of 1,000 weighted tokens/s, a ``rival`` elastic entitlement that keeps demanding 3x that
(so every other entitlement's throughput limit is exactly 0 while it is idle), and ``N_STEPPERS``
idle elastic entitlements. Admitter 1 is a real ``KafkaSink``; admitter 2 is a real
``StateFollower`` in this process (same clock), whose applies are timestamped.

A *step*: an idle entitlement starts sending (one admitted decision every 0.2 s for 2 s). Its limit
goes from 0 to > 0 once the pipeline has seen its demand. Lag = follower apply time minus the
emission time of the step's first event. The steps are staggered: an entitlement steps again only
after the follower saw its limit fall back to 0, plus a random pause. Breakdown per sample, from
the record timestamps: event -> first stage-1 summary showing the demand (``summary.ts``) ->
allocator tick (``EntitlementState.ts``) -> follower apply.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local broker started for the run.
Prints figures only. Run: ``python -m bench.bench_lag [SECONDS]`` (120 by default, after warm-up).
Extra worker options (e.g. ``--summary-interval 0.5``) can be given in ``BENCH_LAG_WORKER_ARGS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from admitter.kafka.sink import KafkaSink
from admitter.kafka.state_follower import StateFollower
from bench.kafka_parts import free_port, kafka, stop_worker
from capacity.live import PoolLive
from schemas.loader import load_config
from schemas.records import Amounts, EntitlementState, Outcome, Phase, RequestEvent
from schemas.topics import Topics
from streams.settings import PipelineSettings
from streams.worker import prepare

REPO = Path(__file__).resolve().parents[1]
POOL = "lag"
N_STEPPERS = 32
STEP_EVENTS = 10
STEP_EVERY_S = 0.2
STEP_S = STEP_EVENTS * STEP_EVERY_S
RIVAL_EVERY_S = 0.1
RIVAL_RESERVED = Amounts(throughput=300.0, kv=100.0, concurrency=1.0)  # 3,000 tok/s against 1,000 of capacity
STEP_RESERVED = Amounts(throughput=20.0, kv=100.0, concurrency=1.0)
ZERO = 1e-6
CONFIG = """\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {name: lag}
spec:
  model: lag
  perReplica: {throughput: 1000, kv: 1000000, concurrency: 1000}
  targetUtilisation: {throughput: 1.0, kv: 1.0, concurrency: 1.0}
  replicas: {min: 1, max: 1, initial: 1}
"""
Sample = tuple[float, float | None, float, float]  # event emitted, summary showing it, tick, follower apply
ENT = """\
---
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {name: %s}
spec: {pool: lag, tenant: t-%s, tier: elastic, burst: {throughput: 100000, kv: 1000000, concurrency: 1000}}
"""


@dataclass
class Stepper:
    """One entitlement's step cycle: idle (limit 0) -> stepping -> limit seen > 0 -> limit back to 0."""

    name: str
    armed_at: float = 0.0  # wall time the next step may start
    step_start: float | None = None  # emission time of the current step's first event
    summary_ts: float | None = None
    seen_up: bool = False
    samples: list[Sample] = field(default_factory=list)


class Target:
    def __init__(self, live: PoolLive) -> None:
        self.live = live

    def limits_changed(self) -> None:
        pass


class TimedFollower(StateFollower):
    """The real follower; every applied state is also handed to ``on_apply`` with the apply time."""

    def __init__(self, *args: Any, on_apply: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.on_apply = on_apply

    def _apply(self, state: EntitlementState) -> bool:
        applied = super()._apply(state)
        if applied:
            self.on_apply(state, time.time())
        return applied


def decision(ent: str, reserved: Amounts) -> RequestEvent:
    return RequestEvent(request_id=uuid.uuid4().hex, phase=Phase.DECISION, outcome=Outcome.ADMITTED, ts=time.time(),
                        admitter_id="adm-1", tenant=f"t-{ent}", entitlement=ent, pool=POOL, tier="elastic",
                        reserved=reserved, prompt_tokens=10, max_tokens=10)


def summary_demand(s: dict[str, Any]) -> float:
    """The allocator's input in a stage-1 summary, whichever version of the pipeline wrote it."""
    window = s.get("trailing") or s["tumbling"]
    return float(window["demand"]["throughput"])


class Bench:
    def __init__(self, bootstrap: str, prefix: str, workdir: Path, duration: float) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.duration = duration
        self.steppers = {f"s{i:02d}": Stepper(f"s{i:02d}") for i in range(N_STEPPERS)}
        self.sink = KafkaSink(bootstrap, workdir / "spool", topic_prefix=prefix)
        platform = load_config(workdir / "config.yaml")
        live = PoolLive(platform.pools[POOL], [e for e in platform.entitlements.values()], now=time.monotonic())
        self.follower = TimedFollower(bootstrap, "adm-2", topic_prefix=prefix, on_apply=self.on_apply)
        self.targets = {POOL: Target(live)}
        self.limit: dict[str, float] = {}
        self.measuring = False
        self.rng = random.Random(5)

    def on_apply(self, state: EntitlementState, at: float) -> None:
        self.limit[state.id] = state.limits.throughput
        st = self.steppers.get(state.id)
        if st is None or not self.measuring:
            return
        up = state.limits.throughput > ZERO
        if st.step_start is not None and not st.seen_up and up:
            st.seen_up = True
            st.samples.append((st.step_start, st.summary_ts, state.ts, at))
        elif st.seen_up and not up and st.step_start is not None and time.time() > st.step_start + STEP_S:
            st.step_start = st.summary_ts = None
            st.seen_up = False
            st.armed_at = time.time() + self.rng.uniform(0.0, 3.0)

    async def watch_summaries(self) -> None:
        """Stage 1's summaries on the internal usage topic: when each step's demand first appeared."""
        topic = Topics(self.prefix).entitlement_usage
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            cluster = await consumer._client.fetch_all_metadata()
            tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        s = orjson.loads(r.value or b"{}")
                        st = self.steppers.get(s.get("entitlement", ""))
                        if (st is not None and st.step_start is not None and st.summary_ts is None
                                and s["ts"] >= st.step_start and summary_demand(s) > ZERO):
                            st.summary_ts = float(s["ts"])
        finally:
            await consumer.stop()

    async def rival(self) -> None:
        while True:
            await self.sink.emit(decision("rival", RIVAL_RESERVED))
            await asyncio.sleep(RIVAL_EVERY_S)

    async def step(self, st: Stepper) -> None:
        for i in range(STEP_EVENTS):
            ev = decision(st.name, STEP_RESERVED)
            if i == 0:
                st.step_start = ev.ts
            await self.sink.emit(ev)
            await asyncio.sleep(STEP_EVERY_S)

    async def run(self) -> list[Sample]:
        await self.sink.start()
        await self.follower.start(self.targets)
        tasks = [asyncio.create_task(self.rival()), asyncio.create_task(self.watch_summaries())]
        try:
            # Warm-up: the rival's demand reached the allocator, so every idle stepper's limit is 0.
            deadline = time.monotonic() + 90
            while not all(self.limit.get(n, 1.0) <= ZERO for n in self.steppers):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"warm-up: idle limits never reached 0: {self.limit}")
                await asyncio.sleep(0.2)
            self.measuring = True
            start = time.time()
            for st in self.steppers.values():
                st.armed_at = start + self.rng.uniform(0.0, 10.0)
            stepping: set[asyncio.Task[None]] = set()
            while time.time() < start + self.duration:
                now = time.time()
                for st in self.steppers.values():
                    if st.step_start is None and st.armed_at and now >= st.armed_at:
                        st.armed_at = 0.0
                        st.step_start = now  # replaced by the first event's ts
                        task = asyncio.create_task(self.step(st))
                        stepping.add(task)
                        task.add_done_callback(stepping.discard)
                await asyncio.sleep(0.02)
            self.measuring = False
            for task in list(stepping):
                task.cancel()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.follower.stop()
            await self.sink.close()
        return [s for st in self.steppers.values() for s in st.samples]


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


def start_worker(bootstrap: str, prefix: str, port: int, log: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tokenpools.cli", "streams", "worker", "--bootstrap", bootstrap, "--topic-prefix",
             prefix, "--web-port", str(port), "--log-level", "warn", *extra],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )


async def worker_counters(port: int) -> dict[str, float]:
    """Ticks and summaries so far: what the early path costs."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("tokenpools_streams_ticks_total", "tokenpools_streams_summaries_sent_total"):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def measure(bootstrap: str, workdir: Path, duration: float, extra: list[str]) -> tuple[list[Sample], dict[str, float]]:
    prefix = f"lag{uuid.uuid4().hex[:6]}."
    config = workdir / "config.yaml"
    config.write_text(CONFIG + "".join(ENT % (n, n) for n in ["rival", *(f"s{i:02d}" for i in range(N_STEPPERS))]))
    asyncio.run(prepare(PipelineSettings(bootstrap_servers=bootstrap, topic_prefix=prefix), [config]))
    port = free_port()
    proc = start_worker(bootstrap, prefix, port, workdir / "worker.log", extra)
    try:
        asyncio.run(wait_ready(port, proc))
        before = asyncio.run(worker_counters(port))
        started = time.monotonic()
        samples = asyncio.run(Bench(bootstrap, prefix, workdir, duration).run())
        after = asyncio.run(worker_counters(port))
        elapsed = time.monotonic() - started
        return samples, {k: (after.get(k, 0.0) - before.get(k, 0.0)) / elapsed for k in after}
    finally:
        stop_worker(proc)


def pct(values: list[float]) -> str:
    a = np.array(values)
    return (f"p50 {np.percentile(a, 50):6.3f}  p90 {np.percentile(a, 90):6.3f}  p99 {np.percentile(a, 99):6.3f}  "
            f"max {a.max():6.3f}")


def report(samples: list[Sample]) -> None:
    if not samples:
        print("no samples")
        return
    print(f"samples: {len(samples)}")
    print(f"event -> limit at admitter 2 (s): {pct([a - e for e, _, _, a in samples])}")
    with_summary = [s for s in samples if s[1] is not None]
    if with_summary:
        print(f"  event -> stage-1 summary    : {pct([s - e for e, s, _, _ in with_summary])}")  # type: ignore[operator]
        print(f"  summary -> allocator tick   : {pct([t - s for _, s, t, _ in with_summary])}")  # type: ignore[operator]
    print(f"  tick -> follower apply      : {pct([a - t for _, _, t, a in samples])}")


def main(duration: float | None = None) -> None:
    duration = duration or float(os.environ.get("BENCH_LAG_SECONDS", "120"))
    extra = shlex.split(os.environ.get("BENCH_LAG_WORKER_ARGS", ""))
    with kafka() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-lag-") as tmp:
        samples, rates = measure(bootstrap, Path(tmp), duration, extra)
    print(f"worker options: {' '.join(extra) or '(defaults)'}; {duration:.0f} s of staggered steps, "
          f"{N_STEPPERS} entitlements")
    report(samples)
    print(f"worker: {rates.get('tokenpools_streams_ticks_total', 0):.2f} pool ticks/s, "
          f"{rates.get('tokenpools_streams_summaries_sent_total', 0):.1f} summaries/s "
          f"({N_STEPPERS + 1} entitlements, 1 pool)")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else None)
