"""Stage 2 (partitioned by pool): keep the latest summary per entitlement, tick each owned pool.

Summaries arrive on the internal usage topic keyed by pool, so the worker holding a pool's partition
sees all of that pool's entitlements. It stores the latest summary per (pool, entitlement, requests
partition) in a changelogged table and, every ``tickSeconds`` of each pool it owns, runs
``streams.allocate.allocate_pool`` with the debt and tick number persisted by the previous tick
(recovered from the changelog after a restart, so debt continues instead of restarting from zero),
then publishes the states.

A pool also ticks early, ``min_tick_gap_s`` after its previous tick at the soonest, when a summary
arrives whose trailing demand moved by more than ``change_threshold`` from the one its last tick
used: a new demand then reaches the admitters without waiting for the pool's fixed tick phase.
Early ticks are ordinary ticks (``dt`` is the time since the previous one), so debt is unaffected.

A tick the capacity model rejects (not finite: ``streams.allocate``) publishes nothing, so admitters
keep the last limits; it is logged and counted (``tokenpools_streams_rejected_ticks``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from schemas.wire import BadRecords, decode, encode
from streams.allocate import EntitlementInput, PoolOutput, PoolTick, allocate_pool, combine
from streams.codec import RawMessage, inputs_key
from streams.config_table import ConfigView
from streams.metrics import PipelineMetrics
from streams.records import UsageSummary
from streams.store import KeyValueStore
from streams.windows import Triple, moved

log = logging.getLogger(__name__)

Publish = Callable[[str, str, bytes], Awaitable[None]]  # (topic, key, value)


class Stage2:
    def __init__(
        self,
        *,
        inputs: KeyValueStore[UsageSummary],
        ticks: KeyValueStore[PoolTick],
        config: ConfigView,
        topic: str,
        entitlement_state_topic: str,
        pool_state_topic: str,
        publish: Publish,
        bad: BadRecords,
        metrics: PipelineMetrics,
        stale_after_s: float = 60.0,
        max_dt_s: float = 60.0,
        admitter_horizon_s: float = 60.0,
        change_threshold: float = 0.1,
        min_tick_gap_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inputs = inputs
        self.ticks = ticks
        self.config = config
        self.topic = topic
        self.entitlement_state_topic = entitlement_state_topic
        self.pool_state_topic = pool_state_topic
        self.publish = publish
        self.bad = bad
        self.metrics = metrics
        self.stale_after_s = stale_after_s
        self.max_dt_s = max_dt_s
        self.admitter_horizon_s = admitter_horizon_s
        self.clock = clock
        self.change_threshold = change_threshold
        self.min_tick_gap_s = min_tick_gap_s
        self._last_run: dict[str, float] = {}
        self._early: dict[str, int] = {}  # pools whose inputs moved since their last tick -> store count then
        self._stored = 0  # summaries stored so far (orders an early flag against the inputs a tick read)
        self._grouped = 0  # ``_stored`` when the inputs were last read
        self._latest: dict[str, dict[str, Triple]] = {}  # pool -> inputs key -> demand, as last grouped
        self._newest: dict[str, float] = {}  # pool -> ts of its newest summary, as last grouped
        self._used: dict[str, dict[str, Triple]] = {}  # pool -> inputs key -> demand its last tick used

    def reset(self) -> None:
        self._last_run.clear()
        self._early.clear()
        self._latest.clear()
        self._newest.clear()
        self._used.clear()

    async def process(self, messages: Sequence[RawMessage]) -> None:
        latest: dict[str, tuple[UsageSummary, int]] = {}
        for m in messages:
            summary = decode(UsageSummary, m.value, self.topic, self.bad)
            if summary is None:
                if m.value is None:
                    self.bad.note(self.topic, "tombstone", f"partition {m.partition} offset {m.offset}")
                continue
            if m.key is None or m.key.decode("utf-8", "replace") != summary.pool:
                self.bad.note(self.topic, "key_mismatch", f"key {m.key!r} holds a summary of pool {summary.pool!r}")
                continue
            self.metrics.summaries_received.inc()
            key = inputs_key(summary.pool, summary.entitlement, summary.partition)
            if key not in latest or latest[key][0].ts <= summary.ts:
                latest[key] = (summary, m.partition)
        for key, (summary, partition) in latest.items():
            previous = self.inputs.get(key)
            if previous is None or previous.ts < summary.ts:  # equal: the copy of one handed over in-process
                await self.inputs.put(key, summary, partition)
                used = self._used.get(summary.pool, {}).get(key, (0.0, 0.0, 0.0))
                self._stored += 1
                if moved(used, _demand(summary), self.change_threshold):
                    self._early[summary.pool] = self._stored

    def due(self, pools: Sequence[str], now: float) -> list[str]:
        """The pools (among those owned) whose ``tickSeconds`` has passed since this worker last ticked them,
        or whose inputs moved and whose last tick is at least ``min_tick_gap_s`` old."""
        out = []
        for name in pools:
            pool = self.config.pool(name)
            if pool is None:
                continue
            last = self._last_run.get(name)
            gap = min(pool.spec.tick_seconds, self.min_tick_gap_s) if name in self._early else pool.spec.tick_seconds
            if last is None or now - last >= gap * 0.999:
                out.append(name)
        return out

    def inputs_by_entitlement(self, now: float) -> dict[str, dict[str, EntitlementInput]]:
        """Fresh summaries grouped by pool, then entitlement (partitions summed)."""
        grouped: dict[str, dict[str, list[UsageSummary]]] = {}
        self._latest = {}
        self._newest = {}
        self._grouped = self._stored
        for key, s in self.inputs.items():
            grouped.setdefault(s.pool, {}).setdefault(s.entitlement, []).append(s)
            self._latest.setdefault(s.pool, {})[key] = _demand(s)
            self._newest[s.pool] = max(s.ts, self._newest.get(s.pool, s.ts))
        return {
            pool: {ent: combine(summaries, now, self.stale_after_s) for ent, summaries in ents.items()}
            for pool, ents in grouped.items()
        }

    async def tick(self, pool_name: str, partition: int, now: float,
                   inputs: dict[str, EntitlementInput] | None = None) -> PoolOutput | None:
        pool = self.config.pool(pool_name)
        if pool is None:
            return None
        started = time.perf_counter()
        self._last_run[pool_name] = now
        if inputs is None:
            inputs = self.inputs_by_entitlement(now).get(pool_name, {})
        if self._early.get(pool_name, 0) <= self._grouped:  # else a summary came after the read: tick again
            self._early.pop(pool_name, None)
        self._used[pool_name] = self._latest.get(pool_name, {})
        prev = self.ticks.get(pool_name) or PoolTick()
        out = allocate_pool(
            pool, self.config.entitlements_of(pool_name), inputs, prev, self.config.ready_replicas(pool), now,
            max_dt_s=self.max_dt_s, admitter_horizon_s=self.admitter_horizon_s,
        )
        if out.rejected is not None or out.pool is None:
            self.metrics.rejected_ticks.labels(pool_name, out.rejected or "").inc()
            log.warning("allocator tick of pool %s rejected (%s); admitters keep the last limits published",
                        pool_name, out.rejected)
            return out
        await self.ticks.put(pool_name, out.tick, partition)
        for state in out.entitlements:
            await self.publish(self.entitlement_state_topic, state.id, encode(state))
        await self.publish(self.pool_state_topic, out.pool.id, encode(out.pool))
        self.metrics.states_published.labels("entitlement").inc(len(out.entitlements))
        self.metrics.states_published.labels("pool").inc()
        self.metrics.ticks.labels(pool_name).inc()
        elapsed = time.perf_counter() - started
        self.metrics.tick_seconds.labels(pool_name).observe(elapsed)
        newest = self._newest.get(pool_name)
        if newest is not None:
            self.metrics.summary_age.labels(pool_name).observe(max(0.0, now + elapsed - newest))
        return out


def _demand(summary: UsageSummary) -> Triple:
    d = (summary.trailing or summary.tumbling).demand
    return (d.throughput, d.kv, d.concurrency)
