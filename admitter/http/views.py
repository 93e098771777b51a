"""What the admin API and ``/v1/usage`` show of a pool, an entitlement and its usage (JSON-ready dicts).

Read at request time from the live state (``capacity.live``), the upstream's replicas and the usage
counters; nothing here changes anything.
"""

from __future__ import annotations

from typing import Any

from admitter.admission.gate import PoolGate
from admitter.state import AdmitterState
from capacity.live import EntitlementLive
from schemas.specs import Entitlement


def _amounts(t: tuple[float, float, float]) -> dict[str, float]:
    return {"throughput": t[0], "kv": t[1], "concurrency": t[2]}


def limits_view(live: EntitlementLive) -> dict[str, float]:
    return _amounts(live.limits())


def in_flight_view(live: EntitlementLive) -> dict[str, float]:
    kv, concurrency = live.in_flight()
    return {"kv": kv, "concurrency": concurrency}


def entitlement_view(gate: PoolGate, live: EntitlementLive) -> dict[str, Any]:
    bucket = live.bucket
    view: dict[str, Any] = {
        "name": live.name,
        "tenant": live.tenant,
        "pool": gate.name,
        "tier": live.tier.value,
        "weight": live.weight,
        "effective_weight": live.effective_weight,
        "debt": live.debt,
        "fair_share": live.fair_share,
        "guarantee": _amounts(live.guarantee),
        "burst": _amounts(live.burst),
        "limits": limits_view(live),
        "in_flight": in_flight_view(live),
        "bucket": {"level": bucket.level, "depth": bucket.depth, "rate": bucket.rate},
        "guarantee_bucket": None,
    }
    if live.g_bucket is not None:
        g = live.g_bucket
        view["guarantee_bucket"] = {"level": g.level, "depth": g.depth, "rate": g.rate}
    return view


def pool_view(state: AdmitterState, gate: PoolGate) -> dict[str, Any]:
    live = gate.live
    spec = live.spec.spec
    replicas = state.upstream.replicas.get(gate.name)
    return {
        "name": gate.name,
        "model": spec.model,
        "region": spec.region,
        "context_length": spec.context_length,
        "replicas": live.replicas,
        "capacity": {"throughput": live.cap_tp, "kv": live.cap_kv, "concurrency": live.cap_conc},
        "in_flight": {"kv": live.kv_in_flight, "concurrency": live.seqs_in_flight},
        "spot_in_flight": {"kv": live.spot_kv_in_flight, "concurrency": live.spot_seqs},
        "unused_guarantees": {"kv": live.unused_g_kv, "concurrency": live.unused_g_conc},
        "queue_length": gate.waiting,
        "preemptions": gate.preemptions,
        "bytes_per_token": gate.estimator.bytes_per_token,
        "entitlements": sorted(live.entitlements),
        "backends": [
            {"url": r.url, "outstanding": r.outstanding, "requests": r.requests, "failures": r.failures}
            for r in (replicas or ())
        ],
    }


def usage_view(state: AdmitterState, ent: Entitlement, admin: bool) -> dict[str, Any]:
    found = state.entitlement_live(ent.name)
    view: dict[str, Any] = {
        "entitlement": ent.name,
        "pool": ent.spec.pool,
        "tier": ent.spec.tier.value,
        **state.usage.of(ent.name).as_dict(),
    }
    if found is not None:
        gate, live = found
        view["model"] = gate.live.spec.spec.model
        view["limits"] = limits_view(live)
        view["in_flight"] = in_flight_view(live)
        if admin:
            view["debt"] = live.debt
            view["effective_weight"] = live.effective_weight
    return view
