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


def test_reconfigure_caps_level_at_new_depth():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.reconfigure(rate=1, depth=5, now=1)
    assert b.level == 5 and b.rate == 1


def test_reconfigure_keeps_what_was_spent_both_ways():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.take(100)
    for depth in (120, 100, 130, 100):  # a share moving up and down gives nothing away
        b.reconfigure(rate=depth / 10, depth=depth, now=0)
    assert b.level == 0
    b.reconfigure(rate=20, depth=200, now=0)
    assert b.level == 100  # a raised limit is usable at once
    b.reconfigure(rate=1, depth=10, now=0)
    assert b.level == -10  # a large cut: the debt is capped at one new depth
    b.take(50)
    b.reconfigure(rate=1, depth=5, now=0)
    assert b.level == -60  # a deeper debt (an oversized request) is neither forgiven nor deepened by a cut


def test_give_back_never_overfills():
    b = TokenBucket(rate=10, depth=20, now=0)
    b.take(5)
    b.give_back(50)
    assert b.level == 20
