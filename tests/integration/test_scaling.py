"""Scaling in the closed loop: demand above capacity grows the replicas; when it falls they shrink,
but only after the stabilisation window.

Real parts: the broker, a pipeline worker subprocess (short windows and a 0.25 s tick), the
``ScalerLoop`` following ``pool-state`` through Kafka with a ``LocalActuator`` (emulator replicas in
this process) and its wall/monotonic clocks. Demand is request events published straight to the
requests topic (as an admitter would), so the test controls its rate. Timing claims are checked on
the scaler's own record of its steps (``ScalerLoop.steps``, stamped with the scaler's clock), not
on how long the test took.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from scaler.local import LocalActuator
from scaler.loop import ScalerLoop
from schemas import topics
from schemas.loader import load_config
from schemas.records import ReplicasReport
from schemas.wire import BadRecords, decode
from tests.factories import emulators
from tests.integration.harness import KAFKA_WAIT_S, Kafka, Worker, eventually, request_pair

pytestmark = pytest.mark.integration
POOL = "sp"
WINDOW = 6.0  # stabilisationWindowSeconds
PER_REPLICA = 1000.0  # weighted tokens/s
CONFIG = f"""\
apiVersion: tokenpools.dev/v1alpha1
kind: TokenPool
metadata: {{name: {POOL}}}
spec:
  model: m-{POOL}
  perReplica: {{throughput: {PER_REPLICA}, kv: 10000000, concurrency: 10000}}
  targetUtilisation: {{throughput: 1.0, kv: 1.0, concurrency: 1.0}}
  replicas: {{min: 1, max: 4, initial: 1}}
  tokenWeights: {{input: 0.5, output: 1.0}}
  reclaimBuffer: 0.0
  tickSeconds: 0.25
  scaling: {{headroom: 0.0, stabilisationWindowSeconds: {WINDOW}, startupDelaySeconds: 0,
            forecastHalfLifeSeconds: 0.5}}
---
apiVersion: tokenpools.dev/v1alpha1
kind: Entitlement
metadata: {{name: e}}
spec:
  pool: {POOL}
  tenant: t-e
  tier: elastic
  burst: {{throughput: 1000000, kv: 100000000, concurrency: 100000}}
  weight: 1
"""
# One request reserves 0.5 * 400 + 300 = 500 weighted tokens; 5 per second = 2,500/s = 2.5 replicas.
PROMPT, OUTPUT, PER_SECOND = 400, 300, 5


async def offer(io: Kafka, stop: asyncio.Event) -> int:
    """Publish requests at PER_SECOND (event time = now) until ``stop``; how many."""
    sent = 0
    while not stop.is_set():
        await io.publish(request_pair("e", POOL, "elastic", time.time(), prompt=PROMPT, output=OUTPUT))
        sent += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0 / PER_SECOND)
    return sent


async def test_demand_grows_replicas_and_they_shrink_only_after_the_stabilisation_window(
        kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(CONFIG)
    pools = load_config(config).pools
    worker = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log")
    workers.append(worker.start())
    await worker.wait_ready()

    actuator = LocalActuator({POOL: 1}, server_factory=emulators(10.0))
    scaler = ScalerLoop(pools, actuator)
    await actuator.start()
    task = asyncio.create_task(scaler.run_kafka(kafka.bootstrap_servers, prefix, report_every=1.0))
    stop_demand = asyncio.Event()
    demand: asyncio.Task[int] | None = None
    try:
        await asyncio.wait_for(scaler.reported.wait(), KAFKA_WAIT_S)
        # Nothing asked yet: one replica.
        await eventually(lambda: _steps(scaler))
        assert await actuator.current(POOL) == 1

        # Demand of 2.5 replicas: the scaler grows the pool (at once, no window on the way up).
        demand = asyncio.create_task(offer(kafka_io, stop_demand))

        async def grown() -> bool:
            assert not task.done(), task
            return await actuator.current(POOL) >= 3

        await eventually(grown)
        assert len(actuator.urls(POOL)) == await actuator.current(POOL)

        # Demand stops; the pool goes back to one replica, after the window.
        stop_demand.set()
        assert await demand > 0

        async def shrunk() -> bool:
            assert not task.done(), task
            return await actuator.current(POOL) == 1

        await eventually(shrunk)
        steps = [s for s in scaler.steps if s.pool == POOL]
        peak = max(s.decision.replicas for s in steps)  # demand still in the windows may add one after `grown`
        assert 3 <= peak <= 4
        first_up = next(i for i, s in enumerate(steps) if s.decision.replicas > s.before)
        downs = [i for i, s in enumerate(steps) if s.decision.replicas < s.before]
        assert downs and first_up < downs[0] and steps[downs[-1]].decision.replicas == 1
        # The rule keeps the highest recommendation of the window: before each shrink (demand falls
        # through partial windows, so it may go 3 -> 2 -> 1), the last step that asked for more than
        # the new count lies a whole window earlier on the scaler's clock.
        for i in downs:
            shrink = steps[i]
            assert shrink.decision.reason == "scale down"
            last_high = max(s.at for s in steps[:i] if s.decision.recommended > shrink.decision.replicas)
            assert shrink.at - last_high >= WINDOW, (shrink, last_high)
        # Before the first shrink the scaler saw the lower demand and held: nothing went down earlier.
        first = steps[downs[0]]
        last_high = max(s.at for s in steps[:downs[0]] if s.decision.recommended > first.decision.replicas)
        held = [s for s in steps[:downs[0]] if s.at > last_high]
        assert held and all(s.decision.reason == "held by stabilisation window" and s.decision.recommended < s.before
                            and s.decision.replicas == s.before == peak for s in held), held
        assert all(s.decision.replicas >= s.before for s in steps[:downs[0]])

        # The pipeline's capacity belief follows the reports: up to the peak, then back to 1.
        async def pipeline_followed() -> bool:
            seen = [s.ready_replicas for s in sorted(await kafka_io.pool_states(), key=lambda s: s.seq)
                    if s.id == POOL]
            assert seen and seen[0] == 1 and max(seen) == peak and seen[-1] == 1, seen
            return True

        await eventually(pipeline_followed)
        reports = [decode(ReplicasReport, v, "replicas", BadRecords())
                   for _, v in await kafka_io.read_all(topics.REPLICAS)]
        assert reports and all(r is not None and r.endpoints is not None
                               and len(r.endpoints) == r.ready_replicas for r in reports)
        assert max(r.ready_replicas for r in reports if r) == peak and reports[-1].ready_replicas == 1
        assert reports[-1].endpoints == actuator.urls(POOL)
        assert scaler.bad.total() == 0
    finally:
        stop_demand.set()
        if demand is not None:
            with contextlib.suppress(Exception):
                await demand
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await actuator.close()


async def _steps(scaler: ScalerLoop) -> bool:
    return any(s.pool == POOL for s in scaler.steps)
