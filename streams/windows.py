"""Per-entitlement window aggregation (pure: no Kafka, no clock; ``now`` is an argument).

Events are summed into fixed buckets of event time. What the allocator reads is the **trailing
window**: the rates over the last ``tumbling_s`` seconds ending *now*, open bucket included, so an
event counts from the first summary after it instead of after its window closes (that wait was
most of the event-to-limit lag). Buckets are small (``resolution_s``, a tenth of the window by
default); the oldest bucket, which the window only partly covers, counts by the fraction inside it
(events assumed uniform within a bucket). Each event therefore weighs ``1/W`` for ``W`` seconds on
average: the integral of the trailing rate over time is the event's real amount, within
``bucket/(2W)`` (5 % by default) for a single event and exactly on average, which is what debt
needs (it integrates ``usage * dt``).

Closed **tumbling** windows ``[k*T, (k+1)*T)`` and **hopping** windows ``[k*step, k*step + size)``
are still summarised (reports, audits): they are sums of whole *groups* (the gcd of the window
sizes). Buckets older than the trailing window are folded into their group, so a record holds about
ten fine buckets plus one per group, not a fine bucket per second of the hopping window. Buckets
older than the longest window plus a grace period are dropped, so a record's size is bounded
whatever the traffic.

Why buckets and not Faust's windowed tables: one record per entitlement carries the buckets, the
last applied offset and the cumulative totals together, so a single changelog write updates them
atomically. That is what makes replays after a crash detectable by offset (see ``streams.dedup``):
the record says exactly which events it already contains.

Attribution (a documented approximation): a request's tokens and its held resources (KV slots and
one sequence for ``latency_s``) are charged to the bucket of its finish event. This keeps integrals
exact (debt integrates usage over time) at the cost of lumpiness for requests longer than a bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.records import Amounts, Outcome, Phase, RequestEvent
from schemas.specs import Triple
from streams.records import Totals, UsageSummary, WindowSummary

# Bucket fields (a flat list keeps records small and updates cheap).
(
    F_DECISIONS, F_ADMITTED, F_QUEUED, F_REFUSED, F_FINISHED, F_PROMPT, F_OUTPUT, F_KV_S, F_SEQ_S,
    F_LAT_SUM, F_LAT_N, F_D_TP, F_D_KV, F_D_CONC, F_R_TP, F_R_KV, F_R_CONC, F_Q_TP, F_Q_KV, F_Q_CONC,
    F_QW_KV, F_QW_SEQ,
) = range(22)
N_FIELDS = 22

# Totals fields, in the order of ``streams.records.Totals``.
TOTAL_FIELDS: tuple[str, ...] = tuple(Totals.model_fields)
(
    T_EVENTS, T_DUPLICATES, T_LATE, T_DECISIONS, T_ADMITTED, T_QUEUED, T_REFUSED, T_FINISHED, T_COMPLETED,
    T_PREEMPTED, T_CANCELLED, T_FAILED, T_PROMPT, T_OUTPUT, T_KV_S, T_SEQ_S,
) = range(len(TOTAL_FIELDS))
_FINISH_TOTAL = {
    Outcome.COMPLETED: T_COMPLETED, Outcome.PREEMPTED: T_PREEMPTED,
    Outcome.CANCELLED: T_CANCELLED, Outcome.FAILED: T_FAILED,
}
DECISION_OUTCOMES = frozenset({Outcome.ADMITTED, Outcome.QUEUED_ADMITTED, Outcome.REFUSED})
FINISH_OUTCOMES = frozenset(_FINISH_TOTAL)
# Refused work is assumed to have wanted its resources for this long when no request finished in
# the window to measure the mean latency from.
FALLBACK_LATENCY_S = 1.0


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def moved(before: Triple, after: Triple, threshold: float) -> bool:
    """Did any dimension change by more than ``threshold`` of the larger value (from or to zero always does)?

    Decides when a summary or a tick goes out early: small drifts wait for the regular cadence.
    """
    for a, b in zip(before, after, strict=True):
        diff = abs(a - b)
        if diff > 1e-9 and diff > threshold * max(abs(a), abs(b)):
            return True
    return False


@dataclass(frozen=True)
class WindowSpec:
    """Window sizes in seconds (millisecond resolution).

    ``tumbling_s`` is the allocator's averaging window (its trailing rate feeds every tick; closed
    windows of that size are reported too); ``resolution_s`` is the bucket size of the trailing
    window (default: a tenth of it).
    """

    tumbling_s: float = 10.0
    hop_size_s: float = 60.0
    hop_step_s: float = 10.0
    grace_s: float = 1.0  # a window counts as closed once its end is this far in the past
    resolution_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("tumbling_s", "hop_size_s", "hop_step_s"):
            if _ms(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be at least 1 ms")
        if self.resolution_s is not None and _ms(self.resolution_s) <= 0:
            raise ValueError("resolution_s must be at least 1 ms")
        if self.grace_s < 0:
            raise ValueError("grace_s must be >= 0")
        if self.hop_size_s < self.hop_step_s:
            raise ValueError("the hopping window must be at least as long as its step")

    @property
    def group_s(self) -> float:
        """The closed windows are sums of whole groups of this size (old buckets are folded into them)."""
        return math.gcd(_ms(self.tumbling_s), _ms(self.hop_size_s), _ms(self.hop_step_s)) / 1000.0

    @property
    def bucket_s(self) -> float:
        resolution = _ms(self.resolution_s) if self.resolution_s is not None else max(1, _ms(self.tumbling_s) // 10)
        return math.gcd(_ms(self.group_s), resolution) / 1000.0

    @property
    def buckets_per_group(self) -> int:
        return _ms(self.group_s) // _ms(self.bucket_s)

    @property
    def retention_s(self) -> float:
        """How far back buckets are kept: the longest window, one step of slack, and the grace."""
        return max(self.tumbling_s, self.hop_size_s) + max(self.tumbling_s, self.hop_step_s) + self.grace_s

    def bucket_of(self, ts: float) -> int:
        return math.floor(ts / self.bucket_s)

    def fine_from(self, now: float) -> int:
        """Buckets from this index on stay unfolded: the trailing window and one bucket of slack."""
        return self.bucket_of(now - self.tumbling_s) - 1

    def latest_tumbling(self, now: float) -> tuple[float, float]:
        end = math.floor((now - self.grace_s) / self.tumbling_s) * self.tumbling_s
        return end - self.tumbling_s, end

    def latest_hopping(self, now: float) -> tuple[float, float]:
        end = math.floor((now - self.grace_s) / self.hop_step_s) * self.hop_step_s
        return end - self.hop_size_s, end

    def buckets_in(self, start: float, end: float) -> range:
        b = self.bucket_s
        return range(round(start / b), round(end / b))


@dataclass(frozen=True)
class Weights:
    """A pool's token weights: throughput units per prompt and per output token."""

    input: float = 0.5
    output: float = 1.0


@dataclass
class EntitlementWindows:
    """Everything stage 1 knows about one entitlement on one requests partition."""

    entitlement: str
    pool: str
    tier: str
    partition: int
    offset: int = -1  # last requests offset applied (or skipped as a duplicate) on ``partition``
    buckets: dict[int, list[float]] = field(default_factory=dict)
    admitters: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    totals: list[float] = field(default_factory=lambda: [0.0] * len(TOTAL_FIELDS))

    # -- updates -----------------------------------------------------------------------------

    def apply(self, ev: RequestEvent, offset: int, spec: WindowSpec, now: float) -> bool:
        """Count one new event; False when it fell outside the kept buckets (totals still count it)."""
        self.offset = max(self.offset, offset)
        self.pool, self.tier = ev.pool, ev.tier.value
        t = self.totals
        t[T_EVENTS] += 1
        in_window = now - spec.retention_s <= ev.ts <= now + spec.retention_s
        if not in_window:
            t[T_LATE] += 1
        bucket = self._bucket(spec.bucket_of(ev.ts)) if in_window else None
        r = ev.reserved
        if ev.phase is Phase.DECISION:
            t[T_DECISIONS] += 1
            if ev.outcome is Outcome.REFUSED:
                t[T_REFUSED] += 1
            else:
                t[T_ADMITTED] += 1
                if ev.outcome is Outcome.QUEUED_ADMITTED:
                    t[T_QUEUED] += 1
            if bucket is not None:
                self._decision(bucket, ev, r)
                self._admitter(spec.bucket_of(ev.ts), ev.admitter_id, r)
            return in_window
        latency = ev.latency_s or 0.0
        kv_held = r.kv if r.kv > 0 else float(ev.prompt_tokens + ev.output_tokens)
        seqs = r.concurrency if r.concurrency > 0 else 1.0
        t[T_FINISHED] += 1
        t[_FINISH_TOTAL[ev.outcome]] += 1
        t[T_PROMPT] += ev.prompt_tokens
        t[T_OUTPUT] += ev.output_tokens
        t[T_KV_S] += kv_held * latency
        t[T_SEQ_S] += seqs * latency
        if bucket is not None:
            bucket[F_FINISHED] += 1
            bucket[F_PROMPT] += ev.prompt_tokens
            bucket[F_OUTPUT] += ev.output_tokens
            bucket[F_KV_S] += kv_held * latency
            bucket[F_SEQ_S] += seqs * latency
            if ev.latency_s is not None:
                bucket[F_LAT_SUM] += latency
                bucket[F_LAT_N] += 1
        return in_window

    def note_duplicate(self, offset: int) -> None:
        self.offset = max(self.offset, offset)
        self.totals[T_DUPLICATES] += 1

    def prune(self, spec: WindowSpec, now: float) -> None:
        """Drop buckets past retention; fold those older than the trailing window into their group."""
        oldest = spec.bucket_of(now - spec.retention_s)
        fine_from = spec.fine_from(now)
        per = spec.buckets_per_group
        for idx in [i for i in self.buckets if i < fine_from]:
            if idx < oldest:
                del self.buckets[idx]
            elif per > 1 and idx % per:
                _add_into(self._bucket(idx - idx % per), self.buckets.pop(idx))
        for idx in [i for i in self.admitters if i < fine_from]:
            if idx < oldest:
                del self.admitters[idx]
            elif per > 1 and idx % per:
                into = self.admitters.setdefault(idx - idx % per, {})
                for admitter, v in self.admitters.pop(idx).items():
                    _add_into(into.setdefault(admitter, [0.0, 0.0, 0.0]), v)

    def _bucket(self, idx: int) -> list[float]:
        bucket = self.buckets.get(idx)
        if bucket is None:
            bucket = self.buckets[idx] = [0.0] * N_FIELDS
        return bucket

    @staticmethod
    def _decision(bucket: list[float], ev: RequestEvent, r: Amounts) -> None:
        bucket[F_DECISIONS] += 1
        bucket[F_D_TP] += r.throughput
        bucket[F_D_KV] += r.kv
        bucket[F_D_CONC] += r.concurrency
        if ev.outcome is Outcome.REFUSED:
            bucket[F_REFUSED] += 1
            bucket[F_R_TP] += r.throughput
            bucket[F_R_KV] += r.kv
            bucket[F_R_CONC] += r.concurrency
        else:
            bucket[F_ADMITTED] += 1
            if ev.outcome is Outcome.QUEUED_ADMITTED:
                bucket[F_QUEUED] += 1
                bucket[F_Q_TP] += r.throughput
                bucket[F_Q_KV] += r.kv
                bucket[F_Q_CONC] += r.concurrency
        if ev.queue_wait_s > 0:
            bucket[F_QW_KV] += r.kv * ev.queue_wait_s
            bucket[F_QW_SEQ] += r.concurrency * ev.queue_wait_s

    def _admitter(self, idx: int, admitter: str, r: Amounts) -> None:
        per = self.admitters.get(idx)
        if per is None:
            per = self.admitters[idx] = {}
        acc = per.get(admitter)
        if acc is None:
            acc = per[admitter] = [0.0, 0.0, 0.0]
        acc[0] += r.throughput
        acc[1] += r.kv
        acc[2] += r.concurrency

    # -- reads -------------------------------------------------------------------------------

    def sums(self, start: float, end: float, spec: WindowSpec) -> list[float]:
        out = [0.0] * N_FIELDS
        for idx in spec.buckets_in(start, end):
            bucket = self.buckets.get(idx)
            if bucket is not None:
                _add_into(out, bucket)
        return out

    def trailing_sums(self, spec: WindowSpec, now: float) -> list[float]:
        """Sums over ``[now - W, now]``: newer buckets whole (a skewed clock's future ones too), the oldest by
        the fraction of it inside the window."""
        b = spec.bucket_s
        start = now - spec.tumbling_s
        first = spec.bucket_of(start)
        part = 1.0 - (start / b - first)
        out = [0.0] * N_FIELDS
        for idx, bucket in self.buckets.items():
            if idx > first:
                _add_into(out, bucket)
            elif idx == first:
                for i, v in enumerate(bucket):
                    out[i] += v * part
        return out

    def window(self, start: float, end: float, spec: WindowSpec, weights: Weights) -> WindowSummary:
        return _summary(self.sums(start, end, spec), start, end, weights)

    def trailing(self, spec: WindowSpec, now: float, weights: Weights) -> WindowSummary:
        """The allocator's input: rates over the last ``tumbling_s`` seconds up to ``now``."""
        return _summary(self.trailing_sums(spec, now), now - spec.tumbling_s, now, weights)

    def trailing_demand(self, spec: WindowSpec, now: float, weights: Weights) -> Triple:
        """``trailing(...).demand`` without building records (stage 1 checks it often)."""
        s = self.trailing_sums(spec, now)
        return _demand(s, spec.tumbling_s, weights)

    def admitter_demand(self, start: float, end: float, spec: WindowSpec) -> dict[str, Amounts]:
        acc: dict[str, list[float]] = {}
        for idx in spec.buckets_in(start, end):
            for admitter, v in self.admitters.get(idx, {}).items():
                a = acc.setdefault(admitter, [0.0, 0.0, 0.0])
                a[0] += v[0]
                a[1] += v[1]
                a[2] += v[2]
        return {k: Amounts(throughput=v[0], kv=v[1], concurrency=v[2]) for k, v in sorted(acc.items())}

    def summary(self, spec: WindowSpec, now: float, weights: Weights) -> UsageSummary:
        t_start, t_end = spec.latest_tumbling(now)
        h_start, h_end = spec.latest_hopping(now)
        # The split follows the freshest demand: the hopping size up to the end of the current bucket.
        recent_end = (spec.bucket_of(now) + 1) * spec.bucket_s
        return UsageSummary(
            entitlement=self.entitlement, pool=self.pool, tier=self.tier, partition=self.partition,
            offset=self.offset, ts=now,
            trailing=self.trailing(spec, now, weights),
            tumbling=self.window(t_start, t_end, spec, weights),
            hopping=self.window(h_start, h_end, spec, weights),
            admitter_demand=self.admitter_demand(recent_end - spec.hop_size_s, recent_end, spec),
            totals=self.totals_record(),
        )

    def totals_record(self) -> Totals:
        values: dict[str, Any] = {}
        for name, v in zip(TOTAL_FIELDS, self.totals, strict=True):
            values[name] = v if name in ("kv_seconds", "seq_seconds") else round(v)
        return Totals(**values)

    def is_idle(self, spec: WindowSpec, now: float) -> bool:
        """No bucket left that any window could still include."""
        oldest = spec.bucket_of(now - spec.retention_s)
        return not any(idx >= oldest for idx in self.buckets)

    # -- encoding (the table's changelog value) ----------------------------------------------

    def to_json(self) -> bytes:
        return orjson.dumps({
            "e": self.entitlement, "pool": self.pool, "tier": self.tier, "p": self.partition, "o": self.offset,
            "b": {str(k): v for k, v in self.buckets.items()},
            "a": {str(k): v for k, v in self.admitters.items()},
            "t": self.totals,
        })

    @classmethod
    def from_json(cls, raw: bytes | str) -> EntitlementWindows:
        d = orjson.loads(raw)
        totals = list(d.get("t") or [])
        totals += [0.0] * (len(TOTAL_FIELDS) - len(totals))  # records written before a field was added
        return cls(
            entitlement=d["e"], pool=d["pool"], tier=d["tier"], partition=int(d["p"]), offset=int(d["o"]),
            buckets={int(k): list(v) for k, v in d.get("b", {}).items()},
            admitters={int(k): {a: list(x) for a, x in v.items()} for k, v in d.get("a", {}).items()},
            totals=totals,
        )


def _add_into(acc: list[float], values: list[float]) -> None:
    for i, v in enumerate(values):
        acc[i] += v


def _demand(s: list[float], span: float, weights: Weights) -> Triple:
    weighted = weights.input * s[F_PROMPT] + weights.output * s[F_OUTPUT]
    mean_latency = s[F_LAT_SUM] / s[F_LAT_N] if s[F_LAT_N] else FALLBACK_LATENCY_S
    return (
        max(s[F_D_TP], weighted + s[F_R_TP]) / span,
        (s[F_KV_S] + s[F_R_KV] * mean_latency + s[F_QW_KV]) / span,
        (s[F_SEQ_S] + s[F_R_CONC] * mean_latency + s[F_QW_SEQ]) / span,
    )


def _summary(s: list[float], start: float, end: float, weights: Weights) -> WindowSummary:
    span = end - start
    weighted = weights.input * s[F_PROMPT] + weights.output * s[F_OUTPUT]
    usage = Amounts(throughput=weighted / span, kv=s[F_KV_S] / span, concurrency=s[F_SEQ_S] / span)
    return WindowSummary(
        start=start, end=end, decisions=s[F_DECISIONS], admitted=s[F_ADMITTED], queued=s[F_QUEUED],
        refused=s[F_REFUSED], finished=s[F_FINISHED], prompt_tokens=s[F_PROMPT], output_tokens=s[F_OUTPUT],
        weighted_tokens=weighted, kv_seconds=s[F_KV_S], seq_seconds=s[F_SEQ_S],
        refused_demand=Amounts(throughput=s[F_R_TP], kv=s[F_R_KV], concurrency=s[F_R_CONC]),
        queued_demand=Amounts(throughput=s[F_Q_TP], kv=s[F_Q_KV], concurrency=s[F_Q_CONC]),
        usage=usage, demand=Amounts.from_tuple(_demand(s, span, weights)),
    )
