"""The allocator tick: per pool, per dimension, who may use how much until the next tick.

Three levels of weighted water-filling, capped by demand (which includes refused and queued work):
  1. guaranteed entitlements get ``min(demand, guarantee)``;
  2. guaranteed burst and elastic share the rest by effective weight, up to their burst ceiling;
  3. spot shares what is left, minus a reclaim buffer. On throughput "what is left" is counted
     against the replicas' rated capacity (``backfill``), not the sold ``targetUtilisation`` of it.
On the held dimensions (KV, concurrency) the guarantees stay reserved against elastic: a returning
guaranteed tenant must find its reservation free or held by preemptible spot. On throughput, a
rate, unused guarantees are lent to elastic too. Capacity nobody demands is then handed out as
headroom (same order, up to burst), so a tenant can grow before the next tick notices it.

Debt (elastic fairness over time): each elastic entitlement's usage is remembered as a decayed
integral of its dominant share (max over dimensions of usage / capacity), with a configurable
half-life. Its debt is that memory minus its configured share (weight / sum of elastic weights) of
everything the pool's elastic tenants are remembered to have used. The effective weight falls
exponentially with the ratio of remembered to configured share, as in Slurm's fair-share factor,
so a tenant that used idle capacity yields first when capacity is scarce and shares converge to
weights; tenants that were idle start with the full factor (no banked credit beyond it).

A tick never publishes a non-finite or negative limit. One NaN (a weight of infinity once did it)
spreads through water-filling to every limit of the pool, so a tick whose inputs are not all finite,
or whose arithmetic overflowed, keeps the limits in force (``TickInput.previous``) and says why in
``TickResult.rejected``; the services count that. Specs bound every number (``schemas.specs``) so
that this stays a guard, not a path taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from capacity.waterfill import Array, waterfill

Mask = NDArray[np.bool_]
HELD_DIMS = (1, 2)  # KV and concurrency are held for a request's life; throughput is a rate.
MIN_WEIGHT_FACTOR = 1e-3


@dataclass(frozen=True)
class AllocatorPolicy:
    reclaim_buffer: float = 0.05
    debt_half_life: float = 600.0
    debt_sharpness: float = 1.0
    use_debt: bool = True


@dataclass
class TickInput:
    """Columnar inputs for one pool: n entitlements, 3 dimensions (throughput, kv, concurrency)."""

    capacity: Array  # (3,)
    rank: NDArray[np.int64]  # (n,) 0 guaranteed, 1 elastic, 2 spot
    weight: Array  # (n,)
    guarantee: Array  # (n, 3)
    burst: Array  # (n, 3)
    demand: Array  # (n, 3) rate for throughput, peak held for kv/concurrency
    usage: Array  # (n, 3) mean over the tick
    debt: Array  # (n,) usage memory: decayed dominant-share-seconds, carried from the previous tick
    dt: float
    # What spot may backfill, per dimension (default: ``capacity``). On throughput a pool passes its
    # replicas' rated capacity: ``targetUtilisation`` keeps headroom for the latency of what is sold,
    # and that headroom is exactly the idle capacity spot, throttled and preempted first, should fill.
    backfill: Array | None = None
    # The limits in force (n, 3), kept if this tick cannot compute usable ones. None: before the first
    # tick, when an entitlement has its guarantee (or nothing, below the guaranteed tier).
    previous: Array | None = None


@dataclass
class TickResult:
    allocation: Array  # (n, 3) demand-capped fair allocation
    limits: Array  # (n, 3) allocation plus headroom, never above burst
    debt: Array  # (n,) usage memory to carry into the next tick
    effective_weight: Array  # (n,)
    fair_share: Array  # (n,) configured share of elastic capacity: weight / sum of elastic weights
    dominant_share: Array  # (n,) dominant share of usage over the tick
    over_use: Array  # (n,) debt: remembered usage minus the configured share of all remembered usage
    # Why this tick kept the previous limits: REJECTED_INPUT or REJECTED_OUTPUT; None when it computed them.
    rejected: str | None = None


REJECTED_INPUT = "non_finite_input"
REJECTED_OUTPUT = "non_finite_output"


def allocate(inp: TickInput, policy: AllocatorPolicy) -> TickResult:
    """One tick; the previous limits (``rejected`` set) if its inputs or results are not finite."""
    if not _finite_input(inp, policy):
        return _kept(inp, REJECTED_INPUT)
    with np.errstate(all="ignore"):  # an overflow is caught below and counted, not warned about per tick
        result = _allocate(inp, policy)
        result.limits = np.maximum(result.limits, 0.0)  # only a negative burst ceiling could go below
    if not _finite_result(result):
        return _kept(inp, REJECTED_OUTPUT)
    return result


def _finite_input(inp: TickInput, policy: AllocatorPolicy) -> bool:
    arrays = [inp.capacity, inp.weight, inp.guarantee, inp.burst, inp.demand, inp.usage, inp.debt]
    if inp.backfill is not None:
        arrays.append(inp.backfill)
    scalars = (inp.dt, policy.reclaim_buffer, policy.debt_half_life, policy.debt_sharpness)
    return all(math.isfinite(x) for x in scalars) and all(bool(np.isfinite(a).all()) for a in arrays)


def _finite_result(res: TickResult) -> bool:
    arrays = (res.allocation, res.limits, res.debt, res.effective_weight, res.fair_share, res.dominant_share,
              res.over_use)
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _usable(values: Array) -> Array:
    """Finite and non-negative, else 0."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values) & (values >= 0), values, 0.0)


def _kept(inp: TickInput, reason: str) -> TickResult:
    """The limits in force, and debt carried as it was: a rejected tick changes nothing."""
    n = inp.weight.shape[0]
    previous = inp.previous
    if previous is None or previous.shape != (n, 3):
        previous = np.where((inp.rank == 0)[:, None], inp.guarantee, 0.0).reshape(n, 3)
    limits = _usable(np.asarray(previous, dtype=float))
    zeros = np.zeros(n)
    return TickResult(limits.copy(), limits, _usable(np.asarray(inp.debt, dtype=float)),
                      _usable(np.asarray(inp.weight, dtype=float)), zeros, zeros.copy(), zeros.copy(), reason)


def _allocate(inp: TickInput, policy: AllocatorPolicy) -> TickResult:
    n = inp.weight.shape[0]
    cap = np.asarray(inp.capacity, dtype=float)
    guaranteed = inp.rank == 0
    elastic = inp.rank == 1
    spot = inp.rank == 2
    g = np.where(guaranteed[:, None], inp.guarantee, 0.0)
    wanted = np.minimum(np.maximum(inp.demand, 0.0), inp.burst)

    eff_weight = _effective_weight(inp, elastic, policy)
    mid_weight = np.where(elastic, eff_weight, inp.weight)
    allocation = np.zeros((n, 3))
    limits = np.zeros((n, 3))
    for d in range(3):
        c = float(cap[d])
        level1 = np.minimum(wanted[:, d], g[:, d])
        if level1.sum() > c:  # fewer replicas than the guarantees need (scale-up pending)
            level1 = waterfill(c, level1, np.maximum(g[:, d], 1e-12))
        reserved = g[:, d].sum() if d in HELD_DIMS else level1.sum()
        room2 = max(0.0, c - max(reserved, level1.sum()))
        mid = guaranteed | elastic
        caps2 = np.where(mid, wanted[:, d] - level1, 0.0)
        level2 = waterfill(room2, caps2, mid_weight)
        cb = c if inp.backfill is None else max(c, float(inp.backfill[d]))
        room3 = max(0.0, cb * (1.0 - policy.reclaim_buffer) - level1.sum() - level2.sum())
        level3 = waterfill(room3, np.where(spot, wanted[:, d], 0.0), inp.weight)
        alloc = level1 + level2 + level3
        allocation[:, d] = alloc

        # Headroom: what nobody demanded, first to guaranteed/elastic (within level-2 room), then spot.
        free = max(0.0, c - alloc.sum())
        head_caps = np.where(mid, inp.burst[:, d] - alloc, 0.0)
        head2 = waterfill(min(free, max(0.0, room2 - level2.sum())), head_caps, mid_weight)
        free3 = max(0.0, cb * (1.0 - policy.reclaim_buffer) - alloc.sum() - head2.sum())
        head3 = waterfill(free3, np.where(spot, inp.burst[:, d] - alloc, 0.0), inp.weight)
        limits[:, d] = np.minimum(alloc + head2 + head3, inp.burst[:, d])

    fair, dominant, memory, over_use = _update_debt(inp, elastic, cap, policy)
    after = TickInput(inp.capacity, inp.rank, inp.weight, inp.guarantee, inp.burst, inp.demand, inp.usage,
                      memory, inp.dt, inp.backfill, inp.previous)
    return TickResult(allocation, limits, memory, _effective_weight(after, elastic, policy), fair, dominant,
                      over_use)


def fair_weight_share(weight: Array, elastic: Mask) -> Array:
    total = float(weight[elastic].sum())
    return np.where(elastic, weight / total, 0.0) if total > 0 else np.zeros_like(weight)


def _effective_weight(inp: TickInput, elastic: Mask, policy: AllocatorPolicy) -> Array:
    """Slurm-style fair-share factor: ``weight * 2^(-sharpness * U / S)``.

    ``U`` is the entitlement's part of all elastic usage remembered in the pool (decayed), ``S``
    its configured share. Because ``U`` is a ratio, a tenant paying back does not push debt onto
    the others while they use what it yields; ``U`` relaxes to ``S`` from above, without overshoot.
    """
    if not policy.use_debt:
        return inp.weight.copy()
    share = fair_weight_share(inp.weight, elastic)
    memory = np.where(elastic, np.maximum(inp.debt, 0.0), 0.0)
    total = max(float(memory.sum()), inp.dt)
    ratio = np.where(share > 0, (memory / total) / np.where(share > 0, share, 1.0), 0.0)
    factor = np.exp2(-policy.debt_sharpness * ratio)
    return np.where(elastic, inp.weight * np.maximum(factor, MIN_WEIGHT_FACTOR), inp.weight)


def _update_debt(
    inp: TickInput, elastic: Mask, cap: Array, policy: AllocatorPolicy
) -> tuple[Array, Array, Array, Array]:
    """New usage memory (decayed dominant-share-seconds) and the over-use it implies."""
    safe_cap = np.where(cap > 0, cap, 1.0)
    shares = inp.usage / safe_cap
    dominant = shares.max(axis=1) if shares.size else np.zeros(0)
    fair = fair_weight_share(inp.weight, elastic)
    if not policy.use_debt:
        zeros = np.zeros_like(inp.debt)
        return fair, dominant, zeros, zeros
    decay = 0.5 ** (inp.dt / policy.debt_half_life)
    memory = np.where(elastic, np.maximum(inp.debt, 0.0) * decay + dominant * inp.dt, 0.0)
    over_use = np.where(elastic, memory - fair * memory.sum(), 0.0)
    return fair, dominant, memory, over_use
