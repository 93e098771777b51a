"""Run every ClickHouse panel's SQL for a time range, as Grafana would, and render each to a PNG.

The SQL is the panels' own (``dashboards.spec``), expanded by ``dashboards.macros`` exactly as in the
tests, and run by the caller's ``RunSql``, so this module touches no store. A dashboard with variables
is rendered once per chosen value: the entitlement detail once per entitlement (named by the caller, or
the busiest ones in the range), its pool found from the dashboard's own variable queries where they
tell, else from the events.

A panel whose query fails or returns other columns than it declares does not stop the report: it is
rendered as an error naming the dashboard and panel, and ``Report.errors`` lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dashboards.macros import SAFE_VALUE, MacroError, TimeRange, expand, interval_seconds, sqlstring, variables_used
from dashboards.report.model import PanelResult, Report, ReportError, RunSql, Section, slugify
from dashboards.report.render import render_panel
from dashboards.spec import Dashboard, Panel, Source, Variable

MAX_DEFAULT_ENTITLEMENTS = 4
ENTITLEMENT, POOL = "entitlement", "pool"

# The busiest entitlements of the range: what the entitlement detail shows when nobody names one. Events
# (decisions and finishes) are what every entitlement that did anything has; its pool is the one of its
# latest event, as an entitlement may have moved.
TOP_ENTITLEMENTS_SQL = """\
SELECT entitlement, argMax(pool, ts) AS pool, count() AS events
FROM request_events
WHERE $__timeFilter(ts) AND entitlement != ''
GROUP BY entitlement
ORDER BY events DESC, entitlement
LIMIT {limit}"""

# An entitlement named on the command line whose pool the dashboard's variables cannot tell: any time.
POOL_OF_SQL = """\
SELECT pool, count() AS events
FROM request_events
WHERE entitlement = {entitlement}
GROUP BY pool
ORDER BY max(ts) DESC
LIMIT 1"""


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    done: int
    total: int
    section: str
    result: PanelResult


Progress = Callable[[ProgressEvent], None]


@dataclass(frozen=True, slots=True)
class _Plan:
    dashboard: Dashboard
    key: str
    heading: str
    variables: Mapping[str, str]
    note: str = ""


def _run(run_sql: RunSql, sql: str) -> tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]:
    columns, rows = run_sql(sql)
    return tuple(str(c) for c in columns), tuple(tuple(row) for row in rows)


def _values(run_sql: RunSql, dashboard: Dashboard, variable: Variable, time_range: TimeRange, interval_s: int,
            known: Mapping[str, str]) -> list[str]:
    """The values a variable's query lists (first column), as text."""
    try:
        sql = expand(variable.query, time_range, interval_s, known)
        _, rows = _run(run_sql, sql)
    except MacroError as exc:
        raise ReportError(f"{dashboard.title}: variable ${variable.name}: {exc}") from None
    except Exception as exc:  # the caller's runner: a store or HTTP error, reported by name
        raise ReportError(f"{dashboard.title}: variable ${variable.name}'s query failed: {exc}") from None
    return [str(row[0]) for row in rows if row and row[0] is not None]


def _pool_of(run_sql: RunSql, dashboard: Dashboard, entitlement: str, time_range: TimeRange, interval_s: int
             ) -> str:
    variables = {v.name: v for v in dashboard.variables}
    pool_var, ent_var = variables.get(POOL), variables[ENTITLEMENT]
    if pool_var is not None and POOL in variables_used(ent_var.query):
        for pool in _values(run_sql, dashboard, pool_var, time_range, interval_s, {}):
            if not SAFE_VALUE.fullmatch(pool):
                continue
            if entitlement in _values(run_sql, dashboard, ent_var, time_range, interval_s, {POOL: pool}):
                return pool
    try:
        _, rows = _run(run_sql, POOL_OF_SQL.format(entitlement=sqlstring(entitlement)))
    except Exception as exc:  # the caller's runner
        raise ReportError(f"cannot look up the pool of entitlement {entitlement}: {exc}") from None
    if not rows:
        raise ReportError(f"entitlement {entitlement!r} has no events in the history, so its pool is unknown "
                          "(check the name: `tokenpools history query \"SELECT DISTINCT entitlement FROM "
                          "request_events\"` lists them)", bad_input=True)
    return str(rows[0][0])


def _first_values(run_sql: RunSql, dashboard: Dashboard, time_range: TimeRange, interval_s: int,
                  known: dict[str, str]) -> list[str]:
    """Variables not yet known take the first value their query lists; what was chosen, as notes."""
    notes = []
    for variable in dashboard.variables:
        if variable.name in known:
            continue
        values = _values(run_sql, dashboard, variable, time_range, interval_s, known)
        if not values:
            raise ReportError(f"{dashboard.title}: variable ${variable.name} lists no values in this range")
        known[variable.name] = values[0]
        notes.append(f"{variable.label or variable.name}: {values[0]} (the first of {len(values)} listed)")
    return notes


def _plans(run_sql: RunSql, dashboard: Dashboard, time_range: TimeRange, interval_s: int,
           entitlements: Sequence[str]) -> list[_Plan]:
    names = {v.name for v in dashboard.variables}
    if not names:
        return [_Plan(dashboard, dashboard.uid, dashboard.title, {})]
    if ENTITLEMENT not in names:
        known: dict[str, str] = {}
        notes = _first_values(run_sql, dashboard, time_range, interval_s, known)
        return [_Plan(dashboard, dashboard.uid, dashboard.title, known, "; ".join(notes))]
    chosen: list[tuple[str, str, str]] = []  # (entitlement, pool, why)
    if entitlements:
        for name in entitlements:
            if not SAFE_VALUE.fullmatch(name):
                raise ReportError(f"entitlement {name[:60]!r} is not a name (letters, digits, . _ : @ / -)",
                                  bad_input=True)
            pool = _pool_of(run_sql, dashboard, name, time_range, interval_s)
            chosen.append((name, pool, "named on the command line"))
    else:
        sql = expand(TOP_ENTITLEMENTS_SQL.format(limit=MAX_DEFAULT_ENTITLEMENTS), time_range, interval_s)
        try:
            _, rows = _run(run_sql, sql)
        except Exception as exc:  # the caller's runner
            raise ReportError(f"{dashboard.title}: cannot find the busiest entitlements: {exc}") from None
        total = len(rows)
        for rank, row in enumerate(rows, start=1):
            name, pool, events = str(row[0]), str(row[1]), int(row[2])
            if SAFE_VALUE.fullmatch(name) and SAFE_VALUE.fullmatch(pool):
                chosen.append((name, pool, f"#{rank} of the {total} busiest in this range: {events:,} events "
                                           f"(decisions and finishes)"))
    if not chosen:
        return [_Plan(dashboard, dashboard.uid, dashboard.title, {},
                      "No entitlement has events in this range, so this dashboard shows nothing.")]
    plans = []
    taken: set[str] = set()
    for name, pool, why in chosen:
        known = {ENTITLEMENT: name}
        if POOL in names:
            known[POOL] = pool
        notes = [f"entitlement {name} in pool {pool}: {why}"]
        notes += _first_values(run_sql, dashboard, time_range, interval_s, known)
        plans.append(_Plan(dashboard, slugify(f"{dashboard.uid}-{name}", taken), f"{dashboard.title}: {name}",
                           known, "; ".join(notes)))
    return plans


def run_panel(run_sql: RunSql, dashboard: Dashboard, panel: Panel, slug: str, time_range: TimeRange,
              interval_s: int, variables: Mapping[str, str]) -> PanelResult:
    """The panel's targets run in order; an error names the dashboard and the panel."""
    where = f"{dashboard.title} / panel {panel.title!r}"
    sqls: list[str] = []
    rows: list[tuple[Any, ...]] = []
    columns: tuple[str, ...] = panel.columns
    for target in panel.targets:
        try:
            sql = expand(target.expr, time_range, interval_s, variables)
        except MacroError as exc:
            return PanelResult(panel, slug, tuple(sqls), columns, (), f"{where}: {exc}")
        sqls.append(sql)
        try:
            got, target_rows = _run(run_sql, sql)
        except Exception as exc:  # the caller's runner: one broken panel must not hide the others
            first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
            return PanelResult(panel, slug, tuple(sqls), columns, (), f"{where}: query {target.ref} failed: {first}")
        if panel.columns and got != panel.columns:
            return PanelResult(panel, slug, tuple(sqls), got, (),
                               f"{where}: query {target.ref} returned columns ({', '.join(got)}) but the panel "
                               f"declares ({', '.join(panel.columns)})")
        columns = got
        rows += target_rows
    return PanelResult(panel, slug, tuple(sqls), columns, tuple(rows))


def run_report(run_sql: RunSql, time_range: TimeRange, *, dashboards: Sequence[Dashboard] | None = None,
               interval_s: int | None = None, entitlements: Sequence[str] = (), progress: Progress | None = None,
               title: str = "Token pools: history report") -> Report:
    """Every panel of every ClickHouse dashboard, queried and rendered (PNG bytes in ``PanelResult.png``)."""
    if dashboards is None:
        from dashboards.catalog import CLICKHOUSE

        dashboards = CLICKHOUSE
    interval = interval_s if interval_s is not None else interval_seconds(time_range)
    if interval < 1:
        raise ReportError(f"the interval must be at least 1 s, got {interval}")
    plans: list[_Plan] = []
    for dashboard in dashboards:
        if dashboard.source is not Source.CLICKHOUSE:
            raise ReportError(f"{dashboard.title} is a {dashboard.source} dashboard: the report runs SQL only")
        plans += _plans(run_sql, dashboard, time_range, interval, entitlements)
    total = sum(len(p.dashboard.panels) for p in plans)
    done = 0
    sections = []
    for plan in plans:
        taken: set[str] = set()
        results = []
        for panel in plan.dashboard.panels:
            result = run_panel(run_sql, plan.dashboard, panel, slugify(panel.title, taken), time_range, interval,
                               plan.variables)
            result = replace(result, png=render_panel(result, time_range, interval))
            results.append(result)
            done += 1
            if progress is not None:
                progress(ProgressEvent(done, total, plan.heading, result))
        sections.append(Section(plan.dashboard, plan.key, plan.heading, dict(plan.variables), tuple(results),
                                plan.note))
    return Report(title, time_range, interval, tuple(sections))
