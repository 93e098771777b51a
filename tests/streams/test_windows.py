"""Window aggregation: buckets, the trailing window, tumbling and hopping sums, rates, demand with refused and queued
work."""

from __future__ import annotations

import random

import pytest

from streams.windows import F_PROMPT, EntitlementWindows, Weights, WindowSpec, moved
from tests.streams.helpers import decision, finish

SPEC = WindowSpec(tumbling_s=10, hop_size_s=60, hop_step_s=10, grace_s=1)


def rec() -> EntitlementWindows:
    return EntitlementWindows("e1", "p", "elastic", partition=0)


def test_buckets_are_a_tenth_of_the_window_and_closed_windows_align_to_groups() -> None:
    assert SPEC.group_s == 10 and SPEC.bucket_s == 1 and SPEC.buckets_per_group == 10
    assert WindowSpec(tumbling_s=2, hop_size_s=5, hop_step_s=1).bucket_s == 0.2
    assert WindowSpec(tumbling_s=1, hop_size_s=3, hop_step_s=1).bucket_s == 0.1
    assert WindowSpec(tumbling_s=10, hop_size_s=60, hop_step_s=10, resolution_s=2.5).bucket_s == 2.5
    assert WindowSpec(tumbling_s=10, hop_size_s=60, hop_step_s=10, resolution_s=3).bucket_s == 1  # divides a group
    assert SPEC.latest_tumbling(125.0) == (110.0, 120.0)
    assert SPEC.latest_tumbling(120.5) == (100.0, 110.0)  # 120 is not closed until the grace has passed
    assert SPEC.latest_hopping(125.0) == (60.0, 120.0)
    assert list(SPEC.buckets_in(60, 65)) == [60, 61, 62, 63, 64]


def test_trailing_window_counts_the_open_bucket_and_part_of_the_oldest() -> None:
    r = rec()
    r.apply(decision(ts=114.5, reserved=(100, 1000, 1)), 0, SPEC, 124.9)  # bucket 114: 40 % inside [114.6, 124.6]
    r.apply(decision(ts=118.0, reserved=(300, 0, 0)), 1, SPEC, 124.9)
    r.apply(decision(ts=124.6, reserved=(50, 0, 0)), 2, SPEC, 124.9)  # the open bucket counts at once
    w = r.trailing(SPEC, 124.6, Weights())
    assert (w.start, w.end) == pytest.approx((114.6, 124.6))
    assert w.decisions == pytest.approx(0.4 + 1 + 1)
    assert w.demand.throughput == pytest.approx((0.4 * 100 + 300 + 50) / 10)
    assert r.trailing_demand(SPEC, 124.6, Weights()) == pytest.approx(
        (w.demand.throughput, w.demand.kv, w.demand.concurrency))
    later = r.trailing(SPEC, 125.2, Weights())  # bucket 114 has left the window; 115 is 80 % inside
    assert later.demand.throughput == pytest.approx((300 + 50) / 10)
    assert r.trailing(SPEC, 200.0, Weights()).decisions == 0


def test_trailing_rate_integrates_to_the_real_amount() -> None:
    """What debt relies on: summing rate * dt over ticks gives back the tokens that were used."""
    r = rec()
    rng = random.Random(3)
    total = 0.0
    events = sorted((rng.uniform(0, 100), rng.randint(1, 500)) for _ in range(2000))
    integral, now, i = 0.0, 0.0, 0
    while now < 130:
        now += 0.25
        while i < len(events) and events[i][0] <= now:
            ts, tokens = events[i]
            r.apply(finish(ts=ts, prompt=0, output=tokens, latency=None), i, SPEC, now)
            total += tokens
            i += 1
        r.prune(SPEC, now)
        integral += r.trailing(SPEC, now, Weights(input=0, output=1)).usage.throughput * 0.25
    assert integral == pytest.approx(total, rel=0.01)


def test_old_buckets_fold_into_groups_and_closed_windows_keep_their_sums() -> None:
    r = rec()
    for i, ts in enumerate((61, 75, 79.5, 99, 112, 119, 121)):
        r.apply(finish(ts=ts, prompt=10, output=0), 2 * i, SPEC, 125.0)
        r.apply(decision(ts=ts, admitter=f"a{i % 2}", reserved=(10, 0, 0)), 2 * i + 1, SPEC, 125.0)
    before = (r.window(*SPEC.latest_hopping(125.0), SPEC, Weights()), r.window(110, 120, SPEC, Weights()),
              r.trailing(SPEC, 125.0, Weights()))
    r.prune(SPEC, 125.0)
    assert sorted(r.buckets) == [60, 70, 90, 110, 119, 121]  # older than 114 folded (75 and 79.5 into 70)
    assert r.buckets[70][F_PROMPT] == 20
    assert sorted(r.admitters) == [60, 70, 90, 110, 119, 121]
    assert r.admitters[70] == {"a1": [10, 0, 0], "a0": [10, 0, 0]}
    after = (r.window(*SPEC.latest_hopping(125.0), SPEC, Weights()), r.window(110, 120, SPEC, Weights()),
             r.trailing(SPEC, 125.0, Weights()))
    assert after == before


def test_moved_is_relative_and_zero_crossings_always_move() -> None:
    assert moved((0, 0, 0), (1e-3, 0, 0), 0.1)
    assert moved((10, 5, 1), (0, 5, 1), 0.1)
    assert not moved((100, 5, 1), (109, 5, 1), 0.1)
    assert moved((100, 5, 1), (112, 5, 1), 0.1)
    assert not moved((0, 0, 0), (0, 0, 0), 0.0)


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least as long"):
        WindowSpec(tumbling_s=10, hop_size_s=5, hop_step_s=10)
    with pytest.raises(ValueError, match="at least 1 ms"):
        WindowSpec(tumbling_s=0)
    with pytest.raises(ValueError, match="resolution_s"):
        WindowSpec(resolution_s=0)


def test_counts_tokens_and_rates_in_the_tumbling_window() -> None:
    r = rec()
    now = 125.0
    r.apply(decision(ts=112, reserved=(100, 1000, 1)), 0, SPEC, now)
    r.apply(finish(ts=115, prompt=100, output=50, latency=2.0, reserved=(100, 1000, 1)), 1, SPEC, now)
    r.apply(decision(ts=116, outcome="refused", reserved=(300, 3000, 1)), 2, SPEC, now)
    r.apply(decision(ts=117, outcome="queued_admitted", reserved=(50, 500, 1), queue_wait_s=1.5), 3, SPEC, now)
    w = r.window(*SPEC.latest_tumbling(now), SPEC, Weights(input=0.5, output=1.0))
    assert (w.decisions, w.admitted, w.queued, w.refused, w.finished) == (3, 2, 1, 1, 1)
    assert (w.prompt_tokens, w.output_tokens) == (100, 50)
    assert w.weighted_tokens == 0.5 * 100 + 1.0 * 50
    assert w.usage.throughput == pytest.approx(100 / 10)
    assert w.usage.kv == pytest.approx(1000 * 2.0 / 10)  # reserved KV held for the latency, per second
    assert w.usage.concurrency == pytest.approx(2.0 / 10)
    # Demand includes refused and queued work: every decision's reserved throughput per second ...
    assert w.demand.throughput == pytest.approx((100 + 300 + 50) / 10)
    # ... and on held dimensions: held + refused for the mean latency (2 s) + what queued work held waiting.
    assert w.demand.kv == pytest.approx((1000 * 2.0 + 3000 * 2.0 + 500 * 1.5) / 10)
    assert w.demand.concurrency == pytest.approx((2.0 + 1 * 2.0 + 1 * 1.5) / 10)
    assert w.refused_demand.throughput == 300 and w.queued_demand.kv == 500
    assert r.offset == 3


def test_finish_without_reservation_holds_prompt_plus_output() -> None:
    r = rec()
    r.apply(finish(ts=115, prompt=30, output=20, latency=4.0, reserved=(0, 0, 0)), 0, SPEC, 125.0)
    w = r.window(110, 120, SPEC, Weights())
    assert w.kv_seconds == 50 * 4.0 and w.seq_seconds == 4.0


def test_hopping_window_sums_its_buckets() -> None:
    r = rec()
    for i, ts in enumerate((61, 75, 99, 119, 121)):
        r.apply(finish(ts=ts, prompt=10, output=0), i, SPEC, 125.0)
    h = r.window(*SPEC.latest_hopping(125.0), SPEC, Weights(input=1, output=1))
    assert h.prompt_tokens == 40  # 121 is in the open window
    assert h.usage.throughput == pytest.approx(40 / 60)


def test_late_events_count_in_totals_but_not_windows() -> None:
    r = rec()
    assert not r.apply(finish(ts=1.0, prompt=7), 0, SPEC, 1000.0)
    assert r.buckets == {}
    t = r.totals_record()
    assert (t.events, t.late, t.prompt_tokens, t.completed) == (1, 1, 7, 1)


def test_totals_count_every_outcome() -> None:
    r = rec()
    events = [decision(outcome=o, ts=100) for o in ("admitted", "queued_admitted", "refused")]
    events += [finish(outcome=o, ts=100) for o in ("completed", "preempted", "cancelled", "failed")]
    for i, ev in enumerate(events):
        r.apply(ev, i, SPEC, 105.0)
    r.note_duplicate(99)
    t = r.totals_record()
    assert (t.events, t.decisions, t.admitted, t.queued, t.refused) == (7, 3, 2, 1, 1)
    assert (t.finished, t.completed, t.preempted, t.cancelled, t.failed, t.duplicates) == (4, 1, 1, 1, 1, 1)
    assert r.offset == 99


def test_prune_drops_buckets_past_retention_and_idle_follows() -> None:
    r = rec()
    r.apply(decision(ts=100), 0, SPEC, 100.0)
    assert not r.is_idle(SPEC, 150.0)
    later = 100 + SPEC.retention_s + SPEC.bucket_s
    assert r.is_idle(SPEC, later)
    r.prune(SPEC, later)
    assert r.buckets == {} and r.admitters == {}


def test_admitter_demand_follows_the_recent_hop() -> None:
    r = rec()
    r.apply(decision(ts=100, admitter="a1", reserved=(10, 100, 1)), 0, SPEC, 105.0)
    r.apply(decision(ts=104, admitter="a2", reserved=(30, 300, 1)), 1, SPEC, 105.0)
    r.apply(decision(ts=104, admitter="a2", reserved=(30, 300, 1)), 2, SPEC, 105.0)
    s = r.summary(SPEC, 105.0, Weights())
    assert s.admitter_demand["a1"].throughput == 10
    assert s.admitter_demand["a2"].kv == 600 and s.admitter_demand["a2"].concurrency == 2


def test_summary_and_json_round_trip() -> None:
    r = rec()
    r.apply(decision(ts=112), 5, SPEC, 125.0)
    r.apply(finish(ts=113), 6, SPEC, 125.0)
    back = EntitlementWindows.from_json(r.to_json())
    assert back == r
    s = back.summary(SPEC, 125.0, Weights())
    assert (s.entitlement, s.pool, s.partition, s.offset) == ("e1", "p", 0, 6)
    assert s.tumbling.start == 110 and s.hopping.end == 120
    assert s.trailing is not None and (s.trailing.start, s.trailing.end) == (115, 125) and s.trailing.decisions == 0
    s = back.summary(SPEC, 122.0, Weights())
    assert s.trailing is not None and s.trailing.decisions == 1 and s.trailing.finished == 1
    assert s.totals.events == 2
