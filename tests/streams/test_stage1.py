"""Stage 1 without Kafka: batches in, persisted records and id batches out; crashes at every write."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.records import RequestEvent
from schemas.topics import config_key, config_value
from schemas.wire import BadRecords, encode, encode_event_batch
from streams.config_table import ConfigView
from streams.dedup import SeenBatch
from streams.metrics import PipelineMetrics
from streams.stage1 import Stage1
from streams.store import MemoryStore
from streams.windows import EntitlementWindows, WindowSpec
from tests.factories import pool as make_pool
from tests.streams.helpers import Log, decision, finish

SPEC = WindowSpec(tumbling_s=10, hop_size_s=60, hop_step_s=10, grace_s=1)
NOW = 125.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_stage1(windows: MemoryStore[Any] | None = None, seen: MemoryStore[Any] | None = None,
                bad: BadRecords | None = None) -> Stage1:
    bad = bad or BadRecords()
    config = ConfigView(bad, "cfg", "rep")
    p = make_pool("p")
    config.apply_config(config_key(p).encode(), config_value(p))
    return Stage1(
        windows=windows if windows is not None else MemoryStore(), seen=seen if seen is not None else MemoryStore(),
        config=config, spec=SPEC, topic="requests", bad=bad, metrics=PipelineMetrics(bad), clock=Clock(),
    )


def totals(stage: Stage1, ent: str = "e1", partition: int = 0) -> Any:
    rec = stage.windows.get(f"{partition}/{ent}")
    assert rec is not None
    return rec.totals_record()


async def test_counts_a_batch_and_persists_one_write_per_record_and_partition() -> None:
    stage = make_stage1()
    log = Log()
    await stage.process(log.add(decision("e1", ts=115), finish("e1", ts=116), decision("e2", ts=115)))
    assert totals(stage, "e1").events == 2 and totals(stage, "e2").events == 1
    windows, seen = stage.windows, stage.seen
    assert isinstance(windows, MemoryStore) and isinstance(seen, MemoryStore)
    assert sorted(k for k, _, _ in windows.writes) == ["0/e1", "0/e2"]
    assert [(k, p) for k, p, _ in seen.writes] == [("0:0", 0)]
    assert len(seen.data["0:0"].ids) == 3


async def test_the_same_id_published_twice_is_counted_once() -> None:
    stage = make_stage1()
    log = Log()
    ev = finish("e1", ts=115, prompt=100)
    await stage.process(log.add(ev, decision("e1", ts=115)))
    await stage.process(log.add(ev, ev))  # re-sent later, twice
    t = totals(stage)
    assert (t.events, t.duplicates, t.prompt_tokens) == (2, 2, 100)


async def test_a_replayed_batch_is_skipped_by_offset() -> None:
    stage = make_stage1()
    log = Log()
    batch = log.add(decision("e1", ts=115), finish("e1", ts=116))
    await stage.process(batch)
    await stage.process(batch)  # at-least-once redelivery of the same records
    t = totals(stage)
    assert (t.events, t.duplicates) == (2, 0)
    assert stage.metrics.replays._value.get() == 2


@pytest.mark.parametrize("lost", ["windows", "seen", "both"])
async def test_restart_after_losing_the_last_writes_counts_each_event_once(lost: str) -> None:
    """Replay from an older committed offset with any of the last batch's writes lost."""
    windows: MemoryStore[Any] = MemoryStore()
    seen: MemoryStore[Any] = MemoryStore()
    stage = make_stage1(windows, seen)
    log = Log()
    first = log.add(decision("e1", ts=115, id="a"), finish("e1", ts=116, id="b"))
    second = log.add(decision("e1", ts=117, id="c"), decision("e1", ts=117, id="a"))  # "a" again: a duplicate
    await stage.process(first)
    snapshot = (dict(windows.data), dict(seen.data))
    await stage.process(second)
    # Crash: the writes of `second` may or may not have reached the changelog.
    if lost in ("windows", "both"):
        windows.data = {k: EntitlementWindows.from_json(v.to_json()) for k, v in snapshot[0].items()}
    if lost in ("seen", "both"):
        seen.data = dict(snapshot[1])
    restarted = make_stage1(windows, seen)
    await restarted.process(first + second)  # redelivered from the last committed offset (0)
    t = totals(restarted)
    assert (t.events, t.duplicates) == (3, 1)


async def test_bad_records_are_counted_by_reason_and_skipped() -> None:
    bad = BadRecords()
    stage = make_stage1(bad=bad)
    log = Log()
    messages = log.add(b"{not json", b"[1]", b'{"schema_version": 7}', b'{"schema_version": 1, "id": ""}', None)
    messages += log.add(decision("e1", ts=115, outcome="completed"))  # a decision cannot be 'completed'
    messages += log.add(finish("e1", ts=116))
    await stage.process(messages)
    assert dict(bad.counts) == {
        ("requests", "not_json"): 1, ("requests", "not_an_object"): 1, ("requests", "unknown_schema_version"): 1,
        ("requests", "invalid"): 1, ("requests", "tombstone"): 1, ("requests", "invalid_outcome"): 1,
    }
    assert totals(stage).events == 1


async def test_summaries_only_for_owned_partitions_and_idle_records_once() -> None:
    stage = make_stage1()
    await stage.process(Log(0).add(decision("e1", ts=115)))
    await stage.process(Log(3).add(decision("e2", ts=115)))
    assert [s.entitlement for s in stage.summaries(NOW, {0})] == ["e1"]
    assert sorted(s.entitlement for s in stage.summaries(NOW, {0, 3})) == ["e1", "e2"]
    idle_at = 115 + SPEC.retention_s + SPEC.bucket_s
    last = stage.summaries(idle_at, {0})
    assert len(last) == 1 and last[0].tumbling.decisions == 0
    assert stage.summaries(idle_at + 1, {0}) == []


async def test_token_weights_come_from_the_pool() -> None:
    stage = make_stage1()  # tests.factories.pool weighs input and output tokens 1.0 each
    await stage.process(Log().add(finish("e1", ts=115, prompt=100, output=50)))
    (summary,) = stage.summaries(NOW, {0})
    assert summary.tumbling.weighted_tokens == 150


async def test_expire_forgets_old_id_batches() -> None:
    stage = make_stage1()
    stage.dedup_horizon_s = 60
    await stage.process(Log().add(decision("e1", ts=115)))
    stage.seen_ids(0, NOW)
    stage.expire(NOW + 61)
    assert list(stage.seen.items()) == []
    assert stage._seen[0].ids == {}


def test_seen_batch_is_what_the_table_stores() -> None:
    b = SeenBatch("0:1", 1.0, [("x", 1)])
    assert SeenBatch.from_json("0:1", b.to_json()) == b


class HoleyDelivery:
    """A gap source over a full log: delivery starts at ``start`` and the test drops records from batches."""

    def __init__(self, log: Log, start: int = 0) -> None:
        self.log = log
        self.start = start
        self.fetched: list[tuple[int, int]] = []

    async def start_offset(self, partition: int) -> int | None:
        return self.start

    async def fetch(self, partition: int, start: int, end: int) -> list[Any]:
        self.fetched.append((start, end))
        return [m for m in self.log.messages if start <= m.offset < end]


async def test_records_faust_skipped_are_read_back_and_counted() -> None:
    stage = make_stage1()
    log = Log()
    msgs = log.add(*[decision("e1", ts=115) for _ in range(6)])
    holes = HoleyDelivery(log)
    stage.gaps = holes
    await stage.process([msgs[1], msgs[2], msgs[4]])  # 0 (the first after the assignment) and 3 never delivered
    await stage.process([msgs[5]])
    assert holes.fetched == [(0, 1), (3, 4)]
    assert totals(stage).events == 6
    assert stage.metrics.gap_records._value.get() == 2
    stage.reset()  # a rebalance: delivery restarts at the committed offset, replays are not gaps
    holes.start = 2
    await stage.process(msgs[2:])
    assert holes.fetched == [(0, 1), (3, 4)] and totals(stage).events == 6


class FlakyStore(MemoryStore[Any]):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def put(self, key: str, value: Any, partition: int) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("broker away")
        await super().put(key, value, partition)


async def test_a_failed_write_is_retried_with_the_same_batch_without_double_counting() -> None:
    windows = FlakyStore(failures=0)
    stage = make_stage1(windows=windows)
    log = Log()
    await stage.process(log.add(decision("e1", ts=115)))
    windows.failures = 1
    batch = log.add(decision("e1", ts=115), finish("e1", ts=116))
    with pytest.raises(ConnectionError):
        await stage.process(batch)
    await stage.process(batch)  # what the agent does: the same batch again, until it is persisted
    assert totals(stage).events == 3
    assert EntitlementWindows.from_json(windows.writes[-1][2]).totals_record().events == 3


# -- batch records (``RequestEventBatch``: many events of one entitlement in one Kafka record) ----------


def batch(*events: RequestEvent | dict[str, Any]) -> bytes:
    return encode_event_batch([encode(e) if isinstance(e, RequestEvent) else orjson.dumps(e) for e in events])


async def test_every_event_of_a_batch_counts_and_a_redelivered_batch_is_skipped_whole() -> None:
    stage = make_stage1()
    log = Log()
    evs = [decision("e1", ts=115), finish("e1", ts=116, prompt=10), finish("e1", ts=117, prompt=20)]
    first = log.add(batch(*evs), key=b"e1") + log.add(decision("e1", ts=118))  # a batch, then a single event
    await stage.process(first)
    t = totals(stage)
    assert (t.events, t.duplicates, t.prompt_tokens) == (4, 0, 30)
    await stage.process(first)  # at-least-once redelivery of the same two records
    t = totals(stage)
    assert (t.events, t.duplicates, t.prompt_tokens) == (4, 0, 30)
    assert stage.metrics.replays._value.get() == 4 and stage.metrics.new._value.get() == 4


async def test_a_batch_published_again_as_new_records_is_counted_once() -> None:
    """An admitter re-sending its spool regroups events: every event is still counted once, by id."""
    stage = make_stage1()
    log = Log()
    a, b, c = decision("e1", ts=115), finish("e1", ts=116, prompt=10), decision("e1", ts=117)
    await stage.process(log.add(batch(a, b), key=b"e1"))
    await stage.process(log.add(batch(a, b, c), key=b"e1") + log.add(b))  # again, plus one new, plus b alone
    t = totals(stage)
    assert (t.events, t.duplicates, t.prompt_tokens) == (3, 3, 10)


async def test_an_id_twice_inside_one_batch_counts_once() -> None:
    stage = make_stage1()
    ev = decision("e1", ts=115)
    await stage.process(Log().add(batch(ev, decision("e1", ts=115), ev), key=b"e1"))
    t = totals(stage)
    assert (t.events, t.duplicates) == (2, 1)


@pytest.mark.parametrize("lost", ["windows", "seen", "both"])
async def test_restart_after_losing_a_batch_s_writes_counts_each_event_once(lost: str) -> None:
    windows: MemoryStore[Any] = MemoryStore()
    seen: MemoryStore[Any] = MemoryStore()
    stage = make_stage1(windows, seen)
    log = Log()
    first = log.add(batch(decision("e1", ts=115, id="a"), finish("e1", ts=116, id="b")), key=b"e1")
    # "a" again (a duplicate), "c" twice inside the batch, "d" new.
    second = log.add(batch(decision("e1", ts=117, id="c"), decision("e1", ts=117, id="a"),
                           decision("e1", ts=117, id="c"), finish("e1", ts=118, id="d")), key=b"e1")
    await stage.process(first)
    snapshot = (dict(windows.data), dict(seen.data))
    await stage.process(second)
    if lost in ("windows", "both"):
        windows.data = {k: EntitlementWindows.from_json(v.to_json()) for k, v in snapshot[0].items()}
    if lost in ("seen", "both"):
        seen.data = dict(snapshot[1])
    restarted = make_stage1(windows, seen)
    await restarted.process(first + second)  # redelivered from the last committed offset (0)
    t = totals(restarted)
    assert (t.events, t.duplicates) == (4, 2)


async def test_a_bad_event_in_a_batch_is_counted_and_the_rest_of_the_batch_counts() -> None:
    bad = BadRecords()
    stage = make_stage1(bad=bad)
    good = [decision("e1", ts=115), finish("e1", ts=116, prompt=7)]
    broken = {"schema_version": 1, "id": "x", "phase": "decision"}  # fields missing
    wrong_shape = decision("e1", ts=115, outcome="completed")
    other = decision("e2", ts=115)  # another entitlement inside a batch keyed e1
    await stage.process(Log().add(batch(good[0], broken, wrong_shape, {"schema_version": 9}, other, good[1]),
                                  key=b"e1"))
    assert dict(bad.counts) == {("requests", "invalid"): 1, ("requests", "invalid_outcome"): 1,
                                ("requests", "unknown_schema_version"): 1, ("requests", "key_mismatch"): 1}
    t = totals(stage)
    assert (t.events, t.prompt_tokens) == (2, 7)
    assert stage.windows.get("0/e2") is None


async def test_unusable_batch_records_are_counted_once_each() -> None:
    bad = BadRecords()
    stage = make_stage1(bad=bad)
    ev = encode(decision("e1", ts=115))
    await stage.process(Log().add(
        b'{"schema_version": 1, "type": "request_event_batch", "events": []}',
        b'{"schema_version": 1, "type": "request_event_batch"}',
        b'{"schema_version": 2, "type": "request_event_batch", "events": [' + ev + b"]}",
        b'{"schema_version": 1, "type": "something_else", "events": [' + ev + b"]}",
        key=b"e1"))
    assert dict(bad.counts) == {("requests", "invalid"): 2, ("requests", "unknown_schema_version"): 1,
                                ("requests", "unknown_type"): 1}
    assert stage.windows.get("0/e1") is None


def _histogram(stage: Stage1, name: str) -> tuple[float, float]:
    """(count, sum) of one of the worker's unlabelled histograms, from its own registry."""
    registry = stage.metrics.registry
    count, total = registry.get_sample_value(f"{name}_count"), registry.get_sample_value(f"{name}_sum")
    return count or 0.0, total or 0.0


async def test_event_delay_is_the_newest_new_event_age_once_per_batch_and_duplicates_do_not_count() -> None:
    stage = make_stage1()
    log = Log()
    first = decision("e1", ts=NOW - 3.0)
    await stage.process(log.add(first, decision("e2", ts=NOW - 0.5), finish("e1", ts=NOW - 2.0)))
    assert _histogram(stage, "tokenpools_streams_event_delay_seconds") == (1.0, 0.5)
    await stage.process(log.add(first))  # a duplicate only: nothing new was applied, nothing observed
    assert _histogram(stage, "tokenpools_streams_event_delay_seconds") == (1.0, 0.5)
    assert stage.delivered() == {0: 3}  # offsets 0..3 on partition 0: the lag gauge counts from here


async def test_consumer_lag_counts_records_past_the_last_delivered_on_assigned_requests_partitions() -> None:
    """Faust's consumer is replaced by a stand-in (assignment and high watermarks only): the arithmetic and
    the filtering are what is checked here; tests/integration/test_up.py scrapes the real gauge."""
    from types import SimpleNamespace
    from typing import NamedTuple

    from streams.app import _requests_lag

    class TP(NamedTuple):
        topic: str
        partition: int

    stage = make_stage1()
    log = Log()
    await stage.process(log.add(decision("e1", ts=NOW), decision("e1", ts=NOW)))  # offsets 0, 1 on partition 0
    ends = {("requests", 0): 10, ("requests", 1): 4, ("other", 0): 99}
    consumer = SimpleNamespace(assignment=lambda: {TP(t, p) for t, p in ends},
                               highwater=lambda x: ends[(x.topic, x.partition)])
    lag = _requests_lag(SimpleNamespace(consumer=consumer), "requests", stage)  # type: ignore[arg-type]
    assert lag == [("requests", 0, 8)]  # 10 - (1 + 1); partition 1 has delivered nothing yet; other topics skipped
    stage.metrics.follow_lag(lambda: lag)
    assert stage.metrics.registry.get_sample_value(
        "tokenpools_streams_consumer_lag_records", {"topic": "requests", "partition": "0"}) == 8
