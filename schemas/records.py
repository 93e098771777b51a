"""Records that travel on the topics between components: request events, the state the pipeline
publishes, and the scaler's replica reports.

Wire records are snake_case JSON. Each carries ``schema_version`` so a consumer can skip (and
count) a record it does not understand instead of crashing, and an ``id`` so consumers can be
idempotent under at-least-once delivery.

Numbers are finite (``allow_inf_nan=False``) and amounts never negative, so a consumer skips and
counts a record that would put NaN, infinity or a negative limit into its arithmetic. The limits
and shares a state record carries, and a request's reservation, are bounded like the specs they
come from (``schemas.specs``, "Bounds"); these records are decoded at high rates, so the bounds are
plain field constraints, without the specs' friendlier messages.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.specs import MAX_AMOUNT, MAX_COUNT, MAX_REPLICAS, Dimension, Name, Tier, Triple

SCHEMA_VERSION: Final = 1

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
ReplicaCount = Annotated[int, Field(ge=0, le=MAX_REPLICAS)]
Seconds = Annotated[float, Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0)]


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION


class Phase(StrEnum):
    """A request emits one event at its decision and one when it ends."""

    DECISION = "decision"
    FINISH = "finish"


class Outcome(StrEnum):
    ADMITTED = "admitted"
    QUEUED_ADMITTED = "queued_admitted"
    REFUSED = "refused"
    COMPLETED = "completed"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Amounts(BaseModel):
    """Amounts on the three dimensions. Not bounded above: these are also sums over a window or a pool
    (``within`` bounds the ones that are one entitlement's or one request's)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    throughput: NonNegative = 0.0
    kv: NonNegative = 0.0
    concurrency: NonNegative = 0.0

    def as_tuple(self) -> Triple:
        return (self.throughput, self.kv, self.concurrency)

    @classmethod
    def from_tuple(cls, amounts: Triple) -> Amounts:
        return cls(throughput=amounts[0], kv=amounts[1], concurrency=amounts[2])


def within(amounts: Amounts, limit: float = MAX_AMOUNT) -> Amounts:
    """``amounts`` if no dimension exceeds ``limit`` (a field validator's check)."""
    for name in ("throughput", "kv", "concurrency"):
        value = getattr(amounts, name)
        if value > limit:
            raise ValueError(f"{name} is {value:g}, above the largest amount of one entitlement ({limit:g})")
    return amounts


def new_event_id() -> str:
    return uuid.uuid4().hex


class RequestEvent(Record):
    """One admission decision or one request end, as seen by one admitter."""

    id: str = Field(default_factory=new_event_id, min_length=1)
    request_id: str = Field(min_length=1)
    phase: Phase
    outcome: Outcome
    ts: float = Field(description="Unix time of the event, seconds")
    admitter_id: str
    region: str = "local"
    tenant: str
    entitlement: str
    pool: str
    tier: Tier
    model: str = ""
    prompt_tokens: Count = 0
    max_tokens: Count = 0
    output_tokens: Count = 0
    reserved: Amounts = Amounts()
    queue_wait_s: Seconds = 0.0
    ttft_s: Seconds | None = None
    latency_s: Seconds | None = None
    refused_dimension: Dimension | None = None
    retry_after_s: Seconds | None = None
    status_code: int | None = None
    preempted_by: str | None = None
    # Finish events: the replica that served the request (its base URL; "" when none did) and what the
    # entitlement was charged in the end (reserve-then-correct: weighted tokens used, KV and sequences
    # held). Older admitters send neither; history then records the reservation's charge as unknown (0).
    replica: str = Field(default="", max_length=2048)
    charged: Amounts | None = None

    @field_validator("reserved")
    @classmethod
    def _one_request(cls, reserved: Amounts) -> Amounts:
        """One request reserves at most one entitlement's amount, so the pipeline's sums stay finite."""
        return within(reserved)

    @property
    def key(self) -> str:
        """Partition key: one entitlement's events stay ordered on one partition."""
        return self.entitlement


EVENT_BATCH: Final = "request_event_batch"


class RequestEventBatch(Record):
    """Several request events of one entitlement in one Kafka record on ``tokenpools.requests``.

    Why: the pipeline's cost is per Kafka record (Faust's per-record path), not per event, so an
    admitter packs the events it sends for one entitlement at once into one record (keyed by that
    entitlement, like a single event). ``type`` tells it from a single ``RequestEvent`` record,
    which has no ``type``. Every event keeps its own ``id`` and is deduplicated by it; an event
    whose entitlement is not the record's key is skipped and counted (``key_mismatch``), the rest
    of the batch counts. Consumers validate event by event (``schemas.wire.decode_request_events``),
    so one bad event does not cost the others.
    """

    type: Literal["request_event_batch"] = EVENT_BATCH
    events: list[RequestEvent] = Field(min_length=1)


class EntitlementState(Record):
    """The pipeline's view of one entitlement after an allocator tick (compacted, keyed by name)."""

    id: str = Field(min_length=1, description="Entitlement name; the compaction key")
    pool: str
    tier: Tier
    seq: Count = Field(description="Allocator tick number, monotonic per pool")
    ts: float
    limits: Amounts
    admitter_shares: dict[str, Amounts] = Field(default_factory=dict)
    demand: Amounts = Amounts()
    usage: Amounts = Amounts()
    debt: float = 0.0
    effective_weight: float = 0.0
    fair_share: float = 0.0
    dominant_share: float = 0.0

    @field_validator("limits")
    @classmethod
    def _limits_within_burst(cls, limits: Amounts) -> Amounts:
        """A limit never exceeds its burst ceiling, itself at most ``MAX_AMOUNT``; an admitter multiplies
        it by the burst window for its bucket."""
        return within(limits)

    @field_validator("admitter_shares")
    @classmethod
    def _shares_within_burst(cls, shares: dict[str, Amounts]) -> dict[str, Amounts]:
        for share in shares.values():
            within(share)
        return shares


class PoolState(Record):
    """One pool after an allocator tick: what the scaler and dashboards read (compacted, keyed by pool)."""

    id: str = Field(min_length=1, description="Pool name; the compaction key")
    seq: Count
    ts: float
    ready_replicas: ReplicaCount
    desired_replicas: ReplicaCount | None = None
    capacity: Amounts
    guarantees: Amounts
    demand: dict[Tier, Amounts] = Field(default_factory=dict)
    usage: dict[Tier, Amounts] = Field(default_factory=dict)


Endpoint = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2048)]


class ReplicasReport(Record):
    """How many replicas of a pool are ready (``tokenpools.replicas``, compacted, key = pool name).

    ``endpoints`` are the base URLs of those ready replicas, for admitters that discover their
    backends from this topic (``admitter.kafka.discovery``): the local actuator's emulator replicas, or
    the Ready pods of the pool's Service on Kubernetes. It is optional: a report without it (an
    actuator that knows counts only) leaves admitters on the backends they were configured with.
    """

    pool: str = Field(min_length=1)
    ready_replicas: ReplicaCount
    ts: float = 0.0
    endpoints: list[Endpoint] | None = None


class RegionReport(Record):
    """One region's report on one global entitlement for one epoch (``tokenpools.region-summaries``).

    Each region's global loop publishes one per epoch on its own cluster; MirrorMaker 2 carries them to
    the other regions (as ``<region>.tokenpools.region-summaries``). Every region computes the split
    of an epoch from the reports of that epoch (``capacity.global_loop``). ``id`` is
    ``<region>/<entitlement>/<epoch>``: a report replayed by MirrorMaker is recognised and counted once.
    ``enforced_*`` are the shares the region enforces as it publishes, so the others never raise into
    room it still holds. Key: ``<entitlement>/<region>`` (compacted: the latest report per region).
    """

    id: str = Field(min_length=1, max_length=600)
    entitlement: Name
    region: Name
    epoch: Count
    ts: float = Field(description="Heartbeat: wall-clock seconds when the region published it")
    demand: Amounts
    usage: Amounts = Amounts()
    capacity: Amounts
    enforced_burst: Amounts = Amounts()
    enforced_guarantee: Amounts = Amounts()

    @classmethod
    def key_of(cls, entitlement: str, region: str) -> str:
        return f"{entitlement}/{region}"

    @classmethod
    def id_of(cls, region: str, entitlement: str, epoch: int) -> str:
        return f"{region}/{entitlement}/{epoch}"
