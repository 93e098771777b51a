"""Builders for the global loop's tests: a GlobalEntitlement, pools with a region, regional shares."""

from __future__ import annotations

from typing import Any

from schemas.regions import GlobalEntitlement, regional_entitlement
from schemas.specs import Entitlement, Resources, TokenPool, key_digest

DIMS = ("throughput", "kv", "concurrency")
Triple = tuple[float, float, float]


def amounts(t: Triple) -> dict[str, float]:
    return dict(zip(DIMS, t, strict=True))


def glob(name: str = "g", regions: tuple[str, ...] = ("a", "b"), model: str = "m",
         guarantee: Triple = (400.0, 40000.0, 40.0), burst: Triple = (1000.0, 100000.0, 100.0),
         key: str = "secret-g", **split: Any) -> GlobalEntitlement:
    return GlobalEntitlement.model_validate({
        "metadata": {"name": name},
        "spec": {"model": model, "regions": list(regions), "tenant": f"t-{name}", "tier": "guaranteed",
                 "guarantee": amounts(guarantee), "burst": amounts(burst),
                 "apiKeys": [{"sha256": key_digest(key)}], "split": split},
    })


def pool(name: str = "pa", region: str = "a", model: str = "m", per: Triple = (1000.0, 100000.0, 100.0),
         max_replicas: int = 8) -> TokenPool:
    return TokenPool.model_validate({
        "metadata": {"name": name},
        "spec": {"model": model, "region": region, "perReplica": amounts(per),
                 "targetUtilisation": {"throughput": 1.0, "kv": 1.0, "concurrency": 1.0},
                 "replicas": {"min": 1, "max": max_replicas, "initial": 1}},
    })


def ent(name: str, pool_name: str = "pa", tier: str = "guaranteed", guarantee: Triple = (0.0, 0.0, 0.0),
        burst: Triple = (5000.0, 500000.0, 500.0)) -> Entitlement:
    return Entitlement.model_validate({
        "metadata": {"name": name},
        "spec": {"pool": pool_name, "tenant": f"t-{name}", "tier": tier, "guarantee": amounts(guarantee),
                 "burst": amounts(burst)},
    })


def share(g: GlobalEntitlement, pool_name: str = "pa", region: str = "a", burst: Triple = (0.0, 0.0, 0.0),
          guarantee: Triple = (0.0, 0.0, 0.0)) -> Entitlement:
    return regional_entitlement(g, pool_name, region, Resources.from_tuple(burst), Resources.from_tuple(guarantee))
