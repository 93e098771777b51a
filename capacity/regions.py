"""Split a global entitlement's guarantee and burst into regional shares (issue 16, item 1).

Why: a tenant buys capacity once ("40,000 tokens/s, guaranteed, anywhere") and is served from
pools in several regions, each with its own Kafka cluster, pipeline and admitters. Each region
enforces only its share as that entitlement's regional ceiling and provisions for the guarantee
share it holds, so the regions together never admit more than the global figure. This module is
the pure rule that turns every region's summary into those shares; it is the regional analogue of
``capacity.split.split_by_demand`` (a floor for each region, the rest by recent demand).

The rules, per dimension (throughput, KV, concurrency) and independently for each:

* **Lost regions.** A region whose summary heartbeat is older than ``lost_after_s`` at ``now`` is
  lost: it gets nothing (it is still listed, with nothing, so a reader can tell "lost" from
  "unknown"), and the split runs over the live regions only, so the guarantee share it held moves
  to them. A heartbeat ahead of ``now`` (clock skew) counts as fresh.
* **Burst.** Each live region gets a floor of ``floor_fraction x burst / live regions``, capped by
  the capacity its pools can offer the entitlement. The rest is water-filled by recent demand,
  each region capped by its capacity; what a capped region cannot take goes to the others, and
  what is left once every demanding region is full goes evenly to regions with spare capacity.
  With no demand anywhere the rest is split evenly. The shares sum to ``min(burst, capacity of
  the live regions)``.
* **Guarantee.** Split the same way, but capped by each region's burst share (itself at most its
  capacity), so a region's guarantee share is always provisionable and never above its burst
  share. When the live regions cannot hold the whole guarantee, the part they cannot hold is
  reported as ``shortfall`` instead of being over-assigned.
* **Invariants.** Shares are finite and >= 0; per dimension the burst shares sum (exactly, as
  ``math.fsum``) to at most the global burst and the guarantee shares to at most the global
  guarantee. The result depends only on the inputs, not on the order of the summaries: regions
  are processed in name order.
* **Inputs.** Every number must be finite and >= 0 (``now`` and heartbeats finite); anything
  else raises ``ValueError`` naming the field, so no non-finite number enters the model. A
  guarantee above the burst is rejected too, as ``EntitlementSpec`` rejects it.

``hold_while_cut_off`` is the partition rule: a region that cannot see the others (its view of
their summaries is stale) keeps at most the share it last enforced, so the global limit cannot be
overshot during a partition; each share it enforces is the smaller of its last and its new one.

Left to the services (not here): publishing each region's summary (demand, usage, capacity,
heartbeat) per global entitlement on its own Kafka cluster; carrying summaries across regions with
MirrorMaker 2 (and counting replayed ones once); deciding whether every region computes the split
(this function is deterministic, so they agree given the same summaries) or one elected region
does; deciding which regions are cut off and when a partition has outlasted ``lost_after_s`` (the
others then treat the cut-off region as lost and take its guarantee, so the cut-off region must
stop enforcing its held share by then, or the timeout must exceed any partition it rides out);
and enforcing the shares in admitters and provisioning the guarantee shares in the scalers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from schemas.specs import Triple

NOTHING: Triple = (0.0, 0.0, 0.0)
_DIMS = ("throughput", "kv", "concurrency")


@dataclass(frozen=True)
class RegionSummary:
    """One region's summary of one global entitlement, as its pipeline publishes it.

    ``demand`` is the entitlement's recent demand in the region, ``capacity`` what the region's
    pools can offer the entitlement, both as (throughput, kv, concurrency); ``heartbeat`` is the
    summary's timestamp in seconds, on the same clock as ``now`` in ``split_global``.
    """

    region: str
    demand: Triple
    capacity: Triple
    heartbeat: float


@dataclass(frozen=True)
class RegionalSplit:
    """The regional shares of one global entitlement.

    ``burst`` and ``guarantee`` map every region in the input (lost ones with ``NOTHING``) to its
    share; ``lost`` names the regions whose heartbeat was too old, in name order; ``shortfall`` is
    the part of the global guarantee no live region could hold, per dimension (0 when all of it is
    placed, up to a few ulps of rounding). ``global_guarantee`` and ``global_burst`` are the figures that were split.
    """

    burst: Mapping[str, Triple]
    guarantee: Mapping[str, Triple]
    lost: tuple[str, ...]
    shortfall: Triple
    global_guarantee: Triple
    global_burst: Triple
    live: tuple[str, ...] = field(default=())


def _check_amount(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def _check_triple(name: str, t: Triple) -> Triple:
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 dimensions (throughput, kv, concurrency)")
    return (_check_amount(f"{name}.{_DIMS[0]}", t[0]), _check_amount(f"{name}.{_DIMS[1]}", t[1]),
            _check_amount(f"{name}.{_DIMS[2]}", t[2]))


def _check_time(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _fill(amount: float, room: list[float], weights: list[float]) -> list[float]:
    """Water-fill ``amount`` over slots with ``room`` each, in proportion to ``weights``.

    Each slot gets ``min(room_i, level * weight_i)`` for one common level; slots with no weight
    or no room get nothing. Weights are scaled by their largest so no sum overflows.
    """
    n = len(room)
    out = [0.0] * n
    top = max(weights, default=0.0)
    if amount <= 0 or top <= 0:
        return out
    w = [x / top for x in weights]
    active = [i for i in range(n) if room[i] > 0 and w[i] > 0]
    remaining = amount
    while remaining > 0 and active:
        level = remaining / math.fsum(w[i] for i in active)
        full = [i for i in active if room[i] - out[i] <= level * w[i]]
        if not full:
            for i in active:
                out[i] += level * w[i]
            break
        for i in full:
            remaining -= room[i] - out[i]
            out[i] = room[i]
        active = [i for i in active if i not in full]
    return out


def _clamp_total(shares: list[float], limit: float) -> list[float]:
    """Scale ``shares`` down, if rounding pushed their exact sum above ``limit``."""
    total = math.fsum(shares)
    if total <= limit:
        return shares
    factor = limit / total if total > 0 else 0.0
    out = [s * factor for s in shares]
    while math.fsum(out) > limit:
        out = [math.nextafter(s, 0.0) for s in out]
    return out


def _split_one(limit: float, caps: list[float], demand: list[float], floor_fraction: float) -> list[float]:
    """One dimension: a floor each (capped), the rest by demand (capped), leftover to spare room."""
    n = len(caps)
    if n == 0 or limit <= 0:
        return [0.0] * n
    floor = limit * floor_fraction / n
    floors = [min(c, floor) for c in caps]
    room = [c - f for c, f in zip(caps, floors, strict=True)]
    rest = max(0.0, limit - math.fsum(floors))
    weights = demand if any(d > 0 for d in demand) else [1.0] * n
    by_demand = _fill(rest, room, weights)
    left = max(0.0, rest - math.fsum(by_demand))
    spare = [r - b for r, b in zip(room, by_demand, strict=True)]
    extra = _fill(left, spare, [1.0] * n)
    shares = [min(c, f + b + e) for c, f, b, e in zip(caps, floors, by_demand, extra, strict=True)]
    return _clamp_total(shares, limit)


def _split_triple(limit: Triple, caps: Sequence[Triple], demand: Sequence[Triple],
                  floor_fraction: float) -> list[Triple]:
    dims = [_split_one(limit[d], [c[d] for c in caps], [x[d] for x in demand], floor_fraction)
            for d in range(3)]
    return [(dims[0][i], dims[1][i], dims[2][i]) for i in range(len(caps))]


def split_global(guarantee: Triple, burst: Triple, summaries: Iterable[RegionSummary], now: float, *,
                 lost_after_s: float, floor_fraction: float = 0.1) -> RegionalSplit:
    """Split one global entitlement's ``guarantee`` and ``burst`` over the regions in ``summaries``.

    Regions whose ``heartbeat`` is more than ``lost_after_s`` before ``now`` are lost and get
    nothing; the live ones share the burst (a floor of ``floor_fraction`` split evenly, the rest by
    demand, all capped by capacity, the leftover water-filled to spare capacity) and the guarantee
    (the same rule, capped by each region's burst share); what the live regions cannot hold of the
    guarantee is returned as ``shortfall``. See the module docstring for the invariants.
    Raises ``ValueError`` on a non-finite or negative input, a guarantee above the burst, or a
    region listed twice.
    """
    g = _check_triple("guarantee", guarantee)
    b = _check_triple("burst", burst)
    for d in range(3):
        if g[d] > b[d]:
            raise ValueError(f"guarantee.{_DIMS[d]} ({g[d]:g}) exceeds burst.{_DIMS[d]} ({b[d]:g})")
    t = _check_time("now", now)
    lost_after = _check_amount("lost_after_s", lost_after_s)
    ff = float(floor_fraction)
    if not 0 <= ff <= 1:  # also rejects NaN
        raise ValueError(f"floor_fraction must lie in [0, 1], got {floor_fraction!r}")

    by_name: dict[str, RegionSummary] = {}
    for s in summaries:
        if s.region in by_name:
            raise ValueError(f"region {s.region!r} is listed twice")
        _check_triple(f"{s.region}.demand", s.demand)
        _check_triple(f"{s.region}.capacity", s.capacity)
        _check_time(f"{s.region}.heartbeat", s.heartbeat)
        by_name[s.region] = s
    names = sorted(by_name)
    live = [r for r in names if t - float(by_name[r].heartbeat) <= lost_after]
    lost = tuple(r for r in names if t - float(by_name[r].heartbeat) > lost_after)

    caps = [_check_triple("capacity", by_name[r].capacity) for r in live]
    demand = [_check_triple("demand", by_name[r].demand) for r in live]
    burst_shares = _split_triple(b, caps, demand, ff)
    guarantee_shares = _split_triple(g, burst_shares, demand, ff)
    # The guarantee is capped by the burst shares, so guarantee <= burst per region by construction;
    # min() only guards against the last-bit rounding of the clamp.
    guarantee_shares = [(min(x[0], y[0]), min(x[1], y[1]), min(x[2], y[2]))
                        for x, y in zip(guarantee_shares, burst_shares, strict=True)]

    burst_map = dict.fromkeys(names, NOTHING)
    guarantee_map = dict.fromkeys(names, NOTHING)
    for r, bs, gs in zip(live, burst_shares, guarantee_shares, strict=True):
        burst_map[r] = bs
        guarantee_map[r] = gs
    return RegionalSplit(burst=burst_map, guarantee=guarantee_map, lost=lost,
                         shortfall=_shortfall(g, guarantee_map), global_guarantee=g, global_burst=b,
                         live=tuple(live))


def _shortfall(guarantee: Triple, shares: Mapping[str, Triple]) -> Triple:
    ordered = [shares[r] for r in sorted(shares)]
    placed = [math.fsum(s[d] for s in ordered) for d in range(3)]
    return (max(0.0, guarantee[0] - placed[0]), max(0.0, guarantee[1] - placed[1]),
            max(0.0, guarantee[2] - placed[2]))


def _lower(a: Triple, b: Triple) -> Triple:
    return (min(a[0], b[0]), min(a[1], b[1]), min(a[2], b[2]))


def hold_while_cut_off(previous: RegionalSplit, computed: RegionalSplit,
                       cut_off_regions: Iterable[str]) -> RegionalSplit:
    """``computed``, except that each region in ``cut_off_regions`` enforces at most its last share.

    A region that cannot see the others (its view of their summaries is stale, its replication
    link stopped) must not grow: per dimension, its burst and guarantee shares are the smaller of
    its ``previous`` and its ``computed`` share (a region absent from ``previous`` gets nothing).
    Every share is then at most its ``computed`` one, so the sums stay within the global figures,
    and the guarantee share stays within the burst share. The shortfall is recomputed from what
    is held. Regions not cut off take their ``computed`` share unchanged.
    """
    held = set(cut_off_regions)
    burst = dict(computed.burst)
    guarantee = dict(computed.guarantee)
    for r in sorted(held & set(burst)):
        burst[r] = _lower(burst[r], previous.burst.get(r, NOTHING))
        guarantee[r] = _lower(_lower(guarantee[r], previous.guarantee.get(r, NOTHING)), burst[r])
    return RegionalSplit(burst=burst, guarantee=guarantee, lost=computed.lost,
                         shortfall=_shortfall(computed.global_guarantee, guarantee),
                         global_guarantee=computed.global_guarantee, global_burst=computed.global_burst,
                         live=computed.live)
