"""StateFollower against a real broker: a late follower applies the latest state per entitlement."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from admitter.kafka.state_follower import StateFollower
from capacity.live import PoolLive
from schemas.records import Amounts, EntitlementState, PoolState
from schemas.specs import Entitlement, TokenPool
from schemas.topics import COMPACTED
from schemas.wire import encode
from tests.integration.harness import eventually

pytestmark = pytest.mark.integration
ADM = "adm-1"


def pool(name: str, replicas: int = 1) -> TokenPool:
    return TokenPool.model_validate({"metadata": {"name": name}, "spec": {
        "model": name, "perReplica": {"throughput": 1000.0, "kv": 10000.0, "concurrency": 10.0},
        "replicas": {"min": 1, "max": 8, "initial": replicas}}})


def ent(name: str, tier: str = "elastic", guarantee: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Entitlement:
    return Entitlement.model_validate({"metadata": {"name": name}, "spec": {
        "pool": "p", "tenant": name, "tier": tier,
        "guarantee": dict(zip(("throughput", "kv", "concurrency"), guarantee, strict=True)),
        "burst": {"throughput": 1e9, "kv": 1e9, "concurrency": 1e9}}})


class Target:
    def __init__(self, live: PoolLive) -> None:
        self.live = live
        self.changes = 0

    def limits_changed(self) -> None:
        self.changes += 1


def state(name: str, seq: int, tp: float, *, pool_name: str = "p", tier: str = "elastic",
          shares: dict[str, float] | None = None) -> EntitlementState:
    return EntitlementState(
        id=name, pool=pool_name, tier=tier, seq=seq, ts=time.time(),
        limits=Amounts(throughput=tp, kv=10 * tp, concurrency=tp / 100),
        admitter_shares={a: Amounts(throughput=tp * f, kv=10 * tp * f, concurrency=tp / 100 * f)
                         for a, f in (shares or {}).items()},
    )


async def test_late_follower_applies_latest_limits_and_skips_bad_records(kafka: Any, make_topic: Any) -> None:
    ent_topic = await make_topic(partitions=3, config=COMPACTED, hint="ent-state")
    pool_topic = await make_topic(partitions=1, config=COMPACTED, hint="pool-state")
    live = PoolLive(pool("p", replicas=2), [
        ent("a"), ent("b"), ent("g", tier="guaranteed", guarantee=(100.0, 1000.0, 1.0)), ent("c"), ent("d"),
    ], now=time.monotonic())
    target = Target(live)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        for seq in range(1, 4):  # older states first: the follower must end on the latest
            await producer.send(ent_topic, encode(state("a", seq, 100.0 * seq)), key=b"a")
            # "b" is split between two admitters: this one gets a quarter.
            await producer.send(ent_topic, encode(state("b", seq, 400.0 * seq, shares={ADM: 0.25, "adm-2": 0.75})),
                                key=b"b")
            await producer.send(ent_topic, encode(state("g", seq, 1000.0, tier="guaranteed",
                                                         shares={ADM: 0.5, "adm-2": 0.5})), key=b"g")
        await producer.send(ent_topic, b"not json at all", key=b"a")
        await producer.send(ent_topic, b'{"schema_version": 99, "id": "a"}', key=b"a")
        # "d" is split between the other admitters only: this one enforces nothing for it.
        await producer.send(ent_topic, encode(state("d", 1, 400.0, shares={"adm-2": 0.5, "adm-3": 0.5})), key=b"d")
        await producer.send(ent_topic, encode(state("c", 1, 50.0)), key=b"c")
        await producer.send(ent_topic, None, key=b"c")  # tombstone: c's state is gone
        await producer.send(ent_topic, encode(state("elsewhere", 1, 5.0, pool_name="other")), key=b"elsewhere")
        await producer.send(pool_topic, encode(PoolState(id="p", seq=3, ts=time.time(), ready_replicas=4,
                                                         capacity=Amounts(), guarantees=Amounts())), key=b"p")
        await producer.flush()
    finally:
        await producer.stop()

    follower = StateFollower(kafka.bootstrap_servers, ADM, entitlement_topic=ent_topic, pool_topic=pool_topic,
                             initial_wait=30.0)
    await follower.start({"p": target})
    try:
        assert follower.caught_up.is_set()
        a, b, g = (live.entitlements[n] for n in "abg")
        # "a" has no per-admitter split: known admitters of pool p are adm-1, adm-2 and adm-3, so a third.
        assert (a.limit_tp, a.limit_kv, a.limit_conc) == pytest.approx((100.0, 1000.0, 1.0))
        d = live.entitlements["d"]
        assert (d.limit_tp, d.limit_kv, d.limit_conc) == (0.0, 0.0, 0.0)
        assert {kind for (_, kind) in follower.fallbacks} == {"empty", "unlisted"}
        assert follower.fallbacks["p", "unlisted"] >= 1 and follower.fallbacks["p", "empty"] >= 1
        assert (b.limit_tp, b.limit_kv, b.limit_conc) == pytest.approx((300.0, 3000.0, 3.0))
        # Half of g's limit, and half of its guarantee.
        assert g.guarantee == pytest.approx((50.0, 500.0, 0.5))
        assert g.limit_tp == pytest.approx(500.0)
        assert "c" not in follower.entitlements and "elsewhere" in follower.entitlements
        assert follower.bad.total(ent_topic) == 2
        assert live.replicas == 4
        assert live.cap_tp == pytest.approx(pool("p").spec.capacity(4)[0] / 3)
        assert target.changes >= 1

        # It keeps tailing: a new state is applied.
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(ent_topic, encode(state("a", 4, 1000.0, shares={ADM: 1.0})), key=b"a")
        finally:
            await producer.stop()

        async def updated() -> bool:
            return a.limit_tp == pytest.approx(1000.0)
        await eventually(updated, within=20, every=0.1)
    finally:
        await follower.stop()


async def test_follower_without_kafka_keeps_configured_limits() -> None:
    live = PoolLive(pool("p"), [ent("g", tier="guaranteed", guarantee=(100.0, 1000.0, 1.0))], now=time.monotonic())
    follower = StateFollower("127.0.0.1:1", ADM, initial_wait=0.5, retry_backoff=0.1)
    await follower.start({"p": Target(live)})
    try:
        assert not follower.caught_up.is_set()
        await asyncio.sleep(0.2)
        assert live.entitlements["g"].limit_tp == pytest.approx(100.0)
    finally:
        await follower.stop()


async def test_follower_keeps_limits_through_a_broker_outage_and_applies_newer_state_after(
    kafka: Any, make_topic: Any
) -> None:
    """The broker is stopped and restarted on the same port (the suite's own LocalKafka)."""
    ent_topic = await make_topic(partitions=2, config=COMPACTED, hint="ent-state")
    pool_topic = await make_topic(partitions=1, config=COMPACTED, hint="pool-state")
    live = PoolLive(pool("p"), [ent("a")], now=time.monotonic())

    async def publish(seq: int, tp: float) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(ent_topic, encode(state("a", seq, tp, shares={ADM: 1.0})), key=b"a")
        finally:
            await producer.stop()

    await publish(1, 100.0)
    follower = StateFollower(kafka.bootstrap_servers, ADM, entitlement_topic=ent_topic, pool_topic=pool_topic,
                             initial_wait=30.0, retry_backoff=0.2, contact_timeout=2.0)
    await follower.start({"p": Target(live)})
    a = live.entitlements["a"]
    try:
        assert follower.caught_up.is_set() and a.limit_tp == pytest.approx(100.0)

        async def connected() -> bool:
            return follower.connected
        await eventually(connected, within=20, every=0.1)
        assert follower.reconnects == 0

        await kafka.astop()
        try:
            async def lost() -> bool:
                return not follower.connected
            await eventually(lost, within=30, every=0.1)
            await asyncio.sleep(1.0)  # a while without Kafka: the last limits stay in force
            assert a.limit_tp == pytest.approx(100.0) and follower.last_seq["p"] == 1
        finally:
            await kafka.astart()

        await publish(2, 300.0)

        async def newer_applied() -> bool:
            return a.limit_tp == pytest.approx(300.0) and follower.last_seq["p"] == 2
        await eventually(newer_applied, within=60, every=0.1)
        await eventually(connected, within=20, every=0.1)
        assert follower.reconnects >= 1
    finally:
        await follower.stop()
