"""Kubernetes-style specs for pools and entitlements: the contract platform engineers write.

YAML uses camelCase (as Kubernetes does); Python uses snake_case. Every model forbids unknown
fields, so a typo in a config is an error instead of a silently ignored setting. Every number is
finite and bounded (see "Bounds" below) and every name is an RFC 1123 name (``Name``), here and
in the workload spec and the wire records, which take both from this module.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from schemas.echo import echo

API_VERSION: Final = "tokenpools.dev/v1alpha1"


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

# An amount on each dimension, in ``DIMENSIONS`` order: the one type for the capacity model's
# arithmetic (a plain tuple, cheap on the hot paths). ``Resources`` (specs) and
# ``schemas.records.Amounts`` (wire records) convert with ``as_tuple()`` and ``from_tuple()``.
Triple = tuple[float, float, float]
TIER_RANK: dict[Tier, int] = {Tier.GUARANTEED: 0, Tier.ELASTIC: 1, Tier.SPOT: 2}


# -- Bounds ---------------------------------------------------------------------------------------
# One entitlement with ``weight: .inf`` once made the allocator compute NaN and zero every elastic
# and spot limit of its pool, so no number reaches the capacity model unless it is finite and within
# these bounds. Each is far beyond any real deployment (a replica serves ~1e4-1e5 weighted tokens/s
# and holds ~1e6-1e7 KV tokens; a pool has tens to thousands of replicas), yet tight enough that
# every sum, product and quotient the capacity model forms stays finite in float64 (max ~1.8e308):
#   capacity = perReplica (<= MAX_AMOUNT) x targetUtilisation (<= 1) x replicas (<= MAX_REPLICAS)
#              <= 1e17, and spot's backfill = capacity / targetUtilisation (>= MIN_FRACTION) <= 1e19;
#   a pool's guarantees must be provisionable, so they sum to at most that capacity;
#   water-filling divides demand (capped at burst <= MAX_AMOUNT) by an effective weight of at least
#     MIN_WEIGHT x 1e-3 (the debt factor's floor) = 1e-6: quotients <= 1e18; and 1e-6 is above
#     water-filling's own 1e-12 floor, so no configured weight is distorted by it;
#   the allocator divides usage by capacity (>= MIN_PER_REPLICA x MIN_FRACTION = 0.01 per replica)
#     and debt integrates that with a half-life of at most MAX_SECONDS: < 1e30;
#   a token bucket is limit (<= MAX_AMOUNT) x burstWindowSeconds (<= MAX_SECONDS) = 1e19 deep;
#   one request reserves tokenWeight (<= MAX_TOKEN_WEIGHT) x tokens (<= 2 x MAX_TOKENS) = 2e11
#     <= MAX_AMOUNT, so the pipeline's window sums over millions of events stay far from overflow.
MAX_AMOUNT = 1e12  # throughput (weighted tokens/s), KV tokens or sequences of one replica or entitlement
MIN_PER_REPLICA = 1.0  # a replica with less than one token/s, KV token or sequence serves nothing
MAX_REPLICAS = 100_000
MIN_FRACTION = 0.01  # least part of a replica's capacity that may be sold (targetUtilisation)
MIN_WEIGHT, MAX_WEIGHT = 1e-3, 1e6  # an entitlement's weight: up to 1e9 between two tenants
MIN_TOKEN_WEIGHT, MAX_TOKEN_WEIGHT = 1e-3, 1e3  # throughput units per prompt or output token
MAX_TOKENS = 100_000_000  # a context length, or the tokens of one request
MIN_SECONDS, MAX_SECONDS = 1e-3, 1e7  # positive durations: 1 ms to about 116 days
MAX_COUNT = 2**53  # counters on the wire: exact in the float64 the pipeline sums them in


def range_text(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
               integer: bool = False) -> str:
    """What a bounded field accepts, in words (error messages)."""
    kind = "an integer" if integer else "a finite number"
    a, b = (str(int(lo)), str(int(hi))) if integer else (f"{lo:g}", f"{hi:g}")
    low = f"greater than {a}" if lo_open else f"at least {a}"
    high = f"less than {b}" if hi_open else f"at most {b}"
    return f"must be {kind} {low} and {high}"


def bounded(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, integer: bool = False,
            unit: str = "") -> tuple[Any, ...]:
    """The metadata of a finite float (or an int) field type from ``lo`` to ``hi`` (each end excluded
    if ``*_open``), to unpack into ``Annotated``: ``Annotated[float, *bounded(0, 1)]``, or
    ``Annotated[int, *bounded(1, 9, integer=True)]`` (the type checker sees the base type).

    The bounds go into the JSON Schema (minimum/maximum). A value outside them, NaN, infinity or a
    string such as "inf" gets one message that says the whole allowed range, where pydantic would
    say "Input should be a finite number" or name only the bound that was crossed.
    """
    text = range_text(lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer) + (f" {unit}" if unit else "")

    def within(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(text) from None  # the loader and the admin API quote the value

    low = Field(gt=lo) if lo_open else Field(ge=lo)
    high = Field(lt=hi) if hi_open else Field(le=hi)
    return (low, high, WrapValidator(within))


# -- Names --------------------------------------------------------------------------------------
# Pools, entitlements, tenants and workloads are named like Kubernetes objects: RFC 1123 subdomains.
# One rule for all of them, so no name carries CR/LF, spaces or '/' into a header, a metric label or
# a URL path.
NAME_MAX = 253
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"  # one dot-separated part: 1 to 63 characters
NAME_PATTERN = rf"^{_LABEL}(?:\.{_LABEL})*$"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
NAME_RULE = (
    "use lowercase letters, digits, '-' and '.', at most 253 characters, in dot-separated parts of "
    "1 to 63 characters that each start and end with a letter or digit (e.g. 'acme-prod' or 'team.acme')"
)


def check_name(value: str) -> str:
    """An RFC 1123 subdomain. The length test comes first so a huge value costs no regex scan."""
    if len(value) > NAME_MAX or _NAME_RE.fullmatch(value) is None:
        raise ValueError(f"{echo(value)} is not a valid name: {NAME_RULE}")
    return value


Name = Annotated[
    str,
    Field(json_schema_extra={"minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}),
    AfterValidator(check_name),
]


class SpecModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, allow_inf_nan=False
    )


Amount = Annotated[float, *bounded(0, MAX_AMOUNT)]
Fraction = Annotated[float, *bounded(MIN_FRACTION, 1)]
Weight = Annotated[float, *bounded(MIN_WEIGHT, MAX_WEIGHT)]
TokenWeight = Annotated[float, *bounded(MIN_TOKEN_WEIGHT, MAX_TOKEN_WEIGHT)]
Replicas = Annotated[int, *bounded(0, MAX_REPLICAS, integer=True)]
SomeReplicas = Annotated[int, *bounded(1, MAX_REPLICAS, integer=True)]
Tokens = Annotated[int, *bounded(1, MAX_TOKENS, integer=True)]
PositiveSeconds = Annotated[float, *bounded(MIN_SECONDS, MAX_SECONDS, unit="seconds")]
NonNegativeSeconds = Annotated[float, *bounded(0, MAX_SECONDS, unit="seconds")]
Sharpness = Annotated[float, *bounded(0, 10, lo_open=True)]
Headroom = Annotated[float, *bounded(0, 10)]
ReclaimBuffer = Annotated[float, *bounded(0, 1, hi_open=True)]


class Resources(SpecModel):
    """An amount on each dimension: weighted tokens/s, KV-cache tokens, sequences."""

    throughput: Amount = 0.0
    kv: Amount = 0.0
    concurrency: Amount = 0.0

    def as_tuple(self) -> Triple:
        return (self.throughput, self.kv, self.concurrency)

    @classmethod
    def from_tuple(cls, amounts: Triple) -> Resources:
        return cls(throughput=amounts[0], kv=amounts[1], concurrency=amounts[2])

    def get(self, dim: Dimension) -> float:
        return float(getattr(self, dim.value))


class UtilisationTargets(SpecModel):
    """Fraction of a replica's raw capacity sold, per dimension; the rest absorbs estimation error."""

    throughput: Fraction = 0.9
    kv: Fraction = 0.9
    concurrency: Fraction = 0.9

    def as_tuple(self) -> Triple:
        return (self.throughput, self.kv, self.concurrency)


class ReplicaBounds(SpecModel):
    min: Replicas = 1
    max: SomeReplicas = 8
    initial: Replicas | None = None

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

    input: TokenWeight = 0.5
    output: TokenWeight = 1.0


class DebtPolicy(SpecModel):
    half_life_seconds: PositiveSeconds = 300.0
    # Effective weight = weight * 2^(-sharpness * remembered share / configured share).
    sharpness: Sharpness = 1.0


class QueuePolicy(SpecModel):
    max_wait_seconds: NonNegativeSeconds = 2.0
    spot_max_wait_seconds: NonNegativeSeconds = 0.0


class ScalingPolicy(SpecModel):
    headroom: Headroom = 0.2
    stabilisation_window_seconds: NonNegativeSeconds = 300.0
    startup_delay_seconds: NonNegativeSeconds = 60.0
    spot_budget_replicas: Replicas = 0
    forecast_half_life_seconds: PositiveSeconds = 60.0


class TokenPoolSpec(SpecModel):
    model: str = Field(min_length=1)
    region: str = "local"
    context_length: Tokens = 8192
    per_replica: Resources
    target_utilisation: UtilisationTargets = UtilisationTargets()
    replicas: ReplicaBounds = ReplicaBounds()
    token_weights: TokenWeights = TokenWeights()
    reclaim_buffer: ReclaimBuffer = 0.05
    tick_seconds: PositiveSeconds = 1.0
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
            if self.per_replica.get(dim) < MIN_PER_REPLICA:
                raise ValueError(
                    f"perReplica.{dim.value} must be at least {MIN_PER_REPLICA:g} (and at most {MAX_AMOUNT:g}): "
                    "a replica that serves nothing cannot be sold"
                )
        return self

    def sellable_per_replica(self) -> Triple:
        p, t = self.per_replica.as_tuple(), self.target_utilisation.as_tuple()
        return (p[0] * t[0], p[1] * t[1], p[2] * t[2])

    def capacity(self, replicas: int) -> Triple:
        s = self.sellable_per_replica()
        return (s[0] * replicas, s[1] * replicas, s[2] * replicas)

    def backfill_factor(self) -> Triple:
        """What spot may fill, as a multiple of ``capacity``: all of the rated throughput (spot is
        throttled and preempted first), but only the sold part of KV and concurrency, where a full
        replica preempts and recomputes."""
        t = self.target_utilisation.throughput
        return (1.0 / t if t > 0 else 1.0, 1.0, 1.0)


class SLO(SpecModel):
    ttft_seconds: PositiveSeconds
    tpot_seconds: PositiveSeconds | None = None


class ApiKeyRef(SpecModel):
    """A tenant API key, stored only as its SHA-256 (API keys are random, so a fast hash suffices)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def key_digest(secret: str) -> str:
    """What ``ApiKeyRef.sha256`` holds for a key: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class EntitlementSpec(SpecModel):
    pool: Name
    tenant: Name
    tier: Tier
    guarantee: Resources = Resources()
    burst: Resources
    burst_window_seconds: PositiveSeconds = 10.0
    weight: Weight = 1.0
    slo: SLO | None = None
    api_keys: list[ApiKeyRef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _guarantee_within_burst(self) -> EntitlementSpec:
        check_guarantee_within_burst(self.tier, self.guarantee, self.burst)
        return self


def check_guarantee_within_burst(tier: Tier, guarantee: Resources, burst: Resources) -> None:
    """guarantee <= burst on every dimension, and only the guaranteed tier holds a guarantee
    (Entitlement and GlobalEntitlement share the rule)."""
    for dim in DIMENSIONS:
        g, b = guarantee.get(dim), burst.get(dim)
        if g > b:
            raise ValueError(
                f"guarantee.{dim.value} ({g:g}) exceeds burst.{dim.value} ({b:g}); "
                "the burst ceiling must be at least the guarantee"
            )
        if g > 0 and tier is not Tier.GUARANTEED:
            raise ValueError(
                f"guarantee.{dim.value} is {g:g} but tier is {tier.value}; "
                "only the guaranteed tier holds a guarantee (set it to 0 or change the tier)"
            )


class Metadata(SpecModel):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)


class Manifest(SpecModel):
    api_version: Literal["tokenpools.dev/v1alpha1"] = API_VERSION
    metadata: Metadata
    if TYPE_CHECKING:  # each kind of manifest declares its own (a Literal field); no field here
        kind: str

    @property
    def name(self) -> str:
        return self.metadata.name


class TokenPool(Manifest):
    kind: Literal["TokenPool"] = "TokenPool"
    spec: TokenPoolSpec


class Entitlement(Manifest):
    kind: Literal["Entitlement"] = "Entitlement"
    spec: EntitlementSpec
