# ruff: noqa: F811  (the Kafka fixtures are imported by name, and taken as parameters)
"""The global loop service of region ``a`` on the real session Kafka broker, with region ``b`` played by the test.

Region ``b``'s ``RegionReport``s are produced directly onto ``b.<prefix>tokenpools.region-summaries``, the name
MirrorMaker 2 gives b's summaries on a's cluster: this stands in for MirrorMaker, which the two-region tests
run for real (two clusters and the MirrorMaker 2 links). The pipeline does not run either: the regional
share's ``EntitlementState`` (its demand) is produced directly on a's entitlement-state topic.

The expected shares are computed here from the rule itself (10 % of each figure split evenly over the
live regions, the rest in proportion to their demand), not by the capacity code. Every wait polls with a
deadline (``eventually``); nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.records import Amounts, EntitlementState, RegionReport
from schemas.specs import Entitlement, Manifest
from schemas.topics import COMPACTED, Topics, config_key, config_value
from schemas.wire import encode
from streams.regional.service import RegionalService
from streams.regional.settings import RegionalSettings
from streams.topics import create_topics
from tests.integration.conftest import create_topic, kafka, prefix  # noqa: F401  (fixtures, by name)
from tests.integration.harness import eventually
from tests.streams.regional.helpers import Triple, ent, glob, pool
from tokenpools.kafka.reader import read_records

pytestmark = pytest.mark.integration

EPOCH_S = 0.5
LOST_S = 4.0
FLOOR = 0.1
GLOBAL_BURST: Triple = (1000.0, 100000.0, 100.0)
GLOBAL_GUARANTEE: Triple = (400.0, 40000.0, 40.0)
DEMAND: dict[str, Triple] = {"a": (300.0, 30000.0, 30.0), "b": (100.0, 10000.0, 10.0)}
OTHER_GUARANTEE: Triple = (100.0, 1000.0, 1.0)  # another guaranteed entitlement on a's pool
POOL_AT_MAX: Triple = (8000.0, 800000.0, 800.0)  # 8 replicas of 1,000 / 100,000 / 100


def expected_split(figure: Triple, demand: dict[str, Triple]) -> dict[str, Triple]:
    """The rule, per dimension: FLOOR of the figure split evenly, the rest by demand (no capacity binds here)."""
    out: dict[str, list[float]] = {r: [] for r in demand}
    for d in range(3):
        total = sum(x[d] for x in demand.values())
        for r, x in demand.items():
            out[r].append(figure[d] * FLOOR / len(demand) + figure[d] * (1 - FLOOR) * x[d] / total)
    return {r: (v[0], v[1], v[2]) for r, v in out.items()}


BURST = expected_split(GLOBAL_BURST, DEMAND)
GUARANTEE = expected_split(GLOBAL_GUARANTEE, DEMAND)


def test_the_expected_figures() -> None:
    """The numbers the test waits for, spelled out: a asks for three quarters of the demand."""
    assert BURST["a"] == pytest.approx((725.0, 72500.0, 72.5))
    assert GUARANTEE["a"] == pytest.approx((290.0, 29000.0, 29.0))
    assert BURST["b"] == pytest.approx((275.0, 27500.0, 27.5))
    assert GUARANTEE["b"] == pytest.approx((110.0, 11000.0, 11.0))


async def latest(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for _, key, value in await read_records(bootstrap, [topic], wait_s=60):
        if key is not None:
            out[key] = value
    return out


async def regional_share(bootstrap: str, topics: Topics) -> Entitlement | None:
    value = (await latest(bootstrap, topics.config)).get(b"Entitlement/g")
    return None if value is None else Entitlement.model_validate(orjson.loads(value))


def shares_are(held: Entitlement | None, burst: Triple, guarantee: Triple) -> bool:
    if held is None:
        return False
    return (held.spec.burst.as_tuple() == pytest.approx(burst, rel=1e-9)
            and held.spec.guarantee.as_tuple() == pytest.approx(guarantee, rel=1e-9))


class RegionB:
    """Region b's side, as its reports reach a's cluster: one per epoch on the mirrored topic, enforcing its
    share of the split; ``duplicate_at`` sends that report (counted from the first) twice, as MirrorMaker
    replays one after a restart."""

    def __init__(self, bootstrap: str, topic: str, duplicate_at: int) -> None:
        self.bootstrap, self.topic, self.duplicate_at = bootstrap, topic, duplicate_at
        self.sent: list[str] = []
        self.duplicated: str | None = None
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> RegionB:
        self.task = asyncio.create_task(self.run())
        return self

    async def run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            last = None
            while not self.stop.is_set():
                now = time.time()
                epoch = math.floor(now / EPOCH_S)
                if epoch != last:
                    last = epoch
                    record = RegionReport(
                        id=RegionReport.id_of("b", "g", epoch), entitlement="g", region="b", epoch=epoch, ts=now,
                        demand=Amounts.from_tuple(DEMAND["b"]), capacity=Amounts.from_tuple(POOL_AT_MAX),
                        enforced_burst=Amounts.from_tuple(BURST["b"]),
                        enforced_guarantee=Amounts.from_tuple(GUARANTEE["b"]))
                    copies = 2 if len(self.sent) == self.duplicate_at else 1
                    for _ in range(copies):
                        await producer.send_and_wait(self.topic, encode(record),
                                                     key=RegionReport.key_of("g", "b").encode())
                    if copies == 2:
                        self.duplicated = record.id
                    self.sent.append(record.id)
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


class Running:
    def __init__(self, settings: RegionalSettings) -> None:
        self.service = RegionalService(settings)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(self.stop))

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def started() -> AsyncIterator[list[Running]]:
    running: list[Running] = []
    yield running
    for r in running:
        with contextlib.suppress(Exception):
            await r.halt()


async def test_region_a_follows_the_split_keeps_it_through_a_restart_and_takes_all_when_b_is_lost(
        kafka, prefix: str, started: list[Running]) -> None:
    bootstrap = kafka.bootstrap_servers
    topics = Topics(prefix)
    await create_topics(bootstrap, topics.specs(partitions=2))
    g = glob("g", regions=("a", "b"), guarantee=GLOBAL_GUARANTEE, burst=GLOBAL_BURST, epochSeconds=EPOCH_S,
             lostAfterSeconds=LOST_S, floorFraction=FLOOR, quantum=0)
    docs: list[Manifest] = [pool("pa", region="a"), pool("pb", region="b"),
                            ent("other", pool_name="pa", guarantee=OTHER_GUARANTEE), g]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for doc in docs:
            await producer.send_and_wait(topics.config, config_value(doc), key=config_key(doc).encode())
        state = EntitlementState(id="g", pool="pa", tier="guaranteed", seq=1, ts=time.time(), limits=Amounts(),
                                 demand=Amounts.from_tuple(DEMAND["a"]), usage=Amounts(throughput=250.0))
        await producer.send_and_wait(topics.entitlement_state, encode(state), key=b"g")
    finally:
        await producer.stop()

    settings = RegionalSettings(region="a", kafka={"bootstrap": bootstrap, "prefix": prefix}, topic_poll_s=0.5)
    first = Running(settings)
    started.append(first)

    # Start-up: the share is written at once, with nothing while b has not been heard of (b's mirrored
    # topic does not even exist yet), carrying the global entitlement's keys for the admitters.
    held = await eventually(lambda: regional_share(bootstrap, topics))
    assert held.spec.burst.as_tuple() == (0.0, 0.0, 0.0) and held.spec.pool == "pa"
    assert held.spec.api_keys == g.spec.api_keys
    assert first.service.enforced["g"].status == "holding" and first.service.enforced["g"].waiting_for == ("b",)

    # b's summaries appear (MirrorMaker creates the topic when b first publishes): a follows the split.
    mirrored = topics.mirrored_region_summaries("b")
    await create_topic(bootstrap, mirrored, 1, COMPACTED)
    b = RegionB(bootstrap, mirrored, duplicate_at=6).start()
    try:
        await eventually(lambda: _shares(bootstrap, topics, BURST["a"], GUARANTEE["a"]))

        # a's own report: its demand, and its pool at max replicas minus the other guarantee.
        own = await latest(bootstrap, topics.region_summaries)
        report = RegionReport.model_validate_json(own[RegionReport.key_of("g", "a").encode()] or b"")
        assert report.id == RegionReport.id_of("a", "g", report.epoch)
        assert report.demand.as_tuple() == DEMAND["a"] and report.usage.throughput == 250.0
        assert report.capacity.as_tuple() == tuple(m - o for m, o in zip(POOL_AT_MAX, OTHER_GUARANTEE, strict=True))

        # The duplicate (same region, entitlement and epoch) is counted once and never applied twice.
        metrics = first.service.metrics

        async def one_duplicate() -> bool:
            assert b.duplicated is not None
            return metrics.value("tokenpools_regional_reports_total", entitlement="g", region="b",
                                 verdict="duplicate") == 1

        await eventually(one_duplicate)
        assert (metrics.value("tokenpools_regional_reports_total", entitlement="g", region="b", verdict="applied")
                or 0) >= 2
        assert shares_are(await regional_share(bootstrap, topics), BURST["a"], GUARANTEE["a"])
        writes = metrics.value("tokenpools_regional_writes_total", entitlement="g")
        assert writes is not None and writes >= 2  # the start-up write, then the split (once per change)

        # Restart: the new loop starts from the share in the config, and writes nothing while it holds.
        await first.halt()
        second = Running(settings)
        started.append(second)
        await eventually(lambda: _async(lambda: "g" in second.service.started_from))
        assert second.service.started_from["g"] == (pytest.approx(BURST["a"]), pytest.approx(GUARANTEE["a"]))
        await eventually(lambda: _async(lambda: second.service.enforced.get("g") is not None
                                        and second.service.enforced["g"].status == "split"))
        assert shares_are(await regional_share(bootstrap, topics), BURST["a"], GUARANTEE["a"])
        assert not second.service.metrics.value("tokenpools_regional_writes_total", entitlement="g")
    finally:
        await b.halt()

    # b goes silent past lostAfterSeconds: a holds the whole guarantee (and the whole burst).
    await eventually(lambda: _shares(bootstrap, topics, GLOBAL_BURST, GLOBAL_GUARANTEE))
    assert second.service.enforced["g"].lost == ("b",)
    assert second.service.metrics.value("tokenpools_regional_lost_regions", entitlement="g") == 1
    assert second.service.bad.total() == 0


async def _shares(bootstrap: str, topics: Topics, burst: Triple, guarantee: Triple) -> bool:
    return shares_are(await regional_share(bootstrap, topics), burst, guarantee)


async def _async(check, *args):  # type: ignore[no-untyped-def]
    return check(*args) if args else check()
