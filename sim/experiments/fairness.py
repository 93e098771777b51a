"""Experiment 2, fairness under scarcity: debt drives elastic tenants to weighted fair shares.

Three elastic tenants with weights 1:1:2 and SLOs of 1 s, 5 s and 60 s TTFT. The batch tenant
runs alone first, so it enters the scarce phase (demand >= 2x capacity) having used far more than
its configured share. Compared on the same arrivals:
  - ``tokenpools``: debt-based allocation (the product);
  - ``no-debt``: the same weighted water-filling with no memory;
  - ``vtc``: a Virtual Token Counter scheduler (OSDI 2024);
  - ``fcfs``: no admission control.

Shares are dominant shares (max over dimensions of usage / pool capacity) in consecutive windows.
A tenant's weighted fair share in a window is ``weight / sum of weights`` times what all three
were served together, so the measure does not depend on how full the pool ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from schemas.arrivals import scaled
from sim import analysis
from sim.control import Mode, SimResult
from sim.experiments.common import Run, load, run_all
from tokenpools.infra.results import figure, markdown_table, write_json

WORKLOAD = "fairness"
MODES = {"tokenpools": Mode.TOKENPOOLS, "no-debt": Mode.NO_DEBT, "vtc": Mode.VTC, "fcfs": Mode.BASELINE}
TOLERANCE = 0.05


def run(seed: int = 43, duration: float | None = None, out: Path = Path("results/fairness"),
        console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    config = load()
    spec = scaled(config.workloads[WORKLOAD].spec, duration)
    pool = config.pools[spec.pool]
    weights = {t.label: config.entitlements[t.entitlement].spec.weight for t in spec.tenants}
    slos = {t.label: (config.entitlements[t.entitlement].spec.slo.ttft_seconds
                      if config.entitlements[t.entitlement].spec.slo else None) for t in spec.tenants}
    alone = next(t for t in spec.tenants if t.start == min(x.start for x in spec.tenants))
    join = min(t.start for t in spec.tenants if t is not alone)
    replicas = pool.spec.replicas.start
    runs = [Run(label, mode, spec) for label, mode in MODES.items()]
    results = run_all(config, runs, seed, replicas, pool.spec.replicas.max, autoscale=False, console=console)
    capacity = pool.spec.capacity(replicas)
    window = max(5.0, spec.duration_seconds / 20)
    summary = summarise(results, weights, slos, alone.label, join, capacity, window)
    summary.update(seed=seed, duration=spec.duration_seconds, replicas=replicas, window_seconds=window,
                   weights=weights, slo_ttft_seconds=slos, alone_tenant=alone.label, join_time=join)
    write_json(out / "summary.json", summary)
    text = render(summary)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    plot(summary, out / "shares.png")
    console.print(text, soft_wrap=True)
    console.print(f"\nresults: {out}/summary.json, {out}/table.md, {out}/shares.png")
    return summary


def summarise(results: dict[str, SimResult], weights: dict[str, float], slos: dict[str, float | None],
              alone: str, join: float, capacity: tuple[float, float, float], window: float) -> dict[str, Any]:
    tenants = list(weights)
    total_w = sum(weights.values())
    out: dict[str, Any] = {"modes": {}}
    for label, res in results.items():
        cols = analysis.Columns.of(res.records, res.end)
        # The last window is left out: requests still running at the end have not reported their usage.
        t, shares = analysis.dominant_shares(cols, res, tenants, res.duration - window, window, capacity)
        together = np.sum([shares[n] for n in tenants], axis=0)
        fair = {n: weights[n] / total_w * together for n in tenants}
        scarce = t >= join + window / 2
        steady = t >= join + (res.duration - join) * 2 / 3
        norm = [float(np.mean(shares[n][steady]) / weights[n]) for n in tenants]
        converge = {n: _converged_at(t[scarce], shares[n][scarce], fair[n][scarce], join) for n in tenants}
        alone_span = t < join
        mode: dict[str, Any] = {
            "time": t,
            "shares": shares,
            "fair": fair,
            "converge_seconds": converge,
            "converge_all_seconds": None if any(v is None for v in converge.values()) else max(converge.values()),
            "steady_share": {n: float(np.mean(shares[n][steady])) for n in tenants},
            "steady_fair": {n: float(np.mean(fair[n][steady])) for n in tenants},
            "jain_steady": analysis.jain(norm),
            "alone_share": float(np.mean(shares[alone][alone_span])) if alone_span.any() else None,
            "alone_weighted_tokens_per_s": analysis.served_weighted(cols, res, 0.0, join) if join > 0 else None,
            "slo_attainment": {n: _slo(cols, n, slos[n], join, res.duration) for n in tenants},
        }
        if res.samples and res.samples[0].debt:
            ent_of = {r.tenant: r.entitlement for r in res.records}
            mode["debt"] = {n: [s.debt.get(ent_of.get(n, ""), 0.0) for s in res.samples] for n in tenants}
            mode["debt_time"] = [s.t for s in res.samples]
        out["modes"][label] = mode
    tp = out["modes"]["tokenpools"]
    out["pass"] = {
        "tokenpools_converges_within_5%": tp["converge_all_seconds"] is not None,
        "tokenpools_jain_>=0.99": tp["jain_steady"] >= 0.99,
        "in-debt_tenant_starts_below_fair_and_debt_decays": _debt_converges_from_above(tp, alone, join),
    }
    return out


def _converged_at(t: np.ndarray, share: np.ndarray, fair: np.ndarray, join: float) -> float | None:
    """Seconds after ``join`` from which every window stays within the tolerance of fair."""
    ok = np.abs(share - fair) <= TOLERANCE * np.maximum(fair, 1e-12)
    if not ok.size or not ok[-1]:
        return None
    bad = np.nonzero(~ok)[0]
    first_good = 0 if bad.size == 0 else bad[-1] + 1
    return float(max(0.0, t[first_good] - join))


def _slo(cols: analysis.Columns, tenant: str, slo: float | None, lo: float, hi: float) -> dict[str, float | None]:
    if slo is None:
        return {"of_arrivals": None, "of_served": None}
    sel = (cols.tenant == tenant) & (cols.arrival >= lo) & (cols.arrival < hi)
    ttft = cols.ttft[sel]
    met = np.nan_to_num(ttft, nan=np.inf) <= slo
    served = ~np.isnan(cols.first_token[sel])
    return {
        "of_arrivals": float(met.mean()) if sel.any() else None,
        "of_served": float(met[served].mean()) if served.any() else None,
    }


def _debt_converges_from_above(mode: dict[str, Any], alone: str, join: float) -> bool:
    """The in-debt tenant yields first (share below fair early in the scarce phase) and its debt,
    positive when the others arrive, falls to under a quarter of that by the end."""
    t, share, fair = mode["time"], mode["shares"][alone], mode["fair"][alone]
    early = (t >= join) & (t < join + (t[-1] - join) / 3)
    if not early.any() or "debt" not in mode:
        return False
    starts_below = bool(np.mean(share[early]) < np.mean(fair[early]))
    debt = np.array(mode["debt"][alone])
    times = np.array(mode["debt_time"])
    at_join = float(debt[min(np.searchsorted(times, join), debt.size - 1)])
    return starts_below and at_join > 0 and float(debt[-1]) < 0.25 * at_join


def render(summary: dict[str, Any]) -> str:
    modes = summary["modes"]
    tenants = list(summary["weights"])
    rows = []
    for label, m in modes.items():
        for n in tenants:
            slo = m["slo_attainment"][n]
            rows.append([label, n, summary["weights"][n], m["steady_share"][n], m["steady_fair"][n],
                         m["converge_seconds"][n], slo["of_arrivals"], slo["of_served"]])
    overview = [[label, m["converge_all_seconds"], m["jain_steady"], m["alone_share"],
                 m["alone_weighted_tokens_per_s"]] for label, m in modes.items()]
    verdicts = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in summary["pass"].items())
    return "\n\n".join([
        f"## Fairness under scarcity ({summary['alone_tenant']} alone until {summary['join_time']:.0f} s; "
        f"windows of {summary['window_seconds']:.0f} s; steady state = last third of the scarce phase)",
        markdown_table(["mode", "converged after s (all, within 5%)", "Jain (steady, weight-normalised)",
                        f"{summary['alone_tenant']} share while alone", "served while alone (w tok/s)"], overview),
        markdown_table(["mode", "tenant", "weight", "steady share", "fair share", "converged after s",
                        "SLO met (of arrivals)", "SLO met (of served)"], rows),
        verdicts,
    ])


def plot(summary: dict[str, Any], path: Path) -> None:
    modes = summary["modes"]
    tenants = list(summary["weights"])
    colours = dict(zip(tenants, ("tab:green", "tab:blue", "tab:red"), strict=False))
    with figure(path, 2, 2, figsize=(12, 8), sharex=True) as (_, axes):
        for ax, (label, m) in zip(axes.flat, modes.items(), strict=False):
            for n in tenants:
                ax.plot(m["time"], m["shares"][n], color=colours[n], label=f"{n} (w={summary['weights'][n]:g})")
                ax.plot(m["time"], m["fair"][n], color=colours[n], linestyle=":", linewidth=1)
            ax.axvline(summary["join_time"], color="grey", linestyle="--", linewidth=1)
            conv = m["converge_all_seconds"]
            ax.set_title(f"{label}: " + (f"within 5% after {conv:.0f} s" if conv is not None else "not within 5%"))
            ax.set_ylabel("dominant share")
            ax.grid(True, alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("time (s)")
        axes.flat[0].legend(fontsize=8)
