"""Property tests of the capacity model's invariants (hypothesis, >= 200 examples each)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capacity.admission import Verdict, decide
from capacity.allocator import AllocatorPolicy, TickInput, allocate
from capacity.live import GUARANTEED, PoolLive
from capacity.scaling import ScalingRule, replicas_for
from capacity.tick import tick
from tests.factories import ent, pool

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPS = 1e-6

amount = st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False)
tier = st.sampled_from([0, 1, 2])


@st.composite
def tick_inputs(draw, max_n: int = 12) -> TickInput:
    n = draw(st.integers(min_value=1, max_value=max_n))
    rank = np.array(draw(st.lists(tier, min_size=n, max_size=n)))
    cap = np.array(draw(st.lists(st.floats(1, 1e4), min_size=3, max_size=3)))
    weight = np.array(draw(st.lists(st.floats(0.1, 10), min_size=n, max_size=n)))
    burst = np.array(draw(st.lists(st.lists(st.floats(0, 1e4), min_size=3, max_size=3), min_size=n, max_size=n)))
    frac = np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    guarantee = np.where((rank == 0)[:, None], burst * frac[:, None], 0.0)
    g_total = guarantee.sum(axis=0)
    guarantee = guarantee * np.minimum(1.0, cap / np.maximum(g_total, 1e-12))  # provisionable
    demand = np.array(draw(st.lists(st.lists(amount, min_size=3, max_size=3), min_size=n, max_size=n)))
    usage = np.array(draw(st.lists(st.lists(amount, min_size=3, max_size=3), min_size=n, max_size=n)))
    debt = np.array(draw(st.lists(st.floats(0, 1e3), min_size=n, max_size=n)))
    return TickInput(cap, rank, weight, guarantee, burst, demand, usage, debt, dt=draw(st.floats(0.1, 10)))


@PROPERTY
@given(tick_inputs(), st.floats(0, 0.5))
def test_no_limit_or_allocation_above_its_burst_ceiling(inp, buffer):
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=buffer))
    assert np.all(res.limits <= inp.burst + EPS)
    assert np.all(res.allocation <= np.minimum(inp.demand, inp.burst) + EPS)
    assert np.all(res.allocation >= -EPS)
    assert np.all(res.limits.sum(axis=0) <= inp.capacity * (1 + 1e-9) + EPS)


@PROPERTY
@given(tick_inputs())
def test_allocation_is_work_conserving(inp):
    """Throughput: sum = min(capacity, demand). Held dims: nobody is left wanting while room idles."""
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=0.0))
    wanted = np.minimum(inp.demand, inp.burst)
    tp_total = res.allocation[:, 0].sum()
    assert math.isclose(tp_total, min(inp.capacity[0], wanted[:, 0].sum()), rel_tol=1e-6, abs_tol=1e-6)
    if wanted[:, 0].sum() >= inp.capacity[0]:
        assert math.isclose(tp_total, inp.capacity[0], rel_tol=1e-6)
    for d in (1, 2):
        short = res.allocation[:, d] < wanted[:, d] - 1e-6 * max(1.0, inp.capacity[d])
        if short.any():
            # Whoever is short, the pool is full for their tier: spot up to capacity, elastic up to
            # capacity minus the reserved guarantees.
            used = res.allocation[:, d].sum()
            g_reserved = inp.guarantee[inp.rank == 0, d].sum()
            level1 = np.minimum(wanted[:, d], inp.guarantee[:, d])[inp.rank == 0].sum()
            if short[inp.rank == 2].any():
                assert used >= inp.capacity[d] * (1 - 1e-6) - 1e-6
            if short[inp.rank == 1].any():
                mid = res.allocation[(inp.rank == 1) | (inp.rank == 0), d].sum() - level1
                assert mid >= inp.capacity[d] - g_reserved - 1e-6 * inp.capacity[d] - 1e-6


@PROPERTY
@given(tick_inputs(), st.integers(1, 20))
def test_debt_decays_towards_zero_without_usage(inp, rounds):
    inp.usage[:] = 0.0
    policy = AllocatorPolicy()
    memory = inp.debt.copy()
    for _ in range(rounds):
        inp.debt = memory
        res = allocate(inp, policy)
        assert np.all(res.debt >= 0)
        assert np.all(res.debt <= memory * 0.5 ** (inp.dt / policy.debt_half_life) + EPS)
        assert np.all(np.abs(res.over_use) <= np.abs(memory).sum() + EPS)
        memory = res.debt
    # with all memory decayed away, nobody owes anything
    inp.debt = memory * 0.5 ** 200
    assert np.all(np.abs(allocate(inp, policy).over_use) < 1e-6)


op = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 5), st.integers(1, 2000), st.integers(1, 2000)),
    st.tuples(st.just("finish"), st.integers(0, 10_000), st.integers(0, 2000), st.integers(0, 2000)),
    st.tuples(st.just("tick"), st.floats(0.01, 3.0), st.just(0), st.just(0)),
)


def build_pool(tiers: list[int], g_fracs: list[float]) -> PoolLive:
    per = (50_000.0, 20_000.0, 16.0)
    names = {0: "guaranteed", 1: "elastic", 2: "spot"}
    n_g = max(1, sum(1 for t in tiers if t == GUARANTEED))
    ents = []
    for i, (t, f) in enumerate(zip(tiers, g_fracs, strict=True)):
        g = (per[0] * f / n_g, per[1] * f / n_g, math.floor(per[2] * f / n_g)) if t == GUARANTEED else (0, 0, 0)
        ents.append(ent(f"e{i}", tier=names[t], guarantee=g, burst=(1e6, 1e6, 1e6), window=2.0))
    return PoolLive(pool(replicas=1, per=per, reclaim=0.1, queue={"maxWaitSeconds": 1.0}), ents, now=0.0)


@PROPERTY
@given(
    st.lists(tier, min_size=6, max_size=6),
    st.lists(st.floats(0, 1), min_size=6, max_size=6),
    st.lists(op, min_size=1, max_size=80),
)
def test_admission_invariants_hold_over_any_sequence(tiers, g_fracs, ops):
    """Held capacity is never exceeded, and guaranteed work within its guarantee is never turned away."""
    live = build_pool(tiers, g_fracs)
    names = list(live.entitlements)
    now, serial = 0.0, 0
    for kind, a, b, c in ops:
        if kind == "tick":
            now += a
            tick(live, now, a)
        elif kind == "finish" and live.reservations:
            rid = list(live.reservations)[a % len(live.reservations)]
            live.release(rid, now, prompt_tokens=b, output_tokens=c)
        elif kind == "request":
            e = live.entitlements[names[a]]
            cost = live.cost(b, c, e)
            serial += 1
            g = e.guarantee
            within = (
                e.rank == GUARANTEED
                and e.kv_in_flight + cost.kv <= g[1]
                and e.seqs_in_flight + 1 <= g[2]
                and e.g_bucket.can_take(cost.throughput) if e.g_bucket else False
            )
            if within:
                e.g_bucket.refill(now)
                within = e.g_bucket.can_take(cost.throughput)
            d = decide(live, e, f"r{serial}", cost, now)
            if within:
                assert d.verdict in (Verdict.ADMIT, Verdict.PREEMPT), d
            if d.verdict is Verdict.PREEMPT:
                assert all(v.entitlement.rank == 2 for v in d.victims)
        assert live.kv_in_flight <= live.cap_kv + EPS
        assert live.seqs_in_flight <= live.cap_conc + EPS
        assert live.kv_in_flight >= -EPS and live.seqs_in_flight >= -EPS


@PROPERTY
@given(
    st.lists(st.tuples(st.floats(0, 1e6), st.floats(0, 1e7), st.floats(0, 1e4)), min_size=1, max_size=30),
    st.tuples(st.floats(0, 5e4), st.floats(0, 5e5), st.floats(0, 100)),
    st.integers(1, 3), st.integers(3, 12), st.floats(0, 2), st.integers(0, 3),
)
def test_scaling_stays_between_the_guarantee_floor_and_max(demands, guarantees, min_r, max_r, headroom, budget):
    p = pool(replicas=min_r, max_replicas=max_r, per=(10_000.0, 100_000.0, 16.0),
             scaling={"headroom": headroom, "stabilisationWindowSeconds": 5, "spotBudgetReplicas": budget})
    rule = ScalingRule(p.spec)
    floor = min(max_r, max(min_r, replicas_for(p.spec, guarantees)))
    current = min_r
    for t, demand in enumerate(demands):
        d = rule.decide(now=float(t), current=current, guarantees=guarantees, forecast=demand, spot_demand=demand)
        assert floor <= d.replicas <= max_r
        current = d.replicas
