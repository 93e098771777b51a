"""Non-finite numbers and bad names at the admitter (issue 10, defects 1 and 6).

The issue's case: ``PUT /admin/entitlements/winf`` with ``weight: "inf"`` answered 201, and three
seconds later every elastic and spot limit of the pool was 0. Now the PUT is a 422 naming the
field, a state record with a non-finite or negative limit is skipped and counted, and an in-process
tick that cannot compute finite limits keeps the previous ones and shows up in /metrics.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from admitter.admission.limits import LocalAllocator
from admitter.events import InMemorySink
from admitter.kafka.state_follower import StateFollower
from admitter.metrics import StatsCollector
from capacity.live import PoolLive
from tests.admitter.conftest import ADMIN, auth, chat, ent, platform, pool

BURST = {"throughput": 200000, "kv": 6000000, "concurrency": 2000}


def manifest(name: str = "winf", **spec: Any) -> dict[str, Any]:
    body = {"pool": "p", "tenant": "t", "tier": "elastic", "burst": BURST} | spec
    return {"apiVersion": "tokenpools.dev/v1alpha1", "kind": "Entitlement", "metadata": {"name": name}, "spec": body}


@pytest.fixture
async def gateway(replicas, admitter):
    r = await replicas()
    adm = await admitter(platform([pool()], [ent("acme"), ent("globex")]), backends={"p": [r.url]})
    async with adm.client() as c:
        yield adm, c


@pytest.mark.parametrize("weight", ["inf", "Infinity", "nan", "-inf", "1e999", 1e-300, 1e300])
async def test_put_with_a_non_finite_or_absurd_weight_is_a_422_naming_the_field(gateway, weight) -> None:
    adm, c = gateway
    resp = await c.put("/admin/entitlements/winf", json=manifest(weight=weight), headers=ADMIN)
    assert resp.status_code == 422, resp.text
    text = resp.text
    assert "spec.weight" in text and "at least 0.001 and at most 1e+06" in text
    assert "winf" not in adm.state.config.entitlements
    # The pool still serves elastic traffic.
    ok = await c.post("/v1/chat/completions", json=chat(), headers=auth("acme"))
    assert ok.status_code == 200, ok.text


async def test_put_with_a_yaml_inf_weight_is_a_422(gateway) -> None:
    _adm, c = gateway
    body = ("apiVersion: tokenpools.dev/v1alpha1\nkind: Entitlement\nmetadata: {name: winf}\n"
            "spec: {pool: p, tenant: t, tier: elastic, weight: .inf, "
            "burst: {throughput: 200000, kv: 6000000, concurrency: 2000}}\n")
    resp = await c.put("/admin/entitlements/winf", content=body,
                       headers={**ADMIN, "Content-Type": "application/yaml"})
    assert resp.status_code == 422, resp.text
    assert "spec.weight" in resp.text


@pytest.mark.parametrize("tenant", ["t\r\nx-injected: 1", "a b", "a/b", "Acme", "a..b", "x" * 300])
async def test_put_with_a_tenant_that_is_not_a_name_is_a_422_that_says_what_is_allowed(gateway, tenant) -> None:
    adm, c = gateway
    resp = await c.put("/admin/entitlements/bad", json=manifest("bad", tenant=tenant), headers=ADMIN)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "spec.tenant" in resp.text and "lowercase letters, digits" in resp.text
    assert len(resp.content) < 4000  # a long value is echoed bounded, not in full
    assert "bad" not in adm.state.config.entitlements


# -- state records from the pipeline ---------------------------------------------------------------

class Target:
    def __init__(self, live: PoolLive) -> None:
        self.live = live
        self.changed = 0

    def limits_changed(self) -> None:
        self.changed += 1


def state(limits: dict[str, Any], shares: dict[str, Any] | None = None, seq: int = 1) -> bytes:
    return orjson.dumps({"schema_version": 1, "id": "acme", "pool": "p", "tier": "elastic", "seq": seq, "ts": 1.0,
                         "limits": limits, "admitter_shares": shares or {}})


@pytest.mark.parametrize(("limits", "shares"), [
    ({"throughput": "inf", "kv": 100, "concurrency": 1}, None),
    ({"throughput": "nan", "kv": 100, "concurrency": 1}, None),
    ({"throughput": -1, "kv": 100, "concurrency": 1}, None),
    ({"throughput": 1e308, "kv": 100, "concurrency": 1}, None),
    ({"throughput": 100, "kv": 100, "concurrency": 1}, {"a1": {"throughput": "Infinity"}}),
    ({"throughput": 100, "kv": 100, "concurrency": 1}, {"a1": {"kv": -5}}),
])
async def test_the_follower_never_applies_a_non_finite_or_negative_limit(limits, shares) -> None:
    live = PoolLive(pool(), [ent("acme")], now=0.0)
    follower = StateFollower("127.0.0.1:1", "a1", entitlement_topic="es", pool_topic="ps")
    target = Target(live)
    follower.add_pool("p", target)
    assert follower.handle("es", b"acme", state({"throughput": 300, "kv": 3000, "concurrency": 3}, seq=1)) == {"p"}
    e = live.entitlements["acme"]
    good = (e.limit_tp, e.limit_kv, e.limit_conc)
    assert good == (300, 3000, 3)  # one admitter known: the whole limit is its share

    assert follower.handle("es", b"acme", state(limits, shares, seq=2)) == set()
    assert (e.limit_tp, e.limit_kv, e.limit_conc) == good
    assert math.isfinite(e.bucket.depth) and math.isfinite(e.bucket.level)
    assert follower.bad.counts == {("es", "invalid"): 1}
    assert follower.entitlements["acme"].seq == 1  # the bad record did not replace the good one


async def test_a_pool_state_with_absurd_replicas_is_skipped() -> None:
    live = PoolLive(pool(), [ent("acme")], now=0.0)
    follower = StateFollower("127.0.0.1:1", "a1", entitlement_topic="es", pool_topic="ps")
    follower.add_pool("p", Target(live))
    before = (live.cap_tp, live.cap_kv, live.cap_conc)
    record = {"schema_version": 1, "id": "p", "seq": 1, "ts": 1.0, "ready_replicas": 10**18,
              "capacity": {}, "guarantees": {}}
    assert follower.handle("ps", b"p", orjson.dumps(record)) == set()
    assert (live.cap_tp, live.cap_kv, live.cap_conc) == before
    assert follower.bad.counts == {("ps", "invalid"): 1}


# -- the in-process allocator ------------------------------------------------------------------------

def rejected_ticks(allocator: LocalAllocator) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(StatsCollector(InMemorySink, lambda: allocator))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == "tokenpools_admitter_allocator_rejected_ticks":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[s.labels["pool"], s.labels["reason"]] = s.value
    return out


async def test_a_rejected_local_tick_keeps_the_limits_and_is_counted_in_metrics() -> None:
    live = PoolLive(pool(), [ent("acme"), ent("globex")], now=0.0)
    target = Target(live)
    clock = iter([0.0, 1.0, 2.0, 3.0])
    allocator = LocalAllocator(clock=lambda: next(clock))
    allocator._tick("p", target, first=True)
    acme = live.entitlements["acme"]
    good = (acme.limit_tp, acme.limit_kv, acme.limit_conc)
    assert good == pytest.approx((500.0, 5000.0, 5.0))  # two elastic tenants of weight 1 share (1000, 10000, 10)
    assert rejected_ticks(allocator) == {}

    acme.used_tp = math.nan  # a non-finite input to the next tick
    allocator._tick("p", target)
    assert (acme.limit_tp, acme.limit_kv, acme.limit_conc) == good
    assert rejected_ticks(allocator) == {("p", "non_finite_input"): 1.0}
    assert allocator.ticks == 1 and target.changed == 1

    allocator._tick("p", target)  # the accumulator was reset: the next tick is good again
    assert allocator.ticks == 2 and rejected_ticks(allocator) == {("p", "non_finite_input"): 1.0}
