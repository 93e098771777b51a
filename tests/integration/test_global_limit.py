"""Global limit across admitters (issue 5): a tenant sending through two admitters is held to its global limit.

Everything is real: the suite's Kafka, one pipeline worker subprocess (``harness.Worker``), emulated
vLLM replicas (``sim.server.EmulatorServer``), and two admitter apps (``create_app`` with a
``KafkaSink`` and a ``StateFollower`` each) served by uvicorn on 127.0.0.1. Nothing is mocked.

The entitlement is elastic with a burst ceiling of ``LIMIT`` weighted tokens/s, well below the pool's
capacity, so its global limit is ``LIMIT`` whatever the demand. The load offers 4x that, 60 % to
one admitter and 40 % to the other: each admitter alone sees more than ``LIMIT``; the warm-ups
drain the full buckets every run starts with (the default 10 s burst window). The control runs
the same load against two admitters that each run the allocator in-process (no pipeline): each
enforces the whole limit, and the tenant gets about twice it. With the pipeline, the limit is split
by the admitters' demand and the tenant gets ``LIMIT``. What is measured is the weighted tokens
(``0.5 * prompt + output``, the pool's ``tokenWeights``) of the requests admitted inside the
window by their decision's time, charged their real usage, from the admitters' own events; only
ratios are asserted, never latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from admitter.events import EventSink, FanOutSink, InMemorySink
from admitter.http.app import create_app
from admitter.kafka.sink import KafkaSink
from admitter.kafka.state_follower import StateFollower
from admitter.settings import AdmitterSettings
from schemas.loader import load_config
from schemas.records import Outcome, Phase
from sim.server import EmulatorServer
from tests.admitter.conftest import Served, serve
from tests.integration.harness import POOLS_YAML, TICK_S, Worker, eventually

pytestmark = pytest.mark.integration

LIMIT = 300.0  # weighted tokens/s: the entitlement's burst ceiling; the pool has 1,000
OUTPUT = 100  # output tokens per request (x-emulator-output-tokens = max_tokens)
OFFERED = 4.0  # offered load, in multiples of LIMIT: 2.4x at one admitter, 1.6x at the other
SPLIT = (0.6, 0.4)
WARMUP_S = 12.0  # the pipeline needs a few ticks to split; the buckets (10 s of share) drain in ~4 s
CONTROL_WARMUP_S = 18.0  # each bucket starts with 10 s of the whole limit; the 40 % side drains it in ~17 s
MEASURE_S = 60.0
CONTROL_MEASURE_S = 20.0
KEY = "tp-global-limit-0123456789abcdef"
ENT_YAML = """\
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {name: tenant}
spec:
  pool: p
  tenant: t-tenant
  tier: elastic
  burst: {throughput: %(limit)s, kv: 1000000, concurrency: 1000}
  weight: 1
  apiKeys: [{sha256: %(sha)s}]
"""


def write_config(path: Path) -> Path:
    ent = ENT_YAML % {"limit": LIMIT, "sha": hashlib.sha256(KEY.encode()).hexdigest()}
    path.write_text(POOLS_YAML % {"pool": "p", "tick": TICK_S} + "---\n" + ent)
    return path


class OpenLoop:
    """Requests at a fixed rate per admitter, each in its own task: refused ones do not slow the others."""

    def __init__(self, urls: list[str], rates: list[float]) -> None:
        self.urls = urls
        self.rates = rates
        self.statuses: list[int | str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(u, r)) for u, r in zip(self.urls, self.rates, strict=True)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _loop(self, url: str, rate: float) -> None:
        body = {"model": "m-p", "messages": [{"role": "user", "content": "count slowly"}], "max_tokens": OUTPUT}
        headers = {"Authorization": f"Bearer {KEY}", "x-emulator-output-tokens": str(OUTPUT)}
        inflight: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=url, timeout=30.0,
                                     limits=httpx.Limits(max_connections=64)) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                task = asyncio.create_task(self._one(client, body, headers))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                next_at += 1.0 / rate
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_at - time.monotonic())):
                        await self._stop.wait()
            if inflight:  # let the requests already sent finish before the client closes
                await asyncio.wait(inflight, timeout=30)

    async def _one(self, client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]) -> None:
        try:
            self.statuses.append((await client.post("/v1/chat/completions", json=body, headers=headers)).status_code)
        except httpx.HTTPError as exc:
            self.statuses.append(type(exc).__name__)


def weighted_admitted(sinks: list[InMemorySink], start: float, end: float) -> float:
    """Weighted tokens (their real usage, from the finish event) of the requests admitted in
    ``[start, end)`` by the decision's time (the admitters' clock): what the invariant bounds."""
    decided = {e.request_id: e.ts for s in sinks for e in s.events if e.phase is Phase.DECISION
               and e.outcome in (Outcome.ADMITTED, Outcome.QUEUED_ADMITTED)}
    return sum(0.5 * e.prompt_tokens + e.output_tokens for s in sinks for e in s.events
               if e.phase is Phase.FINISH and e.outcome is Outcome.COMPLETED
               and start <= decided.get(e.request_id, -1.0) < end)


def credit(admitters: list[Served]) -> float:
    """What the tenant's throughput buckets hold now, summed over the admitters: the invariant lets
    a window admit that much on top of the limit (docs/global-limit.md); the warm-up drains it."""
    total = 0.0
    for a in admitters:
        bucket = a.server.config.app.state.admitter.gates["p"].live.entitlements["tenant"].bucket
        total += max(0.0, min(bucket.depth, bucket.level + bucket.rate * max(0.0, time.monotonic() - bucket.updated)))
    return total


def reserved_per_request(sinks: list[InMemorySink]) -> float:
    decisions = [e for s in sinks for e in s.events if e.phase is Phase.DECISION]
    return sum(e.reserved.throughput for e in decisions) / max(1, len(decisions))


async def run_load(admitters: list[Served], sinks: list[InMemorySink], warmup: float,
                   measure: float) -> tuple[float, float]:
    """Offered load for warm-up + measure seconds; the admitted weighted tokens/s over the measured
    part, and the credit the buckets held at its start."""
    # Size the offered rate from what one request reserves (the admitter's own estimate of its cost).
    probe = OpenLoop([admitters[0].url], [2.0])
    probe.start()
    await eventually(lambda: _async(reserved_per_request(sinks) > 0), within=20, every=0.2)
    await probe.stop()
    per_request = reserved_per_request(sinks)
    total_rate = OFFERED * LIMIT / per_request
    load = OpenLoop([a.url for a in admitters], [total_rate * f for f in SPLIT])
    load.start()
    try:
        await asyncio.sleep(warmup)
        start = time.time()
        carried = credit(admitters)
        await asyncio.sleep(measure)
        end = time.time()
    finally:
        await load.stop()
    assert {s for s in load.statuses if s not in (200, 429)} == set(), load.statuses
    assert load.statuses.count(429) > 0  # the offered load really was above what was admitted
    return weighted_admitted(sinks, start, end) / (end - start), carried


async def _async(value: Any) -> Any:
    return value


@contextlib.asynccontextmanager
async def admitters_on(config: Path, emulator: EmulatorServer, make: Any) -> Any:
    served: list[Served] = []
    sinks: list[InMemorySink] = []
    try:
        for i in (1, 2):
            memory = InMemorySink(maxlen=None)
            settings = AdmitterSettings(backends={"p": emulator.urls}, admitter_id=f"adm-{i}", public_metrics=True)
            sink, limits = make(i, memory)
            served.append(await serve(create_app(settings, load_config(config), sink=sink, limits=limits)))
            sinks.append(memory)
        yield served, sinks
    finally:
        for s in served:
            await s.stop()


async def test_a_tenant_behind_two_admitters_gets_its_global_limit_not_twice_it(
    kafka: Any, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    config = write_config(tmp_path / "config.yaml")
    worker = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()

    async with EmulatorServer(2, model="m-p", speedup=50) as emulator:
        # Control: no pipeline, each admitter runs the allocator on its own and enforces the whole limit.
        def standalone(_: int, memory: InMemorySink) -> tuple[EventSink, None]:
            return memory, None

        async with admitters_on(config, emulator, standalone) as (served, sinks):
            alone, _ = await run_load(served, sinks, warmup=CONTROL_WARMUP_S, measure=CONTROL_MEASURE_S)

        # The real thing: events to Kafka, limits (split by demand) from the pipeline's state topic.
        def piped(i: int, memory: InMemorySink) -> tuple[EventSink, StateFollower]:
            kafka_sink = KafkaSink(kafka.bootstrap_servers, tmp_path / f"spool-{i}", topic_prefix=prefix)
            follower = StateFollower(kafka.bootstrap_servers, f"adm-{i}", topic_prefix=prefix, expected_admitters=2,
                                     initial_wait=30.0)
            return FanOutSink([memory, kafka_sink]), follower

        async with admitters_on(config, emulator, piped) as (served, sinks):
            followers = [s.server.config.app.state.admitter.limits for s in served]
            together, carried = await run_load(served, sinks, warmup=WARMUP_S, measure=MEASURE_S)
            shares = [f.entitlements["tenant"].admitter_shares for f in followers]

    print(f"admitted weighted tokens/s: {together:.1f} through two admitters with the pipeline, {alone:.1f} "
          f"without it; limit {LIMIT:.0f}; credit carried into the window {carried:.0f}; last shares {shares[0]}")
    assert set(shares[0]) == {"adm-1", "adm-2"}  # the pipeline split the limit between both admitters
    # Held by construction (capacity.split, capacity.bucket; tests/capacity/test_global_invariant.py):
    # over the measured minute the bound is the limit plus the credit the buckets held at its start,
    # which the warm-up drains (a few tokens/s of it are left). Repeated runs: docs/global-limit.md.
    assert together - carried / MEASURE_S <= LIMIT * 1.05
    assert together >= LIMIT * 0.95
    assert alone > 1.7 * LIMIT  # without the pipeline the tenant would get about twice its limit
