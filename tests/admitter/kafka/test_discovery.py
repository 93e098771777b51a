"""Replica discovery without Kafka: ``ReplicaSet.replace`` and ``ReplicaDiscovery.handle`` on records.

The Kafka side (reading the compacted topic, an admitter following a real scaler) is in
tests/integration/test_discovery.py.
"""

from __future__ import annotations

import asyncio

import orjson

from admitter.kafka.discovery import ReplicaDiscovery
from admitter.upstream.replicas import ReplicaSet
from schemas.records import ReplicasReport
from tests.admitter.conftest import auth, chat, ent, platform, pool


def report(pool_name: str, urls: list[str] | None, ready: int | None = None) -> bytes:
    return ReplicasReport(pool=pool_name, ready_replicas=len(urls or []) if ready is None else ready,
                          endpoints=urls).model_dump_json().encode()


def test_replace_keeps_counters_of_staying_replicas_and_drains_removed_ones() -> None:
    rs = ReplicaSet(["http://a", "http://b"])
    a, b = rs.replicas
    a.outstanding, b.outstanding = 2, 1
    rs.mark_down(a)
    added, removed = rs.replace(["http://a", "http://c"])
    assert (added, removed) == (["http://c"], ["http://b"])
    assert rs.urls == ["http://a", "http://c"] and rs.replicas[0] is a and a.outstanding == 2 and a.failures == 1
    assert rs.draining == [b]
    for _ in range(10):  # new requests never go to a removed replica
        assert rs.pick() is not b
    # b comes back while still draining: the same object, so its outstanding count stays right
    added, removed = rs.replace(["http://b"])
    assert added == ["http://b"] and sorted(removed) == ["http://a", "http://c"] and rs.replicas[0] is b
    assert rs.draining == [a]  # c had nothing in flight
    a.outstanding = 0
    assert rs.draining == []
    assert rs.replace(["http://b", "http://b"]) == ([], []) and len(rs) == 1
    assert rs.replace([]) == ([], ["http://b"]) and rs.pick() is None


def test_handle_applies_endpoints_and_skips_what_it_cannot_use() -> None:
    sets = {"p": ReplicaSet(["http://configured"])}
    d = ReplicaDiscovery("unused:9092", sets)
    assert d.handle(b"p", report("p", ["http://r1", "http://r2"]))
    assert sets["p"].urls == ["http://r1", "http://r2"] and d.changes == 1
    assert not d.handle(b"p", report("p", ["http://r1", "http://r2"]))  # the periodic re-report: no change
    # counts only (a Kubernetes actuator), a tombstone, a pool not served here: members stay
    assert not d.handle(b"p", report("p", None, ready=5))
    assert d.reports["p"].ready_replicas == 5
    assert not d.handle(b"p", None)
    assert not d.handle(b"q", report("q", ["http://q1"]))
    assert sets["p"].urls == ["http://r1", "http://r2"]
    # ... until the pool appears (added through the config topic): then its kept report applies
    sets["q"] = ReplicaSet([])
    assert d.apply_pending() and sets["q"].urls == ["http://q1"]
    assert not d.apply_pending()
    # bad records are counted by reason and skipped
    bad = [
        (b"p", b"not json"),
        (b"p", b"[1]"),
        (b"p", orjson.dumps({"schema_version": 2, "pool": "p", "ready_replicas": 1})),
        (b"p", orjson.dumps({"schema_version": 1, "pool": "p", "ready_replicas": 1, "endpoints": ["ftp://x"]})),
        (b"p", orjson.dumps({"schema_version": 1, "pool": "p", "ready_replicas": -1, "endpoints": []})),
        (b"other", report("p", [])),
    ]
    for key, value in bad:
        assert not d.handle(key, value)
    assert sets["p"].urls == ["http://r1", "http://r2"]
    counts = {reason: n for (_, reason), n in d.bad.counts.items()}
    assert counts == {"not_json": 1, "not_an_object": 1, "unknown_schema_version": 1, "invalid": 2,
                      "key_mismatch": 1}


async def test_a_request_on_a_removed_replica_finishes_while_new_ones_go_to_the_new_members(
        replicas, admitter) -> None:
    old, new = await replicas("old"), await replicas("new")
    adm = await admitter(platform([pool()], [ent("acme")]), backends={"p": [old.url]})
    d = ReplicaDiscovery("unused:9092", adm.state.upstream.replicas)
    async with adm.client() as c:
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat(stream=True),
                                          headers={**auth("acme"), "x-fake-hold": "h"}))
        await old.wait_reached("h")
        assert d.handle(b"p", report("p", [new.url]))
        assert [r.url for r in adm.state.upstream.replicas["p"].draining] == [old.url]
        for _ in range(3):
            assert (await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))).status_code == 200
        assert len(new.received) == 3 and len(old.received) == 1
        old.release("h")
        resp = await held
        assert resp.status_code == 200 and resp.text.rstrip().endswith("data: [DONE]")
    assert adm.state.upstream.replicas["p"].draining == []
