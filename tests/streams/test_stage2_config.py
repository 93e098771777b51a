"""Stage 2's glue (summaries in, ticks persisted, states published) and the config view, without Kafka."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from schemas.records import EntitlementState, PoolState
from schemas.topics import config_key, config_value
from schemas.wire import BadRecords
from streams.codec import RawMessage, partition_for
from streams.config_table import ConfigView
from streams.metrics import PipelineMetrics
from streams.stage2 import Stage2
from streams.store import MemoryStore
from tests.factories import ent, pool
from tests.streams.test_allocate import usage_summary


def view(*docs: Any, bad: BadRecords | None = None) -> ConfigView:
    config = ConfigView(bad or BadRecords(), "cfg", "rep")
    for doc in docs:
        config.apply_config(config_key(doc).encode(), config_value(doc))
    return config


class Published:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, bytes]] = []

    async def __call__(self, topic: str, key: str, value: bytes) -> None:
        self.records.append((topic, key, value))


def make_stage2(config: ConfigView, published: Published, bad: BadRecords | None = None) -> Stage2:
    bad = bad or config.bad
    return Stage2(
        inputs=MemoryStore(), ticks=MemoryStore(), config=config, topic="usage", entitlement_state_topic="es",
        pool_state_topic="ps", publish=published, bad=bad, metrics=PipelineMetrics(bad), stale_after_s=60,
    )


def summary_msg(offset: int, *, key: bytes = b"p", **kw: Any) -> RawMessage:
    return RawMessage(partition_for("p", 6), offset, key, usage_summary(**kw).model_dump_json().encode())


async def test_tick_uses_the_latest_summary_and_persists_debt() -> None:
    config = view(pool("p"), ent("a", "elastic"), ent("b", "elastic"))
    published = Published()
    stage = make_stage2(config, published)
    await stage.process([
        summary_msg(0, entitlement="a", demand=(100, 0, 0), usage=(50, 0, 0), ts=99.0),
        summary_msg(1, entitlement="a", demand=(2000, 0, 0), usage=(1500, 0, 0), ts=100.0),
        summary_msg(2, entitlement="a", demand=(1, 0, 0), usage=(1, 0, 0), ts=98.0),  # late and older: ignored
    ])
    out = await stage.tick("p", partition_for("p", 6), now=100.5)
    assert out is not None
    a = next(s for s in out.entitlements if s.id == "a")
    assert a.demand.throughput == 2000 and a.usage.throughput == 1500 and a.debt > 0
    tick = stage.ticks.get("p")
    assert tick is not None and tick.debt["a"] > 0 and tick.seq == 1  # the state the next tick continues from
    states = [EntitlementState.model_validate_json(v) for t, _, v in published.records if t == "es"]
    pools = [PoolState.model_validate_json(v) for t, _, v in published.records if t == "ps"]
    assert sorted(s.id for s in states) == ["a", "b"] and [p.id for p in pools] == ["p"]
    assert [k for t, k, _ in published.records if t == "es"] == ["a", "b"]

    out2 = await stage.tick("p", 0, now=101.5)
    assert out2 is not None and out2.tick.seq == 2 and out2.tick.debt["a"] > tick.debt["a"]
    assert next(s for s in out2.entitlements if s.id == "a").debt > a.debt


async def test_bad_summaries_are_counted_and_skipped() -> None:
    bad = BadRecords()
    config = view(pool("p"), ent("a", "elastic"), bad=bad)
    stage = make_stage2(config, Published())
    await stage.process([
        RawMessage(0, 0, b"p", b"garbage"),
        RawMessage(0, 1, b"p", None),
        summary_msg(2, entitlement="a", demand=(1, 1, 1), usage=(1, 1, 1), key=b"other-pool"),
        summary_msg(3, entitlement="a", demand=(1, 1, 1), usage=(1, 1, 1)),
    ])
    assert dict(bad.counts) == {("usage", "not_json"): 1, ("usage", "tombstone"): 1, ("usage", "key_mismatch"): 1}
    assert len(list(stage.inputs.items())) == 1


def test_due_follows_each_pools_tick_seconds() -> None:
    config = view(pool("fast", tickSeconds=0.5), pool("slow", tickSeconds=2.0))
    stage = make_stage2(config, Published())
    assert stage.due(["fast", "slow", "unknown"], 10.0) == ["fast", "slow"]
    stage._last_run.update({"fast": 10.0, "slow": 10.0})
    assert stage.due(["fast", "slow"], 10.6) == ["fast"]
    assert stage.due(["fast", "slow"], 12.0) == ["fast", "slow"]


def test_config_view_applies_documents_tombstones_and_replica_reports() -> None:
    bad = BadRecords()
    p, a = pool("p", replicas=2, tokenWeights={"input": 0.25, "output": 2.0}), ent("a")
    config = view(p, a, bad=bad)
    assert config.pool("p") == p and [e.name for e in config.entitlements_of("p")] == ["a"]
    assert config.ready_replicas(p) == 2 and config.weights("p").input == 0.25
    config.apply_replicas(b"p", orjson.dumps({"schema_version": 1, "pool": "p", "ready_replicas": 5, "ts": 1.0}))
    assert config.ready_replicas(p) == 5
    config.apply_replicas(b"p", None)
    assert config.ready_replicas(p) == 2
    config.apply_config(b"Entitlement/a", None)
    assert config.entitlements_of("p") == []
    assert bad.counts == {}


@pytest.mark.parametrize(("key", "value", "reason"), [
    (b"TokenPool/p", b"{nope", "not_json"),
    (b"TokenPool/p", b"[]", "not_an_object"),
    (b"TokenPool/p", b'{"apiVersion": "tokenpools.dev/v1alpha1", "kind": "TokenPool", "metadata": {"name": "p"}}',
     "invalid"),
    (b"TokenPool/q", config_value(pool("p")), "key_mismatch"),
    (None, config_value(pool("p")), "no_key"),
])
def test_bad_config_records_are_counted(key: bytes | None, value: bytes, reason: str) -> None:
    bad = BadRecords()
    config = view(bad=bad)
    config.apply_config(key, value)
    assert dict(bad.counts) == {("cfg", reason): 1} and config.docs == {}


@pytest.mark.parametrize(("key", "value", "reason"), [
    (b"p", b"nope", "not_json"),
    (b"p", b'{"schema_version": 1, "pool": "p", "ready_replicas": -1}', "invalid"),
    (b"q", b'{"schema_version": 1, "pool": "p", "ready_replicas": 1}', "key_mismatch"),
])
def test_bad_replica_reports_are_counted(key: bytes, value: bytes, reason: str) -> None:
    bad = BadRecords()
    config = view(bad=bad)
    config.apply_replicas(key, value)
    assert dict(bad.counts) == {("rep", reason): 1} and config.replicas == {}


def test_partition_for_matches_the_kafka_default_partitioner() -> None:
    for name in ("p", "llama-3-8b", "pool-ü", "x" * 200):
        for n in (1, 3, 6, 12):
            assert partition_for(name, n) == DefaultPartitioner()(name.encode(), list(range(n)), list(range(n)))
