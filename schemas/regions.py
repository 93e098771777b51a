"""The GlobalEntitlement kind: capacity bought once and served from pools in several regions.

Why a kind of its own: a tenant buys "40,000 tokens/s of llama-3-8b, guaranteed, anywhere" once,
and each region's pipeline, admitters and scaler should go on working with ordinary
``Entitlement`` objects of their own region's pool. So every region holds the same
GlobalEntitlement in its config, and the region's global loop (``streams/regional``) writes the
share it enforces as a *regional* Entitlement of the same name on the region's pool for that model
(``regional_entitlement``): burst = its burst share, guarantee = its guarantee share, everything
else copied. The admitter authenticates the global entitlement's keys on it, the allocator caps it
at its share, and the scaler provisions the guarantee share it holds, with no code of their own for
regions.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from schemas.specs import (
    SLO,
    ApiKeyRef,
    Entitlement,
    EntitlementSpec,
    Manifest,
    Metadata,
    Name,
    PositiveSeconds,
    Resources,
    SpecModel,
    Tier,
    TokenPool,
    Weight,
    bounded,
    check_guarantee_within_burst,
)

# Labels of a regional Entitlement the global loop wrote: which GlobalEntitlement it is a share of, and
# of which region. The operator and `config apply` leave such documents alone (they are not theirs).
GLOBAL_LABEL: Final = "tokenpools.dev/global-entitlement"
REGION_LABEL: Final = "tokenpools.dev/region"

FloorFraction = Annotated[float, *bounded(0, 1)]
EpochSeconds = Annotated[float, *bounded(0.1, 3600, unit="seconds")]
Quantum = Annotated[float, *bounded(0, 0.1)]


class RegionalSplitPolicy(SpecModel):
    """How the global figures are split into regional shares (``capacity.global_loop``).

    ``epochSeconds``: every region reports (demand, usage, capacity, heartbeat) once per epoch of the
    wall clock, and every region computes the split of an epoch from the same reports, so they agree.
    ``lostAfterSeconds``: a region whose reports are older than this is lost; its shares move to the
    others. A shorter outage is a partition: every region holds (never raises) its share until it sees
    the others again. Two regions cannot tell a partition from a loss, so this is the line between them:
    set it above the partitions you want to ride out with no overshoot (docs/regions.md).
    ``floorFraction``: the part of each figure split evenly over the live regions whatever their demand,
    so a region with no recent traffic can still admit its first requests.
    ``quantum``: shares are rounded down to this fraction of the global figure, so the regional
    Entitlement is rewritten only when a share moves by at least that much.
    ``hysteresis``: the shares stay as they are while each is within this fraction of the global figure
    of what the split of the current demand would give it, so demand noise does not move them.
    """

    epoch_seconds: EpochSeconds = 2.0
    lost_after_seconds: PositiveSeconds = 120.0
    floor_fraction: FloorFraction = 0.1
    quantum: Quantum = 0.005
    hysteresis: Quantum = 0.02


class GlobalEntitlementSpec(SpecModel):
    model: str = Field(min_length=1, max_length=253)
    regions: list[Name] = Field(min_length=1, max_length=64)
    tenant: Name
    tier: Tier
    guarantee: Resources = Resources()
    burst: Resources
    burst_window_seconds: PositiveSeconds = 10.0
    weight: Weight = 1.0
    slo: SLO | None = None
    api_keys: list[ApiKeyRef] = Field(default_factory=list)
    split: RegionalSplitPolicy = RegionalSplitPolicy()

    @model_validator(mode="after")
    def _checked(self) -> GlobalEntitlementSpec:
        seen: set[str] = set()
        for region in self.regions:
            if region in seen:
                raise ValueError(f"region '{region}' is listed twice in regions; list each region once")
            seen.add(region)
        check_guarantee_within_burst(self.tier, self.guarantee, self.burst)
        return self


class GlobalEntitlement(Manifest):
    kind: Literal["GlobalEntitlement"] = "GlobalEntitlement"
    spec: GlobalEntitlementSpec


def pool_in_region(pools: dict[str, TokenPool], model: str, region: str) -> list[TokenPool]:
    """The pools of ``region`` that serve ``model`` (a global entitlement needs exactly one)."""
    return sorted((p for p in pools.values() if p.spec.region == region and p.spec.model == model),
                  key=lambda p: p.name)


def regional_entitlement(glob: GlobalEntitlement, pool: str, region: str, burst: Resources,
                         guarantee: Resources) -> Entitlement:
    """The Entitlement a region enforces for its share of ``glob`` (same name, keys, tier and weight)."""
    spec = glob.spec
    return Entitlement(
        metadata=Metadata(name=glob.name, labels={GLOBAL_LABEL: glob.name, REGION_LABEL: region}),
        spec=EntitlementSpec(
            pool=pool, tenant=spec.tenant, tier=spec.tier, guarantee=guarantee, burst=burst,
            burst_window_seconds=spec.burst_window_seconds, weight=spec.weight, slo=spec.slo,
            api_keys=spec.api_keys,
        ),
    )


def is_regional_share(ent: Entitlement) -> bool:
    """Whether ``ent`` is a regional share the global loop wrote (not one a person configured)."""
    return GLOBAL_LABEL in ent.metadata.labels
