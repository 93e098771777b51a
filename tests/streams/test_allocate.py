"""Stage 2's pure tick: summaries in, limits, shares, debt and state records out."""

from __future__ import annotations

import orjson
import pytest

from schemas.records import Amounts
from schemas.specs import Tier
from streams.allocate import EntitlementInput, PoolTick, allocate_pool, combine, seen_admitters, split_targets
from streams.records import UsageSummary, WindowSummary
from tests.factories import ent, pool

P = pool("p", replicas=1, per=(1000.0, 10000.0, 10.0))  # capacity 1000 tok/s, 10k KV, 10 seqs


def usage_summary(entitlement: str, demand: tuple[float, float, float], usage: tuple[float, float, float], *,
                  ts: float = 100.0, partition: int = 0, admitters: dict[str, tuple[float, float, float]] | None = None,
                  tier: str = "elastic") -> UsageSummary:
    def amounts(v: tuple[float, float, float]) -> Amounts:
        return Amounts(throughput=v[0], kv=v[1], concurrency=v[2])

    window = WindowSummary(start=ts - 10, end=ts, demand=amounts(demand), usage=amounts(usage))
    closed = WindowSummary(start=80, end=90)  # the allocator must not read the closed windows
    return UsageSummary(
        entitlement=entitlement, pool="p", tier=tier, partition=partition, offset=0, ts=ts, trailing=window,
        tumbling=closed, hopping=closed, admitter_demand={a: amounts(v) for a, v in (admitters or {}).items()},
    )


def test_combine_sums_fresh_partitions_and_drops_stale_ones() -> None:
    parts = [
        usage_summary("e", (10, 100, 1), (5, 50, 0.5), partition=0, admitters={"a": (1, 1, 1)}),
        usage_summary("e", (20, 200, 2), (5, 50, 0.5), partition=1, admitters={"a": (1, 1, 1), "b": (2, 2, 2)}),
        usage_summary("e", (999, 999, 999), (999, 999, 999), partition=2, ts=10.0),
    ]
    got = combine(parts, now=100.0, stale_after_s=60)
    assert got.demand == (30, 300, 3) and got.usage == (10, 100, 1)
    assert got.admitter_demand == {"a": (2, 2, 2), "b": (2, 2, 2)}


def test_combine_reads_the_trailing_window_else_the_closed_one_of_an_older_worker() -> None:
    new = usage_summary("e", (10, 100, 1), (5, 50, 0.5))
    old = new.model_copy(update={"trailing": None, "tumbling": new.trailing})
    assert combine([new], now=100.0, stale_after_s=60).demand == (10, 100, 1)
    assert combine([old], now=100.0, stale_after_s=60).usage == (5, 50, 0.5)
    legacy = orjson.loads(new.model_dump_json())
    del legacy["trailing"]  # a summary written before the field existed still decodes
    assert UsageSummary.model_validate(legacy).trailing is None


def test_guaranteed_gets_its_demand_and_limits_fit_the_pool() -> None:
    ents = [ent("g", "guaranteed", guarantee=(400, 4000, 4), burst=(1000, 10000, 10)),
            ent("e1", "elastic"), ent("e2", "elastic")]
    inputs = {
        "g": EntitlementInput(demand=(300, 3000, 3)),
        "e1": EntitlementInput(demand=(800, 8000, 8), usage=(500, 5000, 5)),
        "e2": EntitlementInput(demand=(800, 8000, 8)),
    }
    out = allocate_pool(P, ents, inputs, PoolTick(), 1, now=100.0)
    limits = {s.id: s.limits for s in out.entitlements}
    assert limits["g"].throughput >= 300
    assert sum(lim.throughput for lim in limits.values()) <= 1000 + 1e-6
    assert limits["e1"].throughput == pytest.approx(limits["e2"].throughput)  # equal weight, no debt yet
    assert all(s.seq == 1 and s.ts == 100.0 for s in out.entitlements)
    assert out.pool.capacity.throughput == 1000 and out.pool.guarantees.kv == 4000
    assert out.pool.demand[Tier.ELASTIC].throughput == 1600 and out.pool.usage[Tier.ELASTIC].kv == 5000
    assert out.pool.ready_replicas == 1 and out.pool.seq == 1


def test_debt_is_carried_between_ticks_and_lowers_the_weight() -> None:
    ents = [ent("hog", "elastic"), ent("meek", "elastic")]
    inputs = {"hog": EntitlementInput(demand=(2000, 0, 0), usage=(1000, 0, 0)),
              "meek": EntitlementInput(demand=(2000, 0, 0), usage=(0, 0, 0))}
    tick = PoolTick()
    debts = []
    for i in range(5):
        out = allocate_pool(P, ents, inputs, tick, 1, now=100.0 + i)
        tick = out.tick
        debts.append(tick.debt["hog"])
    assert debts == sorted(debts) and debts[0] > 0
    assert "meek" not in tick.debt and tick.seq == 5
    hog = next(s for s in out.entitlements if s.id == "hog")
    meek = next(s for s in out.entitlements if s.id == "meek")
    assert hog.effective_weight < meek.effective_weight
    assert hog.limits.throughput < meek.limits.throughput


def test_dt_is_the_time_since_the_last_tick_clamped() -> None:
    ents = [ent("hog", "elastic"), ent("meek", "elastic")]
    inputs = {"hog": EntitlementInput(demand=(2000, 0, 0), usage=(1000, 0, 0))}
    one = allocate_pool(P, ents, inputs, PoolTick(seq=1, ts=99.0), 1, now=100.0).tick.debt["hog"]
    ten = allocate_pool(P, ents, inputs, PoolTick(seq=1, ts=90.0), 1, now=100.0).tick.debt["hog"]
    capped = allocate_pool(P, ents, inputs, PoolTick(seq=1, ts=0.5), 1, now=100.0, max_dt_s=10).tick.debt["hog"]
    assert ten == pytest.approx(10 * one, rel=1e-6) and capped == pytest.approx(ten, rel=1e-6)


def test_targets_split_each_limit_by_admitter_demand() -> None:
    targets = split_targets((1000.0, 100.0, 10.0), {"a": (3, 0, 1), "b": (1, 0, 1)}, [])
    # floor 10 % / 2 each, the other 90 % by demand 3:1
    assert targets["a"][0] == pytest.approx(50 + 900 * 3 / 4) and targets["b"][0] == pytest.approx(50 + 900 / 4)
    assert targets["a"][1] == targets["b"][1] == 50  # nobody asked for KV: an even split
    assert split_targets((1.0, 1.0, 1.0), {}, []) == {}


def test_an_idle_admitter_seen_within_the_horizon_keeps_the_floor() -> None:
    targets = split_targets((1000.0, 100.0, 10.0), {"a": (5, 5, 5)}, ["a", "idle"])
    assert targets["idle"] == pytest.approx((50, 5, 0.5)) and targets["a"] == pytest.approx((950, 95, 9.5))
    seen = seen_admitters({"old": 0.0, "recent": 500.0}, [EntitlementInput(admitter_demand={"x": (1, 1, 1)})],
                          now=700.0, horizon_s=600.0)
    assert seen == {"recent": 500.0, "x": 700.0}


def test_a_share_is_published_one_tick_after_it_is_first_targeted_and_a_raise_waits_a_tick() -> None:
    ents = [ent("e", "elastic")]
    one = {"e": EntitlementInput((500, 0, 0), (0, 0, 0), {"x": (1, 1, 1)})}
    first = allocate_pool(P, ents, one, PoolTick(), 1, now=1.0)
    assert first.entitlements[0].admitter_shares["x"] == Amounts(throughput=0, kv=0, concurrency=0)
    second = allocate_pool(P, ents, one, first.tick, 1, now=2.0)
    assert second.entitlements[0].admitter_shares["x"] == second.entitlements[0].limits
    # demand moves from x to y: x's share drops at once, y's rises a tick later
    moved = {"e": EntitlementInput((500, 0, 0), (0, 0, 0), {"x": (0, 0, 0), "y": (1, 1, 1)})}
    third = allocate_pool(P, ents, moved, second.tick, 1, now=3.0)
    shares = third.entitlements[0].admitter_shares
    lim = third.entitlements[0].limits.throughput
    assert shares["x"].throughput == pytest.approx(lim * 0.05) and shares["y"].throughput == 0
    fourth = allocate_pool(P, ents, moved, third.tick, 1, now=4.0)
    assert fourth.entitlements[0].admitter_shares["y"].throughput == pytest.approx(lim * 0.95)


def test_empty_pool_still_reports_its_capacity() -> None:
    out = allocate_pool(P, [], {}, PoolTick(seq=7, ts=1.0), 3, now=2.0)
    assert out.entitlements == [] and out.pool.seq == 8 and out.pool.capacity.throughput == 3000


def test_tick_state_round_trip() -> None:
    t = PoolTick(seq=3, ts=12.5, debt={"a": 0.25}, admitters={"x": 12.0}, targets={"a": {"x": (1.0, 2.0, 3.0)}})
    assert PoolTick.from_json(t.to_json()) == t
