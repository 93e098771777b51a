"""Turning simulation records into the figures the experiments report.

Everything here is vectorised over numpy columns: a run holds a few hundred thousand requests.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sim.control import RequestRecord, SimOutcome, SimResult

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Columns:
    """A run's records as arrays (NaN where a time does not apply)."""

    tenant: NDArray[np.str_]
    tier: NDArray[np.str_]
    outcome: NDArray[np.str_]
    arrival: Array
    submitted: Array
    first_token: Array
    finish: Array
    prompt: Array
    output: Array
    end: float

    @classmethod
    def of(cls, records: Sequence[RequestRecord], end: float) -> Columns:
        def col(values: list[float | None]) -> Array:
            return np.array([np.nan if v is None else v for v in values], dtype=float)

        return cls(
            tenant=np.array([r.tenant for r in records]),
            tier=np.array([r.tier for r in records]),
            outcome=np.array([r.outcome.value for r in records]),
            arrival=col([r.arrival for r in records]),
            submitted=col([r.submitted for r in records]),
            first_token=col([r.first_token for r in records]),
            finish=col([r.finish for r in records]),
            prompt=np.array([r.prompt_tokens for r in records], dtype=float),
            output=np.array([r.output_tokens for r in records], dtype=float),
            end=end,
        )

    @property
    def censored(self) -> NDArray[np.bool_]:
        """Still waiting for a first token when the run ended."""
        return (self.outcome == SimOutcome.UNFINISHED.value) & np.isnan(self.first_token)

    @property
    def ttft(self) -> Array:
        """Time to first token; for a request still waiting at the end, the wait so far (a lower bound)."""
        return np.where(self.censored, self.end - self.arrival, self.first_token - self.arrival)

    @property
    def e2e(self) -> Array:
        done = self.outcome == SimOutcome.COMPLETED.value
        return np.where(done, self.finish - self.arrival, np.nan)


def pct(values: Array, q: float) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.percentile(values, q)) if values.size else None


def phase_row(cols: Columns, result: SimResult, tier: str, lo: float, hi: float,
              capacity_tp: float) -> dict[str, float | int | str | None]:
    """Latency percentiles of requests arriving in [lo, hi); service delivered in [lo, hi)."""
    arrived = (cols.tier == tier) & (cols.arrival >= lo) & (cols.arrival < hi)
    done_in = ((cols.tier == tier) & (cols.outcome == SimOutcome.COMPLETED.value)
               & (cols.finish >= lo) & (cols.finish < hi))
    span = max(hi - lo, 1e-9)
    ttft, e2e = cols.ttft[arrived], cols.e2e[arrived]
    weighted = (result.w_in * cols.prompt[done_in] + result.w_out * cols.output[done_in]).sum() / span
    outcomes = cols.outcome[arrived]
    return {
        "tier": tier,
        "requests": int(arrived.sum()),
        "completed": int((outcomes == SimOutcome.COMPLETED.value).sum()),
        "refused": int(np.isin(outcomes, [SimOutcome.REFUSED.value, SimOutcome.QUEUE_TIMEOUT.value]).sum()),
        "preempted": int((outcomes == SimOutcome.PREEMPTED.value).sum()),
        "unfinished": int((outcomes == SimOutcome.UNFINISHED.value).sum()),
        "censored": int(cols.censored[arrived].sum()),
        "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95), "ttft_p99": pct(ttft, 99),
        "e2e_p50": pct(e2e, 50), "e2e_p95": pct(e2e, 95), "e2e_p99": pct(e2e, 99),
        "output_tokens_per_s": float(cols.output[done_in].sum() / span),
        "weighted_tokens_per_s": float(weighted),
        "utilisation": float(weighted / capacity_tp) if capacity_tp > 0 else None,
    }


def served_weighted(cols: Columns, result: SimResult, lo: float, hi: float) -> float:
    """Weighted tokens/s of requests completed in [lo, hi), all tiers."""
    done = (cols.outcome == SimOutcome.COMPLETED.value) & (cols.finish >= lo) & (cols.finish < hi)
    return float((result.w_in * cols.prompt[done] + result.w_out * cols.output[done]).sum() / max(hi - lo, 1e-9))


def p99_series(cols: Columns, tier: str, end: float, window: float) -> tuple[Array, Array]:
    """P99 TTFT of requests arriving in consecutive windows (NaN where none got a first token)."""
    edges = np.arange(0.0, end + 1e-9, window)
    mids, values = [], []
    sel = cols.tier == tier
    ttft, arrival = cols.ttft[sel], cols.arrival[sel]
    for lo, hi in itertools.pairwise(edges):
        inwin = (arrival >= lo) & (arrival < hi)
        mids.append((lo + hi) / 2)
        values.append(pct(ttft[inwin], 99) or np.nan)
    return np.array(mids), np.array(values, dtype=float)


def dominant_shares(cols: Columns, result: SimResult, tenants: Sequence[str], end: float, window: float,
                    capacity: Sequence[float]) -> tuple[Array, dict[str, Array]]:
    """Each tenant's dominant share per window: max over dimensions of its usage / pool capacity.

    A request's usage is spread evenly over the time it runs (first token to finish; time spent in a
    replica's waiting queue holds nothing): weighted tokens as a rate, prompt + output KV tokens
    held, and one sequence.
    """
    edges = np.arange(0.0, end + 1e-9, window)
    lo, hi = edges[:-1], edges[1:]
    ran = ~np.isnan(cols.first_token) & ~np.isnan(cols.finish)
    completed = cols.outcome == SimOutcome.COMPLETED.value
    out: dict[str, Array] = {}
    cap = np.asarray(capacity, dtype=float)
    for tenant in tenants:
        sel = ran & (cols.tenant == tenant)
        s, f = cols.first_token[sel], cols.finish[sel]
        life = np.maximum(f - s, 1e-9)
        tokens = np.where(completed[sel], result.w_in * cols.prompt[sel] + result.w_out * cols.output[sel], 0.0)
        kv = cols.prompt[sel] + cols.output[sel]
        overlap = np.clip(np.minimum(f[:, None], hi[None, :]) - np.maximum(s[:, None], lo[None, :]), 0.0, None)
        span = (hi - lo)[None, :]
        tp = (tokens[:, None] * overlap / life[:, None]).sum(axis=0) / span[0]
        kvu = (kv[:, None] * overlap).sum(axis=0) / span[0]
        conc = overlap.sum(axis=0) / span[0]
        out[tenant] = np.max(np.vstack([tp / cap[0], kvu / cap[1], conc / cap[2]]), axis=0)
    return (lo + hi) / 2, out


def jain(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=float)
    return float(x.sum() ** 2 / (len(x) * (x**2).sum())) if (x**2).sum() > 0 else 1.0
