"""The capacity model's change and read methods the admitter uses instead of writing its fields.

``PoolLive.put_entitlement`` / ``remove_entitlement`` / ``apply_spec`` / ``apply_share`` /
``share_replicas`` and ``EntitlementLive.limits`` / ``in_flight`` / ``remaining``: a spec change keeps
the reservations held on the same object, a fresh build agrees with an in-place change on every field
that comes from the spec, and the read-only views never go negative.
"""

from __future__ import annotations

from capacity.cost import RequestCost
from capacity.live import GUARANTEED, SPOT, EntitlementLive, PoolLive
from tests.factories import ent, pool

SPEC_FIELDS = ("name", "tenant", "tier", "rank", "weight", "window", "slo_ttft", "guarantee", "burst")


def test_put_entitlement_changes_a_spec_in_place_and_keeps_its_reservations() -> None:
    live = PoolLive(pool(), [ent("a", tier="elastic", burst=(500.0, 5000.0, 5.0))], now=0.0)
    before = live.entitlements["a"]
    live.hold("r1", before, RequestCost(10, 20, 20, 1.0, 1.0), now=1.0)
    changed = ent("a", tier="guaranteed", guarantee=(100.0, 1000.0, 1.0), burst=(300.0, 3000.0, 3.0), slo=2.0)

    after = live.put_entitlement(changed, now=2.0)

    assert after is before and live.entitlements["a"] is before  # the reservation is still counted here
    fresh = EntitlementLive(changed, now=2.0)
    assert all(getattr(after, f) == getattr(fresh, f) for f in SPEC_FIELDS)
    assert after.rank == GUARANTEED and after.g_bucket is not None
    assert after.in_flight() == (before.kv_in_flight, 1.0)
    assert after.limits()[0] <= 300.0 and after.kv_seconds > 0  # cut to the new burst; integrated to now
    assert live.unused_g_conc == 0.0  # the held request uses the whole guarantee of one sequence

    live.put_entitlement(ent("a", tier="spot"), now=3.0)
    assert after.rank == SPOT and after.g_bucket is None and live.unused_g_conc == 0.0
    assert live.put_entitlement(ent("b"), now=3.0) is live.entitlements["b"]


def test_remove_entitlement_recounts_unused_guarantees() -> None:
    live = PoolLive(pool(), [ent("g", tier="guaranteed", guarantee=(100.0, 1000.0, 2.0))], now=0.0)
    assert live.unused_g_conc == 2.0
    assert live.remove_entitlement("g") and live.unused_g_conc == 0.0 and "g" not in live.entitlements
    assert not live.remove_entitlement("g")


def test_pool_apply_spec_and_share_replicas() -> None:
    live = PoolLive(pool(replicas=2), [], now=0.0)
    live.apply_spec(pool(replicas=2, per=(2000.0, 20000.0, 20.0), tickSeconds=2.0))
    assert (live.cap_tp, live.tick_seconds, live.replicas) == (4000.0, 2.0, 2)
    live.share_replicas(3, 2)
    assert live.replicas == 3 and (live.cap_tp, live.cap_kv, live.cap_conc) == (3000.0, 30000.0, 30.0)


def test_apply_share_scales_the_guarantee_by_the_share() -> None:
    live = PoolLive(pool(), [ent("g", tier="guaranteed", guarantee=(100.0, 1000.0, 2.0))], now=0.0)
    assert not live.apply_share("missing", (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), 2, now=1.0)
    assert live.apply_share("g", (150.0, 1500.0, 3.0), (300.0, 3000.0, 0.0), 4, now=1.0)
    g = live.entitlements["g"]
    assert g.guarantee == (50.0, 500.0, 0.5)  # half of the total where there is one; 1/4 where it is 0
    assert g.limits() == (150.0, 1500.0, 3.0)


def test_remaining_reads_without_refilling_and_never_goes_negative() -> None:
    live = PoolLive(pool(), [ent("a", burst=(100.0, 100.0, 1.0))], now=0.0)
    a = live.entitlements["a"]
    a.set_limits(100.0, 100.0, 1.0, now=0.0)
    level = a.bucket.level
    live.hold("r1", a, RequestCost(150, 50, 50, 1.0, 1.0), now=0.0)  # more than the bucket and the kv limit
    assert a.remaining() == (0.0, 0.0, 0.0)
    assert a.bucket.level == level - 200.0 and a.bucket.updated == 0.0
    live.release("r1", now=0.0, prompt_tokens=0, output_tokens=0)
    assert a.remaining() == (max(0.0, a.bucket.level), 100.0, 1.0)
