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


# The whole limit (share=False): what was spent is kept both ways.

def test_whole_limit_keeps_what_was_spent_both_ways():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.take(100)
    for depth in (120, 100, 130, 100):  # a limit moving up and down gives nothing away
        b.reconfigure(rate=depth / 10, depth=depth, now=0)
    assert b.level == 0
    b.reconfigure(rate=20, depth=200, now=0)
    assert b.level == 100  # a raised limit is usable at once


def test_whole_limit_a_large_cut_stops_the_level_at_minus_one_depth_and_the_rest_is_owed():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.take(100)
    b.reconfigure(rate=1, depth=10, now=0)
    assert b.level == -10 and b.owed == 80 and b.deferred == 80  # waits about one new burst window, not 90 s
    b.reconfigure(rate=5, depth=50, now=0)  # a raise of 40 first pays 40 of what is owed
    assert b.level == -10 and b.owed == 40
    b.reconfigure(rate=20, depth=200, now=0)  # 150 more: 40 owed, 110 usable
    assert b.level == 100 and b.owed == 0
    # Against the old floor, which forgave the 80: a cut and a raise back gave 80 tokens away.
    c = TokenBucket(rate=10, depth=100, now=0)
    c.take(100)
    c.reconfigure(rate=1, depth=10, now=0)
    c.reconfigure(rate=10, depth=100, now=0)
    assert c.level == 0  # spent stays spent


def test_whole_limit_an_oversized_debt_is_neither_forgiven_nor_deepened_by_a_cut():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.take(150)
    b.reconfigure(rate=1, depth=5, now=0)
    assert b.level == -50 and b.owed == 95
    b.reconfigure(rate=10, depth=100, now=0)
    assert b.level == -50 and b.owed == 0


# A share of a split limit (share=True): nothing is granted on a raise.

def test_share_cut_caps_level_at_new_depth_and_counts_the_dropped_credit():
    b = TokenBucket(rate=10, depth=100, now=0)
    assert b.reconfigure(rate=1, depth=5, now=1, share=True) == 95
    assert b.level == 5 and b.rate == 1 and b.clipped == 95


def test_share_raise_refills_at_the_new_rate_and_grants_nothing_at_once():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.take(100)
    assert b.reconfigure(rate=20, depth=200, now=0, share=True) == 0
    assert b.level == 0  # the extra depth is not handed over: it fills at 20/s
    b.refill(2.5)
    assert b.level == 50


def test_share_moving_up_and_down_gives_nothing_away():
    b = TokenBucket(rate=10, depth=100, now=0)
    b.take(70)
    for depth in (120, 10, 130, 100):
        b.reconfigure(rate=depth / 10, depth=depth, now=0, share=True)
    assert b.level == 10  # the cut to 10 dropped 20 of credit; no raise gave any back
    assert b.clipped == 20


def test_share_debt_survives_any_cut_and_raise():
    b = TokenBucket(rate=1, depth=10, now=0)
    b.take(50)  # an oversized request from a full bucket: 40 owed
    for depth in (1, 0.5, 1000, 10):
        b.reconfigure(rate=1, depth=depth, now=0, share=True)
    assert b.level == -40 and b.clipped == 0
    b.refill(40)
    assert b.level == 0


def test_give_back_never_overfills():
    b = TokenBucket(rate=10, depth=20, now=0)
    b.take(5)
    b.give_back(50)
    assert b.level == 20


def test_a_share_bucket_starts_full_once_at_its_first_positive_depth():
    b = TokenBucket(rate=0, depth=0, now=0)  # an elastic entitlement before its first share
    b.reconfigure(rate=10, depth=100, now=1, share=True)
    assert b.level == 100
    b.take(100)
    b.reconfigure(rate=0, depth=0, now=1, share=True)
    b.reconfigure(rate=10, depth=100, now=1, share=True)
    assert b.level == 0  # the second time it fills at its rate like any other raise
