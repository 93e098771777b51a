"""Records that travel on the topics between components: request events, the state the pipeline
publishes, and the scaler's replica reports.

Wire records are snake_case JSON. Each carries ``schema_version`` so a consumer can skip (and
count) a record it does not understand instead of crashing, and an ``id`` so consumers can be
idempotent under at-least-once delivery.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.specs import Dimension, Tier

SCHEMA_VERSION = 1

Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

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
    model_config = ConfigDict(extra="forbid", frozen=True)

    throughput: float = 0.0
    kv: float = 0.0
    concurrency: float = 0.0


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

    @property
    def key(self) -> str:
        """Partition key: one entitlement's events stay ordered on one partition."""
        return self.entitlement


EVENT_BATCH = "request_event_batch"


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


class PoolState(Record):
    """One pool after an allocator tick: what the scaler and dashboards read (compacted, keyed by pool)."""

    id: str = Field(min_length=1, description="Pool name; the compaction key")
    seq: Count
    ts: float
    ready_replicas: Count
    desired_replicas: Count | None = None
    capacity: Amounts
    guarantees: Amounts
    demand: dict[Tier, Amounts] = Field(default_factory=dict)
    usage: dict[Tier, Amounts] = Field(default_factory=dict)


Endpoint = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2048)]


class ReplicasReport(Record):
    """How many replicas of a pool are ready (``tokenpools.replicas``, compacted, key = pool name).

    ``endpoints`` are the base URLs of those ready replicas, for admitters that discover their
    backends from this topic (``admitter.discovery``). It is optional: an actuator whose platform
    does discovery itself (a Kubernetes Service in front of the pool's pods) reports counts only, and
    admitters then keep the backends they were configured with.
    """

    pool: str = Field(min_length=1)
    ready_replicas: Count
    ts: float = 0.0
    endpoints: list[Endpoint] | None = None
