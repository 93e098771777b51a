"""The per-request admission decision: O(1), pure, the clock passed in.

Order of checks: a guaranteed request within its guarantee skips its own limits (they can never
be below the guarantee) and may preempt the newest spot requests; everything else must fit its
entitlement's limits and then the pool's capacity, spot under a reclaim buffer. What does not fit
is queued when the wait looks short, else refused with the dimension that ran out.
"""

from __future__ import annotations

import math
from enum import IntEnum

from capacity.cost import RequestCost
from capacity.live import GUARANTEED, SPOT, EntitlementLive, PoolLive, Reservation
from schemas.specs import Dimension

SLO_QUEUE_FRACTION = 0.5
_INF = math.inf


_HELD = (Dimension.KV, Dimension.CONCURRENCY)


class Verdict(IntEnum):
    ADMIT = 0
    PREEMPT = 1
    QUEUE = 2
    REFUSE = 3


class Decision:
    __slots__ = ("dimension", "priority", "reservation", "retry_after", "verdict", "victims")

    def __init__(
        self,
        verdict: Verdict,
        reservation: Reservation | None = None,
        victims: tuple[Reservation, ...] = (),
        dimension: Dimension | None = None,
        retry_after: float = 0.0,
        priority: tuple[int, float] = (0, math.inf),
    ) -> None:
        self.verdict = verdict
        self.reservation = reservation
        self.victims = victims
        self.dimension = dimension
        self.retry_after = retry_after
        self.priority = priority

    @property
    def admitted(self) -> bool:
        return self.verdict <= Verdict.PREEMPT

    def __repr__(self) -> str:
        extra = f", victims={[v.request_id for v in self.victims]}" if self.victims else ""
        dim = f", dimension={self.dimension.value}" if self.dimension else ""
        return f"Decision({self.verdict.name}{dim}, retry_after={self.retry_after:.3g}{extra})"


def decide(
    pool: PoolLive,
    ent: EntitlementLive,
    request_id: str,
    cost: RequestCost,
    now: float,
    deadline: float = math.inf,
    retry: bool = False,
) -> Decision:
    """Decide one request; ADMIT and PREEMPT already hold the reservation (victims are released).

    ``retry`` marks a queued request trying again, so its demand is not counted twice.
    ``deadline`` (arrival + SLO TTFT) orders the queue within a tier.
    """
    if not (0.0 <= cost.throughput < _INF and 0.0 <= cost.kv < _INF):
        # Never fits, and must not reach the accounting: a full bucket would take an infinite cost
        # (``can_take`` caps the need at the depth) and stay at -inf for good, and NaN demand would
        # make the next allocator tick reject the whole pool's inputs.
        dim = Dimension.THROUGHPUT if not 0.0 <= cost.throughput < _INF else Dimension.KV
        return Decision(Verdict.REFUSE, dimension=dim, retry_after=_retry_after(pool, math.inf))
    if retry:
        return _decide(pool, ent, request_id, cost, now, deadline)
    ent.demand_tp += cost.throughput
    decision = _decide(pool, ent, request_id, cost, now, deadline)
    if decision.reservation is None and decision.dimension in _HELD:
        # Turned away or queued for want of KV or a sequence: what it would hold is demand on them.
        # Not when throughput stopped it: it could not use them, and they would be stranded.
        ent.unmet_kv += cost.kv
        ent.unmet_seqs += 1.0
    return decision


def _decide(pool: PoolLive, ent: EntitlementLive, request_id: str, cost: RequestCost, now: float,
            deadline: float) -> Decision:
    bucket = ent.bucket
    bucket.refill(now)
    kv_after = ent.kv_in_flight + cost.kv
    seqs_after = ent.seqs_in_flight + 1.0
    within_guarantee = False
    g_bucket = ent.g_bucket  # set exactly when the tier is guaranteed
    if ent.rank == GUARANTEED and g_bucket is not None:
        g_bucket.refill(now)
        g = ent.guarantee
        within_guarantee = kv_after <= g[1] and seqs_after <= g[2] and g_bucket.can_take(cost.throughput)
    if not within_guarantee:
        if not bucket.can_take(cost.throughput):
            return _hold(pool, ent, Dimension.THROUGHPUT, bucket.wait_for(cost.throughput), now, deadline)
        if kv_after > ent.limit_kv:
            return _hold(pool, ent, Dimension.KV, _held_wait(pool, cost.kv <= ent.limit_kv), now, deadline)
        if seqs_after > ent.limit_conc:
            return _hold(pool, ent, Dimension.CONCURRENCY, _held_wait(pool, ent.limit_conc >= 1), now, deadline)
    if ent.rank == SPOT:
        kv_ceiling, seq_ceiling = pool.spot_kv, pool.spot_conc
    elif within_guarantee:
        kv_ceiling, seq_ceiling = pool.cap_kv, pool.cap_conc
    else:  # elastic and guaranteed burst may not take guarantees their owners are not using
        kv_ceiling, seq_ceiling = pool.cap_kv - pool.unused_g_kv, pool.cap_conc - pool.unused_g_conc
    kv_over = pool.kv_in_flight + cost.kv - kv_ceiling
    seq_over = pool.seqs_in_flight + 1.0 - seq_ceiling
    if kv_over <= 0 and seq_over <= 0:
        return Decision(Verdict.ADMIT, pool.hold(request_id, ent, cost, now))
    if within_guarantee:
        victims = _plan_preemption(pool, kv_over, seq_over)
        if victims is not None:
            for victim in victims:
                pool.release(victim.request_id, now)
            return Decision(Verdict.PREEMPT, pool.hold(request_id, ent, cost, now), victims)
        # Spot cannot free enough (others hold it): wait at the head of the queue, never refuse.
        return Decision(Verdict.QUEUE, dimension=Dimension.KV if kv_over > 0 else Dimension.CONCURRENCY,
                        retry_after=pool.tick_seconds, priority=(GUARANTEED, deadline))
    dim = Dimension.KV if kv_over > 0 else Dimension.CONCURRENCY
    fits_at_all = cost.kv <= kv_ceiling and seq_ceiling >= 1
    return _hold(pool, ent, dim, _held_wait(pool, fits_at_all), now, deadline)


def _plan_preemption(pool: PoolLive, kv_over: float, seq_over: float) -> tuple[Reservation, ...] | None:
    """The newest spot requests whose release makes room, or None when all spot would not suffice."""
    if pool.spot_kv_in_flight < kv_over or pool.spot_seqs < seq_over:
        return None
    victims: list[Reservation] = []
    for res in pool.newest_spot():
        victims.append(res)
        kv_over -= res.kv
        seq_over -= 1.0
        if kv_over <= 0 and seq_over <= 0:
            return tuple(victims)
    return None


def _held_wait(pool: PoolLive, fits_at_all: bool) -> float:
    """Held dimensions free up whenever any request ends, so queue it and let the bound decide."""
    return 0.0 if fits_at_all else math.inf


def _hold(pool: PoolLive, ent: EntitlementLive, dim: Dimension, wait: float, now: float,
          deadline: float) -> Decision:
    max_wait = queue_bound(pool, ent)
    if max_wait > 0 and wait <= max_wait:
        return Decision(Verdict.QUEUE, dimension=dim, retry_after=wait, priority=(ent.rank, deadline))
    return Decision(Verdict.REFUSE, dimension=dim, retry_after=_retry_after(pool, wait))


def _retry_after(pool: PoolLive, wait: float) -> float:
    """The estimated wait; a held dimension gives none, and limits change at the next tick anyway."""
    if not math.isfinite(wait):
        return max(pool.tick_seconds, 1.0)
    return wait if wait > 0 else pool.tick_seconds


def queue_bound(pool: PoolLive, ent: EntitlementLive) -> float:
    """How long a request may wait in the queue: the pool's bound, and at most half its SLO's TTFT.

    The other half is left for the replica to prefill it: a request admitted after its deadline has
    failed anyway, and an early 429 lets the client retry or go elsewhere.
    """
    bound = pool.spot_max_wait if ent.rank == SPOT else pool.queue_max_wait
    if ent.slo_ttft is not None and ent.slo_ttft * SLO_QUEUE_FRACTION < bound:
        return ent.slo_ttft * SLO_QUEUE_FRACTION
    return bound
