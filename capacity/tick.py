"""Run the allocator over live admission state: the one-admitter loop (simulator, single edge).

With several admitters the pipeline (streams/) builds the same ``TickInput`` from aggregated
events instead, and each admitter applies the shares it is sent.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from capacity.allocator import AllocatorPolicy, TickInput, TickResult, allocate
from capacity.live import EntitlementLive, PoolLive
from capacity.waterfill import Array
from schemas.specs import TokenPoolSpec


def policy_for(pool: PoolLive, use_debt: bool = True) -> AllocatorPolicy:
    return policy_from_spec(pool.spec.spec, use_debt)


def policy_from_spec(spec: TokenPoolSpec, use_debt: bool = True) -> AllocatorPolicy:
    """The one mapping from a pool's spec to its allocator policy (this loop and the pipeline's stage 2)."""
    return AllocatorPolicy(
        reclaim_buffer=spec.reclaim_buffer,
        debt_half_life=spec.debt.half_life_seconds,
        debt_sharpness=spec.debt.sharpness,
        use_debt=use_debt,
    )


def tick_input(capacity: ArrayLike, backfill_factor: ArrayLike, *, rank: ArrayLike, weight: ArrayLike,
               guarantee: ArrayLike, burst: ArrayLike, demand: ArrayLike, usage: ArrayLike, debt: ArrayLike,
               dt: float, previous: ArrayLike | None = None) -> TickInput:
    """The one builder of ``TickInput`` (this loop's :func:`collect` and the pipeline's stage 2).

    Per-entitlement values come as n rows (three columns for guarantee, burst, demand, usage and
    previous); what spot may backfill is ``capacity * backfill_factor``.
    """
    cap = np.asarray(capacity, dtype=float)
    ranks = np.asarray(rank, dtype=np.int64)
    n = len(ranks)

    def rows(values: ArrayLike) -> Array:
        return np.asarray(values, dtype=float).reshape(n, 3)

    return TickInput(
        capacity=cap,
        rank=ranks,
        weight=np.asarray(weight, dtype=float),
        guarantee=rows(guarantee),
        burst=rows(burst),
        demand=rows(demand),
        usage=rows(usage),
        debt=np.asarray(debt, dtype=float),
        dt=dt,
        backfill=cap * np.asarray(backfill_factor, dtype=float),
        previous=None if previous is None else rows(previous),
    )


def collect(pool: PoolLive, now: float, dt: float) -> tuple[list[EntitlementLive], TickInput]:
    """Read and reset the per-tick accumulators into columnar allocator input."""
    ents = list(pool.entitlements.values())
    n = len(ents)
    demand = np.empty((n, 3))
    usage = np.empty((n, 3))
    span = dt if dt > 0 else 1.0
    for i, e in enumerate(ents):
        e.integrate(now)
        demand[i] = (e.demand_tp / span, *e.held_demand(span))
        usage[i] = (e.used_tp / span, e.kv_seconds / span, e.seq_seconds / span)
        e.reset_accumulators(now)
    inp = tick_input(
        (pool.cap_tp, pool.cap_kv, pool.cap_conc),
        pool.spec.spec.backfill_factor(),
        rank=[e.rank for e in ents],
        weight=[e.weight for e in ents],
        guarantee=[e.spec.spec.guarantee.as_tuple() for e in ents],
        burst=[e.burst for e in ents],
        demand=demand,
        usage=usage,
        debt=[e.debt for e in ents],
        dt=dt,
        previous=[(e.limit_tp, e.limit_kv, e.limit_conc) for e in ents],
    )
    return ents, inp


def apply(ents: list[EntitlementLive], result: TickResult, now: float) -> None:
    """Set the tick's limits and debt; a rejected tick (``result.rejected``) leaves everything as it was."""
    if result.rejected is not None:
        return
    limits = result.limits.tolist()
    debt = result.debt.tolist()
    weight = result.effective_weight.tolist()
    fair = result.fair_share.tolist()
    over_use = result.over_use.tolist()
    for i, e in enumerate(ents):
        tp, kv, conc = limits[i]
        e.set_limits(tp, kv, conc, now)
        e.debt = debt[i]
        e.effective_weight = weight[i]
        e.fair_share = fair[i]
        e.over_use = over_use[i]


def tick(pool: PoolLive, now: float, dt: float, policy: AllocatorPolicy | None = None) -> TickResult:
    """Collect, allocate, apply; the caller counts a result whose ``rejected`` is set."""
    ents, inp = collect(pool, now, dt)
    result = allocate(inp, policy or policy_for(pool))
    apply(ents, result, now)
    return result
