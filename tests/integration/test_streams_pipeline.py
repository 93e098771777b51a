"""The metering pipeline against a real Kafka: Faust workers as subprocesses (`tokenpools streams worker`).

Each test isolates itself with a topic prefix (every topic and the app id get it) and uses short
windows (1 s tumbling, 3 s hopping every 1 s) and a 0.25 s pool tick so numbers settle in seconds.
Counts are checked exactly through the cumulative totals stage 1 sends with every summary, and the
published states against the trailing window that holds the events (its peak: every event inside).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from schemas import topics
from schemas.loader import parse_manifest
from schemas.records import Amounts, EntitlementState, Outcome, Phase, PoolState, RequestEvent
from schemas.topics import config_value
from tests.integration.harness import (
    ENT_YAML,
    AppliedStates,
    Kafka,
    Worker,
    event,
    eventually,
    request_pair,
    settled,
    totals_are,
    write_config,
)

pytestmark = pytest.mark.integration
W = 5.0  # the trailing window (the harness's 1 s one shows events for only ~1 s after their timestamp)
WINDOW = ("--tumbling-seconds", str(W))


# ---------------------------------------------------------------------------------------------


async def test_events_in_states_out_with_duplicates_and_bad_records(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    config = write_config(tmp_path / "config.yaml", {"p": [("g", "guaranteed"), ("e1", "elastic"), ("e2", "elastic")]})
    # A 5 s trailing window: the events stay wholly inside it for 4.5 s, so some tick sees all of them even
    # when a loaded machine delays them.
    w = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log", *WINDOW).start()
    workers.append(w)
    await w.wait_ready()

    # Bad records on every topic the pipeline reads come first; good ones follow.
    await kafka_io.send(topics.REQUESTS, b"{not json", b"e1")
    await kafka_io.send(topics.REQUESTS, b'{"schema_version": 99}', b"e1")
    await kafka_io.send(topics.CONFIG, b"\xff\xfe", b"TokenPool/q")
    await kafka_io.send(topics.REPLICAS, b'{"schema_version": 1, "pool": "p", "ready_replicas": -3}', b"p")
    await kafka_io.send(topics.ENTITLEMENT_USAGE, b"[1, 2]", b"p")

    t0 = time.time()
    events = []
    for i in range(20):
        events += request_pair("e1", "p", "elastic", t0, prompt=100, output=40, admitter_id=f"adm-{i % 2}")
    for _ in range(10):
        events += request_pair("e2", "p", "elastic", t0, prompt=200, output=10)
    for _ in range(5):
        events += request_pair("e2", "p", "elastic", t0, outcome=Outcome.REFUSED)
    await kafka_io.publish(events)
    await kafka_io.publish(events[:10])  # at-least-once upstream: the same ids again
    # Good records after the bad ones on the config and replica topics take effect.
    await kafka_io.send(topics.REPLICAS, orjson.dumps({"schema_version": 1, "pool": "p", "ready_replicas": 3}), b"p")
    late = ENT_YAML % {"name": "e3", "pool": "p", "tier": "spot", "guarantee": "{}", "weight": 1}
    await kafka_io.send(topics.CONFIG, config_value(parse_manifest(yaml.safe_load(late))), b"Entitlement/e3")

    await settled(totals_are(kafka_io, {
        "e1": {"events": 40, "duplicates": 10, "decisions": 20, "admitted": 20, "finished": 20,
               "prompt_tokens": 2000, "output_tokens": 800},
        "e2": {"events": 25, "duplicates": 0, "decisions": 15, "refused": 5, "prompt_tokens": 2000,
               "output_tokens": 100},
    }))

    # The trailing window holding t0 reaches the allocator: at its peak, usage and demand of all the events
    # per second of the window, exactly; never more; and back to zero once the window has passed.
    async def window_gone() -> list[EntitlementState]:
        states = [s for s in await kafka_io.states() if s.id == "e1"]
        peak = max(range(len(states)), key=lambda i: states[i].usage.throughput)
        return states if states[peak].usage.throughput > 0 and states[-1].usage.throughput == 0 else []

    states = await eventually(window_gone)
    e1 = max(states, key=lambda s: s.usage.throughput)
    assert e1.usage.throughput == pytest.approx((0.5 * 2000 + 800) / W)  # weighted tokens per second
    assert e1.usage.kv == pytest.approx(20 * 200 * 0.5 / W)  # 20 requests held kv=200 for 0.5 s
    assert e1.demand.throughput == pytest.approx(20 * (0.5 * 100 + 40) / W)
    assert max(s.demand.throughput for s in states) == pytest.approx(e1.demand.throughput)
    assert set(e1.admitter_shares) == {"adm-0", "adm-1"}
    # The shares never add up to more than the limit (a raise is published a tick late), and do add up
    # to it once the limit stops rising.
    shared = [(sum(a.throughput for a in s.admitter_shares.values()), s.limits.throughput) for s in states]
    assert all(total <= limit * (1 + 1e-9) for total, limit in shared), shared
    assert any(total == pytest.approx(limit) for total, limit in shared[states.index(e1):] if limit > 0), shared
    e2 = max((s for s in await kafka_io.states() if s.id == "e2"), key=lambda s: s.demand.throughput)
    refused_tp = 5 * (0.5 * 100 + 40)
    assert e2.demand.throughput == pytest.approx((10 * (0.5 * 200 + 10) + refused_tp) / W)  # refused work is demand

    async def pool_after_report() -> list[PoolState]:
        return [p for p in await kafka_io.pool_states() if p.ready_replicas == 3]

    await eventually(pool_after_report)
    pools = await kafka_io.pool_states()
    assert pools[0].ready_replicas == 1 and pools[-1].capacity.throughput == 3000
    assert [p.seq for p in pools] == sorted(p.seq for p in pools)
    assert any(s.id == "e3" for s in await kafka_io.states())

    metrics = await w.metrics()
    assert metrics[("tokenpools_streams_events_total", (("verdict", "duplicate"),))] == 10
    assert metrics[("tokenpools_streams_events_total", (("verdict", "new"),))] == 65

    def bad(topic: str, reason: str) -> float:
        return metrics.get(("tokenpools_streams_bad_records_total",
                            (("reason", reason), ("topic", prefix + topic))), 0.0)

    assert bad(topics.REQUESTS, "not_json") == 1
    assert bad(topics.REQUESTS, "unknown_schema_version") == 1
    assert bad(topics.CONFIG, "not_json") == 1
    assert bad(topics.REPLICAS, "invalid") == 1
    assert bad(topics.ENTITLEMENT_USAGE, "not_an_object") == 1
    assert "skipping bad record on" in w.tail()


async def test_worker_killed_and_restarted_loses_and_doubles_nothing_and_keeps_debt(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    config = write_config(tmp_path / "config.yaml", {"p": [("hog", "elastic"), ("idle", "elastic")]})
    # A long commit interval: after the kill, up to 5 s of events are redelivered and must be skipped.
    first = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "w1.log", "--commit-interval", "5")
    workers.append(first.start())
    await first.wait_ready()

    published = 0
    stop = asyncio.Event()

    async def publish_forever() -> None:
        nonlocal published
        while not stop.is_set():
            batch = []
            for _ in range(5):  # 5 requests per 0.1 s, 100 + 400 weighted tokens each: 2500 tok/s > capacity
                batch += request_pair("hog", "p", "elastic", time.time(), prompt=200, output=400)
            await kafka_io.publish(batch)
            published += len(batch)
            await asyncio.sleep(0.1)

    publisher = asyncio.create_task(publish_forever())
    try:
        async def hog_in_debt() -> list[EntitlementState]:
            return [s for s in await kafka_io.states() if s.id == "hog" and s.debt > 0.5]

        await eventually(hog_in_debt)
        await asyncio.sleep(1.0)
        first.kill()
        before = [s for s in await kafka_io.states() if s.id == "hog"]
        last_before = max(before, key=lambda s: s.seq)
        await asyncio.sleep(1.0)
        second = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "w2.log")
        workers.append(second.start())
        await second.wait_ready()

        # Traffic goes on until the restarted worker has published the hog's state with more debt than
        # the first one's last: recovered, and still growing.
        async def debt_grew_after_restart() -> list[EntitlementState]:
            return [s for s in await kafka_io.states()
                    if s.id == "hog" and s.seq > last_before.seq and s.debt > last_before.debt]

        await eventually(debt_grew_after_restart)
    finally:
        stop.set()
        await publisher

    await settled(totals_are(kafka_io, {"hog": {"events": published, "duplicates": 0}}))
    after = [s for s in await kafka_io.states() if s.id == "hog" and s.seq > last_before.seq]
    assert after, "the restarted worker published no state"
    first_after = min(after, key=lambda s: s.seq)
    assert first_after.debt >= 0.9 * last_before.debt > 0  # recovered from the changelog, not reset to 0
    assert max(s.debt for s in after) > last_before.debt  # and still growing: hog keeps over-using
    metrics = await second.metrics()
    assert metrics[("tokenpools_streams_events_total", (("verdict", "replay"),))] > 0  # redelivered, not recounted
    # --config publishes documents only if absent: the restarted worker added nothing.
    assert sorted(k for k, _ in await kafka_io.read_all(topics.CONFIG)) == [
        b"Entitlement/hog", b"Entitlement/idle", b"TokenPool/p"]


async def test_two_workers_share_the_partitions_and_count_exactly(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    pools = {f"pool{i}": [(f"p{i}-e{j}", "elastic") for j in range(4)] for i in range(3)}
    config = write_config(tmp_path / "config.yaml", pools)
    a = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "a.log", *WINDOW).start()
    b = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "b.log", *WINDOW).start()
    workers += [a, b]
    await a.wait_ready()
    await b.wait_ready()

    async def split() -> bool:
        sa, sb = await a.status(), await b.status()
        if not (sa["ready"] and sb["ready"] and sa["requests_partitions"] and sb["requests_partitions"]):
            return False
        assert not set(sa["requests_partitions"]) & set(sb["requests_partitions"])
        assert set(sa["requests_partitions"]) | set(sb["requests_partitions"]) == set(range(6))
        assert not set(sa["owned_pools"]) & set(sb["owned_pools"])
        return set(sa["owned_pools"]) | set(sb["owned_pools"]) == set(pools)

    await eventually(split)
    t0 = time.time()
    events: list[RequestEvent] = []
    expected: dict[str, dict[str, int]] = {}
    for pool, ents in pools.items():
        for k, (name, _) in enumerate(ents):
            for _ in range(k + 1):
                events += request_pair(name, pool, "elastic", t0, prompt=10, output=10)
            expected[name] = {"events": 2 * (k + 1), "prompt_tokens": 10 * (k + 1), "duplicates": 1}
    await kafka_io.publish(events)
    await kafka_io.publish([next(e for e in events if e.entitlement == name) for name in expected])  # one dup each
    await settled(totals_are(kafka_io, expected))

    async def every_entitlement_has_usage() -> bool:
        seen = {s.id for s in await kafka_io.states() if s.usage.throughput > 0}
        return seen >= set(expected)

    await eventually(every_entitlement_has_usage)
    for pool in pools:
        seqs = [p.seq for p in await kafka_io.pool_states() if p.id == pool]
        assert seqs and seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{pool}: ticks overlapped {seqs}"
    ma, mb = await a.metrics(), await b.metrics()
    new = ("tokenpools_streams_events_total", (("verdict", "new"),))
    assert ma[new] + mb[new] == sum(v["events"] for v in expected.values())


# -- event-to-limit lag, in ticks ---------------------------------------------------------------

ZERO = 1e-6
# The bound on the event-to-limit lag, in pool ticks (the pool ticks every TICK_S = 0.25 s, stage 1
# summarises every record every SUMMARY_S = 0.25 s and, on the early path, a record whose demand moved
# within --change-check-seconds, 0.1 s). From the follower's latest tick number when the event is
# published to the tick whose state gives the other admitter its new share, by design:
#   1 tick: stage 1 fetches and applies the event (the worker's fetch wait is 0.1 s);
#   1 tick: stage 1 summarises the moved record (0.1 s early check, 0.25 s regular interval at the latest);
#   2 ticks: stage 2 (the same worker: handed over in-process) ticks on it: the next tick, or the one
#            after if a tick had read its inputs just before the summary was stored;
#   1 tick: a raised share is published one tick after the limit (``capacity.split.hold_raises``);
#   1 tick: the follower's tick number at publish is itself up to a tick behind (its own fetch);
#   0 ticks: the follower applies that very state record (checked: it skips none).
LAG_TICKS = 6
# The trailing window: an allocator that waited for the closed tumbling window instead would take
# W / TICK_S = 20 ticks or more, over three times the bound.
LAG_WINDOW = ("--tumbling-seconds", "5")


def decision(ent: str, throughput: float, *, outcome: Outcome = Outcome.ADMITTED,
             admitter_id: str = "adm-1") -> RequestEvent:
    reserved = Amounts(throughput=throughput, kv=100, concurrency=1)
    return event(ent, "p", "elastic", Phase.DECISION, outcome, time.time(), reserved=reserved, prompt_tokens=0,
                 max_tokens=max(1, int(throughput)), admitter_id=admitter_id)


async def test_an_admitters_event_changes_another_admitters_limit_within_a_bounded_number_of_ticks(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    """README and docs/pipeline.md "Latency": an event at one admitter reaches another admitter's limit
    in well under a second. Counted in the pool's ticks (tick numbers of the state records), not timed:
    a rival keeps the pool saturated, so an idle entitlement's throughput limit is 0 until its first
    event (from adm-1) reaches the allocator; a real ``StateFollower`` at adm-2 (an admitter of the
    pool: the rival's traffic comes through it) applies its share of the new limit."""
    steppers = [f"s{i}" for i in range(4)]
    config = write_config(tmp_path / "config.yaml", {"p": [("rival", "elastic"), *[(s, "elastic") for s in steppers]]})
    w = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log", *LAG_WINDOW).start()
    workers.append(w)
    await w.wait_ready()
    follower = await AppliedStates(kafka.bootstrap_servers, prefix, config, "adm-2").begin()
    stop = asyncio.Event()

    async def rival() -> None:  # 300 weighted tokens per 0.1 s: 3x the pool's 1,000/s
        while not stop.is_set():
            await kafka_io.publish([decision("rival", 300.0, admitter_id="adm-2")])
            await asyncio.sleep(0.1)

    task = asyncio.create_task(rival())
    steps: list[tuple[str, int, EntitlementState]] = []  # stepper, follower's tick at publish, first share > 0
    try:
        async def saturated() -> bool:
            latest = follower.latest
            return (all(s in latest and latest[s].limits.throughput <= ZERO for s in steppers)
                    and "rival" in latest and latest["rival"].demand.throughput > 1000)

        await eventually(saturated, every=0.1)
        for name in steppers:  # one step at a time: an idle entitlement's first event
            at_publish = follower.seq("p")
            await kafka_io.publish([decision(name, 100.0, admitter_id="adm-1")])

            async def raised(name: str = name, after: int = at_publish) -> EntitlementState | None:
                return next((s for s in follower.history
                             if s.id == name and s.seq > after and follower.share[name, s.seq] > ZERO), None)

            steps.append((name, at_publish, await eventually(raised, every=0.05)))
    finally:
        stop.set()
        await task
        await follower.stop()

    states = await kafka_io.states()
    ticks = {p.seq: p for p in await kafka_io.pool_states() if p.id == "p"}
    summaries = await kafka_io.summaries()
    lags = []
    for name, at_publish, shared in steps:
        mine = sorted((s for s in states if s.id == name), key=lambda s: s.seq)
        first = next(s for s in mine if s.seq > at_publish and s.limits.throughput > ZERO)  # the new limit
        assert mine[mine.index(first) - 1].limits.throughput <= ZERO  # the state before it: still 0
        assert (name, first.seq) in follower.share  # the follower applied that record: it skips none
        assert shared.seq - first.seq <= 1, (name, first.seq, shared.seq)  # its share: then, or one tick later
        # Stage 1's first summary showing the event, and the ticks after it that did not carry it yet.
        shown = min((u for u in summaries if u.entitlement == name and u.trailing is not None
                     and u.trailing.demand.throughput > ZERO), key=lambda u: u.ts)
        missed = [seq for seq, p in ticks.items() if p.ts >= shown.ts and seq < first.seq]
        assert len(missed) <= 1, (name, shown.ts, missed)  # the next tick, or the one after a tick in progress
        lags.append((first.seq - at_publish, shared.seq - at_publish, len(missed)))
    print(f"event-to-limit lag in ticks (to the limit, to adm-2's share, "
          f"ticks after the summary showing the event that missed it): {lags}")
    assert all(share <= LAG_TICKS for _, share, _ in lags), lags


# -- elastic shares converge through the pipeline ------------------------------------------------

CAPACITY = 1000.0  # the harness pool: one replica of 1,000 weighted tokens/s at targetUtilisation 1.0
WEIGHTS = {"big": 2, "small": 1}
# The weighted fair split, by hand: no guarantees and both saturating, so all of it by weight.
FAIR = {"big": CAPACITY * 2 / 3, "small": CAPACITY * 1 / 3}
TOLERANCE = 0.05
HEAD_START_TICKS = 8  # small alone, using the whole pool, for 2 s: its debt to repay
# Ticks from big's arrival until both limits stay within 5 % of the fair split. Debt is remembered use
# (300 s half-life): small must have used about a third of everything remembered. After a head start of
# H seconds alone, the remembered shares relax to the configured ones like (H / (H + t)) ** 1.7, so
# 5 % on small's third takes t of about 6 H: 12 s, 48 ticks. Bound: three times that.
CONVERGE_TICKS = 150
STAY_TICKS = 40  # and they stay there this long
DEMAND = 2000.0  # each asks for twice the pool


class Tenant:
    """An admitter's worth of traffic for one entitlement that admits exactly the limit the pipeline last
    gave it (as applied by a real ``StateFollower``) and is refused the rest of a saturating demand.
    Every 0.1 s: one completed request of ``limit * dt`` weighted tokens (output tokens, weight 1) and one
    refused decision for the remainder of ``DEMAND * dt``."""

    def __init__(self, name: str, io: Kafka, follower: AppliedStates) -> None:
        self.name = name
        self.io = io
        self.follower = follower
        self.stop = asyncio.Event()
        self.used = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Tenant:
        self.task = asyncio.create_task(self._run())
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task

    async def _run(self) -> None:
        last, carry = time.monotonic(), 0.0
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
            now = time.monotonic()
            dt, last = now - last, now
            state = self.follower.latest.get(self.name)
            carry += (state.limits.throughput if state is not None else 0.0) * dt
            used = int(carry)
            carry -= used
            batch = [decision(self.name, DEMAND * dt - used, outcome=Outcome.REFUSED)]
            if used:
                admitted = decision(self.name, float(used))
                finished = event(self.name, "p", "elastic", Phase.FINISH, Outcome.COMPLETED, admitted.ts,
                                 request_id=admitted.request_id, reserved=admitted.reserved, prompt_tokens=0,
                                 output_tokens=used, latency_s=0.1)
                batch = [admitted, finished, *batch]
            await self.io.publish(batch)
            self.used += used


async def test_elastic_limits_converge_to_the_weighted_split_through_the_pipeline(
    kafka: Any, kafka_io: Kafka, prefix: str, tmp_path: Path, workers: list[Worker]
) -> None:
    """README: elastic tenants converge to their weighted shares through debt. Two elastic entitlements,
    weights 2:1, both demanding twice the pool; small has the pool to itself first. The limits in the
    pipeline's entitlement states reach 2/3 and 1/3 of the pool within 5 % and stay there."""
    config = write_config(tmp_path / "config.yaml", {"p": [(n, "elastic", w) for n, w in WEIGHTS.items()]})
    w = Worker(kafka.bootstrap_servers, prefix, config, tmp_path / "worker.log").start()
    workers.append(w)
    await w.wait_ready()
    follower = await AppliedStates(kafka.bootstrap_servers, prefix, config, "adm-1").begin()
    small = Tenant("small", kafka_io, follower).start()
    big: Tenant | None = None
    try:
        async def small_has_the_pool() -> int:
            state = follower.latest.get("small")
            return state.seq if state is not None and state.limits.throughput > 0.99 * CAPACITY else 0

        head_start_from = await eventually(small_has_the_pool, every=0.05)
        await eventually(lambda: _is_past(follower, head_start_from + HEAD_START_TICKS), every=0.05)
        joined = follower.seq("p")
        big = Tenant("big", kafka_io, follower).start()

        async def converged_and_stayed_or_too_late() -> bool:
            last = follower.seq("p")
            since = converged_since(follower.history, joined)
            return (since is not None and last - since >= STAY_TICKS) or last - joined > CONVERGE_TICKS + STAY_TICKS

        await eventually(converged_and_stayed_or_too_late, every=0.25)
    finally:
        await small.close()
        if big is not None:
            await big.close()
        await follower.stop()

    # On the state topic, every tick from big's arrival on.
    states = [s for s in await kafka_io.states() if s.seq > joined]
    since = converged_since(states, joined)
    assert since is not None, "the limits were not within 5 % of the split at the end"
    end = max(s.seq for s in states)
    lowest = min(s.limits.throughput for s in states if s.id == "small")
    print(f"converged {since - joined} ticks after big arrived (head start {HEAD_START_TICKS} ticks), then "
          f"{end - since} ticks within {TOLERANCE:.0%}; small's lowest limit {lowest:.1f}; last limits "
          + ", ".join(f"{s.id} {s.limits.throughput:.1f} ({s.limits.throughput / FAIR[s.id] - 1:+.2%})"
                      for s in states if s.seq == end))
    assert since - joined <= CONVERGE_TICKS
    assert end - since >= STAY_TICKS
    by_seq: dict[int, dict[str, float]] = {}
    for s in states:
        by_seq.setdefault(s.seq, {})[s.id] = s.limits.throughput
    assert all(sum(limits.values()) == pytest.approx(CAPACITY, rel=1e-6) for limits in by_seq.values()
               if len(limits) == 2)  # all of the pool, all the time


def converged_since(states: list[EntitlementState], after: int) -> int | None:
    """The tick from which every limit of ``states`` (ticks after ``after``) is within TOLERANCE of FAIR."""
    ticks = sorted({s.seq for s in states if s.seq > after})
    if not ticks:
        return None
    outside = [s.seq for s in states if s.seq > after
               and abs(s.limits.throughput / FAIR[s.id] - 1) > TOLERANCE]
    if not outside:
        return ticks[0]
    later = [t for t in ticks if t > max(outside)]
    return later[0] if later else None


async def _is_past(follower: AppliedStates, seq: int) -> bool:
    return follower.seq("p") >= seq
