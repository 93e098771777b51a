"""Records as table rows: pure functions from decoded records to column-oriented blocks (no I/O).

A block is ``{column: [values]}`` in the table's column order. Times are integer milliseconds since
the epoch (what ``DateTime64(3)`` takes from clickhouse-connect without a datetime per row); optional
values are None (``Nullable``) or the empty string / 0 where the column is not nullable, as the DDL in
``schemas/clickhouse`` says. Held resources are integrated as stage 1 of the pipeline integrates them
(``streams.windows``), so reconciliation compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.records import EntitlementState, Phase, PoolState, ReplicasReport, RequestEvent
from schemas.specs import Entitlement, Manifest, TokenPool
from streams.records import UsageSummary

Block = dict[str, list[Any]]

REQUEST_COLUMNS = (
    "event_id", "request_id", "ts", "region", "pool", "entitlement", "tenant", "tier", "admitter", "model",
    "phase", "outcome", "refused_dimension", "status_code", "prompt_tokens", "max_tokens", "output_tokens",
    "reserved_throughput", "reserved_kv", "reserved_concurrency", "charged_throughput", "kv_seconds",
    "seq_seconds", "queue_wait_s", "ttft_s", "tpot_s", "latency_s", "retry_after_s", "replica", "preempted_by",
    "kafka_topic", "kafka_partition", "kafka_offset",
)


def ms(ts: float) -> int:
    return round(ts * 1000)


def tpot(ev: RequestEvent) -> float | None:
    """Time per output token after the first: (latency - TTFT) / (output tokens - 1), when both are known."""
    if ev.latency_s is None or ev.ttft_s is None or ev.output_tokens < 2:
        return None
    return max(0.0, ev.latency_s - ev.ttft_s) / (ev.output_tokens - 1)


def held(ev: RequestEvent) -> tuple[float, float]:
    """KV slot-seconds and sequence-seconds a finished request held (0 for a decision)."""
    if ev.phase is not Phase.FINISH:
        return 0.0, 0.0
    latency = ev.latency_s or 0.0
    r = ev.reserved
    kv = r.kv if r.kv > 0 else float(ev.prompt_tokens + ev.output_tokens)
    seqs = r.concurrency if r.concurrency > 0 else 1.0
    return kv * latency, seqs * latency


@dataclass(slots=True)
class Located:
    """Where a record was: every row keeps its topic, partition and offset."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int = 0


def request_block(events: Sequence[tuple[RequestEvent, Located]]) -> Block:
    """Column by column (one comprehension per column: about twice as fast as row by row, measured)."""
    evs = [ev for ev, _ in events]
    where = [w for _, w in events]
    held_ = [held(ev) for ev in evs]
    return {
        "event_id": [e.id for e in evs], "request_id": [e.request_id for e in evs],
        "ts": [round(e.ts * 1000) for e in evs], "region": [e.region for e in evs], "pool": [e.pool for e in evs],
        "entitlement": [e.entitlement for e in evs], "tenant": [e.tenant for e in evs],
        # StrEnums are str already: their .value would cost an enum property lookup per row.
        "tier": [e.tier for e in evs], "admitter": [e.admitter_id for e in evs], "model": [e.model for e in evs],
        "phase": [e.phase for e in evs], "outcome": [e.outcome for e in evs],
        "refused_dimension": [e.refused_dimension or "" for e in evs],
        "status_code": [e.status_code or 0 for e in evs], "prompt_tokens": [e.prompt_tokens for e in evs],
        "max_tokens": [e.max_tokens for e in evs], "output_tokens": [e.output_tokens for e in evs],
        "reserved_throughput": [e.reserved.throughput for e in evs], "reserved_kv": [e.reserved.kv for e in evs],
        "reserved_concurrency": [e.reserved.concurrency for e in evs],
        "charged_throughput": [e.charged.throughput if e.charged is not None else 0.0 for e in evs],
        "kv_seconds": [h[0] for h in held_], "seq_seconds": [h[1] for h in held_],
        "queue_wait_s": [e.queue_wait_s for e in evs], "ttft_s": [e.ttft_s for e in evs],
        "tpot_s": [tpot(e) for e in evs], "latency_s": [e.latency_s for e in evs],
        "retry_after_s": [e.retry_after_s for e in evs], "replica": [e.replica for e in evs],
        "preempted_by": [e.preempted_by or "" for e in evs],
        "kafka_topic": [w.topic for w in where], "kafka_partition": [w.partition for w in where],
        "kafka_offset": [w.offset for w in where],
    }


def entitlement_state_block(states: Sequence[tuple[EntitlementState, Located]]) -> Block:
    block: Block = {}
    for s, where in states:
        row = {
            "entitlement": s.id, "pool": s.pool, "tier": s.tier.value, "seq": s.seq, "ts": ms(s.ts),
            "limit_throughput": s.limits.throughput, "limit_kv": s.limits.kv,
            "limit_concurrency": s.limits.concurrency,
            "demand_throughput": s.demand.throughput, "demand_kv": s.demand.kv,
            "demand_concurrency": s.demand.concurrency,
            "usage_throughput": s.usage.throughput, "usage_kv": s.usage.kv, "usage_concurrency": s.usage.concurrency,
            "debt": s.debt, "effective_weight": s.effective_weight, "fair_share": s.fair_share,
            "dominant_share": s.dominant_share, "admitters": len(s.admitter_shares),
            "kafka_partition": where.partition, "kafka_offset": where.offset,
        }
        append_row(block, row)
    return block


@dataclass(slots=True)
class PoolBlocks:
    pools: Block = field(default_factory=dict)
    tiers: Block = field(default_factory=dict)


def pool_state_blocks(states: Sequence[tuple[PoolState, Located]]) -> PoolBlocks:
    out = PoolBlocks()
    for s, where in states:
        append_row(out.pools, {
            "pool": s.id, "seq": s.seq, "ts": ms(s.ts), "ready_replicas": s.ready_replicas,
            "desired_replicas": s.desired_replicas,
            "capacity_throughput": s.capacity.throughput, "capacity_kv": s.capacity.kv,
            "capacity_concurrency": s.capacity.concurrency,
            "guarantees_throughput": s.guarantees.throughput, "guarantees_kv": s.guarantees.kv,
            "guarantees_concurrency": s.guarantees.concurrency,
            "kafka_partition": where.partition, "kafka_offset": where.offset,
        })
        for tier in sorted(set(s.demand) | set(s.usage), key=lambda t: t.value):
            d, u = s.demand.get(tier), s.usage.get(tier)
            append_row(out.tiers, {
                "pool": s.id, "seq": s.seq, "ts": ms(s.ts), "tier": tier.value,
                "demand_throughput": d.throughput if d else 0.0, "demand_kv": d.kv if d else 0.0,
                "demand_concurrency": d.concurrency if d else 0.0,
                "usage_throughput": u.throughput if u else 0.0, "usage_kv": u.kv if u else 0.0,
                "usage_concurrency": u.concurrency if u else 0.0,
                "kafka_partition": where.partition, "kafka_offset": where.offset,
            })
    return out


def replicas_block(reports: Sequence[tuple[ReplicasReport, Located]]) -> Block:
    block: Block = {}
    for r, where in reports:
        ts = ms(r.ts) if r.ts > 0 else where.timestamp_ms  # older scalers sent no time: the record's own
        append_row(block, {"pool": r.pool, "ts": ts, "ready_replicas": r.ready_replicas,
                        "endpoints": list(r.endpoints or []),
                        "kafka_partition": where.partition, "kafka_offset": where.offset})
    return block


@dataclass(slots=True)
class ConfigBlocks:
    entitlements: Block = field(default_factory=dict)
    pools: Block = field(default_factory=dict)


def config_blocks(changes: Sequence[tuple[str, Manifest | None, Located]]) -> ConfigBlocks:
    """Config topic records (key ``Kind/name``; None for a tombstone) as spec versions."""
    out = ConfigBlocks()
    for key, manifest, where in changes:
        kind, _, name = key.partition("/")
        ts = where.timestamp_ms
        if isinstance(manifest, Entitlement) or (manifest is None and kind == "Entitlement"):
            spec = manifest.spec if isinstance(manifest, Entitlement) else None
            append_row(out.entitlements, {
                "entitlement": name, "ts": ts, "deleted": 1 if spec is None else 0,
                "pool": spec.pool if spec else "", "tenant": spec.tenant if spec else "",
                "tier": spec.tier.value if spec else "",
                "guarantee_throughput": spec.guarantee.throughput if spec else 0.0,
                "guarantee_kv": spec.guarantee.kv if spec else 0.0,
                "guarantee_concurrency": spec.guarantee.concurrency if spec else 0.0,
                "burst_throughput": spec.burst.throughput if spec else 0.0,
                "burst_kv": spec.burst.kv if spec else 0.0,
                "burst_concurrency": spec.burst.concurrency if spec else 0.0,
                "weight": spec.weight if spec else 0.0,
                "slo_ttft_s": spec.slo.ttft_seconds if spec and spec.slo else None,
                "slo_tpot_s": spec.slo.tpot_seconds if spec and spec.slo else None,
                "kafka_partition": where.partition, "kafka_offset": where.offset,
            })
        elif isinstance(manifest, TokenPool) or (manifest is None and kind == "TokenPool"):
            p = manifest.spec if isinstance(manifest, TokenPool) else None
            append_row(out.pools, {
                "pool": name, "ts": ts, "deleted": 1 if p is None else 0,
                "model": p.model if p else "", "region": p.region if p else "",
                "per_replica_throughput": p.per_replica.throughput if p else 0.0,
                "per_replica_kv": p.per_replica.kv if p else 0.0,
                "per_replica_concurrency": p.per_replica.concurrency if p else 0.0,
                "token_weight_input": p.token_weights.input if p else 0.0,
                "token_weight_output": p.token_weights.output if p else 0.0,
                "min_replicas": p.replicas.min if p else 0, "max_replicas": p.replicas.max if p else 0,
                "kafka_partition": where.partition, "kafka_offset": where.offset,
            })
    return out


def extend_block(block: Block, more: Block) -> None:
    """Append ``more``'s rows to ``block`` (same columns; an empty ``block`` takes them all)."""
    if not block:
        block.update({c: list(v) for c, v in more.items()})
        return
    for column, values in more.items():
        block[column].extend(values)


def append_row(block: Block, row: dict[str, Any]) -> None:
    if not block:
        block.update({c: [] for c in row})
    for column, value in row.items():
        block[column].append(value)


def pipeline_windows_block(summaries: Sequence[tuple[UsageSummary, Located]]) -> Block:
    """Stage 1's closed tumbling windows (what ``reconcile`` compares the raw rows with).

    Stage 1 re-sends the latest closed window every summary interval, so one window arrives many
    times; readers take one row per (entitlement, partition, start) (``argMax`` by ``summary_ts``).
    """
    block: Block = {}
    for s, where in summaries:
        w, t = s.tumbling, s.totals
        append_row(block, {
            "entitlement": s.entitlement, "pool": s.pool, "tier": s.tier.value, "requests_partition": s.partition,
            "window_start": ms(w.start), "window_end": ms(w.end), "summary_ts": ms(s.ts),
            "decisions": round(w.decisions), "admitted": round(w.admitted), "queued": round(w.queued),
            "refused": round(w.refused), "finished": round(w.finished),
            "prompt_tokens": round(w.prompt_tokens), "output_tokens": round(w.output_tokens),
            "kv_seconds": w.kv_seconds, "seq_seconds": w.seq_seconds,
            "total_events": t.events, "total_duplicates": t.duplicates, "total_late": t.late,
            "kafka_partition": where.partition, "kafka_offset": where.offset,
        })
    return block
