"""Stage 1 (partitioned by entitlement): count request events into windows, exactly once per id.

For each batch of raw records from ``tokenpools.requests``: decode (bad ones are counted and skipped),
decide new / replay / duplicate (``streams.dedup``), add new events to their entitlement's window
record (``streams.windows``), then persist every touched record and the batch's new ids with one
changelog write each, on the requests partition they came from. Only after that does the caller
acknowledge the batch, so Faust never commits an offset ahead of the state it produced.

Every summary interval, the worker turns each record it owns into an ``UsageSummary`` for
stage 2 (``summaries``); in between, every change check, it sends the records whose trailing demand
moved by more than a threshold since their last summary (``changed_summaries``), so a new demand
reaches the allocator in a fraction of a second without re-sending every record that often.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from schemas.records import Phase, RequestEvent
from schemas.wire import BadRecords, decode_request_events
from streams.codec import RawMessage, windows_key
from streams.config_table import ConfigView
from streams.dedup import DedupVerdict, SeenBatch, SeenIds, batch_key, partition_of_key
from streams.gaps import GapSource, NoGaps
from streams.metrics import PipelineMetrics
from streams.records import UsageSummary
from streams.store import KeyValueStore
from streams.windows import DECISION_OUTCOMES, FINISH_OUTCOMES, EntitlementWindows, Triple, WindowSpec, moved

log = logging.getLogger(__name__)


def shape_problem(ev: RequestEvent) -> str | None:
    """A decision must have a decision outcome and a finish a finish outcome."""
    allowed = DECISION_OUTCOMES if ev.phase is Phase.DECISION else FINISH_OUTCOMES
    if ev.outcome not in allowed:
        return f"outcome {ev.outcome.value!r} is not a {ev.phase.value} outcome"
    return None


class Stage1:
    def __init__(
        self,
        *,
        windows: KeyValueStore[EntitlementWindows],
        seen: KeyValueStore[SeenBatch],
        config: ConfigView,
        spec: WindowSpec,
        topic: str,
        bad: BadRecords,
        metrics: PipelineMetrics,
        dedup_horizon_s: float = 600.0,
        dedup_max_ids: int = 1_000_000,
        gaps: GapSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.windows = windows
        self.seen = seen
        self.config = config
        self.spec = spec
        self.topic = topic
        self.bad = bad
        self.metrics = metrics
        self.dedup_horizon_s = dedup_horizon_s
        self.dedup_max_ids = dedup_max_ids
        self.gaps = gaps or NoGaps()
        self.clock = clock
        self._seen: dict[int, SeenIds] = {}
        self._last: dict[int, int] = {}  # last offset delivered per partition since the assignment
        self._pending_windows: dict[str, EntitlementWindows] = {}
        self._pending_seen: dict[str, tuple[SeenBatch, int]] = {}
        self._idle_sent: set[str] = set()
        self._sent: dict[str, tuple[int, Triple]] = {}  # key -> (offset, trailing demand) of its last summary

    def delivered(self) -> dict[int, int]:
        """Partition -> the last offset delivered to stage 1 since the assignment (what the lag gauge reads)."""
        return dict(self._last)

    def reset(self) -> None:
        """After a rebalance: the stores were recovered, so rebuild the derived id index lazily.

        Pending writes are dropped: their partitions may belong to another worker now, and the
        events behind them were never acknowledged, so they are delivered again.
        """
        self._seen.clear()
        self._idle_sent.clear()
        self._sent.clear()
        self._last.clear()
        self._pending_windows.clear()
        self._pending_seen.clear()

    def seen_ids(self, partition: int, now: float) -> SeenIds:
        seen = self._seen.get(partition)
        if seen is None:
            batches = [b for k, b in self.seen.items() if partition_of_key(k) == partition]
            seen = self._seen[partition] = SeenIds.from_batches(
                batches, self.dedup_horizon_s, self.dedup_max_ids, now)
        return seen

    async def without_gaps(self, messages: Sequence[RawMessage]) -> list[RawMessage]:
        """The batch with any records Faust skipped put back in front of where they belong."""
        out: list[RawMessage] = []
        for m in messages:
            last = self._last.get(m.partition)
            if last is None:
                start = await self.gaps.start_offset(m.partition)
                last = (start if start is not None else m.offset) - 1
            if m.offset > last + 1:
                missing = await self.gaps.fetch(m.partition, last + 1, m.offset)
                log.warning("%s[%d]: offsets %d..%d were not delivered; read %d record(s) directly",
                            self.topic, m.partition, last + 1, m.offset - 1, len(missing))
                self.metrics.gap_records.inc(len(missing))
                out.extend(missing)
            out.append(m)
            self._last[m.partition] = max(last, m.offset)
        return out

    async def process(self, messages: Sequence[RawMessage]) -> None:
        now = self.clock()
        started = time.perf_counter()
        messages = await self.without_gaps(messages)
        touched: dict[str, EntitlementWindows] = {}
        new_ids: dict[int, list[tuple[str, int]]] = {}
        first_offset: dict[int, int] = {}
        counts = [0, 0, 0, 0]  # new, duplicates, replays, late: one metric update per batch, not per event
        newest: float | None = None  # the newest new event's ts: the batch's delivery delay, one observation
        for m in messages:
            events, batched = decode_request_events(m.value, self.topic, self.bad)
            if not events:
                if m.value is None:
                    self.bad.note(self.topic, "tombstone", f"partition {m.partition} offset {m.offset}")
                continue
            seen = self.seen_ids(m.partition, now)
            # A record may hold many events of one entitlement (a batch). Whether it is a replay is
            # decided against the offset the window record had *before* this record: applying the
            # first event moves the record's offset to this one, and the second event of the same
            # record must not look like a replay. All events of a record for one window record are
            # persisted in one write, so the offset check stays exact per record.
            applied: dict[str, int] = {}
            taken: set[str] = set()  # ids already met in this record: a repeat inside it is a duplicate
            for ev in events:
                if batched and m.key != ev.entitlement.encode():
                    # Id memory is per partition: sound only if an event always lands on its
                    # entitlement's partition, which a batch keyed by another entitlement breaks.
                    self.bad.note(self.topic, "key_mismatch",
                                  f"event {ev.id} of {ev.entitlement!r} in a batch keyed {m.key!r}")
                    continue
                problem = shape_problem(ev)
                if problem is not None:
                    self.bad.note(self.topic, "invalid_outcome", f"event {ev.id}: {problem}")
                    continue
                key = windows_key(m.partition, ev.entitlement)
                rec = touched.get(key) or self.windows.get(key)
                if rec is None:
                    rec = EntitlementWindows(ev.entitlement, ev.pool, ev.tier.value, m.partition)
                before = applied.setdefault(key, rec.offset)
                verdict = seen.verdict(ev.id, m.offset, before)
                if verdict is DedupVerdict.NEW and ev.id in taken:
                    verdict = DedupVerdict.DUPLICATE
                taken.add(ev.id)
                if seen.remember(ev.id, m.offset):
                    new_ids.setdefault(m.partition, []).append((ev.id, m.offset))
                    first_offset.setdefault(m.partition, m.offset)
                if verdict is DedupVerdict.REPLAY:
                    counts[2] += 1
                    continue
                if verdict is DedupVerdict.DUPLICATE:
                    counts[1] += 1
                    rec.note_duplicate(m.offset)
                else:
                    counts[0] += 1
                    newest = ev.ts if newest is None else max(newest, ev.ts)
                    if not rec.apply(ev, m.offset, self.spec, now):
                        counts[3] += 1
                touched[key] = rec
        for metric, n in zip((self.metrics.new, self.metrics.duplicates, self.metrics.replays, self.metrics.late),
                             counts, strict=True):
            if n:
                metric.inc(n)
        for key, rec in touched.items():
            rec.prune(self.spec, now)
            self._pending_windows[key] = rec
        for partition, ids in new_ids.items():
            batch = SeenBatch(batch_key(partition, first_offset[partition]), now, ids)
            self._seen[partition].batches.append(batch)
            self._pending_seen[batch.key] = (batch, partition)
        await self.flush()
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if newest is not None:
            self.metrics.event_delay.observe(max(0.0, now - newest))

    async def flush(self) -> None:
        """Persist the pending writes; what fails stays pending for the next call.

        If a write fails (the broker is unreachable for longer than the producer's timeout), the
        caller retries the same batch: the events already applied are then replays and apply
        nothing, and the records they touched are still written from here.
        """
        while self._pending_windows:
            key, rec = next(iter(self._pending_windows.items()))
            await self.windows.put(key, rec, rec.partition)
            del self._pending_windows[key]
        while self._pending_seen:
            key, (batch, partition) = next(iter(self._pending_seen.items()))
            await self.seen.put(key, batch, partition)
            del self._pending_seen[key]

    def expire(self, now: float) -> None:
        """Forget ids past the dedup horizon (locally; the changelog's retention deletes them there)."""
        total = evicted = 0
        for seen in self._seen.values():
            for key in seen.expire(now):
                self.seen.forget(key)
            total += len(seen.ids)
            evicted += seen.evicted_early
        self.metrics.dedup_ids.set(total)
        self.metrics.dedup_evicted.set(evicted)

    def summaries(self, now: float, partitions: set[int]) -> list[UsageSummary]:
        """Summaries of the records on ``partitions`` (this worker's); an idle record is sent once more."""
        out: list[UsageSummary] = []
        for key, rec in self.windows.items():
            if rec.partition not in partitions:
                continue
            if rec.is_idle(self.spec, now):
                if key in self._idle_sent:
                    continue
                self._idle_sent.add(key)
            else:
                self._idle_sent.discard(key)
            out.append(self._summary(key, rec, now))
        return out

    def changed_summaries(self, now: float, partitions: set[int], threshold: float) -> list[UsageSummary]:
        """Summaries of the records that applied events since their last summary and whose trailing demand
        moved by more than ``threshold`` (relative) since then; the rest wait for ``summaries``."""
        out: list[UsageSummary] = []
        for key, rec in self.windows.items():
            if rec.partition not in partitions:
                continue
            last = self._sent.get(key)
            if last is not None and last[0] == rec.offset:
                continue
            weights = self.config.weights(rec.pool)
            if last is None or moved(last[1], rec.trailing_demand(self.spec, now, weights), threshold):
                self._idle_sent.discard(key)
                out.append(self._summary(key, rec, now))
        return out

    def _summary(self, key: str, rec: EntitlementWindows, now: float) -> UsageSummary:
        summary = rec.summary(self.spec, now, self.config.weights(rec.pool))
        demand = summary.trailing.demand if summary.trailing is not None else summary.tumbling.demand
        self._sent[key] = (rec.offset, (demand.throughput, demand.kv, demand.concurrency))
        return summary
