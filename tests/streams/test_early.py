"""The early path of the event-to-limit lag, without Kafka: stage 1 sends a summary as soon as a record's
trailing demand moved, and stage 2 ticks a pool early when its inputs moved (but not closer than the gap)."""

from __future__ import annotations

from schemas.records import EntitlementState
from streams.codec import partition_for
from tests.factories import ent, pool
from tests.streams.helpers import Log, decision
from tests.streams.test_stage1 import Clock, make_stage1
from tests.streams.test_stage2_config import Published, make_stage2, summary_msg, view

THRESHOLD = 0.1


async def test_changed_summaries_only_for_records_whose_trailing_demand_moved() -> None:
    stage = make_stage1()
    clock = stage.clock
    assert isinstance(clock, Clock)
    log = Log()
    await stage.process(log.add(*(decision("steady", ts=clock.t - i, reserved=(100, 0, 0)) for i in range(5))))
    assert {s.entitlement for s in stage.summaries(clock.t, {0})} == {"steady"}
    assert stage.changed_summaries(clock.t, {0}, THRESHOLD) == []  # nothing applied since its last summary

    clock.t += 0.1
    await stage.process(log.add(decision("steady", ts=clock.t, reserved=(10, 0, 0)),  # +2 %: waits
                                decision("new", ts=clock.t, reserved=(5, 0, 0))))  # from zero: goes now
    changed = stage.changed_summaries(clock.t, {0}, THRESHOLD)
    assert [s.entitlement for s in changed] == ["new"]
    assert changed[0].trailing is not None and changed[0].trailing.demand.throughput == 0.5
    assert stage.changed_summaries(clock.t, {1}, THRESHOLD) == []  # another worker's partitions

    clock.t += 0.1
    await stage.process(log.add(decision("steady", ts=clock.t, reserved=(60, 0, 0))))  # 570 vs 500 sent: +14 %
    assert [s.entitlement for s in stage.changed_summaries(clock.t, {0}, THRESHOLD)] == ["steady"]
    assert stage.changed_summaries(clock.t, {0}, THRESHOLD) == []


def states(published: Published) -> list[EntitlementState]:
    return [EntitlementState.model_validate_json(v) for t, _, v in published.records if t == "es"]


async def test_a_pool_ticks_early_when_an_input_moved_but_not_closer_than_the_gap() -> None:
    config = view(pool("p"), ent("a", "elastic"), ent("b", "elastic"))
    published = Published()
    stage = make_stage2(config, published)
    stage.change_threshold, stage.min_tick_gap_s = THRESHOLD, 0.25
    part = partition_for("p", 6)

    async def tick_if_due(now: float) -> bool:
        if stage.due(["p"], now):
            await stage.tick("p", part, now)
            return True
        return False

    await stage.process([summary_msg(0, entitlement="a", demand=(100, 0, 0), usage=(0, 0, 0), ts=100.0)])
    assert await tick_if_due(100.0)  # the first tick
    assert not await tick_if_due(100.3)  # nothing moved: wait for tickSeconds
    await stage.process([summary_msg(1, entitlement="a", demand=(105, 0, 0), usage=(0, 0, 0), ts=100.3)])
    assert not await tick_if_due(100.4)  # +5 %: below the threshold

    await stage.process([summary_msg(2, entitlement="b", demand=(50, 0, 0), usage=(0, 0, 0), ts=100.4)])
    assert await tick_if_due(100.45)  # b appeared: tick now, not at 101.0
    b = next(s for s in states(published)[-2:] if s.id == "b")
    assert b.demand.throughput == 50

    await stage.process([summary_msg(3, entitlement="b", demand=(500, 0, 0), usage=(0, 0, 0), ts=100.5)])
    assert not await tick_if_due(100.6)  # moved, but the last tick is only 0.15 s old
    assert await tick_if_due(100.7)
    assert not await tick_if_due(101.0)  # early ticks restart the regular phase ...
    assert await tick_if_due(101.7)  # ... which comes tickSeconds after the last tick
    seqs = [s.seq for s in states(published) if s.id == "a"]
    assert seqs == [1, 2, 3, 4]


async def test_a_summary_stored_after_the_inputs_were_read_keeps_its_pool_early() -> None:
    config = view(pool("p"), ent("a", "elastic"))
    published = Published()
    stage = make_stage2(config, published)
    stage.min_tick_gap_s = 0.25
    await stage.process([summary_msg(0, entitlement="a", demand=(100, 0, 0), usage=(0, 0, 0), ts=100.0)])
    grouped = stage.inputs_by_entitlement(100.0)
    # A summary lands between the read and the tick (another pool's tick was publishing, say).
    await stage.process([summary_msg(1, entitlement="a", demand=(900, 0, 0), usage=(0, 0, 0), ts=100.1)])
    await stage.tick("p", 0, 100.0, grouped.get("p", {}))
    assert stage.due(["p"], 100.3) == ["p"]  # it still goes out early


async def test_summary_age_is_observed_per_published_tick_from_the_newest_summary_it_used() -> None:
    config = view(pool("p"), ent("a", "elastic"), ent("b", "elastic"))
    stage = make_stage2(config, Published())
    await stage.process([summary_msg(0, entitlement="a", demand=(100, 0, 0), usage=(0, 0, 0), ts=99.0),
                         summary_msg(1, entitlement="b", demand=(50, 0, 0), usage=(0, 0, 0), ts=99.75)])
    await stage.tick("p", partition_for("p", 6), 100.0)
    registry = stage.metrics.registry
    labels = {"pool": "p"}
    assert registry.get_sample_value("tokenpools_streams_summary_age_seconds_count", labels) == 1
    age = registry.get_sample_value("tokenpools_streams_summary_age_seconds_sum", labels)
    assert age is not None and 0.25 <= age < 1.25  # 100.0 - 99.75, plus the tick's own run time (far below 1 s)
