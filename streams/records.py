"""Records on the pipeline's internal topic: stage 1's window summaries for stage 2.

They follow the conventions of ``schemas.records`` (snake_case JSON, ``schema_version``, decoded with
``schemas.wire.decode`` so a bad one is counted and skipped). They live here, not in ``schemas/``,
because only the two stages of the pipeline read and write them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.records import Amounts, Record
from schemas.specs import Tier


class _Part(BaseModel):
    """A nested part of a record (no version of its own).

    Finite only, like the records of ``schemas.records``: ``Record``'s ``allow_inf_nan=False`` does
    not reach nested models, and pydantic otherwise reads the strings "inf" and "nan" as floats, so a
    summary with ``"start": "inf"`` in its window was decoded and handed to the allocator.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class WindowSummary(_Part):
    """One entitlement's traffic over one window ``[start, end)`` (event time, seconds).

    Sums are over the events whose ``ts`` falls in the window. Held resources (KV slots, sequences)
    are charged at the finish event for the request's whole latency, so the integral over time is
    exact even though one window may see a long request all at once.

    Rates (``usage``, ``demand``) are per second of the window:
    - ``usage.throughput``: weighted tokens/s, ``w_in * prompt + w_out * output`` (pool tokenWeights);
    - ``usage.kv`` / ``usage.concurrency``: mean KV slots / sequences held (slot-seconds / window);
    - ``demand.throughput``: reserved throughput of every decision (admitted, queued and refused) per
      second, at least usage plus what was refused;
    - ``demand.kv`` / ``demand.concurrency``: held usage plus refused work held for the mean latency
      (Little's law) plus what queued work held while it waited.
    """

    start: float
    end: float
    decisions: float = 0
    admitted: float = 0
    queued: float = 0
    refused: float = 0
    finished: float = 0
    prompt_tokens: float = 0
    output_tokens: float = 0
    weighted_tokens: float = 0
    kv_seconds: float = 0
    seq_seconds: float = 0
    refused_demand: Amounts = Amounts()
    queued_demand: Amounts = Amounts()
    usage: Amounts = Amounts()
    demand: Amounts = Amounts()


class Totals(_Part):
    """Cumulative counts for one entitlement since its first event (what tests and audits check)."""

    events: int = 0
    duplicates: int = 0
    late: int = 0
    decisions: int = 0
    admitted: int = 0
    queued: int = 0
    refused: int = 0
    finished: int = 0
    completed: int = 0
    preempted: int = 0
    cancelled: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    kv_seconds: float = 0.0
    seq_seconds: float = 0.0


class UsageSummary(Record):
    """Stage 1 -> stage 2 (``tokenpools.entitlement-usage``, key = pool name).

    One per entitlement and requests partition, re-sent every summary interval and early when its
    trailing demand moved; stage 2 keeps the latest per ``(pool, entitlement, partition)`` and sums
    partitions (normally there is only one, since admitters key events by entitlement).
    """

    entitlement: str = Field(min_length=1)
    pool: str = Field(min_length=1)
    tier: Tier
    partition: int = Field(ge=0)
    offset: int = Field(ge=-1, description="Last requests offset applied on this partition")
    ts: float = Field(description="Wall time the summary was computed")
    trailing: WindowSummary | None = Field(
        default=None, description="The last tumbling-size seconds up to ts, open bucket included: what the allocator "
        "uses (absent in summaries of older workers, whose allocator read the closed tumbling window)")
    tumbling: WindowSummary = Field(description="The latest closed tumbling window")
    hopping: WindowSummary = Field(description="The latest closed hopping window (longer, smoother)")
    admitter_demand: dict[str, Amounts] = Field(
        default_factory=dict, description="Reserved amounts per admitter over the hopping window (for the split)"
    )
    totals: Totals = Totals()
