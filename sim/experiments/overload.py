"""Experiment 1, overload: guaranteed P99 stays bounded while spot surges past 3x capacity.

Runs on the same seeded arrivals:
  - ``no-spot``: token pools with the spot tenant removed (the reference P99);
  - ``tokenpools``: the product;
  - ``tokenpools-fcfs``: the product without passing the tier to vLLM as a priority, to show what
    admission alone achieves;
  - ``baseline``: no admission control, every request straight to the replicas' queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from schemas.arrivals import scaled
from schemas.specs import Tier
from schemas.workload import PoissonArrivals
from sim import analysis
from sim.control import Mode, SimResult
from sim.experiments.common import ENGINE, Run, load, run_all, without
from tokenpools.infra.results import figure, markdown_table, write_json

WORKLOAD = "overload"
TIERS = (Tier.GUARANTEED.value, Tier.SPOT.value)


@dataclass(frozen=True)
class Phases:
    """Warm-up, ramp, overload (spot at its peak), fall and tail, from the spot tenant's profile."""

    spans: dict[str, tuple[float, float]]

    @property
    def overload(self) -> tuple[float, float]:
        return self.spans["overload"]

    def thirds(self) -> list[tuple[float, float]]:
        lo, hi = self.overload
        step = (hi - lo) / 3
        return [(lo + i * step, lo + (i + 1) * step) for i in range(3)]


def phases_of(profile: list[tuple[float, float]], duration: float) -> Phases:
    peak = max(r for _, r in profile)
    at_peak = [t for t, r in profile if r == peak]
    rising = [t for t, r in profile if r == 0 and t < at_peak[0]]
    falling = [t for t, r in profile if r == 0 and t > at_peak[-1]]
    ramp_start = max(rising) if rising else 0.0
    fall_end = min(falling) if falling else duration
    spans = {
        "warm-up": (0.0, ramp_start),
        "ramp": (ramp_start, at_peak[0]),
        "overload": (at_peak[0], at_peak[-1] if at_peak[-1] > at_peak[0] else duration),
        "fall": (at_peak[-1], fall_end),
        "tail": (fall_end, duration),
    }
    return Phases({k: v for k, v in spans.items() if v[1] > v[0]})


def run(seed: int = 42, duration: float | None = None, out: Path = Path("results/overload"),
        console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    config = load()
    spec = scaled(config.workloads[WORKLOAD].spec, duration)
    pool = config.pools[spec.pool]
    is_spot = {e.name for e in config.entitlements_of(pool.name) if e.spec.tier is Tier.SPOT}
    spot_tenant = next(t for t in spec.tenants if t.entitlement in is_spot)
    assert isinstance(spot_tenant.arrivals, PoissonArrivals) and spot_tenant.arrivals.profile
    phases = phases_of(list(spot_tenant.arrivals.profile), spec.duration_seconds)
    runs = [
        Run("no-spot", Mode.TOKENPOOLS, without(spec, lambda t: t.entitlement not in is_spot)),
        Run("tokenpools", Mode.TOKENPOOLS, spec),
        Run("tokenpools-fcfs", Mode.TOKENPOOLS, spec, ENGINE.with_(scheduling_policy="fcfs")),
        Run("baseline", Mode.BASELINE, spec),
    ]
    replicas = pool.spec.replicas.start
    # After arrivals stop, replicas get half the run again to work off their queues, so the baseline's
    # TTFTs are measured rather than cut off (what is still waiting then counts as a lower bound).
    results = run_all(config, runs, seed, replicas, pool.spec.replicas.max, autoscale=True, console=console,
                      drain=spec.duration_seconds / 2)
    summary = summarise(results, phases, pool.spec.capacity(replicas)[0])
    summary.update(seed=seed, duration=spec.duration_seconds, replicas=replicas,
                   engine={"max_num_batched_tokens": ENGINE.max_num_batched_tokens,
                           "scheduling_policy": ENGINE.scheduling_policy})
    write_json(out / "summary.json", summary)
    (out / "table.md").write_text(render(summary) + "\n", encoding="utf-8")
    plot(results, phases, out / "p99_ttft.png")
    console.print(render(summary, phases=("overload",)), soft_wrap=True)
    console.print(f"\nresults: {out}/summary.json, {out}/table.md, {out}/p99_ttft.png")
    return summary


def summarise(results: dict[str, SimResult], phases: Phases, capacity_tp: float) -> dict[str, Any]:
    cols = {label: analysis.Columns.of(res.records, res.end) for label, res in results.items()}
    rows = []
    for label, res in results.items():
        for phase, (lo, hi) in phases.spans.items():
            for tier in TIERS:
                row = analysis.phase_row(cols[label], res, tier, lo, hi, capacity_tp)
                if row["requests"]:
                    rows.append({"mode": label, "phase": phase, **row})
    lo, hi = phases.overload
    g = Tier.GUARANTEED.value

    def g_p99(label: str, span: tuple[float, float]) -> float | None:
        c = cols[label]
        sel = (c.tier == g) & (c.arrival >= span[0]) & (c.arrival < span[1])
        return analysis.pct(c.ttft[sel], 99)

    thirds = phases.thirds()
    checks: dict[str, Any] = {
        "reference_p99_ttft": g_p99("no-spot", (lo, hi)),
        "served_weighted_tokens_per_s": {
            label: analysis.served_weighted(cols[label], res, lo, hi) for label, res in results.items()
        },
    }
    for label in ("tokenpools", "tokenpools-fcfs", "baseline"):
        p99, first, last = g_p99(label, (lo, hi)), g_p99(label, thirds[0]), g_p99(label, thirds[2])
        checks[label] = {
            "overload_p99_ttft": p99,
            "first_third_p99_ttft": first,
            "last_third_p99_ttft": last,
            "p99_vs_no_spot": _ratio(p99, checks["reference_p99_ttft"]),
            "last_vs_first_third": _ratio(last, first),
            "throughput_vs_baseline": _ratio(checks["served_weighted_tokens_per_s"][label],
                                             checks["served_weighted_tokens_per_s"]["baseline"]),
        }
    tp = checks["tokenpools"]
    checks["pass"] = {
        "guaranteed_p99_within_1.5x_of_no_spot": _le(tp["p99_vs_no_spot"], 1.5),
        "guaranteed_p99_not_growing_(<=1.1x)": _le(tp["last_vs_first_third"], 1.1),
        "throughput_>=90%_of_baseline": _ge(tp["throughput_vs_baseline"], 0.9),
        "baseline_p99_grows": _gt(checks["baseline"]["last_vs_first_third"], 1.1),
    }
    return {"phases": phases.spans, "rows": rows, "checks": checks}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _le(x: float | None, bound: float) -> bool:
    return x is not None and x <= bound


def _ge(x: float | None, bound: float) -> bool:
    return x is not None and x >= bound


def _gt(x: float | None, bound: float) -> bool:
    return x is not None and x > bound


def render(summary: dict[str, Any], phases: tuple[str, ...] | None = None) -> str:
    headers = ["mode", "phase", "tier", "requests", "refused", "preempted", "TTFT p50 s", "TTFT p95 s",
               "TTFT p99 s", "e2e p50 s", "e2e p99 s", "out tok/s", "weighted tok/s", "utilisation"]
    rows = [[r["mode"], r["phase"], r["tier"], r["requests"], r["refused"], r["preempted"], r["ttft_p50"],
             r["ttft_p95"], r["ttft_p99"], r["e2e_p50"], r["e2e_p99"], r["output_tokens_per_s"],
             r["weighted_tokens_per_s"], r["utilisation"]] for r in summary["rows"]
            if phases is None or r["phase"] in phases]
    c = summary["checks"]
    check_rows = [[label, c[label]["overload_p99_ttft"], c[label]["p99_vs_no_spot"], c[label]["first_third_p99_ttft"],
                   c[label]["last_third_p99_ttft"], c[label]["last_vs_first_third"], c[label]["throughput_vs_baseline"]]
                  for label in ("tokenpools", "tokenpools-fcfs", "baseline")]
    verdicts = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in c["pass"].items())
    return "\n\n".join([
        "## Overload: per mode, phase and tier" + ("" if phases is None else f" ({', '.join(phases)} only)"),
        markdown_table(headers, rows),
        f"## Guaranteed P99 TTFT during overload (reference without spot: {c['reference_p99_ttft']:.3f} s)",
        markdown_table(["mode", "P99 s", "vs no-spot", "first third s", "last third s", "last/first",
                        "throughput vs baseline"], check_rows),
        verdicts,
    ])


def plot(results: dict[str, SimResult], phases: Phases, path: Path) -> None:
    end = max(r.duration for r in results.values())  # arrivals stop here; drain time is not plotted
    window = max(5.0, end / 60)
    styles = {"tokenpools": "-", "tokenpools-fcfs": ":", "baseline": "--", "no-spot": "-."}
    colours = {Tier.GUARANTEED.value: "tab:blue", Tier.SPOT.value: "tab:orange"}
    with figure(path, 1, 1, figsize=(10, 5)) as (_, ax):
        for label, res in results.items():
            cols = analysis.Columns.of(res.records, res.end)
            for tier in TIERS:
                x, y = analysis.p99_series(cols, tier, end, window)
                if np.all(np.isnan(y)):
                    continue
                ax.plot(x, y, styles.get(label, "-"), color=colours[tier], label=f"{label} / {tier}", linewidth=1.4)
        lo, hi = phases.overload
        ax.axvspan(lo, hi, color="grey", alpha=0.1, label="spot at peak")
        ax.set_yscale("log")
        ax.set_xlabel("time (s)")
        ax.set_ylabel(f"P99 TTFT over {window:.0f} s windows (s, log)")
        ax.set_title("Overload: P99 time to first token by tier and mode")
        ax.legend(fontsize=8, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
