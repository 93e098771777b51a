"""Experiment 1 (overload) over real HTTP: emulated replicas, the admitter, and the load generator.

The simulated-time experiment (``sim.experiments.overload``) runs the capacity model and the vLLM
emulator in one process on a simulated clock. This one runs the real pieces, each in its own
process, on the wall clock:

* ``tokenpools emulate``: two vLLM look-alike replicas with the simulation's engine
  (``max_num_batched_tokens`` 2048, ``--scheduling-policy priority``) at ``--speedup 1/15``, i.e.
  an H200 fifteen times slower, so that the whole experiment needs only tens of requests per second
  (see ``deploy/experiments/overload-http/pool.yaml``);
* ``tokenpools admitter`` in front of them, once with ``--passthrough`` (the baseline: everything
  goes to the replicas' queues) and once enforcing;
* the load generator in this process, replaying the same seeded arrivals against the admitter.

Each mode gets fresh replicas and a fresh admitter, so neither inherits the other's queues. When
the arrivals stop the replicas get ``drain`` more seconds; what is still waiting then is cut, and
its wait counts as a lower bound of its TTFT (as the simulation does).

For reference the same arrivals also run through the simulation with the same engine slowed by the
same factor (``simulate``), so the measured numbers can be read against the model's prediction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from rich.console import Console

from loadgen.keys import resolve_keys
from loadgen.plan import Plan, make_plan
from loadgen.progress import run_with_progress
from loadgen.report import (
    GROUP_COLOURS,
    TIER_COLOURS,
    outcome_series,
    report,
    summarise,
    ttft_series,
    write_outputs,
)
from loadgen.runner import LoadOptions, LoadResult, LoadRunner
from schemas.specs import Tier
from schemas.workload import PoissonArrivals
from sim.costmodel import ReplicaCostModel
from sim.experiments.common import ENGINE
from tokenpools.infra.results import figure, markdown_table, write_json

#: Outside deploy/examples, so that folder keeps describing one pool (and `config check` of it says so).
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "experiments" / "overload-http"
WORKLOAD = "overload-http"
#: Model seconds per wall second of the emulated replicas: an H200 fifteen times slower.
SPEEDUP = 1 / 15
REPLICAS = 2
MODES = ("passthrough", "enforcing")
GUARANTEED, SPOT = Tier.GUARANTEED.value, Tier.SPOT.value


def slowed_engine(speedup: float = SPEEDUP) -> ReplicaCostModel:
    """The simulation's engine with every step ``1 / speedup`` times longer: what the emulator runs.

    An emulator at ``speedup`` s on the wall clock and this engine in simulated time take the same
    steps; the simulation needs the slowed costs because its clock is the wall clock's stand-in.
    """
    k = 1 / speedup
    return ENGINE.with_(decode_base_ms=ENGINE.decode_base_ms * k, decode_per_seq_ms=ENGINE.decode_per_seq_ms * k,
                        decode_per_cached_token_ms=ENGINE.decode_per_cached_token_ms * k,
                        prefill_per_token_ms=ENGINE.prefill_per_token_ms * k)


# ------------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far (Linux), to report what each piece cost."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Stack:
    """The running replicas and admitter of one mode."""

    mode: str
    admitter_url: str
    replica_urls: list[str]
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    def cpu(self) -> dict[str, float | None]:
        return {name: cpu_seconds(proc.pid) for name, proc in self.processes.items()}


async def _read_urls(proc: asyncio.subprocess.Process, n: int, within: float) -> list[str]:
    assert proc.stdout is not None
    urls: list[str] = []
    async with asyncio.timeout(within):
        while len(urls) < n:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the emulator exited (code {await proc.wait()}) before printing its URLs")
            text = line.decode().strip()
            if text.startswith("http"):
                urls.append(text)
    return urls


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, within: float) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(within):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"the admitter exited with code {proc.returncode}; see its log")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def start_stack(mode: str, plan: Plan, config_dir: Path, logs: Path, *, speedup: float = SPEEDUP,
                      replicas: int = REPLICAS, seed: int = 0) -> AsyncIterator[Stack]:
    """Emulated replicas and an admitter (``--passthrough`` unless enforcing) as subprocesses on loopback.

    Their logs go to ``logs`` (an existing folder).
    """
    cli = [sys.executable, "-m", "tokenpools.cli"]
    processes: dict[str, asyncio.subprocess.Process] = {}
    with (logs / "emulator.log").open("wb") as em_log, (logs / "admitter.log").open("wb") as adm_log:
        try:
            emulator = processes["emulator"] = await asyncio.create_subprocess_exec(
                *cli, "emulate", "--replicas", str(replicas), "--port", "0", "--model", plan.model,
                "--speedup", repr(speedup), "--max-num-batched-tokens", str(ENGINE.max_num_batched_tokens),
                "--scheduling-policy", "priority", "--seed", str(seed),
                stdout=asyncio.subprocess.PIPE, stderr=em_log)
            urls = await _read_urls(emulator, replicas, within=60)
            port = _free_port()
            admin_sha = hashlib.sha256(secrets.token_hex(16).encode()).hexdigest()  # nobody needs /admin here
            args = ["admitter", "--config", str(config_dir), "--port", str(port),
                    "--backend", f"{plan.spec.pool}={','.join(urls)}", "--admin-key-sha256", admin_sha,
                    "--admitter-id", f"overload-http-{mode}"]
            if mode == "passthrough":
                args.append("--passthrough")
            admitter = processes["admitter"] = await asyncio.create_subprocess_exec(
                *cli, *args, stdout=adm_log, stderr=adm_log)
            url = f"http://127.0.0.1:{port}"
            await _wait_healthy(url, admitter, within=60)
            yield Stack(mode, url, urls, processes)
        finally:
            for proc in reversed(list(processes.values())):
                await _stop(proc)


async def replica_stats(urls: list[str], settle: float = 5.0) -> list[dict[str, Any]]:
    """Each replica's own counters (requests, finished, aborted, preemptions) from /emulator/stats.

    Waits up to ``settle`` seconds for the replicas to go idle first: requests the client cut reach
    them as aborts a moment later (client -> admitter -> replica), and the counts should include them.
    """
    keys = ("url", "requests", "finished", "aborted", "preemptions", "running", "waiting")
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + settle
        while True:
            out = []
            for url in urls:
                try:
                    async with session.get(url + "/emulator/stats") as resp:
                        stats = await resp.json()
                except (aiohttp.ClientError, OSError):
                    continue
                out.append({k: stats.get(k) for k in keys})
            if all(not s["running"] and not s["waiting"] for s in out) or asyncio.get_running_loop().time() > deadline:
                return out
            await asyncio.sleep(0.2)


# ----------------------------------------------------------------------------------------- phases
def phases(plan: Plan) -> dict[str, tuple[float, float]]:
    """Warm-up, ramp, overload, fall and tail, read off the spot tenant's rate profile."""
    from sim.experiments.overload import phases_of

    spot = next(t for t in plan.spec.tenants if plan.tiers.get(t.entitlement) == SPOT)
    assert isinstance(spot.arrivals, PoissonArrivals) and spot.arrivals.profile, "spot needs a rate profile"
    return phases_of(list(spot.arrivals.profile), plan.spec.duration_seconds).spans


def thirds(span: tuple[float, float]) -> list[tuple[float, float]]:
    lo, hi = span
    step = (hi - lo) / 3
    return [(lo + i * step, lo + (i + 1) * step) for i in range(3)]


# -------------------------------------------------------------------------------------------- run
@dataclass
class ModeRun:
    mode: str
    result: LoadResult
    cpu: dict[str, float | None]
    replicas: list[dict[str, Any]]
    wall_seconds: float


async def run_mode(mode: str, plan: Plan, keys: dict[str, str], config_dir: Path, out: Path, console: Console,
                   *, drain: float, speedup: float, seed: int) -> ModeRun:
    t0 = time.monotonic()
    async with start_stack(mode, plan, config_dir, out / mode, speedup=speedup, seed=seed) as stack:
        console.print(f"[bold]{mode}[/]: admitter {stack.admitter_url} -> replicas {', '.join(stack.replica_urls)}")
        options = LoadOptions(urls=[stack.admitter_url], model=plan.model, keys=keys, tiers=plan.tiers,
                              drain=drain, timeout=plan.spec.duration_seconds + drain + 60)
        runner = LoadRunner(plan.arrivals, options, plan.spec.duration_seconds)
        result = await run_with_progress(runner, console, mode)
        cpu = stack.cpu()
        stats = await replica_stats(stack.replica_urls)
    cpu["client"] = result.client_cpu_seconds
    return ModeRun(mode, result, cpu, stats, time.monotonic() - t0)


def simulate(plan: Plan, drain: float, speedup: float) -> dict[str, Any]:
    """The same arrivals in simulated time: token pools with an FCFS engine (the admitter sends no
    priority, so the replicas' priority policy sees all requests equal) and the baseline."""
    from sim import analysis
    from sim.control import ControlLoop, LoopSettings, Mode

    pool = plan.config.pools[plan.spec.pool]
    engine = slowed_engine(speedup).with_(scheduling_policy="fcfs")
    spans = phases(plan)
    out: dict[str, Any] = {}
    for label, mode in (("enforcing", Mode.TOKENPOOLS), ("passthrough", Mode.BASELINE)):
        replicas = pool.spec.replicas.start
        loop = ControlLoop(pool, plan.config.entitlements_of(pool.name), mode,
                           LoopSettings(replicas=replicas, max_replicas=replicas, autoscale=False, cost_model=engine))
        res = loop.run(plan.arrivals, plan.spec.duration_seconds, drain=drain)
        cols = analysis.Columns.of(res.records, res.end)
        lo, hi = spans["overload"]
        rows = {tier: analysis.phase_row(cols, res, tier, lo, hi, pool.spec.capacity(replicas)[0])
                for tier in (GUARANTEED, SPOT)}
        sel = cols.tier == GUARANTEED
        third_p99 = [analysis.pct(cols.ttft[sel & (cols.arrival >= a) & (cols.arrival < b)], 99)
                     for a, b in thirds((lo, hi))]
        out[label] = {
            "guaranteed_p99_ttft": rows[GUARANTEED]["ttft_p99"],
            "guaranteed_p99_ttft_thirds": third_p99,
            "spot_refused": rows[SPOT]["refused"],
            "guaranteed_refused": rows[GUARANTEED]["refused"],
            "served_weighted_tokens_per_s": analysis.served_weighted(cols, res, lo, hi),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def analyse(runs: dict[str, ModeRun], plan: Plan) -> dict[str, Any]:
    """Rows per mode, phase and tier, and the checks the simulation's experiment makes."""
    pool = plan.config.pools[plan.spec.pool]
    weights = (pool.spec.token_weights.input, pool.spec.token_weights.output)
    spans = phases(plan)
    rows = []
    for mode, run in runs.items():
        for phase, span in spans.items():
            summary = summarise(run.result.records, span=span, weights=weights)
            rows += [{"mode": mode, "phase": phase, **row} for row in summary["tiers"]]
    overload = spans["overload"]
    checks: dict[str, Any] = {}
    for mode, run in runs.items():
        records = run.result.records
        whole = summarise(records, weights=weights)
        tiers = {r["tier"]: r for r in whole["tiers"]}
        over = {r["tier"]: r for r in summarise(records, span=overload, weights=weights)["tiers"]}
        by_third = [summarise(records, span=s)["tiers"] for s in thirds(overload)]
        warm = {r["tier"]: r for r in summarise(records, span=spans["warm-up"])["tiers"]} if "warm-up" in spans else {}
        third_p99 = [next((r["ttft_p99"] for r in rows_ if r["tier"] == GUARANTEED), None) for rows_ in by_third]
        checks[mode] = {
            "guaranteed_429": tiers.get(GUARANTEED, {}).get("refused_429", 0),
            "spot_429": tiers.get(SPOT, {}).get("refused_429", 0),
            "all_429": whole["all"]["refused_429"],
            "warmup_guaranteed_p99_ttft": warm.get(GUARANTEED, {}).get("ttft_p99"),
            "overload_guaranteed_p99_ttft": over.get(GUARANTEED, {}).get("ttft_p99"),
            "guaranteed_p99_ttft_thirds": third_p99,
            "last_vs_first_third": _ratio(third_p99[2], third_p99[0]),
            "overload_vs_warmup": _ratio(over.get(GUARANTEED, {}).get("ttft_p99"),
                                         warm.get(GUARANTEED, {}).get("ttft_p99")),
            "overload_served_weighted_tokens_per_s": summarise(records, span=overload, weights=weights)["all"][
                "weighted_tokens_per_s"],
            "client": report(run.result)["client"],
            "cpu_seconds": run.cpu,
            "replicas": run.replicas,
            "wall_seconds": run.wall_seconds,
        }
    enf, base = checks.get("enforcing"), checks.get("passthrough")
    if enf and base:
        checks["enforcing_vs_passthrough_p99"] = _ratio(enf["overload_guaranteed_p99_ttft"],
                                                        base["overload_guaranteed_p99_ttft"])
        checks["throughput_enforcing_vs_passthrough"] = _ratio(enf["overload_served_weighted_tokens_per_s"],
                                                               base["overload_served_weighted_tokens_per_s"])
        # Passthrough waits are cut at the end of the run, so its later thirds are lower bounds and may
        # look flat: growth is judged against the warm-up instead.
        checks["pass"] = {
            "enforcing_refuses_spot_(429)": enf["spot_429"] > 0,
            "enforcing_never_refuses_guaranteed": enf["guaranteed_429"] == 0,
            "passthrough_refuses_nothing": base["all_429"] == 0,
            "enforcing_guaranteed_p99_not_growing_(last/first_third_<=1.5)": _le(enf["last_vs_first_third"], 1.5),
            "passthrough_guaranteed_p99_grows_(overload/warm-up_>=10)": (base["overload_vs_warmup"] or 0) >= 10,
            "guaranteed_p99_enforcing_<_passthrough/3": _lt(enf["overload_guaranteed_p99_ttft"],
                                                             base["overload_guaranteed_p99_ttft"], 1 / 3),
            "throughput_enforcing_>=_80%_of_passthrough": (checks["throughput_enforcing_vs_passthrough"] or 0) >= 0.8,
        }
    return {"phases": spans, "rows": rows, "checks": checks}


def _le(a: float | None, bound: float) -> bool:
    return a is not None and a <= bound


def _lt(a: float | None, b: float | None, factor: float) -> bool:
    return a is not None and b is not None and a < b * factor


# ------------------------------------------------------------------------------------------ output
def render(summary: dict[str, Any]) -> str:
    headers = ["mode", "phase", "tier", "requests", "ok", "429", "503", "errors", "cut", "TTFT p50 s",
               "TTFT p95 s", "TTFT p99 s", "censored", "e2e p50 s", "e2e p99 s", "weighted tok/s"]
    rows = [[r["mode"], r["phase"], r["tier"], r["requests"], r["ok"], r["refused_429"],
             r["unavailable_503"] + r["preempted"], r["errors"] + r["timeouts"], r["cut"], r["ttft_p50"],
             r["ttft_p95"], r["ttft_p99"], r["ttft_censored"], r["e2e_p50"], r["e2e_p99"],
             r.get("weighted_tokens_per_s")] for r in summary["rows"]]
    c = summary["checks"]
    sim = summary.get("simulation", {})
    cmp_rows = []
    for mode in MODES:
        if mode not in c:
            continue
        m = c[mode]
        s = sim.get(mode, {})
        cmp_rows.append([mode, m["overload_guaranteed_p99_ttft"], *m["guaranteed_p99_ttft_thirds"],
                         m["spot_429"], m["guaranteed_429"], m["overload_served_weighted_tokens_per_s"],
                         s.get("guaranteed_p99_ttft"), s.get("spot_refused"), s.get("served_weighted_tokens_per_s")])
    parts = [
        "## Overload over HTTP: per mode, phase and tier",
        markdown_table(headers, rows),
        "## Guaranteed P99 TTFT during overload, measured over HTTP and predicted by the simulation",
        markdown_table(["mode", "P99 s", "1st third s", "2nd third s", "3rd third s", "spot 429", "guaranteed 429",
                        "weighted tok/s", "sim P99 s", "sim spot refused", "sim weighted tok/s"], cmp_rows),
    ]
    client_rows = []
    for mode in MODES:
        if mode in c:
            cl, cpu = c[mode]["client"], c[mode]["cpu_seconds"]
            client_rows.append([mode, cl["sent"], cl["mean_send_rate"], cl["peak_send_rate_1s"], cl["lag_p50_s"],
                                cl["lag_p99_s"], cl["lag_max_s"], cl["delayed_by_cap"], cpu.get("client"),
                                cpu.get("admitter"), cpu.get("emulator"), c[mode]["wall_seconds"]])
    parts += ["## Client and processes",
              markdown_table(["mode", "sent", "mean req/s", "peak req/s (1 s)", "send lag p50 s", "lag p99 s",
                              "lag max s", "delayed by cap", "client CPU s", "admitter CPU s", "emulator CPU s",
                              "wall s"], client_rows)]
    if "pass" in c:
        parts.append("\n".join(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in c["pass"].items()))
    return "\n\n".join(parts)


def plot(runs: dict[str, ModeRun], spans: dict[str, tuple[float, float]], duration: float, path: Path) -> None:
    """P99 TTFT per tier over time, both modes (top); outcomes per second, both modes (bottom)."""
    window = max(1.0, duration / 30)
    styles = {"enforcing": "-", "passthrough": "--"}
    with figure(path, 2, 1, figsize=(10, 7.5), sharex=True) as (_, (top, bottom)):
        for mode, run in runs.items():
            for tier in (GUARANTEED, SPOT):
                x, y = ttft_series(run.result.records, tier, duration, window)
                if not np.all(np.isnan(y)):
                    top.plot(x, y, styles[mode], color=TIER_COLOURS[tier], label=f"{mode} / {tier}", linewidth=1.5)
            x, series = outcome_series(run.result.records, duration, window)
            for name in ("ok", "429", "cut"):
                if series[name].any():
                    bottom.plot(x, series[name], styles[mode], color=GROUP_COLOURS[name], label=f"{mode} / {name}",
                                linewidth=1.5)
        for ax in (top, bottom):
            lo, hi = spans["overload"]
            ax.axvspan(lo, hi, color="grey", alpha=0.1)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, ncol=2)
        top.set_yscale("log")
        top.set_ylabel(f"P99 TTFT, {window:.0f} s windows (s, log)")
        top.set_title("Overload over HTTP: P99 time to first token (shaded: spot at its peak; cut waits are lower "
                      "bounds)", fontsize=10)
        bottom.set_xlabel("scheduled send time (s)")
        bottom.set_ylabel("requests/s by outcome")


def run(out: Path = Path("results/overload-http"), *, seed: int | None = None, duration: float | None = None,
        drain: float = 10.0, speedup: float = SPEEDUP, config_dir: Path = CONFIG, modes: tuple[str, ...] = MODES,
        console: Console | None = None, with_simulation: bool = True) -> dict[str, Any]:
    """Both modes, one after the other, each with its own event loop and processes; the summary
    (also written to ``out``)."""
    console = console or Console()
    plan = make_plan([config_dir], WORKLOAD, seed=seed, duration=duration)
    keys = resolve_keys([t.entitlement for t in plan.spec.tenants], plan.config.entitlements)
    console.print(f"workload {plan.name}: {len(plan.arrivals)} requests over {plan.spec.duration_seconds:g} s, "
                  f"{REPLICAS} replicas at speedup {speedup:.4g}, drain {drain:g} s")
    pool = plan.config.pools[plan.spec.pool]
    weights = (pool.spec.token_weights.input, pool.spec.token_weights.output)
    runs: dict[str, ModeRun] = {}
    for mode in modes:
        (out / mode).mkdir(parents=True, exist_ok=True)
        run_ = asyncio.run(run_mode(mode, plan, keys, config_dir, out, console, drain=drain, speedup=speedup,
                                    seed=plan.spec.seed or 0))
        runs[mode] = run_
        write_outputs(out / mode, run_.result, report(run_.result, weights), f"{plan.name} ({mode})",
                      meta={"mode": mode, "workload": plan.name, "cpu_seconds": run_.cpu, "replicas": run_.replicas})
    summary = analyse(runs, plan)
    if with_simulation:
        summary["simulation"] = simulate(plan, drain, speedup)
    summary.update(workload=plan.name, seed=seed if seed is not None else plan.spec.seed,
                   duration=plan.spec.duration_seconds, drain=drain, speedup=speedup, replicas=REPLICAS,
                   requests=len(plan.arrivals),
                   engine={"max_num_batched_tokens": ENGINE.max_num_batched_tokens, "scheduling_policy": "priority"})
    write_json(out / "summary.json", summary)
    table = render(summary)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    plot(runs, summary["phases"], plan.spec.duration_seconds, out / "overload_http.png")
    console.print(table, soft_wrap=True)
    console.print(f"\nresults: {out}/summary.json, {out}/table.md, {out}/overload_http.png, "
                  f"{out}/<mode>/ (each run's own report and records)")
    return summary
