import math

from capacity.bucket import TokenBucket


def test_bucket_starts_full_and_refills_at_rate_up_to_depth():
    b = TokenBucket(rate=10, depth=20, now=0)
    assert b.can_take(20)
    b.take(20)
    assert not b.can_take(5)
    b.refill(0.25)
    assert b.level == 2.5
    b.refill(100)
    assert b.level == 20


def test_request_larger_than_depth_needs_a_full_bucket_and_goes_negative():
    b = TokenBucket(rate=10, depth=20, now=0)
    assert b.can_take(50)
    b.take(50)
    assert b.level == -30
    assert b.wait_for(1) == 3.1


def test_wait_for_is_infinite_at_zero_rate():
    b = TokenBucket(rate=0, depth=0, now=0)
    assert not b.can_take(1)
    assert math.isinf(b.wait_for(1))


def test_reconfigure_caps_level_at_new_depth_and_counts_the_dropped_credit():
    b = TokenBucket(rate=10, depth=100, now=0)
    assert b.reconfigure(rate=1, depth=5, now=1) == 95
    assert b.level == 5 and b.rate == 1 and b.clipped == 95


def test_a_raise_refills_at_the_new_rate_and_grants_nothing_at_once():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.take(100)
    assert b.reconfigure(rate=20, depth=200, now=0) == 0
    assert b.level == 0  # the extra depth is not handed over: it fills at 20/s
    b.refill(2.5)
    assert b.level == 50


def test_a_share_moving_up_and_down_gives_nothing_away():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.take(70)
    for depth in (120, 10, 130, 100):
        b.reconfigure(rate=depth / 10, depth=depth, now=0)
    assert b.level == 10  # the cut to 10 dropped 20 of credit; no raise gave any back
    assert b.clipped == 20


def test_debt_survives_any_cut_and_raise():
    b = TokenBucket(rate=1, depth=10, now=0)
    b.take(50)  # an oversized request from a full bucket: 40 owed
    for depth in (1, 0.5, 1000, 10):
        b.reconfigure(rate=1, depth=depth, now=0)
    assert b.level == -40 and b.clipped == 0
    b.refill(40)
    assert b.level == 0


def test_give_back_never_overfills():
    b = TokenBucket(rate=10, depth=20, now=0)
    b.take(5)
    b.give_back(50)
    assert b.level == 20


def test_a_bucket_starts_full_once_at_its_first_positive_depth():
    b = TokenBucket(rate=0, depth=0, now=0)  # an elastic entitlement before its first tick
    b.reconfigure(rate=10, depth=100, now=1)
    assert b.level == 100
    b.take(100)
    b.reconfigure(rate=0, depth=0, now=1)
    b.reconfigure(rate=10, depth=100, now=1)
    assert b.level == 0  # the second time it fills at its rate like any other raise
