"""From config files to the list of requests to send: workload choice, scaling, tiers, model.

Shared by ``tokenpools load`` and the HTTP experiment so both send exactly what the simulation
would have replayed for the same workload, seed and scaling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.arrivals import Arrival, generate_arrivals, scaled
from schemas.loader import PlatformConfig, load_config
from schemas.workload import OnOffArrivals, PoissonArrivals, WorkloadSpec

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"


@dataclass(frozen=True)
class Plan:
    """A workload ready to send: its (scaled) spec, arrivals, tiers and the model to ask for."""

    name: str
    spec: WorkloadSpec
    arrivals: list[Arrival]
    tiers: dict[str, str]  # entitlement -> tier
    model: str
    config: PlatformConfig


def rate_scaled(spec: WorkloadSpec, k: float) -> WorkloadSpec:
    """Every tenant's arrival rate multiplied by ``k`` (profiles point by point); shapes unchanged."""
    if not k > 0:
        raise ValueError(f"rate scale must be > 0, got {k!r}")
    if k == 1:
        return spec
    tenants = []
    for tenant in spec.tenants:
        arrivals = tenant.arrivals
        if isinstance(arrivals, PoissonArrivals) and arrivals.profile is not None:
            arrivals = arrivals.model_copy(update={"profile": [(t, r * k) for t, r in arrivals.profile]})
        elif isinstance(arrivals, PoissonArrivals | OnOffArrivals):
            arrivals = arrivals.model_copy(update={"rate": (arrivals.rate or 0.0) * k})
        tenants.append(tenant.model_copy(update={"arrivals": arrivals}))
    return spec.model_copy(update={"tenants": tenants})


def pick_workload(config: PlatformConfig, name: str | None) -> str:
    """The workload to run: ``name``, or the only one the config holds."""
    if name is not None:
        if name not in config.workloads:
            known = ", ".join(sorted(config.workloads)) or "none"
            raise ValueError(f"no workload named '{name}' in the config (known: {known})")
        return name
    if len(config.workloads) != 1:
        known = ", ".join(sorted(config.workloads)) or "none"
        raise ValueError(f"the config holds {len(config.workloads)} workloads ({known}); choose one with --workload")
    return next(iter(config.workloads))


def make_plan(config_paths: Sequence[str | Path] = (), workload: str | None = None, *, seed: int | None = None,
              duration: float | None = None, rate_scale: float = 1.0, model: str | None = None,
              config: PlatformConfig | None = None) -> Plan:
    """Load, choose, scale (``duration`` stretches the timeline, ``rate_scale`` the rates) and generate."""
    if config is None:
        config = load_config(*(config_paths or (EXAMPLES,)))
    name = pick_workload(config, workload)
    spec = rate_scaled(scaled(config.workloads[name].spec, duration), rate_scale)
    arrivals = generate_arrivals(spec, seed=seed)
    tiers = {t.entitlement: (config.entitlements[t.entitlement].spec.tier.value
                             if t.entitlement in config.entitlements else "unknown") for t in spec.tenants}
    pool = config.pools.get(spec.pool)
    return Plan(name, spec, arrivals, tiers, model or (pool.spec.model if pool else spec.pool), config)
