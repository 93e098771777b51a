"""The regional split of a global entitlement (issue 16, item 1): examples worked by hand, then properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capacity.regions import NOTHING, RegionalSplit, RegionSummary, hold_while_cut_off, split_global

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AMPLE = (1e6, 1e6, 1e6)
BURST = (1000.0, 100.0, 10.0)
GUARANTEE = (400.0, 40.0, 4.0)


def _s(region: str, demand: tuple[float, float, float], capacity: tuple[float, float, float] = AMPLE,
       heartbeat: float = 100.0) -> RegionSummary:
    return RegionSummary(region=region, demand=demand, capacity=capacity, heartbeat=heartbeat)


def _approx(t: tuple[float, float, float]) -> object:
    return pytest.approx(t, rel=1e-12, abs=1e-9)


# -- Examples (expected figures worked out by hand) -----------------------------------------------

def test_70_30_demand_gets_a_floor_each_and_the_rest_70_30():
    # burst 1000: floor 10 % / 2 = 50 each, the other 900 as 630 / 270; guarantee 400: 20 + 252, 20 + 108.
    out = split_global(GUARANTEE, BURST, [_s("a", (70, 7, 0.7)), _s("b", (30, 3, 0.3))], 100.0, lost_after_s=30)
    assert out.burst["a"] == _approx((680, 68, 6.8))
    assert out.burst["b"] == _approx((320, 32, 3.2))
    assert out.guarantee["a"] == _approx((272, 27.2, 2.72))
    assert out.guarantee["b"] == _approx((128, 12.8, 1.28))
    assert out.shortfall == _approx((0, 0, 0))
    assert out.lost == () and out.live == ("a", "b")


def test_a_lost_region_gets_nothing_and_its_guarantee_moves_to_the_survivor():
    # b's heartbeat is 100 s old with a 30 s timeout: a holds the whole 400 guarantee and 1000 burst.
    summaries = [_s("a", (70, 7, 0.7)), _s("b", (30, 3, 0.3), heartbeat=0.0)]
    out = split_global(GUARANTEE, BURST, summaries, 100.0, lost_after_s=30)
    assert out.lost == ("b",) and out.live == ("a",)
    assert out.burst == {"a": _approx(BURST), "b": NOTHING}
    assert out.guarantee == {"a": _approx(GUARANTEE), "b": NOTHING}
    assert out.shortfall == _approx((0, 0, 0))
    # Exactly at the timeout it still counts as live.
    assert split_global(GUARANTEE, BURST, summaries, 30.0, lost_after_s=30).lost == ()


def test_a_region_at_capacity_passes_the_leftover_to_the_other():
    # a can offer 300: floor 50 + 250 of its 630 by demand; the other 380 goes to b (50 + 270 + 380 = 700).
    # guarantee 800: floor 40 each, a wants 40 + 504 but holds at most its burst share 300, b gets 500.
    summaries = [_s("a", (70, 7, 0.7), capacity=(300, 30, 3)), _s("b", (30, 3, 0.3))]
    out = split_global((800, 80, 8), BURST, summaries, 100.0, lost_after_s=30)
    assert out.burst["a"] == _approx((300, 30, 3))
    assert out.burst["b"] == _approx((700, 70, 7))
    assert out.guarantee["a"] == _approx((300, 30, 3))
    assert out.guarantee["b"] == _approx((500, 50, 5))
    assert out.shortfall == _approx((0, 0, 0))


def test_leftover_goes_to_spare_capacity_even_without_demand():
    # b has no demand: floor 50; a fills at 100; the 850 a cannot take go to b.
    summaries = [_s("a", (10, 1, 0.1), capacity=(100, 10, 1)), _s("b", (0, 0, 0))]
    out = split_global(NOTHING, BURST, summaries, 100.0, lost_after_s=30)
    assert out.burst["a"] == _approx((100, 10, 1))
    assert out.burst["b"] == _approx((900, 90, 9))


def test_no_demand_anywhere_splits_evenly():
    out = split_global(GUARANTEE, BURST, [_s("a", NOTHING), _s("b", NOTHING)], 100.0, lost_after_s=30)
    assert out.burst == {"a": _approx((500, 50, 5)), "b": _approx((500, 50, 5))}
    assert out.guarantee == {"a": _approx((200, 20, 2)), "b": _approx((200, 20, 2))}


def test_a_guarantee_the_regions_cannot_hold_is_reported_not_over_assigned():
    # a offers 300, b 200: 500 of the 800 guarantee is placed, 300 (30, 3) is the shortfall.
    summaries = [_s("a", (70, 7, 0.7), capacity=(300, 30, 3)), _s("b", (30, 3, 0.3), capacity=(200, 20, 2))]
    out = split_global((800, 80, 8), BURST, summaries, 100.0, lost_after_s=30)
    assert out.guarantee == {"a": _approx((300, 30, 3)), "b": _approx((200, 20, 2))}
    assert out.burst == out.guarantee
    assert out.shortfall == _approx((300, 30, 3))


def test_every_region_lost_leaves_the_whole_guarantee_as_shortfall():
    out = split_global(GUARANTEE, BURST, [_s("a", (1, 1, 1), heartbeat=0.0)], 100.0, lost_after_s=30)
    assert out.burst == {"a": NOTHING} and out.guarantee == {"a": NOTHING}
    assert out.shortfall == GUARANTEE
    assert split_global(GUARANTEE, BURST, [], 0.0, lost_after_s=30).shortfall == GUARANTEE


def test_the_order_of_the_summaries_does_not_matter():
    summaries = [_s("c", (5, 5, 5), capacity=(200, 20, 2)), _s("a", (70, 7, 0.7)), _s("b", (30, 3, 0.3))]
    first = split_global(GUARANTEE, BURST, summaries, 100.0, lost_after_s=30)
    again = split_global(GUARANTEE, BURST, list(reversed(summaries)), 100.0, lost_after_s=30)
    assert first == again
    assert list(first.burst) == ["a", "b", "c"]


def test_a_cut_off_region_holds_its_last_share_while_the_other_follows_the_new_split():
    # The split swings from 70/30 to 30/70 while b is cut off: b stays at 320 (not 680), a drops
    # to 320, so together they enforce 640 <= 1000. Once the link is back b takes 680.
    before = split_global(GUARANTEE, BURST, [_s("a", (70, 7, 0.7)), _s("b", (30, 3, 0.3))], 100.0, lost_after_s=30)
    after = split_global(GUARANTEE, BURST, [_s("a", (30, 3, 0.3)), _s("b", (70, 7, 0.7))], 110.0, lost_after_s=30)
    held = hold_while_cut_off(before, after, ["b"])
    assert held.burst["a"] == _approx((320, 32, 3.2))
    assert held.burst["b"] == _approx((320, 32, 3.2))
    assert held.guarantee["b"] == _approx((128, 12.8, 1.28))
    assert held.shortfall == _approx((400 - 128 - 128, 40 - 12.8 - 12.8, 4 - 1.28 - 1.28))
    # A cut-off region whose new share is smaller takes the smaller one; one unknown before gets nothing.
    assert hold_while_cut_off(before, after, ["a"]).burst["a"] == _approx((320, 32, 3.2))
    empty = RegionalSplit(burst={}, guarantee={}, lost=(), shortfall=NOTHING, global_guarantee=GUARANTEE,
                          global_burst=BURST)
    assert hold_while_cut_off(empty, after, ["b"]).burst["b"] == NOTHING
    assert hold_while_cut_off(before, after, []) == after


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"guarantee": (math.nan, 0, 0)}, "guarantee.throughput"),
    ({"burst": (1, math.inf, 1)}, "burst.kv"),
    ({"burst": (1, 1, -1)}, "burst.concurrency"),
    ({"summaries": [_s("a", (math.nan, 0, 0))]}, "a.demand.throughput"),
    ({"summaries": [_s("a", (1, 1, 1), capacity=(1, -math.inf, 1))]}, "a.capacity.kv"),
    ({"summaries": [_s("a", (1, 1, 1), capacity=(1, 1, -2))]}, "a.capacity.concurrency"),
    ({"summaries": [_s("a", (1, 1, 1), heartbeat=math.nan)]}, "a.heartbeat"),
    ({"now": math.inf}, "now"),
    ({"lost_after_s": math.nan}, "lost_after_s"),
    ({"lost_after_s": -1.0}, "lost_after_s"),
    ({"floor_fraction": math.nan}, "floor_fraction"),
    ({"floor_fraction": 1.5}, "floor_fraction"),
    ({"guarantee": (2000, 0, 0)}, "guarantee.throughput"),
    ({"summaries": [_s("a", (1, 1, 1)), _s("a", (2, 2, 2))]}, "listed twice"),
])
def test_bad_inputs_raise_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"guarantee": GUARANTEE, "burst": BURST, "summaries": [_s("a", (1, 1, 1))],
                               "now": 100.0, "lost_after_s": 30.0, "floor_fraction": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        split_global(args["guarantee"], args["burst"], args["summaries"], args["now"],  # type: ignore[arg-type]
                     lost_after_s=args["lost_after_s"], floor_fraction=args["floor_fraction"])  # type: ignore[arg-type]


# -- Properties -----------------------------------------------------------------------------------

amount = st.one_of(st.sampled_from([0.0, 1e-300, 1.0, 1e12]), st.floats(0, 1e6, allow_nan=False, allow_infinity=False))
triple = st.tuples(amount, amount, amount)


@st.composite
def cases(draw: st.DrawFn) -> tuple[tuple[float, float, float], tuple[float, float, float], list[RegionSummary],
                                    float, float]:
    burst = draw(triple)
    fractions = draw(st.tuples(*(st.floats(0, 1),) * 3))
    guarantee = (burst[0] * fractions[0], burst[1] * fractions[1], burst[2] * fractions[2])
    names = draw(st.lists(st.sampled_from("abcdefg"), unique=True, max_size=6))
    summaries = [RegionSummary(n, draw(triple), draw(triple), draw(st.floats(0, 100))) for n in names]
    return guarantee, burst, summaries, draw(st.floats(0, 1)), draw(st.floats(0, 60))


def _check_invariants(out: RegionalSplit) -> None:
    for d in range(3):
        burst = [out.burst[r][d] for r in sorted(out.burst)]
        guarantee = [out.guarantee[r][d] for r in sorted(out.guarantee)]
        assert all(math.isfinite(x) and x >= 0 for x in burst + guarantee)
        assert math.fsum(burst) <= out.global_burst[d]
        assert math.fsum(guarantee) <= out.global_guarantee[d]
        assert all(g <= b for g, b in zip(guarantee, burst, strict=True))
        assert math.isfinite(out.shortfall[d]) and out.shortfall[d] >= 0


@PROPERTY
@given(cases(), st.randoms(use_true_random=False))
def test_the_split_keeps_its_invariants_and_ignores_order(case: tuple, rnd: object) -> None:  # type: ignore[type-arg]
    guarantee, burst, summaries, floor_fraction, lost_after = case
    out = split_global(guarantee, burst, summaries, 100.0, lost_after_s=lost_after, floor_fraction=floor_fraction)
    _check_invariants(out)
    by_name = {s.region: s for s in summaries}
    for r in out.lost:
        assert out.burst[r] == NOTHING and out.guarantee[r] == NOTHING
    for r in out.live:
        cap = by_name[r].capacity
        assert all(out.burst[r][d] <= cap[d] for d in range(3))
    for d in range(3):
        # Work-conserving: the burst placed is what the live regions can take, up to the global figure,
        # and the guarantee is either all placed or fills every region's burst share.
        room = math.fsum(by_name[r].capacity[d] for r in out.live)
        placed = math.fsum(out.burst[r][d] for r in out.live)
        assert placed == pytest.approx(min(burst[d], room), rel=1e-9, abs=1e-9)
        held = math.fsum(out.guarantee[r][d] for r in out.live)
        assert held == pytest.approx(min(guarantee[d], placed), rel=1e-9, abs=1e-9)
        assert out.shortfall[d] == pytest.approx(guarantee[d] - held, rel=1e-9, abs=1e-9)
    shuffled = list(summaries)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    again = split_global(guarantee, burst, shuffled, 100.0, lost_after_s=lost_after, floor_fraction=floor_fraction)
    assert again == out


@PROPERTY
@given(cases(), st.lists(triple, min_size=7, max_size=7), st.sets(st.sampled_from("abcdefg")))
def test_holding_while_cut_off_never_grows_a_share_nor_overshoots(case: tuple, new_demand: list, cut: set) -> None:  # type: ignore[type-arg]
    guarantee, burst, summaries, floor_fraction, lost_after = case
    before = split_global(guarantee, burst, summaries, 100.0, lost_after_s=lost_after, floor_fraction=floor_fraction)
    moved = [RegionSummary(s.region, new_demand[i], s.capacity, s.heartbeat) for i, s in enumerate(summaries)]
    after = split_global(guarantee, burst, moved, 100.0, lost_after_s=lost_after, floor_fraction=floor_fraction)
    held = hold_while_cut_off(before, after, cut)
    _check_invariants(held)
    for r in held.burst:
        for d in range(3):
            assert held.burst[r][d] <= after.burst[r][d]
            assert held.guarantee[r][d] <= after.guarantee[r][d]
            if r in cut:
                assert held.burst[r][d] <= before.burst[r][d]
                assert held.guarantee[r][d] <= before.guarantee[r][d]
