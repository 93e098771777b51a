"""Limits from the pipeline: a ``LimitSource`` that follows ``tokenpools.entitlement-state`` and ``pool-state``.

``StateFollower`` reads both compacted topics with a plain aiokafka consumer (no group: every
partition assigned, from the beginning), keeps the latest value per key (a tombstone deletes it),
then tails them. For every ``EntitlementState`` of a pool this admitter serves it applies this
admitter's share:

- ``admitter_shares[admitter_id]`` when the pipeline has split the limit across admitters;
- nothing, when the record lists other admitters but not this one: they share the whole limit, so
  anything here would admit beyond it (the pipeline lists an admitter from the tick after its
  first event; a refused request is an event);
- ``limits / n`` when the record lists no admitter at all, where ``n`` is the number of admitters
  known for the pool (those named in its states' ``admitter_shares``, plus this one, and at least
  ``expected_admitters``); with nothing known that is the full limit.

The rule is ``capacity.split.share_for``; each fallback is counted in ``fallbacks`` (pool, kind:
``unlisted`` or ``empty``), exported as ``tokenpools_admitter_state_fallback_shares_total``.

The entitlement's guarantee is scaled by the same ratio (share / limit, per dimension) with
``PoolLive.apply_share`` before the limits are set (a guaranteed entitlement never goes below
its guarantee share). ``PoolState`` sets the pool's capacity to this admitter's part of the pipeline's
capacity belief (``ready_replicas`` divided by the number of known admitters).

The topics are read by ``tokenpools.kafka.reader.CompactedReader`` (every partition, no group, from the
beginning, then tailed; caught up at the end offsets seen at start). Bad records are counted
(``schemas.wire.BadRecords``) and skipped; that includes any state whose limits or shares are negative,
NaN, infinite or above one entitlement's largest amount (``schemas.records`` validates them on decode),
so no such limit is ever applied. If Kafka goes away the admitter keeps enforcing the last limits it
applied; aiokafka reconnects, and a consumer that fails outright is recreated and resumes from the
positions it had reached. ``connected``, ``reconnects``, ``records`` and ``last_applied`` are what
``admitter.metrics`` exports (docs/observability.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from admitter.admission.limits import LimitTarget
from admitter.stats import StateStats
from capacity.live import Triple
from capacity.split import share_for
from schemas.records import EntitlementState, PoolState
from schemas.topics import Topics
from schemas.wire import BadRecords, decode
from tokenpools.kafka.connection import bootstrap_of
from tokenpools.kafka.reader import CompactedReader
from tokenpools.kafka.settings import KafkaSettings

log = logging.getLogger("tokenpools.admitter.follower")


class StateFollower:
    """Applies the pipeline's per-admitter shares to this admitter's live pools (see the module doc)."""

    def __init__(
        self,
        bootstrap_servers: KafkaSettings | str,
        admitter_id: str,
        *,
        topic_prefix: str = "",
        entitlement_topic: str | None = None,
        pool_topic: str | None = None,
        expected_admitters: int = 1,
        initial_wait: float = 5.0,
        retry_backoff: float = 1.0,
        contact_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap_servers = bootstrap_of(bootstrap_servers)
        self.admitter_id = admitter_id
        topics = Topics(topic_prefix)
        self.entitlement_topic = entitlement_topic or topics.entitlement_state
        self.pool_topic = pool_topic or topics.pool_state
        self.expected_admitters = max(1, expected_admitters)
        self.initial_wait = initial_wait
        self.retry_backoff = retry_backoff
        self.contact_timeout = contact_timeout
        self._clock = clock
        self.bad = BadRecords()
        self.entitlements: dict[str, EntitlementState] = {}  # latest per key
        self.pools: dict[str, PoolState] = {}
        self.applied = 0  # entitlement states applied to a live pool
        self.records: Counter[tuple[str, str]] = Counter()  # (entitlement|pool, applied|ignored|deleted)
        self.fallbacks: Counter[tuple[str, str]] = Counter()  # (pool, unlisted|empty): shares not from the record
        self.last_applied: dict[str, float] = {}  # pool -> clock() when a new state of it was last applied
        self.last_seq: dict[str, int] = {}  # pool -> highest tick seq applied
        self.started_at: float | None = None
        self._targets: dict[str, LimitTarget] = {}
        self._changed: set[str] = set()  # pools whose limits changed in the current batch
        # A short fetch wait: aiokafka keeps one fetch in flight per broker, and a partition just drained
        # joins only the next one, so new states could wait up to the whole wait (500 ms by default).
        self.reader = CompactedReader(
            bootstrap_servers,
            {topic: self._record(topic) for topic in (self.entitlement_topic, self.pool_topic)},
            bad=self.bad, client_id=f"tokenpools-follower-{admitter_id}", name="state follower",
            keeps="keeping the last limits", after_batch=self._batch_done, on_caught_up=self._caught_up,
            retry_backoff=retry_backoff, contact_timeout=contact_timeout, fetch_max_wait_ms=100, logger=log)

    @property
    def caught_up(self) -> asyncio.Event:
        """Set once both topics were read to the end offsets seen at start."""
        return self.reader.caught_up

    @property
    def connected(self) -> bool:
        """A fetch response within ``contact_timeout``."""
        return self.reader.connected

    @property
    def reconnects(self) -> int:
        """Times Kafka came back after the follower had lost it."""
        return self.reader.reconnects

    # -- LimitSource ---------------------------------------------------------------------------

    async def start(self, targets: Mapping[str, LimitTarget]) -> None:
        """Start following; wait up to ``initial_wait`` for the current state (else go on with the config's)."""
        self._targets = dict(targets)
        self.started_at = self._clock()
        if not await self.reader.start(self.initial_wait):
            log.warning("state topics not read within %.1f s; enforcing configured guarantees until they are",
                        self.initial_wait)

    async def stop(self) -> None:
        await self.reader.stop()

    def refresh(self, pool: str) -> None:
        """Entitlements changed (admin API): re-apply what is known for the pool."""
        target = self._targets.get(pool)
        if target is None:
            return
        if pool in self.pools:
            self._apply_pool(self.pools[pool])
        for state in list(self.entitlements.values()):
            if state.pool == pool:
                self._apply(state)
        target.limits_changed()

    def add_pool(self, name: str, target: LimitTarget) -> None:
        """A pool from the config topic: apply what is already known for it."""
        self._targets[name] = target
        self.refresh(name)

    def remove_pool(self, name: str) -> None:
        self._targets.pop(name, None)

    # -- shares --------------------------------------------------------------------------------

    def admitters_of(self, pool: str) -> set[str]:
        known = {self.admitter_id}
        for state in self.entitlements.values():
            if state.pool == pool:
                known.update(state.admitter_shares)
        return known

    def share_of(self, state: EntitlementState) -> tuple[Triple, str | None]:
        """This admitter's share of the state's limits, and the fallback taken (None: its own share)."""
        shares = {a: (v.throughput, v.kv, v.concurrency) for a, v in state.admitter_shares.items()}
        lim = state.limits
        n = max(self.expected_admitters, len(self.admitters_of(state.pool)))
        share, fallback = share_for(self.admitter_id, shares, (lim.throughput, lim.kv, lim.concurrency), n)
        if not fallback:
            return share, None
        return share, "unlisted" if shares else "empty"

    def _apply(self, state: EntitlementState) -> bool:
        target = self._targets.get(state.pool)
        if target is None:
            return False
        live = target.live
        ent = live.entitlements.get(state.id)
        if ent is None:
            return False
        share, fallback = self.share_of(state)
        if fallback is not None:
            self.fallbacks[state.pool, fallback] += 1
        n = max(self.expected_admitters, len(self.admitters_of(state.pool)))
        limits = (state.limits.throughput, state.limits.kv, state.limits.concurrency)
        live.apply_share(state.id, share, limits, n, self._clock())
        ent.set_fairness(state.debt, state.effective_weight, state.fair_share)
        self.applied += 1
        return True

    def _apply_pool(self, state: PoolState) -> bool:
        target = self._targets.get(state.id)
        if target is None:
            return False
        target.live.share_replicas(state.ready_replicas, len(self.admitters_of(state.id)))
        return True

    # -- consuming -----------------------------------------------------------------------------

    def handle(self, topic: str, key: bytes | None, value: bytes | None) -> set[str]:
        """One record from either topic; the pools whose limits changed."""
        if topic == self.entitlement_topic:
            if value is None:
                if key is not None:
                    self.entitlements.pop(key.decode(errors="replace"), None)
                    self.records["entitlement", "deleted"] += 1
                return set()
            state = decode(EntitlementState, value, topic, self.bad)
            if state is None:
                return set()
            if key is not None and key.decode(errors="replace") != state.id:
                self.bad.note(topic, "key_mismatch", f"key {key!r} for {state.id}")
                return set()
            self.entitlements[state.id] = state
            return self._noted("entitlement", state.pool, state.seq, self._apply(state))
        if value is None:
            if key is not None:
                self.pools.pop(key.decode(errors="replace"), None)
                self.records["pool", "deleted"] += 1
            return set()
        pool = decode(PoolState, value, topic, self.bad)
        if pool is None:
            return set()
        self.pools[pool.id] = pool
        return self._noted("pool", pool.id, pool.seq, self._apply_pool(pool))

    def _noted(self, kind: str, pool: str, seq: int, applied: bool) -> set[str]:
        """Count a decoded record; a newly applied one resets the pool's staleness (re-applies in
        ``refresh`` do not: they bring nothing new from the pipeline)."""
        self.records[kind, "applied" if applied else "ignored"] += 1
        if not applied:
            return set()
        self.last_applied[pool] = self._clock()
        self.last_seq[pool] = max(seq, self.last_seq.get(pool, seq))
        return {pool}

    def _record(self, topic: str) -> Callable[[bytes | None, bytes | None], None]:
        def handle(key: bytes | None, value: bytes | None) -> None:
            self._changed |= self.handle(topic, key, value)
        return handle

    async def _batch_done(self) -> None:
        changed, self._changed = self._changed, set()
        for pool in changed:
            target = self._targets.get(pool)
            if target is not None:
                target.limits_changed()

    async def _caught_up(self) -> None:
        for pool in self._targets:  # the fallback split depends on every state read
            self.refresh(pool)
        log.info("state follower caught up: %d entitlements, %d pools", len(self.entitlements), len(self.pools))

    def stats(self) -> Sequence[StateStats]:
        return [StateStats(records=dict(self.records), bad=dict(self.bad.counts), caught_up=self.caught_up.is_set(),
                           connected=self.connected, reconnects=self.reconnects, staleness=self.staleness(),
                           last_seq=dict(self.last_seq), fallbacks=dict(self.fallbacks))]

    def staleness(self) -> dict[str, float]:
        """Seconds since a new state was last applied, per pool served (since ``start`` if none yet)."""
        now = self._clock()
        since = self.started_at if self.started_at is not None else now
        return {pool: now - self.last_applied.get(pool, since) for pool in self._targets}
