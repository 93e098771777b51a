"""`tokenpools report`: the ClickHouse dashboards' panels for a time range, as PNGs and one HTML page.

The panels' own SQL (``dashboards.catalog.CLICKHOUSE``), macros expanded as Grafana's ClickHouse plugin
does, runs on the history: the store in-process (``--data-dir`` / ``--clickhouse-url`` / ``--database``,
as ``tokenpools history``) or a running history process's ``POST /query`` (``--endpoint`` and ``--token``),
either way under ClickHouse's ``readonly`` and the endpoint's checks (``streams.history.server.adhoc``).
``dashboards.report`` draws; this module only wires the store or the endpoint to it.

Writes ``OUT/index.html`` (self-contained: no URL in it), ``OUT/png/<dashboard>/<panel>.png`` and
``OUT/report.json``. Exit codes as ``tokenpools history``: 0 done; 1 a query failed (the report is still
written, the failed panels marked); 2 bad options, an unknown entitlement, or a store that cannot be opened.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tokenpools.cli.history import (
    EXIT_FAILED,
    STORE_FIELDS,
    ClickHouseUrl,
    Database,
    DataDir,
    Endpoint,
    Token,
    _fail,
    _open,
    _settings,
    endpoint_token,
)

if TYPE_CHECKING:
    from dashboards.report import ProgressEvent, RunSql
    from streams.history.settings import HistorySettings
    from streams.history.store import HistoryStore

_RELATIVE = re.compile(r"^(?:now)?\s*(?:-\s*(\d+)\s*([smhdw]))?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_instant(option: str, text: str, now: dt.datetime) -> dt.datetime:
    """ISO 8601 (no offset: UTC), Unix seconds, ``now``, or ``-1h`` / ``now-30m`` (s, m, h, d, w)."""
    value = text.strip()
    match = _RELATIVE.fullmatch(value) if value else None
    if match is not None:
        amount, unit = match.groups()
        return now - dt.timedelta(seconds=int(amount) * _UNIT_S[unit]) if amount else now
    from streams.history.server import Problem, parse_time

    try:
        return parse_time(option, value)
    except Problem:
        raise typer.BadParameter(f"{option} must be ISO 8601 (2024-05-01T00:00:00Z), Unix seconds, 'now' or "
                                 f"relative such as -6h, got {value[:40]!r}") from None


def store_runner(store: HistoryStore) -> RunSql:
    """SQL through the store's read-only reader, with the checks the history endpoint applies to /query."""
    from streams.history.server import adhoc

    def run(sql: str) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        from streams.history.server import Problem

        try:
            result = adhoc(store, sql)
        except Problem as exc:
            raise RuntimeError(exc.message) from None
        return result.columns, result.rows

    return run


def endpoint_runner(settings: HistorySettings, endpoint: str, token: str | None) -> tuple[RunSql, Any]:
    """SQL through a history process's ``POST /query``; the runner and the HTTP client to close."""
    import httpx

    token = endpoint_token(settings, endpoint, token)
    client = httpx.Client(base_url=endpoint.rstrip("/"), headers={"Authorization": f"Bearer {token}"},
                          timeout=settings.store.query_timeout_s + 10)

    def run(sql: str) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        try:
            r = client.post("/query", json={"sql": sql})
        except httpx.HTTPError as exc:
            raise RuntimeError(f"cannot reach the history endpoint {endpoint}: {exc}") from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code != 200 or not isinstance(data, dict):
            message = data.get("error") if isinstance(data, dict) else None
            raise RuntimeError(f"{message or r.text[:300] or r.reason_phrase} (HTTP {r.status_code} from {endpoint})")
        return data["columns"], data["rows"]

    return run, client


def report(
    ctx: typer.Context,
    start: str = typer.Option(..., "--from", help="First instant: ISO 8601 (no offset means UTC), Unix seconds, "
                                                  "'now', or relative such as -6h, now-2d."),
    end: str = typer.Option("now", "--to", help="Last instant, as --from (default now)."),
    out: Path = typer.Option(..., "--out", help="Folder for index.html, png/ and report.json (created)."),
    interval: int | None = typer.Option(
        None, "--interval", min=1, max=366 * 86400,
        help="Bucket width in seconds ($__interval_s); default: what Grafana would pick for the range."),
    entitlement: Annotated[list[str] | None, typer.Option(
        "--entitlement", help="Render the entitlement detail for this entitlement (repeatable); default: the "
                              "busiest entitlements of the range, at most 4.")] = None,
    endpoint: Endpoint = None,
    token: Token = None,
    data_dir: DataDir = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """Render the ClickHouse dashboards' panels over a time range to PNGs and one self-contained HTML page."""
    now = dt.datetime.now(dt.UTC)
    try:
        first, last = parse_instant("--from", start, now), parse_instant("--to", end, now)
    except typer.BadParameter as exc:
        _fail(str(exc))
    if not first < last:
        _fail(f"--from ({first.isoformat()}) must be before --to ({last.isoformat()})")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a folder")
    settings = _settings(ctx, STORE_FIELDS)
    if endpoint is not None:
        run, client = endpoint_runner(settings, endpoint, token)
        try:
            _report(run, first, last, out, interval, entitlement or [])
        finally:
            client.close()
        return
    store = _open(settings, must_exist=True)
    try:
        _report(store_runner(store), first, last, out, interval, entitlement or [])
    finally:
        store.close()


def _report(run: RunSql, first: dt.datetime, last: dt.datetime, out: Path, interval: int | None,
            entitlements: Sequence[str]) -> None:
    from rich.console import Console
    from rich.markup import escape

    from dashboards.macros import TimeRange, interval_seconds
    from dashboards.report import ReportError, run_report, write_report

    console = Console(stderr=True, highlight=False)
    time_range = TimeRange(first, last)
    interval_s = interval if interval is not None else interval_seconds(time_range)
    console.print(f"report {first.isoformat()} .. {last.isoformat()}, interval {interval_s} s")

    def progress(event: ProgressEvent) -> None:
        r = event.result
        what = {"ok": f"{len(r.rows):,} rows", "nodata": "[yellow]no data[/yellow]",
                "error": f"[red]failed[/red]: {escape(r.error)}"}[r.status.value]
        console.print(f"{event.done:>2}/{event.total} {escape(event.section)} / {escape(r.panel.title)}: {what}",
                      soft_wrap=True)

    try:
        made = run_report(run, time_range, interval_s=interval_s, entitlements=entitlements, progress=progress)
    except ReportError as exc:
        _fail(str(exc), 2 if exc.bad_input else EXIT_FAILED)
    index = write_report(made, out)
    errors = made.errors
    typer.echo(f"report: {index} ({len(made.panels)} panels, {len(errors)} failed)")
    if errors:
        for error in errors:
            typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_FAILED)
