"""Kubernetes-style specs for pools and entitlements: the contract platform engineers write.

YAML uses camelCase (as Kubernetes does); Python uses snake_case. Every model forbids unknown
fields, so a typo in a config is an error instead of a silently ignored setting.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

API_VERSION = "tokenpools.dev/v1alpha1"


class Tier(StrEnum):
    GUARANTEED = "guaranteed"
    ELASTIC = "elastic"
    SPOT = "spot"


class Dimension(StrEnum):
    """The three inference-native units capacity is sold in; order matters (index 0, 1, 2)."""

    THROUGHPUT = "throughput"
    KV = "kv"
    CONCURRENCY = "concurrency"


DIMENSIONS: tuple[Dimension, ...] = (Dimension.THROUGHPUT, Dimension.KV, Dimension.CONCURRENCY)
TIER_RANK: dict[Tier, int] = {Tier.GUARANTEED: 0, Tier.ELASTIC: 1, Tier.SPOT: 2}


class SpecModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class Resources(SpecModel):
    """An amount on each dimension: weighted tokens/s, KV-cache tokens, sequences."""

    throughput: NonNegative = 0.0
    kv: NonNegative = 0.0
    concurrency: NonNegative = 0.0

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.throughput, self.kv, self.concurrency)

    def get(self, dim: Dimension) -> float:
        return float(getattr(self, dim.value))


class UtilisationTargets(SpecModel):
    """Fraction of a replica's raw capacity sold, per dimension; the rest absorbs estimation error."""

    throughput: Fraction = 0.9
    kv: Fraction = 0.9
    concurrency: Fraction = 0.9

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.throughput, self.kv, self.concurrency)


class ReplicaBounds(SpecModel):
    min: int = Field(default=1, ge=0)
    max: int = Field(default=8, ge=1)
    initial: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must lie within [min, max] = [{self.min}, {self.max}]")
        return self

    @property
    def start(self) -> int:
        return self.initial if self.initial is not None else self.min


class TokenWeights(SpecModel):
    """Cost of a prompt token and an output token in throughput units (decode costs more than prefill)."""

    input: Annotated[float, Field(gt=0)] = 0.5
    output: Annotated[float, Field(gt=0)] = 1.0


class DebtPolicy(SpecModel):
    half_life_seconds: Annotated[float, Field(gt=0)] = 300.0
    # Effective weight = weight * 2^(-sharpness * remembered share / configured share).
    sharpness: Annotated[float, Field(gt=0, le=10)] = 1.0


class QueuePolicy(SpecModel):
    max_wait_seconds: NonNegative = 2.0
    spot_max_wait_seconds: NonNegative = 0.0


class ScalingPolicy(SpecModel):
    headroom: Annotated[float, Field(ge=0, le=10)] = 0.2
    stabilisation_window_seconds: NonNegative = 300.0
    startup_delay_seconds: NonNegative = 60.0
    spot_budget_replicas: int = Field(default=0, ge=0)
    forecast_half_life_seconds: Annotated[float, Field(gt=0)] = 60.0


class TokenPoolSpec(SpecModel):
    model: str = Field(min_length=1)
    region: str = "local"
    context_length: int = Field(default=8192, gt=0)
    per_replica: Resources
    target_utilisation: UtilisationTargets = UtilisationTargets()
    replicas: ReplicaBounds = ReplicaBounds()
    token_weights: TokenWeights = TokenWeights()
    reclaim_buffer: Annotated[float, Field(ge=0, lt=1)] = 0.05
    tick_seconds: Annotated[float, Field(gt=0)] = 1.0
    debt: DebtPolicy = DebtPolicy()
    queue: QueuePolicy = QueuePolicy()
    scaling: ScalingPolicy = ScalingPolicy()
    backends: list[str] = Field(default_factory=list)
    # vLLM's --scheduling-policy on the replicas; with "priority" the admitter sends the tier as
    # each request's priority so guaranteed prefills go first.
    replica_scheduling: Literal["fcfs", "priority"] = "fcfs"

    @model_validator(mode="after")
    def _positive_replica(self) -> TokenPoolSpec:
        for dim in DIMENSIONS:
            if self.per_replica.get(dim) <= 0:
                raise ValueError(f"perReplica.{dim.value} must be > 0: a replica that serves nothing cannot be sold")
        return self

    def sellable_per_replica(self) -> tuple[float, float, float]:
        p, t = self.per_replica.as_tuple(), self.target_utilisation.as_tuple()
        return (p[0] * t[0], p[1] * t[1], p[2] * t[2])

    def capacity(self, replicas: int) -> tuple[float, float, float]:
        s = self.sellable_per_replica()
        return (s[0] * replicas, s[1] * replicas, s[2] * replicas)

    def backfill_factor(self) -> tuple[float, float, float]:
        """What spot may fill, as a multiple of ``capacity``: all of the rated throughput (spot is
        throttled and preempted first), but only the sold part of KV and concurrency, where a full
        replica preempts and recomputes."""
        t = self.target_utilisation.throughput
        return (1.0 / t if t > 0 else 1.0, 1.0, 1.0)


class SLO(SpecModel):
    ttft_seconds: Annotated[float, Field(gt=0)]
    tpot_seconds: Annotated[float, Field(gt=0)] | None = None


class ApiKeyRef(SpecModel):
    """A tenant API key, stored only as its SHA-256 (API keys are random, so a fast hash suffices)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class EntitlementSpec(SpecModel):
    pool: str = Field(min_length=1)
    tenant: str = Field(min_length=1)
    tier: Tier
    guarantee: Resources = Resources()
    burst: Resources
    burst_window_seconds: Annotated[float, Field(gt=0)] = 10.0
    weight: Annotated[float, Field(gt=0)] = 1.0
    slo: SLO | None = None
    api_keys: list[ApiKeyRef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _guarantee_within_burst(self) -> EntitlementSpec:
        for dim in DIMENSIONS:
            g, b = self.guarantee.get(dim), self.burst.get(dim)
            if g > b:
                raise ValueError(
                    f"guarantee.{dim.value} ({g:g}) exceeds burst.{dim.value} ({b:g}); "
                    "the burst ceiling must be at least the guarantee"
                )
            if g > 0 and self.tier is not Tier.GUARANTEED:
                raise ValueError(
                    f"guarantee.{dim.value} is {g:g} but tier is {self.tier.value}; "
                    "only the guaranteed tier holds a guarantee (set it to 0 or change the tier)"
                )
        return self


class Metadata(SpecModel):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)


class Manifest(SpecModel):
    api_version: Literal["tokenpools.dev/v1alpha1"] = API_VERSION
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name


class TokenPool(Manifest):
    kind: Literal["TokenPool"] = "TokenPool"
    spec: TokenPoolSpec


class Entitlement(Manifest):
    kind: Literal["Entitlement"] = "Entitlement"
    spec: EntitlementSpec
