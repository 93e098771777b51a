"""Extreme floats into the allocator and the admission decision (issue 10, defect 1).

One entitlement with ``weight: inf`` made the allocator compute NaN, and every elastic and spot
limit of the pool became 0. Whatever the inputs (0, subnormals, 1e308, NaN, infinity), a tick must
not raise, must publish only finite limits >= 0, and a tick with a non-finite input must keep the
limits in force. The admission decision must not raise either, must answer with a finite
Retry-After, and must never admit a request whose cost is not a finite amount.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capacity.admission import Verdict, decide
from capacity.allocator import REJECTED_INPUT, REJECTED_OUTPUT, AllocatorPolicy, TickInput, allocate
from capacity.cost import RequestCost
from capacity.live import PoolLive
from capacity.tick import tick
from tests.factories import ent, pool

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SUBNORMAL = 5e-324
NON_FINITE = (math.nan, math.inf, -math.inf)
# Values a float field can hold that stress the arithmetic: zero, the smallest subnormal, the
# largest finite doubles, and non-finite ones. Ordinary values are mixed in so that most ticks
# also have something to share.
extreme = st.sampled_from([0.0, -0.0, SUBNORMAL, 1e-300, 1e-12, 1.0, 1e12, 1e300, 1e308, 1.7976931348623157e308,
                           *NON_FINITE])
ordinary = st.floats(0, 1e4, allow_nan=False, allow_infinity=False)
value = st.one_of(extreme, ordinary, st.floats(allow_nan=True, allow_infinity=True))


def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(a).all())


@st.composite
def tick_inputs(draw: st.DrawFn) -> TickInput:
    n = draw(st.integers(1, 6))

    def arr(*shape: int) -> np.ndarray:
        return np.array(draw(st.lists(value, min_size=math.prod(shape), max_size=math.prod(shape))),
                        dtype=float).reshape(shape)

    rank = np.array(draw(st.lists(st.sampled_from([0, 1, 2]), min_size=n, max_size=n)), dtype=np.int64)
    previous = np.array(draw(st.lists(ordinary, min_size=3 * n, max_size=3 * n)), dtype=float).reshape(n, 3)
    backfill = arr(3) if draw(st.booleans()) else None
    dt = draw(st.one_of(extreme, st.floats(0.01, 10)))
    return TickInput(capacity=arr(3), rank=rank, weight=arr(n), guarantee=arr(n, 3), burst=arr(n, 3),
                     demand=arr(n, 3), usage=arr(n, 3), debt=arr(n), dt=dt, backfill=backfill, previous=previous)


@PROPERTY
@given(tick_inputs(), st.booleans())
def test_a_tick_never_raises_and_publishes_only_finite_non_negative_limits(inp: TickInput, use_debt: bool) -> None:
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=0.05, use_debt=use_debt))
    assert res.limits.shape == (inp.weight.shape[0], 3)
    for a in (res.limits, res.allocation, res.debt, res.effective_weight, res.fair_share, res.dominant_share,
              res.over_use):
        assert _finite(a)
    assert bool((res.limits >= 0).all())
    inputs = [inp.capacity, inp.weight, inp.guarantee, inp.burst, inp.demand, inp.usage, inp.debt, np.array([inp.dt])]
    if inp.backfill is not None:
        inputs.append(inp.backfill)
    if not all(_finite(a) for a in inputs):
        assert res.rejected == REJECTED_INPUT
        np.testing.assert_array_equal(res.limits, inp.previous)
    elif res.rejected is not None:  # finite inputs whose arithmetic overflowed: the limits in force, too
        np.testing.assert_array_equal(res.limits, inp.previous)


def _three_elastic(weight: list[float], previous: np.ndarray | None = None) -> TickInput:
    return TickInput(
        capacity=np.array([1000.0, 10000.0, 10.0]), rank=np.array([1, 1, 1]), weight=np.array(weight),
        guarantee=np.zeros((3, 3)), burst=np.full((3, 3), 1e6), demand=np.full((3, 3), 1e5),
        usage=np.zeros((3, 3)), debt=np.zeros(3), dt=1.0, previous=previous,
    )


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_the_issues_case_keeps_the_pools_limits(bad: float) -> None:
    """Two tenants of weight 1 and one of weight inf: before the fix every limit came out 0 (NaN)."""
    good = allocate(_three_elastic([1.0, 1.0, 1.0]), AllocatorPolicy())
    # Work-conserving split of an oversubscribed pool by equal weights: a third of each dimension.
    np.testing.assert_allclose(good.limits, np.tile([1000 / 3, 10000 / 3, 10 / 3], (3, 1)))
    res = allocate(_three_elastic([1.0, 1.0, bad], previous=good.limits), AllocatorPolicy())
    assert res.rejected == REJECTED_INPUT
    np.testing.assert_array_equal(res.limits, good.limits)


def test_a_rejected_first_tick_falls_back_to_the_guarantees() -> None:
    inp = _three_elastic([1.0, 1.0, math.inf])
    inp.rank = np.array([0, 1, 2])
    inp.guarantee = np.array([[100.0, 1000.0, 1.0], [0, 0, 0], [0, 0, 0]])
    res = allocate(inp, AllocatorPolicy())
    assert res.rejected == REJECTED_INPUT
    np.testing.assert_array_equal(res.limits, [[100, 1000, 1], [0, 0, 0], [0, 0, 0]])


def test_overflowing_finite_inputs_are_rejected_not_published() -> None:
    """All inputs finite, but remembered usage of 1e308 plus this tick's 1e308 overflows the debt: the
    tick keeps the previous limits rather than publish an infinite debt."""
    previous = np.full((3, 3), 7.0)
    inp = _three_elastic([1.0, 1.0, 1.0], previous=previous)
    inp.capacity = np.full(3, 1e308)
    inp.usage = np.full((3, 3), 1e308)
    inp.debt = np.full(3, 1e308)
    res = allocate(inp, AllocatorPolicy())
    assert res.rejected == REJECTED_OUTPUT
    np.testing.assert_array_equal(res.limits, previous)
    assert _finite(res.debt) and _finite(res.over_use)


def test_the_in_process_tick_keeps_limits_and_debt_on_a_rejected_tick() -> None:
    live = PoolLive(pool(replicas=1), [ent("a"), ent("b")], now=0.0)
    tick(live, 1.0, 1.0)
    a = live.entitlements["a"]
    before = (a.limit_tp, a.limit_kv, a.limit_conc, a.debt)
    assert before[:3] == pytest.approx((500.0, 5000.0, 5.0))  # half of (1000, 10000, 10) each, by weight 1 : 1
    a.used_tp = math.nan  # what a NaN cost charged would leave in the accumulator
    res = tick(live, 2.0, 1.0)
    assert res.rejected == REJECTED_INPUT
    assert (a.limit_tp, a.limit_kv, a.limit_conc, a.debt) == before
    assert all(math.isfinite(x) for x in (a.bucket.rate, a.bucket.depth))


# -- the admission decision -------------------------------------------------------------------------

def _cost(throughput: float, kv: float) -> RequestCost:
    cost = RequestCost(10, 10, 10, 1.0, 1.0)
    cost.throughput, cost.kv = throughput, kv
    return cost


@PROPERTY
@given(
    st.sampled_from(["guaranteed", "elastic", "spot"]),
    st.tuples(value, value, value),  # limits the entitlement is given
    st.tuples(value, value, value),  # pool capacity
    st.tuples(value, value),  # request cost: throughput, kv
    st.one_of(extreme, st.floats(0, 1e6)),  # clock
)
def test_a_decision_never_raises_and_never_admits_a_non_finite_cost(tier, limits, capacity, cost, now) -> None:
    g = (100.0, 1000.0, 2.0) if tier == "guaranteed" else (0.0, 0.0, 0.0)
    live = PoolLive(pool(replicas=1, queue={"maxWaitSeconds": 1.0}), [ent("e", tier, guarantee=g)], now=0.0)
    e = live.entitlements["e"]
    e.set_limits(*limits, 0.0)
    for limit, floor in zip((e.limit_tp, e.limit_kv, e.limit_conc), g, strict=True):
        assert math.isfinite(limit) and limit >= floor  # the limit applied: finite, never below the guarantee
    live.set_capacity(*capacity)
    d = decide(live, e, "r1", _cost(*cost), now if math.isfinite(now) else 1.0)
    assert d.verdict in tuple(Verdict)
    assert math.isfinite(d.retry_after) and d.retry_after >= 0
    if not all(0 <= c < math.inf for c in cost):
        assert d.verdict is Verdict.REFUSE
        assert not live.reservations
        assert e.demand_tp == 0 and math.isfinite(e.bucket.level)


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1.0])
def test_a_full_bucket_does_not_take_an_infinite_cost(bad: float) -> None:
    """Before the fix a full bucket admitted an infinite cost (the need is capped at the depth) and
    its level stayed -inf for good: the entitlement never got another request through."""
    live = PoolLive(pool(replicas=1), [ent("e", burst=(1e6, 1e6, 1e6))], now=0.0)
    tick(live, 0.0, 1.0)
    e = live.entitlements["e"]
    assert decide(live, e, "bad", _cost(bad, 10.0), 0.0).verdict is Verdict.REFUSE
    assert math.isfinite(e.bucket.level)
    assert decide(live, e, "ok", _cost(10.0, 10.0), 0.0).verdict is Verdict.ADMIT
