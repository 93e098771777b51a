"""The closed loop, live: ``tokenpools up`` on real Kafka, a workload through both admitters, and
what the control plane did about it.

``tokenpools up`` runs in its own process (Kafka, the Faust worker, the scaler with emulator
replicas, two admitters), so the load generator here does not share its event loop. While the
workload runs, this process also follows the compacted topics the pipeline and the scaler write
(``pool-state``, ``entitlement-state``, ``replicas``): the pool's demand and capacity, every
entitlement's global limit, and the replica count, as the rest of the platform saw them.

Outputs in ``out``: ``load/`` (the load generator's own report: per-tenant table, latency.png,
records), ``timeline.json`` (what the topics said, by second), ``closed_loop.png``, ``table.md``,
``summary.json`` with the checked claims, ``history.json`` (three analyst answers from the history),
``report/`` (the ClickHouse dashboards' panels over the run, ``tokenpools report`` through the history
endpoint: index.html and PNGs), and ``up/`` (logs of every part).

History: ``tokenpools up`` also runs the history process (the sink into chDB under ``up/history`` and its
query endpoint). Before ``up`` stops, the demo waits until the history holds every event the admitters
put on the requests topic (read here, once each), then asks it three analyst questions (tokens per
tenant, TTFT percentiles by tier, refusals by dimension) over its HTTP endpoint, as an analyst's
notebook would, and prints the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from loadgen.keys import resolve_keys
from loadgen.plan import Plan, make_plan
from loadgen.progress import run_with_progress
from loadgen.report import TIER_COLOURS, report, write_outputs
from loadgen.runner import REFUSED, LoadOptions, LoadResult, LoadRunner, Record
from schemas.records import EntitlementState, PoolState, ReplicasReport
from schemas.topics import Topics
from schemas.wire import BadRecords, decode, decode_request_events
from tokenpools.infra.results import figure, fmt, markdown_table, write_json

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "closed-loop"
WORKLOAD = "closed-loop"
START_TIMEOUT_S = 600.0  # the first start resolves Kafka's jars with Maven
SHRINK_WAIT_S = 60.0  # after the workload: how long to wait for the pool to return to its minimum
TIERS = ("guaranteed", "elastic", "spot")
# The workload's phases (deploy/demo/closed-loop/workloads/closed-loop.yaml), seconds since its start.
SPOT_ONLY_UNTIL = 15.0  # guaranteed + spot only: the pool must stay at its minimum
ELASTIC_FULL = (25.0, 80.0)  # elastic demand at its peak (with its fall): the pool grows
FAIR_SHARE_SPAN = (40.0, 75.0)  # settled overload: the elastic tenants' shares are compared here
ELASTIC_FALLS = 75.0  # elastic demand starts to fall (zero at 80 s): no shrink can be due before this + window
GUARANTEED, ELASTIC_A, ELASTIC_B = "acme-live", "tenant-a-live", "tenant-b-live"  # weights 2 and 1
SHARE_TOLERANCE = 0.10  # each elastic tenant's served rate within ±10 % of its weighted fair share given demand
SHARE_CLAIM = "elastic tenants get their weighted fair share given demand (±10 %)"
HISTORY_CLAIM = "the history holds every event the admitters emitted, once"
HISTORY_WAIT_S = 120.0  # after the workload: how long the sink may take to write what is on the topic
HISTORY_SETTLE_S = 3.0  # the counts must stay equal this long (the sink flushes every second)
# The three answers the demo prints: (title, named question, columns shown).
HISTORY_ANSWERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Tokens per tenant", "usage_per_tenant_per_day",
     ("day", "tenant", "requests", "refused", "prompt_tokens", "output_tokens", "charged_throughput")),
    ("TTFT by tier (s): P50 / P90 / P99", "latency_by_tier_per_hour",
     ("hour", "tier", "ttft_n", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p99")),
    ("Refusals by dimension", "refusals_by_dimension",
     ("pool", "tier", "refused_dimension", "refusals", "decisions", "refused_share")),
)


class UpFailed(RuntimeError):
    """``tokenpools up`` exited or never became ready; the message holds its log's tail."""


@dataclass
class Timeline:
    """What the compacted topics said during the run, stamped with the records' own clocks."""

    pools: list[PoolState] = field(default_factory=list)
    entitlements: list[EntitlementState] = field(default_factory=list)
    replicas: list[ReplicasReport] = field(default_factory=list)
    bad: BadRecords = field(default_factory=BadRecords)


async def follow(bootstrap: str, prefix: str, timeline: Timeline, stop: asyncio.Event) -> None:
    """Read the three topics from the beginning until ``stop`` (no consumer group: nothing committed)."""
    from tokenpools.kafka.reader import CompactedReader, Handler

    named = Topics(prefix)

    def into(topic: str, model: type[Any], sink: list[Any]) -> Handler:
        def handle(_key: bytes | None, value: bytes | None) -> None:
            record = decode(model, value, topic, timeline.bad)
            if record is not None:
                sink.append(record)
        return handle

    reader = CompactedReader(bootstrap, {
        named.pool_state: into(named.pool_state, PoolState, timeline.pools),
        named.entitlement_state: into(named.entitlement_state, EntitlementState, timeline.entitlements),
        named.replicas: into(named.replicas, ReplicasReport, timeline.replicas),
    }, bad=timeline.bad, client_id="tokenpools-demo-observer", name="demo observer", keeps="keeping the timeline",
        fetch_max_wait_ms=200)
    await reader.start()
    try:
        await stop.wait()
    finally:
        await reader.stop()


@dataclass
class Up:
    """A ``tokenpools up`` subprocess and what its ready file says."""

    proc: subprocess.Popen[bytes]
    folder: Path
    ready: dict[str, Any]

    @property
    def log(self) -> Path:
        return self.folder / "up.log"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def launch_up(config: Path, folder: Path, prefix: str) -> subprocess.Popen[bytes]:
    """``tokenpools up`` on free ports with its data, logs and ready file in a fresh ``folder``."""
    if folder.exists():
        shutil.rmtree(folder)  # a fresh broker each run: nothing left over from an earlier one
    folder.mkdir(parents=True)
    args = [sys.executable, "-m", "tokenpools.cli", "up", "--config", str(config), "--port", "0",
            "--data-dir", str(folder), "--ready-file", str(folder / "ready.json"), "--topic-prefix", prefix,
            "--report-every", "2"]
    with (folder / "up.log").open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


async def start_up(config: Path, folder: Path, prefix: str, console: Console) -> Up:
    """Start ``tokenpools up`` and wait for its ready file, showing what it is doing meanwhile."""
    proc = await asyncio.to_thread(launch_up, config, folder, prefix)
    ready_file, log = folder / "ready.json", folder / "up.log"
    started = time.monotonic()
    with console.status("starting") as status:
        while not ready_file.exists():
            if proc.poll() is not None:
                raise UpFailed(f"tokenpools up exited with code {proc.returncode}:\n{_tail(log)}")
            elapsed = time.monotonic() - started
            if elapsed > START_TIMEOUT_S:
                Up(proc, folder, {}).stop()
                raise UpFailed(f"tokenpools up not ready after {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")
            last = _tail(log, 1).strip()
            status.update(f"starting Kafka, the pipeline, the scaler and two admitters ({elapsed:.0f} s)"
                          + (f": {last[:90]}" if last else ""))
            await asyncio.sleep(0.5)
    up = Up(proc, folder, json.loads(ready_file.read_text()))
    console.print(f"up in {time.monotonic() - started:.0f} s: Kafka {up.ready['bootstrap']}, admitters "
                  f"{', '.join(up.ready['admitters'])} (logs in {folder})")
    return up


async def wait_for_minimum(timeline: Timeline, pool: str, minimum: int, within: float, console: Console) -> None:
    """After the load: give the scaler its stabilisation window to bring the pool back down."""
    started = time.monotonic()
    with console.status("waiting for the scale-down") as status:
        while time.monotonic() - started < within:
            reports = [r for r in timeline.replicas if r.pool == pool]
            current = reports[-1].ready_replicas if reports else None
            if current is not None and current <= minimum:
                return
            status.update(f"pool {pool}: {current} ready replicas, waiting for {minimum} "
                          f"({time.monotonic() - started:.0f}/{within:.0f} s)")
            await asyncio.sleep(0.5)


@dataclass
class HistoryEndpoint:
    """The history process ``up`` runs: its query endpoint and token (from ``up``'s ready file)."""

    url: str
    token: str

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
            r = await client.post(f"{self.url}{path}", json=body, headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code != 200:
            raise RuntimeError(f"history endpoint {self.url}{path}: HTTP {r.status_code}: {r.text[:300]}")
        answer: dict[str, Any] = r.json()
        return answer

    async def counts(self) -> tuple[int, int]:
        """Rows in ``request_events`` and distinct event ids among them."""
        answer = await self.post("/query", {"sql": "SELECT count() AS n, uniqExact(event_id) AS ids "
                                                   "FROM request_events"})
        n, ids = answer["rows"][0]
        return int(n), int(ids)


async def emitted_events(bootstrap: str, prefix: str) -> tuple[int, int]:
    """Events on the run's requests topic (what the admitters' sinks had acknowledged) and distinct ids."""
    from tokenpools.kafka.reader import read_records

    topic = Topics(prefix).requests
    bad = BadRecords()
    ids = [ev.id for _, _, value in await read_records(bootstrap, [topic])
           for ev in decode_request_events(value, topic, bad)[0]]
    return len(ids), len(set(ids))


async def wait_for_history(history: HistoryEndpoint, bootstrap: str, prefix: str, console: Console,
                           within: float = HISTORY_WAIT_S, settle: float = HISTORY_SETTLE_S, every: float = 0.5
                           ) -> dict[str, Any]:
    """Until the history's ``request_events`` equals the requests topic (rows and distinct ids) and stays
    so for ``settle`` seconds, at most ``within``; what was seen, ``caught_up`` saying whether it did."""
    started = time.monotonic()
    matched_at: float | None = None
    emitted = stored = (0, 0)
    with console.status("waiting for the history sink") as status:
        while True:
            emitted = await emitted_events(bootstrap, prefix)
            stored = await history.counts()
            now = time.monotonic()
            if stored == emitted and emitted[0] > 0:
                matched_at = matched_at if matched_at is not None else now
                if now - matched_at >= settle:
                    break
            else:
                matched_at = None
            if now - started > within:
                break
            status.update(f"history: {stored[0]} of {emitted[0]} events written ({now - started:.0f}/{within:.0f} s)")
            await asyncio.sleep(every)
    caught_up = stored == emitted and emitted[0] > 0
    wait = {"emitted_events": emitted[0], "emitted_ids": emitted[1], "history_rows": stored[0],
            "history_ids": stored[1], "caught_up": caught_up, "waited_s": round(time.monotonic() - started, 1)}
    if caught_up:
        console.print(f"history caught up: {stored[0]} events, the {emitted[0]} on the requests topic "
                      f"({emitted[1]} distinct), in {wait['waited_s']:g} s")
    else:
        console.print(f"[red]history did not catch up within {within:g} s:[/red] {stored[0]} rows "
                      f"({stored[1]} distinct ids) for the {emitted[0]} events ({emitted[1]} distinct) on the "
                      "requests topic; the answers below miss what it had not written (see up/history.log)")
    return wait


def hour_floor(t: float) -> str:
    """The start of ``t``'s hour (UTC) as ISO 8601: the questions read the hour rollup in whole hours."""
    return dt.datetime.fromtimestamp(t // 3600 * 3600, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def ask_history(history: HistoryEndpoint, start: float, end: float) -> dict[str, Any]:
    """The three analyst answers over the whole hours from ``start`` to ``end`` (both Unix seconds)."""
    params = {"start": hour_floor(start), "end": hour_floor(end + 3600)}
    answers: dict[str, Any] = {}
    for title, name, columns in HISTORY_ANSWERS:
        answer = await history.post(f"/questions/{name}", {"params": params})
        answers[name] = {"title": title, "params": params, "shown": list(columns), **answer}
    return answers


async def history_part(up: Up, prefix: str, console: Console, t0: float) -> dict[str, Any]:
    """Wait for the history to hold every event, then ask it the three questions."""
    ready = up.ready.get("history")
    if not ready:
        console.print("[red]tokenpools up ran without the history process: no history answers[/red]")
        return {"wait": {"caught_up": False}, "answers": {}}
    history = HistoryEndpoint(ready["url"], ready["token"])
    wait = await wait_for_history(history, up.ready["bootstrap"], prefix, console)
    return {"endpoint": history.url, "wait": wait, "answers": await ask_history(history, t0 - 60, time.time())}


async def history_report(history: HistoryEndpoint, out: Path, start: float, end: float, console: Console
                         ) -> str | None:
    """The ClickHouse dashboards' panels over the run (what ``tokenpools report --endpoint`` writes), in
    ``out``; the path of its index.html, or None, said why. The report is for looking at the run, not a
    claim: a panel that fails is marked in it, and no failure here stops the demo."""
    from dashboards.macros import TimeRange
    from dashboards.report import ReportError, run_report, write_report

    loop = asyncio.get_running_loop()

    def run_sql(sql: str) -> tuple[list[str], list[list[Any]]]:
        # The report draws in a worker thread; its queries go through this loop's endpoint client.
        answer = asyncio.run_coroutine_threadsafe(history.post("/query", {"sql": sql}), loop).result()
        return answer["columns"], answer["rows"]

    def make() -> tuple[Path, tuple[str, ...]]:
        report = run_report(run_sql, TimeRange.of_epoch(start, end), title="Closed loop: the history's dashboards")
        return write_report(report, out), report.errors

    try:
        with console.status("writing the history report (the ClickHouse dashboards' panels)"):
            index, errors = await asyncio.to_thread(make)
    except (ReportError, OSError) as exc:
        console.print(f"[red]no history report:[/red] {exc}")
        return None
    failed = f", [red]{len(errors)} panels failed[/red] (see the page)" if errors else ""
    console.print(f"history report: {index}{failed}")
    return str(index)


# Shorter headers for the printed tables (the JSON keeps the questions' column names).
HEADERS = {"prompt_tokens": "prompt", "output_tokens": "output", "charged_throughput": "charged",
           "refused_dimension": "dimension", "refused_share": "share", "ttft_n": "n", "ttft_p50": "P50",
           "ttft_p90": "P90", "ttft_p99": "P99", "tpot_p99": "TPOT P99"}
_HOUR = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}):00(?:\.0+)?Z$")


def _cell(value: Any) -> str:
    if isinstance(value, str) and (m := _HOUR.match(value)) is not None:
        return f"{m.group(1)} {m.group(2)}"  # an hour bucket, UTC
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else fmt(value, 1 if abs(value) < 100 else 0)
    return fmt(value)


def answer_rows(answer: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """An answer's shown columns (those it has) and its rows as text."""
    columns = [c for c in answer.get("shown", answer["columns"]) if c in answer["columns"]]
    index = [answer["columns"].index(c) for c in columns]
    return columns, [[_cell(row[i]) for i in index] for row in answer["rows"]]


def cross_check(answers: dict[str, Any], records: Sequence[Record]) -> dict[str, int]:
    """The history's decisions and refusals (tokens per tenant) next to what the load generator sent and
    saw refused (429): counted on either side of the admitters, they should agree."""
    usage = answers.get("usage_per_tenant_per_day")
    total = {"requests": 0, "refused": 0}
    if usage:
        for column in total:
            i = usage["columns"].index(column)
            total[column] = sum(int(row[i]) for row in usage["rows"])
    return {"history_decisions": total["requests"], "history_refused": total["refused"],
            "load_sent": sum(1 for r in records if r.sent is not None),
            "load_refused": sum(1 for r in records if r.outcome == REFUSED)}


def history_tables(answers: dict[str, Any]) -> list[Table]:
    """The answers as rich tables, one per question."""
    tables = []
    for name, answer in answers.items():
        columns, rows = answer_rows(answer)
        table = Table(title=f"{answer['title']} (history: {name})", caption=f"{len(rows)} rows")
        for column in columns:
            table.add_column(HEADERS.get(column, column), no_wrap=True, justify="left" if column in (
                "day", "hour", "tenant", "tier", "pool", "refused_dimension") else "right")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def history_markdown(answers: dict[str, Any]) -> str:
    parts = []
    for name, answer in answers.items():
        columns, rows = answer_rows(answer)
        parts.append(f"{answer['title']} (`tokenpools history ask {name}`):\n\n"
                     + markdown_table(columns, rows or [["-"] * len(columns)]))
    return "\n\n".join(parts)


async def run_live(plan: Plan, keys: dict[str, str], config: Path, out: Path, console: Console
                   ) -> tuple[LoadResult, Timeline, float, dict[str, Any]]:
    """Start the platform, run the workload through both admitters, follow the topics, ask the history its
    three questions; stop it all."""
    prefix = f"demo{secrets.token_hex(3)}."
    up = await start_up(config, out / "up", prefix, console)
    timeline = Timeline()
    stop = asyncio.Event()
    observer = asyncio.create_task(follow(up.ready["bootstrap"], prefix, timeline, stop))
    try:
        options = LoadOptions(urls=up.ready["admitters"], model=plan.model, keys=keys, tiers=plan.tiers,
                              endpoint="chat", timeout=60.0, drain=10.0)
        runner = LoadRunner(plan.arrivals, options, plan.spec.duration_seconds)
        t0 = time.time()
        result = await run_with_progress(runner, console, plan.name)
        pool = plan.config.pools[plan.spec.pool]
        await wait_for_minimum(timeline, pool.name, pool.spec.replicas.min, SHRINK_WAIT_S, console)
        await asyncio.sleep(1.0)  # the last records in flight
        history = await history_part(up, prefix, console, t0)
        if ready := up.ready.get("history"):
            history["report"] = await history_report(HistoryEndpoint(ready["url"], ready["token"]), out / "report",
                                                     t0 - 60, time.time(), console)
        return result, timeline, t0, history
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await observer
        await asyncio.to_thread(up.stop)


def weighted_tokens(r: Record, weights: tuple[float, float]) -> float:
    return weights[0] * (r.prompt_tokens or 0) + weights[1] * (r.output_tokens or 0)


def admitted_rate(records: Sequence[Record], entitlement: str, weights: tuple[float, float], lo: float, hi: float
                  ) -> float:
    """Weighted tokens/s served to an entitlement's requests scheduled in [lo, hi)."""
    chosen = [r for r in records if r.entitlement == entitlement and r.outcome == "ok" and lo <= r.scheduled < hi]
    return sum(weighted_tokens(r, weights) for r in chosen) / (hi - lo)


def offered_rate(records: Sequence[Record], entitlement: str, weights: tuple[float, float], lo: float, hi: float
                 ) -> float:
    """Weighted tokens/s an entitlement asked for with its requests scheduled in [lo, hi), whatever their outcome.

    Sizes are the workload's own (``expected_*``: the prompt sent and the output the emulator is told
    to produce), so refused, timed-out and cut requests count as demand at the size they would have had.
    """
    chosen = [r for r in records if r.entitlement == entitlement and lo <= r.scheduled < hi]
    return sum(weights[0] * r.expected_prompt_tokens + weights[1] * r.expected_output_tokens
               for r in chosen) / (hi - lo)


def fair_shares(capacity: float, demand: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, float]:
    """Weighted max-min fair shares of ``capacity``, each capped at its demand (progressive filling).

    Every tenant's allocation rises in proportion to its weight; one that reaches its demand stops
    there and the rest of the capacity goes on to the others. Capacity above the total demand stays
    unallocated. Written out here rather than calling ``capacity.waterfill``, so the demo does not
    check the allocator with the allocator's own arithmetic.
    """
    share = dict.fromkeys(demand, 0.0)
    active = {n for n in demand if demand[n] > 0 and weights[n] > 0}
    left = max(capacity, 0.0)
    while active and left > 0:
        level = left / sum(weights[n] for n in active)  # capacity per unit of weight, if nobody caps
        capped = {n for n in active if demand[n] - share[n] <= level * weights[n]}
        if not capped:
            for n in active:
                share[n] += level * weights[n]
            break
        for n in capped:
            left -= demand[n] - share[n]
            share[n] = demand[n]
        active -= capped
    return share


def share_deviation(measured: float, fair: float) -> float | None:
    """``measured / fair - 1``; None when the fair share is zero (nothing to compare with)."""
    return measured / fair - 1.0 if fair > 0 else None


def within(deviation: float | None, tolerance: float = SHARE_TOLERANCE) -> bool:
    return deviation is not None and abs(deviation) <= tolerance


def _mean_state(states: Sequence[EntitlementState], entitlement: str, t0: float, lo: float, hi: float,
                attribute: str) -> float | None:
    """Mean throughput demand or usage the pipeline published for an entitlement in [lo, hi) (one record a tick)."""
    values = [getattr(s, attribute).throughput for s in states if s.id == entitlement and lo <= s.ts - t0 < hi]
    return sum(values) / len(values) if values else None


def elastic_shares(plan: Plan, result: LoadResult, timeline: Timeline, t0: float, weights: tuple[float, float]
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each elastic tenant's served rate against its weighted fair share given its demand, over FAIR_SHARE_SPAN.

    The claim's inputs come from the load generator's records, the one view the system under test
    does not compute: demand is what the tenant offered (every arrival in the span, refused or not,
    at its workload size), served is the usage the server reported on the requests that completed.
    ``entitlement-state``'s demand and usage are the admitters' own accounting (demand is what they
    reserved for each decision, prompt plus an estimated output), so judging by them would check the
    pipeline with its own measure; they are shown per tenant as a cross-check.

    What is shared is what the elastic tier was served in the span, so the claim is about the split,
    not about how much of the pool the tier got. That total is shown next to what the topics say was
    available to the tier (mean pool capacity from ``pool-state`` less what the guaranteed tenants
    were served; spot ranks below elastic), as ``served_of_available``.
    """
    lo, hi = FAIR_SHARE_SPAN
    elastic = [name for name, tier in plan.tiers.items() if tier == "elastic"]
    weight = {name: plan.config.entitlements[name].spec.weight for name in elastic}
    demand = {name: offered_rate(result.records, name, weights, lo, hi) for name in elastic}
    served = {name: admitted_rate(result.records, name, weights, lo, hi) for name in elastic}
    total = sum(served.values())
    fair = fair_shares(total, demand, weight)
    rows: dict[str, dict[str, Any]] = {}
    for name in elastic:
        deviation = share_deviation(served[name], fair[name])
        rows[name] = {
            "weight": weight[name], "demand_tokens_per_s": demand[name], "served_tokens_per_s": served[name],
            "fair_share_tokens_per_s": fair[name], "served_fraction": served[name] / total if total else None,
            "fair_fraction": fair[name] / total if total else None, "deviation": deviation,
            "within_tolerance": within(deviation),
            "pipeline_demand_tokens_per_s": _mean_state(timeline.entitlements, name, t0, lo, hi, "demand"),
            "pipeline_usage_tokens_per_s": _mean_state(timeline.entitlements, name, t0, lo, hi, "usage"),
        }
    pool = plan.config.pools[plan.spec.pool].name
    capacity = [s.capacity.throughput for s in timeline.pools if s.id == pool and lo <= s.ts - t0 < hi]
    guaranteed = sum(admitted_rate(result.records, name, weights, lo, hi)
                     for name, tier in plan.tiers.items() if tier == "guaranteed")
    available = sum(capacity) / len(capacity) - guaranteed if capacity else None
    tier = {"served_tokens_per_s": total, "available_tokens_per_s": available,
            "served_of_available": total / available if available else None}
    return rows, tier


def analyse(plan: Plan, result: LoadResult, timeline: Timeline, t0: float, summary: dict[str, Any]) -> dict[str, Any]:
    """The claims the demo makes, measured on this run."""
    pool = plan.config.pools[plan.spec.pool]
    weights = (pool.spec.token_weights.input, pool.spec.token_weights.output)
    window = pool.spec.scaling.stabilisation_window_seconds
    replicas = [(r.ts - t0, r.ready_replicas) for r in timeline.replicas if r.pool == pool.name]
    before = [n for t, n in replicas if t < SPOT_ONLY_UNTIL]
    peak = max((n for t, n in replicas if ELASTIC_FULL[0] <= t <= ELASTIC_FULL[1]), default=0)
    shrunk = next((t for t, n in replicas if t > ELASTIC_FULL[1] and n <= pool.spec.replicas.min), None)
    shares, tier = elastic_shares(plan, result, timeline, t0, weights)
    a = shares[ELASTIC_A]["served_tokens_per_s"] if ELASTIC_A in shares else 0.0
    b = shares[ELASTIC_B]["served_tokens_per_s"] if ELASTIC_B in shares else 0.0
    guaranteed = next((row for row in summary["tiers"] if row["tier"] == "guaranteed"), None)
    slo = plan.config.entitlements[GUARANTEED].spec.slo
    ttft_p99 = guaranteed["ttft_p99"] if guaranteed else None
    figures = {
        "replicas_before_elastic_load": max(before, default=None),
        "replicas_peak_under_elastic_load": peak,
        "replicas_max": pool.spec.replicas.max,
        "shrunk_to_min_at_s": shrunk,
        "stabilisation_window_s": window,
        "elastic_a_tokens_per_s": a,
        "elastic_b_tokens_per_s": b,
        "elastic_share_span_s": list(FAIR_SHARE_SPAN),
        "elastic_ratio_a_to_b": a / b if b else None,
        "elastic_tier_served_tokens_per_s": tier["served_tokens_per_s"],
        "elastic_tier_available_tokens_per_s": tier["available_tokens_per_s"],
        "elastic_tier_served_of_available": tier["served_of_available"],
        "guaranteed_ttft_p99_s": ttft_p99,
        "guaranteed_ttft_slo_s": slo.ttft_seconds if slo else None,
        "guaranteed_ok": f"{guaranteed['ok']}/{guaranteed['requests']}" if guaranteed else None,
        "errors_all_tiers": summary["all"]["errors"] + summary["all"]["timeouts"],
        "bad_records": {f"{t}|{r}": n for (t, r), n in timeline.bad.counts.items()},
    }
    checks = {
        "spot alone does not scale the pool": bool(before) and max(before) == pool.spec.replicas.min,
        "elastic demand above capacity grows the pool": peak > pool.spec.replicas.min,
        "the pool shrinks back, after the stabilisation window": shrunk is not None
        and shrunk >= ELASTIC_FALLS + window,
        SHARE_CLAIM: bool(shares) and all(row["within_tolerance"] for row in shares.values()),
        "guaranteed P99 TTFT within its SLO": ttft_p99 is not None and slo is not None
        and ttft_p99 <= (slo.ttft_seconds or float("inf")),
    }
    return {"figures": figures, "elastic_shares": shares, "pass": checks}


def share_table(shares: dict[str, dict[str, Any]]) -> str:
    """The elastic tenants' shares over FAIR_SHARE_SPAN, one row each (weighted tokens/s)."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:+.1f} %"

    return markdown_table(
        ["elastic tenant", "weight", "demand", "served", "fair share given demand", "deviation",
         f"within ±{100 * SHARE_TOLERANCE:g} %", "pipeline demand / usage"],
        [[name, row["weight"], f"{row['demand_tokens_per_s']:.0f}", f"{row['served_tokens_per_s']:.0f}",
          f"{row['fair_share_tokens_per_s']:.0f}", pct(row["deviation"]), row["within_tolerance"],
          " / ".join("-" if v is None else f"{v:.0f}"
                     for v in (row["pipeline_demand_tokens_per_s"], row["pipeline_usage_tokens_per_s"]))]
         for name, row in shares.items()])


def _series(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted(points)
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def plot(plan: Plan, result: LoadResult, timeline: Timeline, t0: float, path: Path) -> None:
    """Top: served tokens/s per tenant and its global limit; bottom: demand, capacity and replicas."""
    pool = plan.config.pools[plan.spec.pool]
    weights = (pool.spec.token_weights.input, pool.spec.token_weights.output)
    end = max(plan.spec.duration_seconds, *(r.ts - t0 for r in timeline.replicas)) if timeline.replicas \
        else plan.spec.duration_seconds
    bin_s = 10.0  # a few requests per second per tenant: shorter bins are mostly Poisson noise
    edges = np.arange(0.0, end + bin_s, bin_s)
    colours = {GUARANTEED: "tab:blue", ELASTIC_A: "tab:green", ELASTIC_B: "tab:olive", "batchco-live": "tab:orange"}
    with figure(path, 2, 1, figsize=(11, 8), sharex=True) as (_, (top, bottom)):
        for name in plan.tiers:
            served = [admitted_rate(result.records, name, weights, lo, hi) for lo, hi in itertools.pairwise(edges)]
            colour = colours.get(name)
            top.plot(edges[:-1] + bin_s / 2, served, "-o", markersize=3, color=colour,
                     label=f"{name} ({plan.tiers[name]}) served")
            x, y = _series([(s.ts - t0, s.limits.throughput) for s in timeline.entitlements if s.id == name])
            if len(x):
                top.step(x, y, where="post", linestyle="--", linewidth=1, color=colour, alpha=0.8,
                         label=f"{name} limit")
        top.set_ylabel(f"weighted tokens/s ({bin_s:g} s bins, by send time)")
        top.set_title("Closed loop on Kafka: served tokens per tenant (solid) and the pipeline's global limit (dashed)")
        top.set_ylim(bottom=0)
        top.grid(True, alpha=0.3)
        top.legend(fontsize=7, ncol=2)

        states = [s for s in timeline.pools if s.id == pool.name]
        x = np.array([s.ts - t0 for s in states], dtype=float)
        for tier in TIERS:
            colour = TIER_COLOURS[tier]
            y = np.array([s.demand[tier].throughput if tier in s.demand else 0.0 for s in states], dtype=float)
            if len(y) and y.any():
                bottom.plot(x, y, "-", color=colour, linewidth=1.2, label=f"{tier} demand")
        if states:
            bottom.plot(x, [s.capacity.throughput for s in states], "-", color="black", linewidth=1.6,
                        label="pool capacity")
        bottom.set_ylabel("weighted tokens/s (trailing window)")
        bottom.set_xlabel("seconds since the workload started")
        bottom.set_ylim(bottom=0)
        bottom.grid(True, alpha=0.3)
        twin = bottom.twinx()
        rx, ry = _series([(r.ts - t0, r.ready_replicas) for r in timeline.replicas if r.pool == pool.name])
        if len(rx):
            twin.step(rx, ry, where="post", color="tab:red", linewidth=2, label="ready replicas")
        twin.set_ylabel("ready replicas", color="tab:red")
        twin.set_ylim(0, pool.spec.replicas.max + 1)
        lines = bottom.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        bottom.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")
        window = pool.spec.scaling.stabilisation_window_seconds
        bottom.set_title(f"Pool {pool.name}: demand by tier, capacity, and the scaler's replicas "
                         f"(spot does not drive scaling; shrink after {window:g} s)")


def timeline_json(timeline: Timeline, t0: float) -> dict[str, Any]:
    return {
        "pool_state": [{"t": s.ts - t0, "seq": s.seq, "ready_replicas": s.ready_replicas,
                        "desired_replicas": s.desired_replicas, "capacity": s.capacity.throughput,
                        "demand": {tier: a.throughput for tier, a in s.demand.items()}} for s in timeline.pools],
        "entitlement_state": [{"t": s.ts - t0, "id": s.id, "seq": s.seq, "limit": s.limits.throughput,
                               "usage": s.usage.throughput, "demand": s.demand.throughput, "debt": s.debt}
                              for s in timeline.entitlements],
        "replicas": [{"t": r.ts - t0, "pool": r.pool, "ready_replicas": r.ready_replicas} for r in timeline.replicas],
    }


def run(out: Path = Path("results/closed-loop"), *, console: Console | None = None, config: Path = CONFIG
        ) -> dict[str, Any]:
    """The whole demo part; returns the summary (claims under ``pass``)."""
    console = console or Console()
    plan = make_plan([config], WORKLOAD)
    keys = resolve_keys([t.entitlement for t in plan.spec.tenants], plan.config.entitlements, explicit={},
                        use_demo=True)
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"workload [bold]{plan.name}[/]: {len(plan.arrivals)} requests over "
                  f"{plan.spec.duration_seconds:g} s through two admitters (config {config})")
    result, timeline, t0, history = asyncio.run(run_live(plan, keys, config, out, console))
    pool = plan.config.pools[plan.spec.pool]
    weights = (pool.spec.token_weights.input, pool.spec.token_weights.output)
    load_summary = report(result, weights)
    write_outputs(out / "load", result, load_summary, f"{plan.name} (closed loop)", {"workload": plan.name})
    analysis = analyse(plan, result, timeline, t0, load_summary)
    analysis["pass"][HISTORY_CLAIM] = bool(history["wait"].get("caught_up")) \
        and history["wait"].get("history_ids") == history["wait"].get("history_rows")
    history["cross_check"] = cross_check(history["answers"], result.records)
    write_json(out / "history.json", history)
    write_json(out / "timeline.json", timeline_json(timeline, t0))
    plot(plan, result, timeline, t0, out / "closed_loop.png")
    rows = [[name, ok] for name, ok in analysis["pass"].items()]
    lo, hi = FAIR_SHARE_SPAN
    table = (markdown_table(["figure", "value"], [[k, v] for k, v in analysis["figures"].items()])
             + f"\n\nElastic shares, {lo:g}-{hi:g} s (weighted tokens/s; the fair share water-fills what the "
             "elastic tier was served by weight, capped at each tenant's demand):\n\n"
             + share_table(analysis["elastic_shares"])
             + "\n\n" + markdown_table(["claim", "met"], rows))
    answers = history["answers"]
    (out / "table.md").write_text(table + "\n\nFrom the history (history.json):\n\n" + history_markdown(answers)
                                  + "\n", encoding="utf-8")
    summary = {"workload": plan.name, "requests": len(result.records), **analysis, "history": history["wait"],
               "report": history.get("report")}
    write_json(out / "summary.json", summary)
    console.print(table, soft_wrap=True)
    console.rule("Three analyst answers from the history")
    for answer_table in history_tables(answers):
        console.print(answer_table)
    check = history["cross_check"]
    console.print(f"the history counted {check['history_decisions']} admission decisions, {check['history_refused']} "
                  f"refused; the load generator sent {check['load_sent']} requests and got "
                  f"{check['load_refused']} refusals (429)")
    if history.get("report"):
        console.print(f"the history's dashboards over the run, as PNGs and one page: {history['report']}")
    if history.get("endpoint"):
        console.print(f"(asked of {history['endpoint']} while the demo ran; `tokenpools history ask NAME "
                      f"--endpoint URL --token T` does the same on a running `tokenpools up`)")
    return summary
