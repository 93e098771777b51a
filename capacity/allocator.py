"""The allocator tick: per pool, per dimension, who may use how much until the next tick.

Three levels of weighted water-filling, capped by demand (which includes refused and queued work):
  1. guaranteed entitlements get ``min(demand, guarantee)``;
  2. guaranteed burst and elastic share the rest by effective weight, up to their burst ceiling;
  3. spot shares what is left, minus a reclaim buffer.
On the held dimensions (KV, concurrency) the guarantees stay reserved against elastic: a returning
guaranteed tenant must find its reservation free or held by preemptible spot. On throughput, a
rate, unused guarantees are lent to elastic too. Capacity nobody demands is then handed out as
headroom (same order, up to burst), so a tenant can grow before the next tick notices it.

Debt (elastic fairness over time) is the decayed integral of dominant-share usage minus the
entitlement's configured fair share; only over-use is remembered (debt >= 0), and it lowers the
effective weight exponentially.
"""

from __future__ import annotations

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
    debt_scale: float = 30.0
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
    debt: Array  # (n,)
    dt: float


@dataclass
class TickResult:
    allocation: Array  # (n, 3) demand-capped fair allocation
    limits: Array  # (n, 3) allocation plus headroom, never above burst
    debt: Array  # (n,)
    effective_weight: Array  # (n,)
    fair_share: Array  # (n,) configured dominant share of elastic capacity
    dominant_share: Array  # (n,) dominant share of usage over the tick



def allocate(inp: TickInput, policy: AllocatorPolicy) -> TickResult:
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
    level2_room = np.zeros(3)
    for d in range(3):
        c = float(cap[d])
        level1 = np.minimum(wanted[:, d], g[:, d])
        if level1.sum() > c:  # fewer replicas than the guarantees need (scale-up pending)
            level1 = waterfill(c, level1, np.maximum(g[:, d], 1e-12))
        reserved = g[:, d].sum() if d in HELD_DIMS else level1.sum()
        room2 = max(0.0, c - max(reserved, level1.sum()))
        level2_room[d] = room2
        mid = guaranteed | elastic
        caps2 = np.where(mid, wanted[:, d] - level1, 0.0)
        level2 = waterfill(room2, caps2, mid_weight)
        room3 = max(0.0, c * (1.0 - policy.reclaim_buffer) - level1.sum() - level2.sum())
        level3 = waterfill(room3, np.where(spot, wanted[:, d], 0.0), inp.weight)
        alloc = level1 + level2 + level3
        allocation[:, d] = alloc

        # Headroom: what nobody demanded, first to guaranteed/elastic (within level-2 room), then spot.
        free = max(0.0, c - alloc.sum())
        head_caps = np.where(mid, inp.burst[:, d] - alloc, 0.0)
        head2 = waterfill(min(free, max(0.0, room2 - level2.sum())), head_caps, mid_weight)
        free3 = max(0.0, c * (1.0 - policy.reclaim_buffer) - alloc.sum() - head2.sum())
        head3 = waterfill(free3, np.where(spot, inp.burst[:, d] - alloc, 0.0), inp.weight)
        limits[:, d] = np.minimum(alloc + head2 + head3, inp.burst[:, d])

    fair, dominant, debt = _update_debt(inp, elastic, level2_room, cap, policy)
    new_weight = _effective_weight_from(debt, inp.weight, fair_weight_share(inp.weight, elastic), policy)
    eff = np.where(elastic, new_weight, inp.weight)
    return TickResult(allocation, limits, debt, eff, fair, dominant)


def fair_weight_share(weight: Array, elastic: Mask) -> Array:
    total = float(weight[elastic].sum())
    return np.where(elastic, weight / total, 0.0) if total > 0 else np.zeros_like(weight)


def _effective_weight(inp: TickInput, elastic: Mask, policy: AllocatorPolicy) -> Array:
    if not policy.use_debt:
        return inp.weight.copy()
    return _effective_weight_from(inp.debt, inp.weight, fair_weight_share(inp.weight, elastic), policy)


def _effective_weight_from(debt: Array, weight: Array, share: Array, policy: AllocatorPolicy) -> Array:
    """Weight halves for every ``debt_scale`` seconds of one's own fair share owed.

    Normalising by the share keeps weights in proportion when every active tenant over-uses by
    the same factor (for example while some tenants are idle).
    """
    if not policy.use_debt:
        return weight.copy()
    safe_share = np.where(share > 0, share, 1.0)
    factor = np.exp2(-debt / (safe_share * policy.debt_scale))
    return weight * np.maximum(factor, MIN_WEIGHT_FACTOR)


def _update_debt(
    inp: TickInput, elastic: Mask, level2_room: Array, cap: Array, policy: AllocatorPolicy
) -> tuple[Array, Array, Array]:
    safe_cap = np.where(cap > 0, cap, 1.0)
    shares = inp.usage / safe_cap
    dominant_dim = np.argmax(shares, axis=1)
    dominant = shares[np.arange(shares.shape[0]), dominant_dim]
    fair = fair_weight_share(inp.weight, elastic) * (level2_room / safe_cap)[dominant_dim]
    if not policy.use_debt:
        return fair, dominant, np.zeros_like(inp.debt)
    decay = 0.5 ** (inp.dt / policy.debt_half_life)
    debt = np.maximum(0.0, inp.debt * decay + (dominant - fair) * inp.dt)
    return fair, dominant, np.where(elastic, debt, 0.0)
