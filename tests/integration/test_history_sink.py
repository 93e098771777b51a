"""The history sink on real Kafka into real ClickHouse (chDB): exact counts through replays and bad records.

Nothing is mocked. The sink runs in this process against the shared chDB directory (a database per
test); expected counts come from the events the test published, not from the sink's own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from schemas import topics
from schemas.records import Amounts, EntitlementState, Outcome, Phase, PoolState, RequestEvent
from schemas.specs import Tier
from schemas.topics import Topics
from schemas.wire import encode, encode_event_batch
from streams.history.settings import HistorySettings, StoreSettings
from streams.history.sink import HistorySink
from streams.history.store import HistoryStore
from streams.topics import create_topics
from tests.integration.harness import Kafka, request_pair

pytestmark = pytest.mark.integration

WAIT_S = 90.0
# Two hours ago on a whole second: inside retention (older rows would expire on insert), in two hour rollups.
T0 = float(int(time.time()) // 3600 * 3600 - 7200)


def sink_settings(bootstrap: str, prefix: str, store: StoreSettings, **sink: Any) -> HistorySettings:
    return HistorySettings(kafka={"bootstrap": bootstrap, "prefix": prefix}, store=store,
                           sink={"block_records": 50, "flush_interval_s": 0.3, "session_timeout_s": 6, **sink})


@contextlib.asynccontextmanager
async def running(sink: HistorySink) -> AsyncIterator[HistorySink]:
    task = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Any, within: float = WAIT_S, show: Any = None) -> Any:
    """Poll ``check`` until it is truthy; on timeout the error shows ``show()`` (what was seen last)."""
    try:
        async with asyncio.timeout(within):
            while True:
                value = await asyncio.to_thread(check)
                if value:
                    return value
                await asyncio.sleep(0.3)
    except TimeoutError:
        seen = await asyncio.to_thread(show) if show is not None else None
        raise AssertionError(f"not reached within {within:.0f} s; last seen {seen}") from None


def counts(store: HistoryStore) -> dict[str, Any]:
    """Every figure a duplicate or a gap would move: raw rows and ids, and each rollup's sums."""
    q = store.query_write_side
    raw = q("SELECT count(), uniqExact(event_id), sum(prompt_tokens), sum(output_tokens) FROM request_events").rows[0]
    m = q("SELECT sum(events), sum(prompt_tokens), sum(output_tokens) FROM request_rollup_1m").rows[0]
    h = q("SELECT sum(events), sum(prompt_tokens), sum(output_tokens) FROM request_rollup_1h").rows[0]
    return {
        "raw": tuple(int(x) for x in raw),
        "minute": tuple(int(x or 0) for x in m), "hour": tuple(int(x or 0) for x in h),
        "states": int(q("SELECT count() FROM entitlement_state").rows[0][0]),
        "pools": int(q("SELECT count() FROM pool_state").rows[0][0]),
        "dead": int(q("SELECT count() FROM dead_letters").rows[0][0]),
    }


def expected_counts(events: list[RequestEvent]) -> tuple[int, int, int, int]:
    return (len(events), len({e.id for e in events}), sum(e.prompt_tokens for e in events),
            sum(e.output_tokens for e in events))


def traffic(n_requests: int, ts0: float) -> list[RequestEvent]:
    out: list[RequestEvent] = []
    for i in range(n_requests):
        ent = f"e{i % 5}"
        outcome = Outcome.REFUSED if i % 7 == 0 else Outcome.ADMITTED
        out += request_pair(ent, "p", "elastic", ts0 + i * 0.01, prompt=10 + i % 13, output=5 + i % 11,
                            outcome=outcome)
    return out


async def publish_batched(io: Kafka, events: list[RequestEvent], per_record: int = 7) -> None:
    """Events of one entitlement packed into batch records, as admitters send them."""
    by_ent: dict[str, list[RequestEvent]] = {}
    for ev in events:
        by_ent.setdefault(ev.entitlement, []).append(ev)
    for ent, evs in by_ent.items():
        for i in range(0, len(evs), per_record):
            await io.send(topics.REQUESTS, encode_event_batch([encode(e) for e in evs[i:i + per_record]]), ent.encode())
    assert io.producer is not None
    await io.producer.flush()


@pytest.fixture
async def history_topics(kafka: Any, prefix: str) -> Topics:
    t = Topics(prefix)
    await create_topics(kafka.bootstrap_servers, t.specs(partitions=3))
    return t


async def test_replays_change_nothing(kafka: Any, prefix: str, history_topics: Topics, kafka_io: Kafka,
                                      store: HistoryStore, store_settings: StoreSettings) -> None:
    """Everything once; then two replays from the earliest offset (one with a new consumer group) add nothing."""
    singles = traffic(120, T0)
    batched = traffic(300, T0 + 3600)
    await kafka_io.publish(singles)
    await publish_batched(kafka_io, batched)
    state = EntitlementState(id="e0", pool="p", tier=Tier.ELASTIC, seq=1, ts=T0 + 1,
                             limits=Amounts(throughput=100, kv=1000, concurrency=4), debt=0.5, effective_weight=0.7)
    pool = PoolState(id="p", seq=1, ts=T0 + 1, ready_replicas=2, capacity=Amounts(throughput=1000),
                     guarantees=Amounts(), demand={Tier.ELASTIC: Amounts(throughput=500)})
    await kafka_io.send(topics.ENTITLEMENT_STATE, encode(state), b"e0")
    await kafka_io.send(topics.POOL_STATE, encode(pool), b"p")
    assert kafka_io.producer is not None
    await kafka_io.producer.flush()
    everything = singles + batched
    want = expected_counts(everything)

    settings = sink_settings(kafka.bootstrap_servers, prefix, store_settings)
    async with running(HistorySink(store, settings)):
        first = await until(lambda: (c := counts(store))["raw"] == want and c["states"] == 1 and c["pools"] == 1 and c,
                            show=lambda: (counts(store), want))
    assert first["minute"] == first["hour"] == (want[0], want[2], want[3])
    assert first["dead"] == 0

    for replay in (settings, settings.model_copy(update={"sink": settings.sink.model_copy(
            update={"group_id": "tokenpools-history-replay"})})):
        sink = HistorySink(store, replay, from_earliest=True)

        def rebuilt(s: HistorySink = sink) -> float:
            return s.metrics.registry.get_sample_value(
                "tokenpools_history_sink_blocks_total", {"topic": history_topics.requests, "kind": "rebuilt"}) or 0.0

        async with running(sink):
            # Caught up (every partition read to the end the test wrote), and the last planned blocks went in
            # again (their tokens drop them): waited for, not slept on, since a loaded machine is slower.
            await until(sink.caught_up)
            await until(lambda: rebuilt() >= 1, show=lambda: rebuilt())
            await asyncio.sleep(1.0)  # anything the replay would add wrongly has had time to land
        assert counts(store) == first


async def test_bad_records_go_to_dead_letters_and_the_rest_counts(
        kafka: Any, prefix: str, history_topics: Topics, kafka_io: Kafka, store: HistoryStore,
        store_settings: StoreSettings) -> None:
    good = traffic(20, T0)
    ok_batch = [encode(e) for e in good[:3]]
    bad_event = orjson.dumps({"schema_version": 1, "id": "x", "phase": "decision"})  # fields missing
    await kafka_io.send(topics.REQUESTS, b"not json {", b"e0")
    await kafka_io.send(topics.REQUESTS, b'{"schema_version": 99, "id": "y"}', b"e0")
    await kafka_io.send(topics.REQUESTS, encode_event_batch([*ok_batch, bad_event]), b"e0")
    await kafka_io.send(topics.ENTITLEMENT_STATE, b'{"schema_version": 1, "id": "e0", "limits": "lots"}', b"e0")
    await kafka_io.publish(good[3:])
    settings = sink_settings(kafka.bootstrap_servers, prefix, store_settings)
    async with running(HistorySink(store, settings)):
        await until(lambda: counts(store)["raw"][0] == len(good) and counts(store)["dead"] == 4)
        await asyncio.sleep(1.0)
    rows = store.query_write_side(
        "SELECT topic, reason, event_index, raw FROM dead_letters ORDER BY topic, offset, event_index").rows
    by_reason = sorted((r[0].removeprefix(prefix), r[1], r[2]) for r in rows)
    assert by_reason == sorted([
        (topics.ENTITLEMENT_STATE, "invalid", -1), (topics.REQUESTS, "invalid", 3),
        (topics.REQUESTS, "not_json", -1), (topics.REQUESTS, "unknown_schema_version", -1)])
    raws = {r[1]: r[3] for r in rows}
    assert raws["not_json"] == "not json {"
    assert orjson.loads(next(r[3] for r in rows if r[2] == 3)) == orjson.loads(bad_event)
    assert counts(store)["raw"] == expected_counts(good)


async def test_finish_rows_carry_what_analysts_need(kafka: Any, prefix: str, history_topics: Topics,
                                                    kafka_io: Kafka, store: HistoryStore,
                                                    store_settings: StoreSettings) -> None:
    done = RequestEvent(request_id="r1", phase=Phase.FINISH, outcome=Outcome.COMPLETED, ts=T0 + 0.25,
                        admitter_id="adm-9", region="eu", tenant="acme", entitlement="e1", pool="p",
                        tier=Tier.GUARANTEED, prompt_tokens=100, output_tokens=41,
                        reserved=Amounts(throughput=200, kv=300, concurrency=1), ttft_s=0.2, latency_s=2.2,
                        queue_wait_s=0.05, replica="http://10.0.0.7:8000", charged=Amounts(throughput=91))
    await kafka_io.publish([done])
    settings = sink_settings(kafka.bootstrap_servers, prefix, store_settings)
    async with running(HistorySink(store, settings)):
        await until(lambda: counts(store)["raw"][0] == 1)
    row = store.query_write_side(
        "SELECT region, admitter, replica, charged_throughput, kv_seconds, seq_seconds, tpot_s, "
        "toUnixTimestamp64Milli(ts) FROM request_events").rows[0]
    assert row[:4] == ("eu", "adm-9", "http://10.0.0.7:8000", 91.0)
    assert row[4] == pytest.approx(300 * 2.2) and row[5] == pytest.approx(2.2)
    assert row[6] == pytest.approx((2.2 - 0.2) / 40)
    assert row[7] == round((T0 + 0.25) * 1000)
