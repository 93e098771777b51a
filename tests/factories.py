"""Small builders for specs used across tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.specs import Entitlement, TokenPool


def pool(name: str = "p", replicas: int = 1, max_replicas: int = 8, reclaim: float = 0.0,
         per: tuple[float, float, float] = (1000.0, 10000.0, 10.0), target: float = 1.0,
         **spec: Any) -> TokenPool:
    return TokenPool.model_validate({
        "metadata": {"name": name},
        "spec": {
            "model": name,
            "perReplica": {"throughput": per[0], "kv": per[1], "concurrency": per[2]},
            "targetUtilisation": {"throughput": target, "kv": target, "concurrency": target},
            "replicas": {"min": min(replicas, max_replicas), "max": max_replicas, "initial": replicas},
            "reclaimBuffer": reclaim,
            "tokenWeights": {"input": 1.0, "output": 1.0},
            **spec,
        },
    })


def ent(name: str, tier: str = "elastic", pool_name: str = "p", weight: float = 1.0,
        guarantee: tuple[float, float, float] = (0.0, 0.0, 0.0),
        burst: tuple[float, float, float] = (1e9, 1e9, 1e9), window: float = 1.0,
        slo: float | None = None) -> Entitlement:
    spec: dict[str, Any] = {
        "pool": pool_name, "tenant": name, "tier": tier, "weight": weight,
        "guarantee": dict(zip(("throughput", "kv", "concurrency"), guarantee, strict=True)),
        "burst": dict(zip(("throughput", "kv", "concurrency"), burst, strict=True)),
        "burstWindowSeconds": window,
    }
    if slo is not None:
        spec["slo"] = {"ttftSeconds": slo}
    return Entitlement.model_validate({"metadata": {"name": name}, "spec": spec})


def emulators(speedup: float) -> Callable[[str], Any]:
    """A ``LocalActuator`` server factory: each pool's replicas are vLLM emulators serving the pool's name."""
    from sim.server import EmulatorServer

    return lambda pool: EmulatorServer(0, model=pool, speedup=speedup)
