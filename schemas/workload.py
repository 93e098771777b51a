"""The `Workload` spec: seeded, reproducible request traffic for experiments and load tests.

A workload names a pool, a duration and a seed, and for each tenant (an entitlement) how requests
arrive and how long their prompts and outputs are. `schemas.arrivals` turns it into
the same list of arrivals every time, so an experiment can be rerun, compared across versions of
the control plane, and replayed over HTTP.

YAML uses camelCase, Python snake_case, like the TokenPool and Entitlement specs; unknown fields,
NaN and infinity are errors, because a typo in an experiment silently changes its result. Names and
numeric bounds are the specs' own (``schemas.specs``: ``Name``, "Bounds").
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from schemas.specs import MAX_SECONDS, MAX_TOKENS, MIN_SECONDS, Name, bounded, range_text

# Far above any load a test or an experiment generates; bounded so a profile's rates and times, and
# the arrivals they imply, stay finite.
MAX_RATE = 1e6

Duration = Annotated[float, *bounded(MIN_SECONDS, MAX_SECONDS, unit="seconds")]
NonNegativeDuration = Annotated[float, *bounded(0, MAX_SECONDS, unit="seconds")]
Seconds = Annotated[NonNegativeDuration, Field(description="seconds since the start of the workload")]
Rate = Annotated[float, *bounded(0, MAX_RATE, unit="requests per second"), Field(description="requests per second")]
TokenCount = Annotated[int, *bounded(1, MAX_TOKENS, integer=True)]
MeanTokens = Annotated[float, *bounded(0, MAX_TOKENS, lo_open=True)]
Sigma = Annotated[float, *bounded(0, 3)]
# A signed 64-bit integer: what JSON tools round-trip exactly.
Seed = Annotated[int, *bounded(0, 2**63 - 1, integer=True)]


class WorkloadModel(BaseModel):
    """Base for workload models: strict, camelCase in YAML, immutable once validated."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        allow_inf_nan=False,
    )


class PoissonArrivals(WorkloadModel):
    """Poisson arrivals at a constant `rate`, or at a piecewise-linear `profile` of rates.

    A profile is a list of `[t, rate]` points (t in seconds since the workload start, strictly
    increasing); the rate is interpolated linearly between points and held at the first/last rate
    outside them. Ramps (0 -> 3x capacity -> hold -> 0) are written this way.
    """

    process: Literal["poisson"]
    rate: Rate | None = None
    profile: list[tuple[float, float]] | None = Field(default=None, min_length=1)

    @field_validator("profile")
    @classmethod
    def _profile_points(cls, profile: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if profile is None:
            return None
        for i, (t, rate) in enumerate(profile):
            if not 0 <= t <= MAX_SECONDS:
                raise ValueError(f"point {i} [{t:g}, {rate:g}]: time {range_text(0, MAX_SECONDS)} seconds")
            if not 0 <= rate <= MAX_RATE:
                raise ValueError(
                    f"point {i} [{t:g}, {rate:g}]: rate {range_text(0, MAX_RATE)} requests per second"
                )
            if i > 0 and t <= profile[i - 1][0]:
                raise ValueError(
                    f"point {i} [{t:g}, {rate:g}]: times must be strictly increasing, but {t:g} follows "
                    f"{profile[i - 1][0]:g}; sort the points or merge duplicate times"
                )
        return profile

    @model_validator(mode="after")
    def _rate_xor_profile(self) -> PoissonArrivals:
        if (self.rate is None) == (self.profile is None):
            raise ValueError(
                "give exactly one of 'rate' (constant requests/s) or 'profile' ([[t, rate], ...] over time)"
            )
        return self

    @property
    def peak_rate(self) -> float:
        if self.profile is not None:
            return max(rate for _, rate in self.profile)
        return float(self.rate or 0.0)


class OnOffArrivals(WorkloadModel):
    """Bursty arrivals: Poisson at `rate` for `onSeconds`, then nothing for `offSeconds`, repeated.

    The cycle starts (in an on period) at the tenant's `start`.
    """

    process: Literal["onoff"]
    rate: Rate
    on_seconds: Annotated[Duration, Field(description="length of each burst")]
    off_seconds: Annotated[NonNegativeDuration, Field(description="silence between bursts")]

    @property
    def peak_rate(self) -> float:
        return self.rate

    @property
    def period(self) -> float:
        return self.on_seconds + self.off_seconds


Arrivals = Annotated[PoissonArrivals | OnOffArrivals, Field(discriminator="process")]


class LengthDistribution(WorkloadModel):
    """Token lengths: lognormal with the given mean and shape, rounded and clipped to [min, max].

    Parametrised by its mean (mu = ln(meanTokens) - sigma^2 / 2) because the mean is what sizing
    needs; `sigma` sets the tail (0 gives a constant length, 0.7-1.0 is typical of chat traffic).
    Clipping moves the realised mean slightly; `sim.workload.expected_length` computes it exactly.
    """

    mean_tokens: MeanTokens
    sigma: Annotated[Sigma, Field(description="lognormal shape; above 3 nearly every sample is the minimum")]
    min_tokens: TokenCount = 1
    max_tokens: TokenCount

    @model_validator(mode="after")
    def _ordered(self) -> LengthDistribution:
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"minTokens ({self.min_tokens}) is greater than maxTokens ({self.max_tokens}); "
                "swap or fix them"
            )
        if not self.min_tokens <= self.mean_tokens <= self.max_tokens:
            raise ValueError(
                f"meanTokens ({self.mean_tokens:g}) must lie within [minTokens, maxTokens] = "
                f"[{self.min_tokens}, {self.max_tokens}]"
            )
        return self

    @property
    def mu(self) -> float:
        """Location of the underlying normal, chosen so that the (unclipped) mean is meanTokens."""
        return math.log(self.mean_tokens) - self.sigma**2 / 2


class TenantLoad(WorkloadModel):
    """One tenant's traffic: which entitlement it uses, when requests arrive, and their sizes."""

    entitlement: Name
    tenant: Name | None = Field(
        default=None, description="label for request ids and reports; default: entitlement"
    )
    arrivals: Arrivals
    start: Seconds = 0.0
    end: Seconds | None = None
    prompt: LengthDistribution
    output: LengthDistribution
    max_tokens: TokenCount | None = Field(
        default=None, description="sent with each request; default output.maxTokens"
    )
    stream: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> TenantLoad:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:g}) must be after start ({self.start:g})")
        if self.max_tokens is not None and self.max_tokens < self.output.min_tokens:
            raise ValueError(
                f"maxTokens ({self.max_tokens}) is below output.minTokens ({self.output.min_tokens}): every "
                "output would be cut short; raise maxTokens or lower output.minTokens"
            )
        return self

    @property
    def label(self) -> str:
        """The tenant's name in request ids; unique within a workload."""
        return self.tenant or self.entitlement

    @property
    def request_max_tokens(self) -> int:
        """The `max_tokens` each request carries (admission reserves KV for prompt + this)."""
        return self.max_tokens if self.max_tokens is not None else self.output.max_tokens


class WorkloadSpec(WorkloadModel):
    """A seeded, reproducible workload against one pool."""

    pool: Name
    duration_seconds: Duration
    seed: Seed | None = Field(default=None, description="default seed; generate_arrivals may override it")
    tenants: list[TenantLoad] = Field(min_length=1)

    @field_validator("tenants")
    @classmethod
    def _tenants_fit(cls, tenants: list[TenantLoad], info: ValidationInfo) -> list[TenantLoad]:
        duration = info.data.get("duration_seconds")  # absent if it failed its own validation
        seen: dict[str, int] = {}
        for i, tenant in enumerate(tenants):
            if tenant.label in seen:
                raise ValueError(
                    f"tenants[{i}] and tenants[{seen[tenant.label]}] are both labelled {tenant.label!r}; "
                    "give one a distinct 'tenant' so request ids stay unique"
                )
            seen[tenant.label] = i
            if duration is not None and tenant.start >= duration:
                raise ValueError(
                    f"tenants[{i}] ({tenant.label}) starts at {tenant.start:g} s, not before durationSeconds "
                    f"({duration:g}); it would send nothing"
                )
        return tenants
