import math

import pytest

from capacity.admission import Verdict, decide
from capacity.live import PoolLive
from schemas.specs import Dimension
from tests.factories import ent, pool


def make(*ents, replicas=1, reclaim=0.0, max_wait=2.0, spot_wait=0.0, per=(1000.0, 10000.0, 10.0)):
    p = pool(replicas=replicas, reclaim=reclaim, per=per,
             queue={"maxWaitSeconds": max_wait, "spotMaxWaitSeconds": spot_wait})
    return PoolLive(p, list(ents), now=0.0)


def cost(live, name, prompt=100, max_tokens=100):
    e = live.entitlements[name]
    return e, live.cost(prompt, max_tokens, e)


def test_admit_holds_the_reservation_on_every_dimension():
    live = make(ent("e"))
    e, c = cost(live, "e")
    e.set_limits(1000, 5000, 5, now=0)
    d = decide(live, e, "r1", c, now=0)
    assert d.verdict is Verdict.ADMIT
    assert e.kv_in_flight == c.kv == 200 and e.seqs_in_flight == 1
    assert live.kv_in_flight == 200 and live.seqs_in_flight == 1
    assert "r1" in live.reservations


def test_throughput_refusal_names_dimension_and_retry_after():
    live = make(ent("e", window=1.0), max_wait=0.5)
    e, c = cost(live, "e", prompt=100, max_tokens=100)
    e.set_limits(100, 1e6, 100, now=0)  # depth 100 < cost 200 (100 prompt + 100 expected output)
    assert c.throughput == 200
    assert decide(live, e, "r1", c, now=0).admitted  # from a full bucket, leaving it at -100
    d = decide(live, e, "r2", c, now=0)
    assert d.verdict is Verdict.REFUSE
    assert d.dimension is Dimension.THROUGHPUT
    assert d.retry_after == pytest.approx(2.0)  # refill from -100 to a full 100 at 100/s


def test_short_throughput_wait_is_queued_with_tier_then_deadline_priority():
    live = make(ent("e", window=1.0), max_wait=5.0)
    e, c = cost(live, "e")
    e.set_limits(100, 1e6, 100, now=0)
    decide(live, e, "r1", c, now=0)
    d = decide(live, e, "r2", c, now=0, deadline=7.0)
    assert d.verdict is Verdict.QUEUE
    assert d.priority == (1, 7.0)
    assert d.reservation is None and "r2" not in live.reservations


def test_kv_limit_refuses_when_request_can_never_fit():
    live = make(ent("e"))
    e, c = cost(live, "e", prompt=1000, max_tokens=1000)
    e.set_limits(1e6, 1500, 100, now=0)
    d = decide(live, e, "r1", c, now=0)
    assert d.verdict is Verdict.REFUSE and d.dimension is Dimension.KV
    assert math.isfinite(d.retry_after)


def test_concurrency_limit_queues_when_a_slot_will_free():
    live = make(ent("e"))
    e, c = cost(live, "e")
    e.set_limits(1e6, 1e6, 1, now=0)
    assert decide(live, e, "r1", c, now=0).admitted
    d = decide(live, e, "r2", c, now=0)
    assert d.verdict is Verdict.QUEUE and d.dimension is Dimension.CONCURRENCY


def test_pool_capacity_is_a_hard_ceiling():
    live = make(ent("a"), ent("b"), per=(1e6, 1000, 100))
    a, c = cost(live, "a", prompt=300, max_tokens=300)
    b, _ = cost(live, "b")
    a.set_limits(1e6, 1e6, 100, now=0)
    b.set_limits(1e6, 1e6, 100, now=0)
    assert decide(live, a, "r1", c, now=0).admitted
    d = decide(live, b, "r2", c, now=0)
    assert not d.admitted and d.dimension is Dimension.KV
    assert live.kv_in_flight == 600


def test_spot_stops_at_the_reclaim_buffer():
    live = make(ent("s", tier="spot"), reclaim=0.5, per=(1e6, 1e6, 4))
    s, c = cost(live, "s")
    s.set_limits(1e6, 1e6, 100, now=0)
    assert decide(live, s, "r1", c, now=0).admitted
    assert decide(live, s, "r2", c, now=0).admitted
    d = decide(live, s, "r3", c, now=0)
    assert d.verdict is Verdict.REFUSE and d.dimension is Dimension.CONCURRENCY


def test_guaranteed_within_guarantee_preempts_newest_spot():
    g = ent("g", tier="guaranteed", guarantee=(1e5, 1e5, 3), burst=(1e5, 1e5, 3))
    live = make(g, ent("s", tier="spot"), per=(1e6, 1e6, 4))
    s, c = cost(live, "s")
    s.set_limits(1e6, 1e6, 100, now=0)
    for i in range(4):
        assert decide(live, s, f"s{i}", c, now=i * 0.1).admitted
    ge, gc = cost(live, "g")
    assert decide(live, ge, "g1", gc, now=1).verdict is Verdict.PREEMPT
    d = decide(live, ge, "g2", gc, now=1)
    assert d.verdict is Verdict.PREEMPT
    assert [v.request_id for v in d.victims] == ["s2"]
    assert "s2" not in live.reservations and "s0" in live.reservations
    assert live.seqs_in_flight == 4


def test_elastic_cannot_take_unused_guarantees_on_held_dimensions():
    g = ent("g", tier="guaranteed", guarantee=(1e5, 1e5, 2), burst=(1e5, 1e5, 2))
    live = make(g, ent("e"), per=(1e6, 1e6, 3))
    e, c = cost(live, "e")
    e.set_limits(1e6, 1e6, 100, now=0)
    assert decide(live, e, "e1", c, now=0).admitted
    d = decide(live, e, "e2", c, now=0)
    assert not d.admitted and d.dimension is Dimension.CONCURRENCY
    ge, gc = cost(live, "g")
    assert decide(live, ge, "g1", gc, now=0).verdict is Verdict.ADMIT
    assert decide(live, ge, "g2", gc, now=0).verdict is Verdict.ADMIT


def test_guaranteed_queues_first_not_refused_when_the_pool_shrank_below_guarantees():
    g = ent("g", tier="guaranteed", guarantee=(1e5, 1e5, 2), burst=(1e5, 1e5, 2))
    live = make(g, per=(1e6, 1e6, 2))
    live.set_capacity(1e6, 1e6, 1)  # a replica was lost
    ge, gc = cost(live, "g")
    assert decide(live, ge, "g1", gc, now=0).verdict is Verdict.ADMIT
    d = decide(live, ge, "g2", gc, now=0)
    assert d.verdict is Verdict.QUEUE and d.priority[0] == 0


def test_guaranteed_over_its_guarantee_does_not_preempt():
    g = ent("g", tier="guaranteed", guarantee=(1e5, 1e5, 1), burst=(1e5, 1e5, 5))
    live = make(g, ent("s", tier="spot"), per=(1e6, 1e6, 2))
    s, c = cost(live, "s")
    s.set_limits(1e6, 1e6, 100, now=0)
    ge, gc = cost(live, "g")
    ge.set_limits(1e5, 1e5, 5, now=0)
    assert decide(live, ge, "g1", gc, now=0).verdict is Verdict.ADMIT
    assert decide(live, s, "s1", c, now=0).admitted
    d = decide(live, ge, "g2", gc, now=0)  # second sequence is burst, not guarantee
    assert d.verdict in (Verdict.QUEUE, Verdict.REFUSE)
    assert "s1" in live.reservations


def test_release_corrects_reservation_with_real_usage():
    live = make(ent("e", window=10.0))
    e, c = cost(live, "e", prompt=100, max_tokens=500)
    e.set_limits(1000, 1e6, 10, now=0)
    before = e.bucket.level
    decide(live, e, "r1", c, now=0)
    assert e.bucket.level == before - c.throughput
    live.release("r1", now=0, prompt_tokens=100, output_tokens=10)
    assert e.bucket.level == pytest.approx(before - (100 + 10))
    assert e.kv_in_flight == 0 and live.kv_in_flight == 0 and live.seqs_in_flight == 0
    assert live.release("r1", now=0) is None  # idempotent


def test_demand_counts_refused_work_once():
    live = make(ent("e", window=1.0), max_wait=0)
    e, c = cost(live, "e")
    e.set_limits(10, 1e6, 100, now=0)
    decide(live, e, "r1", c, now=0)
    decide(live, e, "r2", c, now=0)
    assert e.demand_tp == 2 * c.throughput
    decide(live, e, "r2", c, now=0, retry=True)
    assert e.demand_tp == 2 * c.throughput


def test_a_guarantee_split_across_admitters_keeps_the_whole_burst_window_at_each():
    """Two admitters each get half the rate of a 1,000/s guarantee; a 5 s burst of the whole guarantee
    that lands on one of them is admitted, and only then does its half rate hold."""
    g = ent("g", tier="guaranteed", guarantee=(1000.0, 1e6, 100), burst=(1000.0, 1e6, 100), window=5.0)
    live = make(g, replicas=8, per=(1000.0, 1e6, 100.0))
    e, c = cost(live, "g", prompt=100, max_tokens=400)
    live.set_guarantee_share("g", (500.0, 5e5, 50), now=0)
    e.set_limits(500.0, 5e5, 50, now=0)
    admitted = 0
    while decide(live, e, f"r{admitted}", c, now=0).admitted:
        admitted += 1
    assert admitted == 5000 // c.throughput  # the whole 1,000/s x 5 s, not this admitter's half
    # Refilled at this admitter's half of the guarantee: the next request waits deficit / 500 s.
    wait = (c.throughput - e.g_bucket.level) / 500.0
    assert not decide(live, e, "early", c, now=wait * 0.9).admitted
    assert decide(live, e, "on-time", c, now=wait * 1.01).admitted
