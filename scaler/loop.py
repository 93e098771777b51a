"""The scaler: pool states in, replicas out, ready replicas reported back to the pipeline.

For every ``PoolState`` (``tokenpools.pool-state``, or handed to :meth:`ScalerLoop.observe` in tests)
of a pool it manages, the loop:

1. forecasts demand with ``capacity.scaling.DemandForecaster`` over guaranteed + elastic demand
   (spot is passed separately: it only counts within the pool's spot budget);
2. applies ``capacity.scaling.ScalingRule`` (guarantees from ``PoolState.guarantees``; scale up at
   once, down only after the stabilisation window; never below the guarantees or outside bounds);
3. calls the actuator when the decision differs from the actuator's current count;
4. publishes the actuator's ready replicas to ``tokenpools.replicas``
   (``schemas.records.ReplicasReport``, key = pool), the pipeline's capacity belief, with their
   base URLs when the actuator is an ``EndpointSource`` (what ``admitter.kafka.discovery`` follows).

The clock (for the forecaster and the stabilisation window) is injected; the reports carry wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from capacity.scaling import DemandForecaster, ScalingDecision, ScalingRule
from scaler.actuator import Actuator, EndpointSource
from schemas.records import Amounts, PoolState, ReplicasReport
from schemas.specs import Tier, TokenPool, Triple
from schemas.topics import Topics
from schemas.wire import BadRecords, decode, encode

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger("tokenpools.scaler")

Publish = Callable[[ReplicasReport], Awaitable[None]]


def _t(a: Amounts | None) -> Triple:
    return a.as_tuple() if a is not None else (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Step:
    """What one pool state led to (for logs and tests); ``at`` is the scaler's clock."""

    pool: str
    decision: ScalingDecision
    before: int
    ready: int
    at: float = 0.0
    state_seq: int = -1


class ScalerLoop:
    def __init__(
        self,
        pools: Mapping[str, TokenPool],
        actuator: Actuator,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        publish: Publish | None = None,
        keep_steps: int = 10_000,
    ) -> None:
        """``keep_steps``: how many recent ``Step``s ``steps`` keeps (what tests and debugging read)."""
        self.pools = dict(pools)
        self.actuator = actuator
        self.clock = clock
        self.wall = wall
        self.publish = publish
        self.rules = {name: ScalingRule(p.spec) for name, p in self.pools.items()}
        self.forecasters = {
            name: DemandForecaster(p.spec.scaling.forecast_half_life_seconds) for name, p in self.pools.items()
        }
        self.last: dict[str, Step] = {}
        self.steps: deque[Step] = deque(maxlen=keep_steps)
        self.reported = asyncio.Event()  # run_kafka's first reports are on the topic
        self.bad = BadRecords()
        self._last_seq: dict[str, int] = {}

    async def observe(self, state: PoolState) -> Step | None:
        """Decide for one pool state; None for a pool this scaler does not manage."""
        name = state.id
        rule = self.rules.get(name)
        if rule is None:
            return None
        now = self.clock()
        demand = state.demand
        g, e = _t(demand.get(Tier.GUARANTEED)), _t(demand.get(Tier.ELASTIC))
        elastic = (g[0] + e[0], g[1] + e[1], g[2] + e[2])
        forecast = self.forecasters[name].observe(elastic, now)
        before = await self.actuator.current(name)
        decision = rule.decide(now, before, _t(state.guarantees), forecast, _t(demand.get(Tier.SPOT)))
        if decision.replicas != before:
            log.info("pool %s: %d -> %d replicas (%s; recommended %d, guarantee floor %d)", name, before,
                     decision.replicas, decision.reason, decision.recommended, decision.guarantee_floor)
            await self.actuator.scale(name, decision.replicas)
        ready = await self.actuator.ready(name)
        await self.report(name, ready)
        step = self.last[name] = Step(name, decision, before, ready, now, state.seq)
        self.steps.append(step)
        return step

    async def report(self, pool: str, ready: int) -> None:
        if self.publish is None:
            return
        endpoints = await self.actuator.endpoints(pool) if isinstance(self.actuator, EndpointSource) else None
        await self.publish(ReplicasReport(pool=pool, ready_replicas=ready, ts=self.wall(), endpoints=endpoints))

    async def report_all(self) -> None:
        """Every pool's report; a pool whose actuator cannot say (its API unreachable before a first
        snapshot) is logged and skipped, so one pool's platform outage neither stops the others' reports
        nor reaches the Kafka reader as if Kafka were lost."""
        for pool in self.pools:
            try:
                ready = await self.actuator.ready(pool)
            except Exception:
                log.exception("cannot read pool %s's ready replicas; its report waits for the next round", pool)
                continue
            await self.report(pool, ready)

    # -- Kafka ---------------------------------------------------------------------------------

    async def run_kafka(self, bootstrap_servers: KafkaSettings | str,
                        topic_prefix: str = "", report_every: float = 10.0) -> None:
        """Follow the pool-state topic until cancelled (``tokenpools.kafka.reader.CompactedReader``: no group,
        every partition, from the beginning, reconnecting through broker outages); reports go to the
        replicas topic, all pools once the topic is assigned and again every ``report_every`` seconds."""
        from aiokafka import AIOKafkaProducer

        from tokenpools.kafka.connection import connection
        from tokenpools.kafka.reader import CompactedReader

        topics = Topics(topic_prefix)
        producer = AIOKafkaProducer(**connection(bootstrap_servers), acks="all", enable_idempotence=True)
        await producer.start()
        self.publish = kafka_publisher(producer, topics.replicas)
        latest: dict[str, PoolState] = {}  # the newest state per pool in the current batch
        next_report = 0.0

        def collect(_key: bytes | None, value: bytes | None) -> None:
            state = decode(PoolState, value, topics.pool_state, self.bad)
            if state is not None:
                latest[state.id] = state

        async def first_reports() -> None:
            nonlocal next_report
            if not self.reported.is_set():
                await self.report_all()
                await producer.flush()
                self.reported.set()
                next_report = self.clock() + report_every

        async def batch_done() -> None:
            nonlocal next_report
            states = list(latest.values())
            latest.clear()
            for state in states:
                await self._observe_newer(state)
            if self.clock() >= next_report:  # keep the compacted report fresh even without states
                await self.report_all()
                next_report = self.clock() + report_every

        reader = CompactedReader(bootstrap_servers, {topics.pool_state: collect}, bad=self.bad,
                                 client_id="tokenpools-scaler", name="scaler", keeps="keeping the current replicas",
                                 after_batch=batch_done, on_assigned=first_reports, logger=log)
        try:
            await reader.run()
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _observe_newer(self, state: PoolState) -> None:
        """Observe a state unless an older one than the last observed (a replay after a reconnect)."""
        if state.seq < self._last_seq.get(state.id, -1):
            return
        self._last_seq[state.id] = state.seq
        try:
            await self.observe(state)
        except Exception:
            log.exception("scaling pool %s failed; retrying at the next state", state.id)


def kafka_publisher(producer: AIOKafkaProducer, topic: str) -> Publish:
    """Reports to ``topic`` keyed by pool; a failed send is logged, since the next report repeats it."""

    async def publish(report: ReplicasReport) -> None:
        try:
            await producer.send(topic, encode(report), key=report.pool.encode())
        except Exception:
            log.warning("could not publish the replicas of %s", report.pool, exc_info=True)

    return publish
