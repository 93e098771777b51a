"""Experiment 2, fairness under scarcity: debt drives elastic tenants to weighted fair shares.

Three elastic tenants with weights 1:1:2 and SLOs of 1 s, 5 s and 60 s TTFT. The batch tenant
runs alone first, so it enters the scarce phase (demand >= 2x capacity) having used far more than
its configured share. Compared on the same arrivals:
  - ``tokenpools``: debt-based allocation (the product);
  - ``no-debt``: the same weighted water-filling with no memory;
  - ``vtc``: a Virtual Token Counter scheduler (OSDI 2024);
  - ``fcfs``: no admission control.

``run(config_dir=..., workload=...)`` runs the same comparison on any config and workload with at
least two elastic tenants (``tokenpools experiment fairness --config DIR --workload NAME``); tenants
of other tiers run too but are not measured.

Measured in consecutive windows (the last one left out: requests still running at the end have not
reported their usage):
  - dominant shares (max over dimensions of usage / pool capacity). A tenant's weighted fair share
    in a window is water-filling over the measured tenants: a tenant that is not backlogged
    (``backlogged``) is owed what it was served, and the backlogged ones split the rest of what
    all were served together in proportion to their weights; so a tenant that has not arrived, or
    asks for less than its share, does not dilute the others' shares, and the measure does not
    depend on how full the pool ran;
  - service as the VTC paper counts it: weighted tokens with input 1 and output 2, per unit of
    weight, and the largest difference in accumulated service per weight between two tenants over
    any stretch of windows in which both were backlogged (the paper's fairness metric);
  - SLO attainment of the requests arriving in the scarce phase (``slo_attainment``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console

from schemas.arrivals import scaled
from schemas.echo import echo_str
from schemas.loader import ConfigError, PlatformConfig
from schemas.specs import Tier
from schemas.workload import TenantLoad, WorkloadSpec
from sim import analysis
from sim.control import Mode, SimOutcome, SimResult
from sim.experiments.common import EXAMPLES, Run, load, run_all
from tokenpools.infra.results import figure, markdown_table, write_json

WORKLOAD = "fairness"
DEFAULT_SEED = 43  # when the workload names none
MODES = {"tokenpools": Mode.TOKENPOOLS, "no-debt": Mode.NO_DEBT, "vtc": Mode.VTC, "fcfs": Mode.BASELINE}
TOLERANCE = 0.05
# Service as the VTC paper (Sheng et al., OSDI 2024) counts it: an input token 1, an output token 2.
VTC_W_IN, VTC_W_OUT = 1.0, 2.0
# Backlogged in a window: waiting for a first token for at least this fraction of it (or turned away).
BACKLOG_WAIT_FRACTION = 0.5
MAX_LISTED = 10  # workload names listed in an error


class FairnessInputError(ValueError):
    """The config or workload cannot run this experiment; str() is one line naming what to fix."""


def prepare(config_dir: Path | None = None, workload: str = WORKLOAD) -> tuple[PlatformConfig, WorkloadSpec,
                                                                              list[TenantLoad]]:
    """Load ``config_dir`` (default ``deploy/examples``) and pick ``workload``; its elastic tenants.

    Raises ``FairnessInputError`` for a missing folder, an invalid config (its first problem), an
    unknown workload (the ones available, at most ``MAX_LISTED``) or fewer than two elastic tenants.
    """
    where = config_dir or EXAMPLES
    if not where.exists():
        raise FairnessInputError(f"--config {echo_str(str(where))}: no such file or folder")
    try:
        config = load(where)
    except ConfigError as exc:
        more = len(exc.problems) - 1
        tail = f" (and {more} more: run `tokenpools config check {echo_str(str(where))}`)" if more else ""
        raise FairnessInputError(f"{exc.problems[0]}{tail}") from None
    if workload not in config.workloads:
        names = sorted(config.workloads)
        listing = ", ".join(names[:MAX_LISTED]) + (f", ... ({len(names) - MAX_LISTED} more)"
                                                   if len(names) > MAX_LISTED else "")
        raise FairnessInputError(f"no workload named '{echo_str(workload)}' in {echo_str(str(where))} "
                                 f"(available: {listing or 'none'}); choose one with --workload")
    spec = config.workloads[workload].spec
    elastic = [t for t in spec.tenants if config.entitlements[t.entitlement].spec.tier is Tier.ELASTIC]
    if len(elastic) < 2:
        tiers = ", ".join(f"{t.label}: {config.entitlements[t.entitlement].spec.tier.value}" for t in spec.tenants)
        raise FairnessInputError(
            f"workload '{workload}' has {len(elastic)} elastic tenant(s) ({echo_str(tiers)}); the fairness "
            "experiment compares at least two: give their entitlements tier: elastic and a weight")
    return config, spec, elastic


def run(seed: int | None = None, duration: float | None = None, out: Path = Path("results/fairness"),
        console: Console | None = None, config_dir: Path | None = None, workload: str = WORKLOAD) -> dict[str, Any]:
    """The four modes on ``workload`` of ``config_dir`` (default: the shipped experiment), measured.

    ``seed`` defaults to the workload's own (43 for the shipped one); ``duration`` scales its timeline.
    """
    console = console or Console()
    config, spec, elastic = prepare(config_dir, workload)
    seed = seed if seed is not None else (spec.seed if spec.seed is not None else DEFAULT_SEED)
    spec = scaled(spec, duration)
    elastic = [t for t in spec.tenants if t.label in {e.label for e in elastic}]
    out.mkdir(parents=True, exist_ok=True)
    pool = config.pools[spec.pool]
    weights = {t.label: config.entitlements[t.entitlement].spec.weight for t in elastic}
    slos = {t.label: (config.entitlements[t.entitlement].spec.slo.ttft_seconds
                      if config.entitlements[t.entitlement].spec.slo else None) for t in elastic}
    alone = next(t for t in elastic if t.start == min(x.start for x in elastic))
    join = min(t.start for t in elastic if t is not alone)
    replicas = pool.spec.replicas.start
    runs = [Run(label, mode, spec) for label, mode in MODES.items()]
    results = run_all(config, runs, seed, replicas, pool.spec.replicas.max, autoscale=False, console=console)
    capacity = pool.spec.capacity(replicas)
    window = max(5.0, spec.duration_seconds / 20)
    summary = summarise(results, weights, slos, alone.label, join, capacity, window, alone.start)
    summary.update(seed=seed, duration=spec.duration_seconds, replicas=replicas, window_seconds=window,
                   weights=weights, slo_ttft_seconds=slos, alone_tenant=alone.label, join_time=join,
                   workload=workload, config=str(config_dir) if config_dir else "deploy/examples",
                   unmeasured_tenants=[t.label for t in spec.tenants if t.label not in weights])
    write_json(out / "summary.json", summary)
    text = render(summary)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    plot(summary, out / "shares.png")
    console.print(text, soft_wrap=True)
    console.print(f"\nresults: {out}/summary.json, {out}/table.md, {out}/shares.png")
    return summary


def summarise(results: dict[str, SimResult], weights: dict[str, float], slos: dict[str, float | None],
              alone: str, join: float, capacity: tuple[float, float, float], window: float,
              alone_start: float = 0.0) -> dict[str, Any]:
    """Every mode's measures (see the module docstring) and the claims about token pools.

    ``alone`` is the tenant that starts first, at ``alone_start``; the others join at ``join``.
    Without an alone phase (``join <= alone_start``) the debt claim does not apply and is left out
    of ``pass`` (listed under ``not_applicable``).
    """
    tenants = list(weights)
    out: dict[str, Any] = {"modes": {}}
    for label, res in results.items():
        cols = analysis.Columns.of(res.records, res.end)
        # The last window is left out: requests still running at the end have not reported their usage.
        end = res.duration - window
        t, shares = analysis.dominant_shares(cols, res, tenants, end, window, capacity)
        backlog = backlogged(cols, tenants, end, window)
        fair = fair_shares(shares, weights, backlog)
        service = vtc_service(cols, tenants, end, window)
        per_weight = {n: service[n] / window / weights[n] for n in tenants}
        scarce = t >= join + window / 2
        steady = t >= join + (res.duration - join) * 2 / 3
        if steady.size and not steady.any():  # a run too short for a third: its last window
            steady[-1] = True
        norm = [float(np.mean(shares[n][steady]) / weights[n]) for n in tenants]
        converge = {n: _converged_at(t[scarce], shares[n][scarce], fair[n][scarce], join) for n in tenants}
        alone_span = t < join
        mode: dict[str, Any] = {
            "time": t,
            "shares": shares,
            "fair": fair,
            "backlogged": backlog,
            "service_per_weight": per_weight,
            "converge_seconds": converge,
            "converge_all_seconds": None if any(v is None for v in converge.values()) else max(converge.values()),
            "steady_share": {n: float(np.mean(shares[n][steady])) for n in tenants},
            "steady_fair": {n: float(np.mean(fair[n][steady])) for n in tenants},
            "steady_service_per_weight": {n: float(np.mean(per_weight[n][steady])) for n in tenants},
            "max_service_difference": max_service_difference(service, weights, backlog),
            "max_service_difference_steady": max_service_difference(service, weights, backlog, steady),
            "jain_steady": analysis.jain(norm),
            "alone_share": float(np.mean(shares[alone][alone_span])) if alone_span.any() else None,
            "alone_weighted_tokens_per_s": analysis.served_weighted(cols, res, 0.0, join) if join > 0 else None,
            "slo_attainment": {n: slo_attainment(cols, n, slos[n], join, res.duration) for n in tenants},
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
    }
    debt_claim = "in-debt_tenant_starts_below_fair_and_debt_decays"
    if join > alone_start:
        out["pass"][debt_claim] = _debt_converges_from_above(tp, alone, join)
    else:
        out["not_applicable"] = [debt_claim]
    return out


def _edges(end: float, window: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The windows ``analysis.dominant_shares`` measures: [lo, hi) of ``window`` s up to ``end``."""
    edges = np.arange(0.0, end + 1e-9, window)
    return edges[:-1], edges[1:]


def backlogged(cols: analysis.Columns, tenants: Sequence[str], end: float,
               window: float) -> dict[str, NDArray[np.bool_]]:
    """Per window, whether each tenant asked for more than it was served.

    A tenant is backlogged in a window [lo, hi) if (a) a request of it arriving in the window was
    turned away (refused, or timed out in the admitter's queue), or (b) for at least
    ``BACKLOG_WAIT_FRACTION`` of the window it had a request waiting for its first token (from
    arrival to first token, in the admitter's or a replica's queue; to the end of the run for a
    request that never got one and was not turned away). A tenant that has not arrived, or whose
    requests are each served within a small part of the window, is not backlogged.
    """
    lo, hi = _edges(end, window)
    turned_away = np.isin(cols.outcome, [SimOutcome.REFUSED.value, SimOutcome.QUEUE_TIMEOUT.value])
    waits_until = np.where(np.isnan(cols.first_token), np.where(turned_away, np.nan, cols.end), cols.first_token)
    out: dict[str, NDArray[np.bool_]] = {}
    for tenant in tenants:
        mine = cols.tenant == tenant
        refused = _per_window(cols.arrival[mine & turned_away], lo, hi) > 0
        sel = mine & ~np.isnan(waits_until) & (waits_until > cols.arrival)
        s, f = _union(cols.arrival[sel], waits_until[sel])
        waited = np.clip(np.minimum(f[:, None], hi[None, :]) - np.maximum(s[:, None], lo[None, :]), 0.0, None)
        out[tenant] = refused | (waited.sum(axis=0) >= BACKLOG_WAIT_FRACTION * (hi - lo))
    return out


def _per_window(at: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64],
                weights: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """The sum of ``weights`` (default 1 each) of the events at times ``at`` in each window [lo, hi)."""
    inside = (at >= lo[0]) & (at < hi[-1]) if lo.size else np.zeros(at.shape, dtype=bool)
    idx = np.searchsorted(hi, at[inside], side="right")
    w = None if weights is None else weights[inside]
    return np.bincount(idx, weights=w, minlength=lo.size).astype(float)[: lo.size]


def _union(start: NDArray[np.float64], finish: NDArray[np.float64]) -> tuple[NDArray[np.float64],
                                                                             NDArray[np.float64]]:
    """The union of intervals [start, finish) as disjoint sorted intervals."""
    if not start.size:
        return start, finish
    order = np.argsort(start, kind="stable")
    s, f = start[order], finish[order]
    reach = np.maximum.accumulate(f)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > reach[:-1]
    first = np.nonzero(new)[0]
    last = np.append(first[1:] - 1, s.size - 1)
    return s[first], reach[last]


def fair_shares(shares: dict[str, NDArray[np.float64]], weights: dict[str, float],
                backlog: dict[str, NDArray[np.bool_]]) -> dict[str, NDArray[np.float64]]:
    """Each tenant's weighted fair share per window, by water-filling over what all were served.

    A tenant not backlogged in a window is owed what it was served (it asked for no more); the
    backlogged tenants split the rest of what all the tenants were served together in proportion to
    their weights. Tenants that have not arrived are not backlogged, so they take nothing.
    """
    tenants = list(weights)
    share = np.vstack([shares[n] for n in tenants])
    busy = np.vstack([backlog[n] for n in tenants])
    w = np.array([weights[n] for n in tenants], dtype=float)[:, None]
    rest = np.where(busy, share, 0.0).sum(axis=0)
    busy_w = np.where(busy, w, 0.0).sum(axis=0)
    split = np.divide(w * rest, busy_w, out=np.zeros_like(share), where=busy_w > 0)
    fair = np.where(busy, split, share)
    return {n: fair[i] for i, n in enumerate(tenants)}


def vtc_service(cols: analysis.Columns, tenants: Sequence[str], end: float,
                window: float) -> dict[str, NDArray[np.float64]]:
    """Weighted tokens served to each tenant per window, counted as the VTC paper does.

    An input token counts ``VTC_W_IN`` (1) and an output token ``VTC_W_OUT`` (2), whatever the pool's
    own token weights. A request's prompt counts when its first token comes (prefill is done); its
    output tokens are spread evenly from the first token to its finish. Only tokens the records
    report count: a request still running at the end, or preempted, has reported no output.
    """
    lo, hi = _edges(end, window)
    started = ~np.isnan(cols.first_token)
    out: dict[str, NDArray[np.float64]] = {}
    for tenant in tenants:
        sel = started & (cols.tenant == tenant)
        s = cols.first_token[sel]
        f = np.where(np.isnan(cols.finish[sel]), cols.end, cols.finish[sel])
        prefill = _per_window(s, lo, hi, VTC_W_IN * cols.prompt[sel])
        overlap = np.clip(np.minimum(f[:, None], hi[None, :]) - np.maximum(s[:, None], lo[None, :]), 0.0, None)
        decode = (VTC_W_OUT * cols.output[sel] / np.maximum(f - s, 1e-9))[:, None] * overlap
        out[tenant] = prefill + decode.sum(axis=0)
    return out


def max_service_difference(service: dict[str, NDArray[np.float64]], weights: dict[str, float],
                           backlog: dict[str, NDArray[np.bool_]],
                           within: NDArray[np.bool_] | None = None) -> dict[str, Any]:
    """The VTC paper's fairness metric, per unit of weight, at the windows' resolution.

    For each pair of tenants and each run of consecutive windows (within ``within``, if given) in
    which both were backlogged, the largest |service_f / w_f - service_g / w_g| accumulated over
    any stretch of those windows; the maximum over pairs and runs, in weighted tokens (input 1,
    output 2) per unit of weight, with the pair. ``None`` where no two tenants were ever backlogged
    together.
    """
    best: dict[str, Any] = {"tokens_per_weight": None, "pair": None}
    for f, g in itertools.combinations(list(weights), 2):
        both = backlog[f] & backlog[g]
        if within is not None:
            both = both & within
        diff = service[f] / weights[f] - service[g] / weights[g]
        for run in _runs(both):
            walk = np.concatenate([[0.0], np.cumsum(diff[run])])
            gap = float(walk.max() - walk.min())
            if best["tokens_per_weight"] is None or gap > best["tokens_per_weight"]:
                best = {"tokens_per_weight": gap, "pair": [f, g]}
    return best


def _runs(mask: NDArray[np.bool_]) -> list[slice]:
    """Maximal runs of True in ``mask`` as slices."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.nonzero(np.diff(padded))[0]
    return [slice(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _converged_at(t: np.ndarray, share: np.ndarray, fair: np.ndarray, join: float) -> float | None:
    """Seconds after ``join`` from which every window stays within the tolerance of fair."""
    ok = np.abs(share - fair) <= TOLERANCE * np.maximum(fair, 1e-12)
    if not ok.size or not ok[-1]:
        return None
    bad = np.nonzero(~ok)[0]
    first_good = 0 if bad.size == 0 else bad[-1] + 1
    return float(max(0.0, t[first_good] - join))


def slo_attainment(cols: analysis.Columns, tenant: str, slo: float | None, lo: float,
                   hi: float) -> dict[str, float | int | None]:
    """TTFT SLO attainment of the tenant's requests arriving in [lo, hi).

    ``of_arrivals``: met / arrivals whose outcome is decided by the end of the run. A request turned
    away, or still waiting at the end with its deadline (arrival + SLO) already passed, has not met
    it; a request still waiting at the end whose deadline had not passed yet might still meet it, so
    it is left out of the denominator and counted in ``undecided``. ``of_served``: met / requests
    that got a first token. ``arrivals``: every request arriving in [lo, hi).
    """
    sel = (cols.tenant == tenant) & (cols.arrival >= lo) & (cols.arrival < hi)
    if slo is None:
        return {"of_arrivals": None, "of_served": None, "undecided": None, "arrivals": int(sel.sum())}
    served = ~np.isnan(cols.first_token[sel])
    ttft = cols.first_token[sel] - cols.arrival[sel]
    met = served & (np.nan_to_num(ttft, nan=np.inf) <= slo)
    undecided = cols.censored[sel] & (cols.end - cols.arrival[sel] < slo)
    decided = ~undecided
    return {
        "of_arrivals": float(met[decided].mean()) if decided.any() else None,
        "of_served": float(met[served].mean()) if served.any() else None,
        "undecided": int(undecided.sum()),
        "arrivals": int(sel.sum()),
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
                         m["steady_service_per_weight"][n], m["converge_seconds"][n], slo["of_arrivals"],
                         slo.get("undecided"), slo["of_served"]])
    overview = [[label, m["converge_all_seconds"], m["jain_steady"],
                 m["max_service_difference"]["tokens_per_weight"],
                 m["max_service_difference_steady"]["tokens_per_weight"], m["alone_share"],
                 m["alone_weighted_tokens_per_s"]] for label, m in modes.items()]
    verdicts = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in summary["pass"].items())
    verdicts += "".join(f"\n- n/a (no alone phase): {name}" for name in summary.get("not_applicable", []))
    alone = (f"{summary['alone_tenant']} alone until {summary['join_time']:.0f} s"
             if summary.get("not_applicable") is None else "no alone phase")
    return "\n\n".join([
        f"## Fairness under scarcity ({alone}; windows of {summary['window_seconds']:.0f} s; "
        "steady state = last third of the scarce phase)",
        markdown_table(["mode", "converged after s (all, within 5%)", "Jain (steady, weight-normalised)",
                        "max service diff (w tok per weight, backlogged pairs)", "same, steady state",
                        f"{summary['alone_tenant']} share while alone", "served while alone (w tok/s)"], overview),
        markdown_table(["mode", "tenant", "weight", "steady share", "fair share",
                        "service / weight (steady, w tok/s)", "converged after s",
                        "SLO met (of decided arrivals)", "still waiting, deadline not passed", "SLO met (of served)"],
                       rows),
        "Fair share: water-filling over the backlogged tenants (turned away, or waiting for a first token for "
        "half the window or more). Service: weighted tokens as the VTC paper counts them (input 1, output 2); "
        "the max service diff is the largest difference in service per weight accumulated between two tenants "
        "over a stretch in which both were backlogged. SLO met: arrivals in the scarce phase; one still waiting "
        "at the end counts as missed once its deadline has passed, and is left out (counted) before.",
        verdicts,
    ])


def plot(summary: dict[str, Any], path: Path) -> None:
    from matplotlib import colormaps

    modes = summary["modes"]
    tenants = list(summary["weights"])
    cmap = colormaps["tab10" if len(tenants) <= 10 else "turbo"]
    colours = {n: cmap(i if len(tenants) <= 10 else i / max(len(tenants) - 1, 1)) for i, n in enumerate(tenants)}
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
