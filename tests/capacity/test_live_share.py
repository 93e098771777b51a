"""An admitter's share of a split entitlement (``PoolLive.apply_share``), as the state follower applies it."""

import pytest

from capacity.admission import Verdict, decide
from capacity.cost import RequestCost
from capacity.live import PoolLive
from capacity.split import NOTHING
from tests.factories import ent, pool

GUARANTEE = (100.0, 1000.0, 4.0)
TOTAL = (300.0, 3000.0, 12.0)


def live() -> PoolLive:
    return PoolLive(pool("p", replicas=4), [ent("g", tier="guaranteed", guarantee=GUARANTEE, window=10.0)], now=0.0)


def test_an_admitter_without_a_share_yet_still_admits_guaranteed_work_within_the_guarantee():
    p = live()
    p.apply_share("g", NOTHING, TOTAL, 2, now=0.0)  # listed with nothing: new here, or its raise held back
    e = p.entitlements["g"]
    assert e.guarantee == (0.0, 500.0, 2.0)  # half the guarantee on the held dimensions, no rate
    assert e.limit_tp == 0.0  # nothing added to the throughput limit
    first = decide(p, e, "r1", RequestCost(100, 100, 100, 1.0, 1.0), now=0.0)
    second = decide(p, e, "r2", RequestCost(100, 100, 100, 1.0, 1.0), now=0.0)
    assert first.verdict is Verdict.ADMIT and second.verdict is Verdict.ADMIT  # from the guarantee bucket
    third = decide(p, e, "r3", RequestCost(100, 100, 100, 1.0, 1.0), now=0.0)
    assert third.verdict is not Verdict.ADMIT  # beyond its part of the guarantee's concurrency


def test_a_share_above_the_even_split_scales_the_guarantee_by_the_share():
    p = live()
    p.apply_share("g", (240.0, 2400.0, 9.6), TOTAL, 2, now=0.0)
    assert p.entitlements["g"].guarantee == pytest.approx((80.0, 800.0, 3.2))
