"""Stage 2: one pool's allocator tick over the latest per-entitlement summaries (pure, clock injected).

Stage 2 owns a pool because the internal usage topic is keyed by pool: every summary of a pool's
entitlements reaches the one worker that holds that partition. Each tick it runs the capacity
model's allocator for the whole pool (water-filling with debt carried from the previous tick), splits
every limit across admitters by their recent demand (``capacity.split.split_by_demand``), and emits
one ``EntitlementState`` per entitlement and one ``PoolState``. The split lists every admitter seen
in the pool within ``admitter_horizon_s``, and a raise of a share is published one tick late
(``capacity.split.hold_raises``), so the shares that admitters enforce never sum above the limit.

Inputs per entitlement come from the *trailing window* of its latest summary (the last
``tumbling_s`` seconds up to the summary's time, open bucket included): demand (which includes
refused and queued work) and usage rates. Each tick applies the current rate for ``dt``, and an
event weighs ``1/W`` in the trailing rate for ``W`` seconds, so debt, which integrates
``usage * dt``, sums to the real usage (``streams.windows`` says how exactly). Summaries older
than ``stale_after_s`` count as no traffic (this only guards against a stage-1 worker that
vanished: a live one re-sends every record each summary interval).

``dt`` is the wall time since the pool's previous tick, persisted with the debt, clamped to
``max_dt_s`` so a long outage does not integrate one window's rate over minutes.

A tick the capacity model rejects (inputs or results not finite: ``TickResult.rejected``) publishes
nothing and persists nothing: admitters keep the last limits they applied, and the next tick
continues from the last good debt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson

from capacity.allocator import TickResult, allocate
from capacity.split import hold_raises, split_by_demand
from capacity.tick import policy_from_spec, tick_input
from capacity.waterfill import Array
from schemas.records import Amounts, EntitlementState, PoolState
from schemas.specs import DIMENSIONS, TIER_RANK, Entitlement, Tier, TokenPool, Triple
from streams.records import UsageSummary


@dataclass
class PoolTick:
    """What one pool carries from tick to tick (persisted in stage 2's table).

    ``admitters``: when each admitter was last seen in the pool (any entitlement's demand), so a
    record lists every admitter seen within the horizon, idle ones with the split's floor, and an
    admitter whose tenant pauses keeps a share to admit the next request with. ``targets``: each
    entitlement's split of the last tick per admitter, which ``capacity.split.hold_raises``
    needs to hold a raise back one tick.
    """

    seq: int = 0
    ts: float = 0.0
    debt: dict[str, float] = field(default_factory=dict)
    admitters: dict[str, float] = field(default_factory=dict)
    targets: dict[str, dict[str, Triple]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({"seq": self.seq, "ts": self.ts, "debt": self.debt, "admitters": self.admitters,
                             "targets": self.targets})

    @classmethod
    def from_json(cls, raw: bytes | str) -> PoolTick:
        d = orjson.loads(raw)
        return cls(seq=int(d["seq"]), ts=float(d["ts"]), debt={k: float(v) for k, v in d.get("debt", {}).items()},
                   admitters={k: float(v) for k, v in d.get("admitters", {}).items()},
                   targets={e: {a: _triple(v) for a, v in by.items()} for e, by in d.get("targets", {}).items()})


def _triple(v: list[float]) -> Triple:
    return (float(v[0]), float(v[1]), float(v[2]))


@dataclass(frozen=True)
class EntitlementInput:
    """One entitlement's allocator input, summed over the requests partitions that reported it."""

    demand: tuple[float, float, float] = (0.0, 0.0, 0.0)
    usage: tuple[float, float, float] = (0.0, 0.0, 0.0)
    admitter_demand: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)


@dataclass
class PoolOutput:
    entitlements: list[EntitlementState]
    pool: PoolState | None  # None when the tick was rejected
    tick: PoolTick
    result: TickResult | None
    rejected: str | None = None  # TickResult.rejected: why nothing is to be published


def _add(a: tuple[float, float, float], b: Amounts) -> tuple[float, float, float]:
    return (a[0] + b.throughput, a[1] + b.kv, a[2] + b.concurrency)


def _amounts(v: Iterable[float]) -> Amounts:
    tp, kv, conc = (float(x) for x in v)
    return Amounts(throughput=tp, kv=kv, concurrency=conc)


def combine(summaries: Iterable[UsageSummary], now: float, stale_after_s: float) -> EntitlementInput:
    """Sum the fresh summaries of one entitlement (one per requests partition that saw it)."""
    demand = usage = (0.0, 0.0, 0.0)
    admitters: dict[str, tuple[float, float, float]] = {}
    for s in summaries:
        if s.ts < now - stale_after_s:
            continue
        window = s.trailing or s.tumbling  # a summary from a worker older than the trailing window
        demand = _add(demand, window.demand)
        usage = _add(usage, window.usage)
        for admitter, amounts in s.admitter_demand.items():
            admitters[admitter] = _add(admitters.get(admitter, (0.0, 0.0, 0.0)), amounts)
    return EntitlementInput(demand, usage, admitters)


def published_debt(result: TickResult) -> Array:
    """The debt to report is ``over_use``; ``TickResult.debt`` is the usage memory the next tick needs.

    Only the latter is persisted (``PoolTick.debt``): over-use is derived from it every tick.
    """
    return result.over_use


def split_targets(limits: Triple, demand: Mapping[str, Triple], known: Iterable[str]) -> dict[str, Triple]:
    """Each known admitter's target share of every limit, by its recent demand on that dimension
    (those with none get the floor; with no demand at all, an even split)."""
    everyone = {a: demand.get(a, (0.0, 0.0, 0.0)) for a in known} | dict(demand)
    if not everyone:
        return {}
    per_dim = [split_by_demand(limits[d], {a: v[d] for a, v in everyone.items()}) for d in range(3)]
    return {a: (per_dim[0][a], per_dim[1][a], per_dim[2][a]) for a in everyone}


def admitter_shares(targets: Mapping[str, Triple], previous: Mapping[str, Triple]) -> dict[str, Amounts]:
    """The shares to publish (``capacity.split.hold_raises``: a raise waits one tick)."""
    return {a: _amounts(v) for a, v in hold_raises(targets, previous).items()}


def seen_admitters(prev: Mapping[str, float], inputs: Iterable[EntitlementInput], now: float,
                   horizon_s: float) -> dict[str, float]:
    """Admitters seen in the pool within ``horizon_s`` (with when), this tick's inputs included."""
    seen = {a: t for a, t in prev.items() if t >= now - horizon_s}
    for inp in inputs:
        for a in inp.admitter_demand:
            seen[a] = now
    return seen


def allocate_pool(
    pool: TokenPool,
    entitlements: list[Entitlement],
    inputs: Mapping[str, EntitlementInput],
    prev: PoolTick,
    ready_replicas: int,
    now: float,
    *,
    max_dt_s: float = 60.0,
    admitter_horizon_s: float = 60.0,
) -> PoolOutput:
    """Run one tick for ``pool``: limits, shares, debt, and the state records to publish."""
    spec = pool.spec
    dt = spec.tick_seconds if prev.ts <= 0 else min(max(now - prev.ts, 0.0), max_dt_s)
    seq = prev.seq + 1
    capacity = spec.capacity(ready_replicas)
    ents = list(entitlements)
    n = len(ents)
    none = EntitlementInput()
    ins = [inputs.get(e.name, none) for e in ents]
    result: TickResult | None = None
    states: list[EntitlementState] = []
    admitters = seen_admitters(prev.admitters, ins, now, admitter_horizon_s)
    targets: dict[str, dict[str, Triple]] = {}
    if n:
        inp = tick_input(
            capacity,
            spec.backfill_factor(),
            rank=[TIER_RANK[e.spec.tier] for e in ents],
            weight=[e.spec.weight for e in ents],
            guarantee=[e.spec.guarantee.as_tuple() for e in ents],
            burst=[e.spec.burst.as_tuple() for e in ents],
            demand=[i.demand for i in ins],
            usage=[i.usage for i in ins],
            debt=[prev.debt.get(e.name, 0.0) for e in ents],
            dt=dt,
        )
        result = allocate(inp, policy_from_spec(spec))
        if result.rejected is not None:
            return PoolOutput([], None, prev, result, result.rejected)
        limits = result.limits.tolist()
        reported = published_debt(result)
        for i, e in enumerate(ents):
            lim = (limits[i][0], limits[i][1], limits[i][2])
            targets[e.name] = split_targets(lim, ins[i].admitter_demand, admitters)
            states.append(EntitlementState(
                id=e.name, pool=pool.name, tier=e.spec.tier, seq=seq, ts=now,
                limits=_amounts(lim),
                admitter_shares=admitter_shares(targets[e.name], prev.targets.get(e.name, {})),
                demand=_amounts(ins[i].demand), usage=_amounts(ins[i].usage),
                debt=float(reported[i]), effective_weight=float(result.effective_weight[i]),
                fair_share=float(result.fair_share[i]), dominant_share=float(result.dominant_share[i]),
            ))
    carried = result.debt.tolist() if result is not None else []
    debt = {e.name: float(d) for e, d in zip(ents, carried, strict=True) if d > 0}
    pool_state = PoolState(
        id=pool.name, seq=seq, ts=now, ready_replicas=ready_replicas,
        capacity=_amounts(capacity),
        guarantees=_amounts(np.sum(
            [e.spec.guarantee.as_tuple() for e in ents if e.spec.tier is Tier.GUARANTEED] or [(0.0, 0.0, 0.0)],
            axis=0)),
        demand=_by_tier(ents, [i.demand for i in ins]),
        usage=_by_tier(ents, [i.usage for i in ins]),
    )
    return PoolOutput(states, pool_state, PoolTick(seq=seq, ts=now, debt=debt, admitters=admitters, targets=targets),
                      result)


def _by_tier(ents: list[Entitlement], values: list[tuple[float, float, float]]) -> dict[Tier, Amounts]:
    sums = {tier: [0.0, 0.0, 0.0] for tier in Tier}
    for e, v in zip(ents, values, strict=True):
        acc = sums[e.spec.tier]
        for d in range(len(DIMENSIONS)):
            acc[d] += v[d]
    return {tier: _amounts(v) for tier, v in sums.items()}
