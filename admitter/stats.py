"""What the admitter's background parts say about themselves, for ``admitter.metrics`` to export.

A part with something to report (the Kafka sink, the state follower, the config sync, the in-process
allocator) implements ``ReportsStats``: ``stats()`` returns plain, frozen records, read at scrape
time. ``admitter.metrics`` turns each kind into its Prometheus families; it never imports the parts
themselves, so a scrape of an admitter without Kafka imports no Kafka code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Counts = Mapping[tuple[str, str], int]  # (label, label) -> count, e.g. (topic, reason) for bad records


@dataclass(frozen=True, slots=True)
class SinkStats:
    """One Kafka sink and its spool (``admitter.kafka.sink``)."""

    topic: str
    emitted: int  # events handed to the sink
    spooled: int  # events fsynced to the spool
    sent: int  # events acknowledged by Kafka
    records_sent: int  # Kafka records those went out in
    send_errors: int
    backlog_records: int  # events in the spool not yet acknowledged
    backlog_bytes: int
    oldest_pending_ts: float | None  # wall-clock ``ts`` of the oldest unacknowledged event (None: none)
    connected: bool


@dataclass(frozen=True, slots=True)
class StateStats:
    """The state follower: limits from the pipeline (``admitter.kafka.state_follower``)."""

    records: Counts  # (kind, result) -> records
    bad: Counts  # (topic, reason) -> records skipped
    caught_up: bool
    connected: bool
    reconnects: int
    staleness: Mapping[str, float]  # pool -> seconds since a new state was applied
    last_seq: Mapping[str, int]  # pool -> newest tick seq applied
    fallbacks: Counts = field(default_factory=dict)  # (pool, unlisted|empty) -> states applied with a fallback share


@dataclass(frozen=True, slots=True)
class ConfigStats:
    """The config sync (``admitter.kafka.config_sync``)."""

    records: int
    bad: Counts
    rejected: int  # documents this admitter could not apply
    ready: bool


@dataclass(frozen=True, slots=True)
class AllocatorStats:
    """The in-process allocator (``admitter.admission.limits.LocalAllocator``)."""

    rejected: Counts  # (pool, reason) -> ticks that kept the previous limits


Stats = SinkStats | StateStats | ConfigStats | AllocatorStats


@runtime_checkable
class ReportsStats(Protocol):
    """A part whose counters ``/metrics`` exports; a composite (a fan-out sink) reports its parts'."""

    def stats(self) -> Sequence[Stats]: ...
