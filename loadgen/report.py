"""What a load run measured: percentiles and outcome counts per tier and tenant, as JSON, Markdown, PNG.

Conventions (kept from the simulation's ``sim.analysis`` so the two can be compared):

* TTFT is reported over streamed requests only: a non-streamed answer arrives whole, so the client
  cannot see its first token (its record still carries the time to the answer in ``ttft``).
* A request the client stopped waiting for (``timeout``, or ``cut`` at the end of the run) before
  its first token counts with the time it had waited, a lower bound: leaving it out would make an
  overloaded server look fast. The ``censored`` column says how many there were.
* e2e latency is over completed requests; throughput counts the tokens (from ``usage``) of requests
  completed in the span, per second.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.runner import (
    CENSORED,
    CUT,
    ERROR,
    OK,
    PREEMPTED,
    REFUSED,
    TIMEOUT,
    TRANSPORT,
    UNAVAILABLE,
    UNSENT,
    LoadResult,
    Record,
)
from tokenpools.infra.results import figure, markdown_table

TIER_ORDER = ("guaranteed", "elastic", "spot", "unknown")
#: Outcome groups as the progress display and the plots show them.
GROUPS: dict[str, tuple[str, ...]] = {
    "ok": (OK,),
    "429": (REFUSED,),
    "503": (UNAVAILABLE, PREEMPTED),
    "errors": (ERROR, TRANSPORT, TIMEOUT),
    "cut": (CUT,),
}


def pct(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, numpy's default), None for no values."""
    arr = np.asarray([v for v in values if v is not None and v == v], dtype=float)
    return float(np.percentile(arr, q)) if arr.size else None


def ttft_sample(records: Iterable[Record]) -> tuple[list[float], int]:
    """TTFTs of streamed requests, with censored waits as lower bounds; and how many were censored."""
    values: list[float] = []
    censored = 0
    for r in records:
        if not r.stream or r.sent is None:
            continue
        if r.ttft is not None:
            values.append(r.ttft)
        elif r.outcome in CENSORED and r.ended is not None:
            values.append(r.ended - r.sent)
            censored += 1
    return values, censored


def group_row(records: Sequence[Record], done: Sequence[Record], span_seconds: float,
              weights: tuple[float, float] | None) -> dict[str, Any]:
    """Counts and latency percentiles of ``records``; throughput from ``done`` (completed in the span)."""
    outcomes = Counter(r.outcome for r in records)
    ttft, censored = ttft_sample(records)
    e2e = [r.e2e for r in records if r.outcome == OK and r.e2e is not None]
    prompt = sum(r.prompt_tokens or 0 for r in done)
    output = sum(r.output_tokens or 0 for r in done)
    span = max(span_seconds, 1e-9)
    row: dict[str, Any] = {
        "requests": len(records),
        "sent": sum(1 for r in records if r.outcome != UNSENT),
        "ok": outcomes[OK],
        "refused_429": outcomes[REFUSED],
        "unavailable_503": outcomes[UNAVAILABLE],
        "preempted": outcomes[PREEMPTED],
        "errors": outcomes[ERROR] + outcomes[TRANSPORT],
        "timeouts": outcomes[TIMEOUT],
        "cut": outcomes[CUT],
        "ttft_streams": len(ttft),
        "ttft_censored": censored,
        "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95), "ttft_p99": pct(ttft, 99),
        "e2e_p50": pct(e2e, 50), "e2e_p95": pct(e2e, 95), "e2e_p99": pct(e2e, 99),
        "prompt_tokens": prompt,
        "output_tokens": output,
        "output_tokens_per_s": output / span,
        "error_codes": dict(Counter(r.error_code for r in records if r.error_code and r.outcome != OK)),
    }
    if weights is not None:
        row["weighted_tokens_per_s"] = (weights[0] * prompt + weights[1] * output) / span
    return row


def _tier_key(tier: str) -> tuple[int, str]:
    return (TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER), tier)


def summarise(records: Sequence[Record], *, span: tuple[float, float] | None = None,
              weights: tuple[float, float] | None = None) -> dict[str, Any]:
    """Rows per tier and per tenant: counts and latencies of requests *scheduled* in ``span``
    (default: all), throughput of requests *completed* in it (as ``sim.analysis.phase_row``).

    The default span runs from 0 to the last request's end.
    """
    if span is None:
        end = max((r.ended for r in records if r.ended is not None), default=0.0)
        span = (0.0, max(end, max((r.scheduled for r in records), default=0.0)) + 1e-9)
    lo, hi = span
    chosen = [r for r in records if lo <= r.scheduled < hi]
    done = [r for r in records if r.outcome == OK and r.ended is not None and lo <= r.ended < hi]
    seconds = hi - lo

    def row(keep: Callable[[Record], bool]) -> dict[str, Any]:
        return group_row([r for r in chosen if keep(r)], [r for r in done if keep(r)], seconds, weights)

    tiers = sorted({r.tier for r in chosen}, key=_tier_key)
    tenants = sorted({(r.tier, r.tenant) for r in chosen}, key=lambda x: (_tier_key(x[0]), x[1]))
    return {
        "span": [lo, hi],
        "tiers": [{"tier": t, **row(lambda r, t=t: r.tier == t)} for t in tiers],
        "tenants": [{"tenant": n, "tier": t, **row(lambda r, n=n: r.tenant == n)} for t, n in tenants],
        "all": row(lambda r: True),
    }


def client_stats(result: LoadResult) -> dict[str, Any]:
    """How well the client kept to the schedule: send rate, lag, cap delays, its own CPU."""
    sent = [r for r in result.records if r.sent is not None]
    lags = [r.sent - r.scheduled for r in sent if r.sent is not None]
    return {
        "requests": len(result.records),
        "sent": len(sent),
        "duration_s": result.duration,
        "wall_s": result.wall_seconds,
        "mean_send_rate": len(sent) / result.duration if result.duration > 0 else None,
        "peak_send_rate_1s": _peak_rate([r.sent for r in sent if r.sent is not None]),
        "lag_p50_s": pct(lags, 50), "lag_p99_s": pct(lags, 99), "lag_max_s": max(lags, default=None),
        "delayed_by_cap": result.capped,
        "client_cpu_s": result.client_cpu_seconds,
        "urls": result.urls,
    }


def _peak_rate(times: Sequence[float]) -> float | None:
    if not times:
        return None
    counts = np.bincount(np.floor(np.asarray(times)).astype(int).clip(min=0))
    return float(counts.max())


def report(result: LoadResult, weights: tuple[float, float] | None = None) -> dict[str, Any]:
    """The whole run's summary (what ``summary.json`` holds)."""
    return {"client": client_stats(result), **summarise(result.records, weights=weights)}


# ---------------------------------------------------------------------------------------- rendering
ROW_HEADERS = ["requests", "ok", "429", "503", "errors", "cut", "TTFT p50 s", "TTFT p95 s", "TTFT p99 s",
               "censored", "e2e p50 s", "e2e p95 s", "e2e p99 s", "out tok/s"]


def row_values(row: dict[str, Any]) -> list[Any]:
    return [row["requests"], row["ok"], row["refused_429"], row["unavailable_503"] + row["preempted"],
            row["errors"] + row["timeouts"], row["cut"], row["ttft_p50"], row["ttft_p95"], row["ttft_p99"],
            row["ttft_censored"], row["e2e_p50"], row["e2e_p95"], row["e2e_p99"], row["output_tokens_per_s"]]


def render(summary: dict[str, Any], title: str = "Load run") -> str:
    """Markdown: per-tier and per-tenant tables, then how the client kept up."""
    parts = [f"## {title}: per tier", markdown_table(["tier", *ROW_HEADERS],
                                                     [[r["tier"], *row_values(r)] for r in summary["tiers"]]),
             "## Per tenant", markdown_table(["tenant", "tier", *ROW_HEADERS],
                                             [[r["tenant"], r["tier"], *row_values(r)] for r in summary["tenants"]])]
    client = summary.get("client")
    if client:
        parts.append(render_client(client))
    parts.append("TTFT: streamed requests only; `censored` counts requests still waiting for a first token when the "
                 "client stopped (timeout or end of run), included with their wait as a lower bound. "
                 "503 includes preempted streams; errors include timeouts and connection failures.")
    return "\n\n".join(parts)


def render_client(client: dict[str, Any]) -> str:
    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    rate = client["mean_send_rate"]
    return (f"Client: sent {client['sent']}/{client['requests']} requests over {client['duration_s']:.0f} s "
            f"(mean {rate:.1f} req/s, peak {client['peak_send_rate_1s'] or 0:.0f} in one second); send lag behind "
            f"schedule p50 {s(client['lag_p50_s'])} s, p99 {s(client['lag_p99_s'])} s, "
            f"max {s(client['lag_max_s'])} s; {client['delayed_by_cap']} sends delayed by the in-flight cap; "
            f"client CPU {client['client_cpu_s']:.1f} s.")


def ttft_series(records: Sequence[Record], tier: str, end: float, window: float) -> tuple[np.ndarray, np.ndarray]:
    """P99 TTFT (streams, censored included) of a tier's requests scheduled in consecutive windows."""
    edges = np.arange(0.0, end + window, window)
    mids, values = [], []
    chosen = [r for r in records if r.tier == tier]
    for lo, hi in itertools.pairwise(edges):
        sample, _ = ttft_sample(r for r in chosen if lo <= r.scheduled < hi)
        mids.append((lo + hi) / 2)
        values.append(pct(sample, 99) if sample else np.nan)
    return np.array(mids), np.array(values, dtype=float)


def outcome_series(records: Sequence[Record], end: float, window: float
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Requests per second by outcome group, by scheduled time."""
    edges = np.arange(0.0, end + window, window)
    scheduled = np.array([r.scheduled for r in records], dtype=float)
    out: dict[str, np.ndarray] = {}
    for name, members in GROUPS.items():
        sel = np.array([r.outcome in members for r in records], dtype=bool)
        counts, _ = np.histogram(scheduled[sel], bins=edges) if len(records) else (np.zeros(len(edges) - 1), None)
        out[name] = counts / window
    return (edges[:-1] + edges[1:]) / 2, out


TIER_COLOURS = {"guaranteed": "tab:blue", "elastic": "tab:green", "spot": "tab:orange", "unknown": "tab:gray"}
GROUP_COLOURS = {"ok": "tab:green", "429": "tab:orange", "503": "tab:red", "errors": "tab:purple", "cut": "tab:gray"}


def plot(records: Sequence[Record], duration: float, path: Path, title: str = "Load run") -> None:
    """P99 TTFT over time per tier (top) and outcomes over time (bottom), by scheduled time."""
    window = max(1.0, duration / 45)
    tiers = sorted({r.tier for r in records}, key=_tier_key)
    with figure(path, 2, 1, figsize=(10, 7), sharex=True) as (_, (top, bottom)):
        for tier in tiers:
            x, y = ttft_series(records, tier, duration, window)
            if not np.all(np.isnan(y)):
                top.plot(x, y, "-o", markersize=2.5, color=TIER_COLOURS.get(tier), label=tier, linewidth=1.4)
        top.set_yscale("log")
        top.set_ylabel(f"P99 TTFT, {window:.0f} s windows (s, log)")
        top.set_title(f"{title}: P99 time to first token by tier (streams; waits cut short count as lower bounds)")
        top.grid(True, which="both", alpha=0.3)
        if tiers:
            top.legend(fontsize=8)
        x, series = outcome_series(records, duration, window)
        for name, values in series.items():
            if values.any():
                bottom.plot(x, values, "-", color=GROUP_COLOURS[name], label=name, linewidth=1.4)
        bottom.set_xlabel("scheduled send time (s)")
        bottom.set_ylabel("requests/s by outcome")
        bottom.grid(True, alpha=0.3)
        bottom.legend(fontsize=8)


def write_outputs(out: Path, result: LoadResult, summary: dict[str, Any], title: str = "Load run",
                  meta: dict[str, Any] | None = None) -> str:
    """``summary.json``, ``table.md``, ``latency.png`` and ``records.jsonl`` in ``out``; the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    data = {**(meta or {}), **summary}
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    table = render(summary, title)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    with (out / "records.jsonl").open("w", encoding="utf-8") as f:
        for r in result.records:
            f.write(json.dumps(r.to_dict()) + "\n")
    plot(result.records, result.duration, out / "latency.png", title)
    return table


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
