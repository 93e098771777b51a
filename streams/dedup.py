"""Idempotence by event id: an event seen before is not counted again.

Two kinds of repeats reach stage 1, and they are told apart differently:

- **Replays** (at-least-once redelivery after a crash or rebalance: the same Kafka record again, at
  the same offset). Each entitlement's window record stores the last offset it applied, in the same
  changelog write as the counts, so ``offset <= applied`` means "already counted". This needs no
  id memory at all and is exact.
- **Duplicates** (the same event id published twice, e.g. an admitter re-sending its spool after an
  ambiguous send: a different record, at a later offset). Ids are remembered per requests partition
  (admitters key events by entitlement, so a re-sent event lands on the same partition) for a
  bounded horizon of processing time, with the offset where each id first appeared.

A record may be a batch of one entitlement's events (``schemas.records.RequestEventBatch``): its
events share one offset. Stage 1 then takes the replay decision against the window record's offset
from *before* the record (all of that record's events for one window record are persisted in one
write, so it holds per record), and treats an id repeated inside the record as a duplicate.

Storing the first offset matters for crash consistency under at-least-once: the id batch and the
window record are separate changelog writes, so after a crash the id may be remembered while the
count was lost. The replayed record then carries the *same* offset as the remembered one, which
identifies it as the original (count it), not as a duplicate (skip it).

The id memory is persisted as one small changelog record per (partition, processed batch) in a
Faust table whose changelog topic has delete retention slightly longer than the horizon; this
module is the pure index over those batches.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import orjson

log = logging.getLogger(__name__)


class DedupVerdict(Enum):
    NEW = "new"
    REPLAY = "replay"  # this very record was applied already (offset at or below the applied one)
    DUPLICATE = "duplicate"  # same event id as an earlier record


@dataclass
class SeenBatch:
    key: str
    seen_at: float
    ids: list[tuple[str, int]]

    def to_json(self) -> bytes:
        return orjson.dumps({"t": self.seen_at, "ids": self.ids})

    @classmethod
    def from_json(cls, key: str, raw: bytes | str) -> SeenBatch:
        d = orjson.loads(raw)
        return cls(key, float(d["t"]), [(str(i), int(o)) for i, o in d["ids"]])


def batch_key(partition: int, first_offset: int) -> str:
    return f"{partition}:{first_offset}"


def partition_of_key(key: str) -> int:
    return int(key.split(":", 1)[0])


@dataclass
class SeenIds:
    """Ids seen on one requests partition, remembered for ``horizon_s`` (at most ``max_ids``)."""

    horizon_s: float = 600.0
    max_ids: int = 1_000_000
    ids: dict[str, int] = field(default_factory=dict)
    batches: deque[SeenBatch] = field(default_factory=deque)
    evicted_early: int = 0  # ids forgotten before the horizon because of max_ids

    def verdict(self, event_id: str, offset: int, applied_offset: int) -> DedupVerdict:
        if offset <= applied_offset:
            return DedupVerdict.REPLAY
        first = self.ids.get(event_id)
        if first is None or first == offset:
            return DedupVerdict.NEW
        return DedupVerdict.DUPLICATE

    def remember(self, event_id: str, offset: int) -> bool:
        """Note an id as seen at ``offset``; False if it was already known (nothing to persist)."""
        if event_id in self.ids:
            return False
        self.ids[event_id] = offset
        return True

    def add_batch(self, batch: SeenBatch) -> None:
        """Index a batch (already remembered ids, or ids loaded from the changelog)."""
        for event_id, offset in batch.ids:
            self.ids.setdefault(event_id, offset)
        self.batches.append(batch)

    def expire(self, now: float) -> list[str]:
        """Forget batches past the horizon (or beyond ``max_ids``); returns their keys."""
        dropped: list[str] = []
        while self.batches and (self.batches[0].seen_at < now - self.horizon_s or len(self.ids) > self.max_ids):
            batch = self.batches.popleft()
            if batch.seen_at >= now - self.horizon_s:
                self.evicted_early += len(batch.ids)
                log.warning("dedup memory full (%d ids): forgetting ids seen %.0fs ago", self.max_ids,
                            now - batch.seen_at)
            for event_id, offset in batch.ids:
                if self.ids.get(event_id) == offset:
                    del self.ids[event_id]
            dropped.append(batch.key)
        return dropped

    @classmethod
    def from_batches(cls, batches: Iterable[SeenBatch], horizon_s: float, max_ids: int, now: float) -> SeenIds:
        seen = cls(horizon_s=horizon_s, max_ids=max_ids)
        for batch in sorted(batches, key=lambda b: (b.seen_at, b.key)):
            if batch.seen_at >= now - horizon_s:  # an id may come back after its first sighting expired
                seen.add_batch(batch)
        seen.expire(now)
        return seen
