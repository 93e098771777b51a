"""What a dashboard is, independent of Grafana: the one description the JSON generator, the tests and the
static report all read, so that the panels on screen, the queries tested and the report cannot drift apart.

A ClickHouse panel's query is SQL written for Grafana's ClickHouse plugin (``grafana-clickhouse-datasource``):
its macros (``$__timeFilter(col)``, ``$__timeInterval(col)``, ``$__interval_s``, ``$__fromTime``,
``$__toTime``) and dashboard variables (``${pool:sqlstring}``) are left in it, and ``dashboards.macros``
expands them the way the plugin and Grafana do. ``columns`` is what the query must return, in order: the
tests hold the SQL to it and the report reads rows by it.

Conventions a panel's columns follow, so that Grafana and the report draw them the same way:
- ``timeseries``: the first column is the time bucket (``t``), then string columns that name a series
  (long form: Grafana's SQL data frames and the report both pivot them), then numeric columns;
- ``barchart``: one string column (the category), then numeric columns;
- ``stat``: numeric columns only, one row;
- ``table``: any columns; rows as returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Source(StrEnum):
    CLICKHOUSE = "clickhouse"
    PROMETHEUS = "prometheus"


class Viz(StrEnum):
    TIMESERIES = "timeseries"
    BARCHART = "barchart"
    STAT = "stat"
    TABLE = "table"


@dataclass(frozen=True, slots=True)
class Target:
    """One query of a panel: SQL (ClickHouse) or PromQL (Prometheus). ``legend`` is PromQL's legend format."""

    expr: str
    ref: str = "A"
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    answers: str  # the question the panel answers: the panel's description in Grafana, and the docs
    viz: Viz
    targets: tuple[Target, ...]
    unit: str = "short"  # a Grafana unit id: short, percentunit, s, reqps, bytes, ...
    columns: tuple[str, ...] = ()  # ClickHouse panels: the columns the query returns, in order
    width: int = 12  # of Grafana's 24 columns
    height: int = 8
    stack: bool = False
    # Per-column units where one panel unit does not fit every column (a table of tokens, charges and
    # shares): (column, Grafana unit id); Grafana gets a field override by name, the report formats alike.
    column_units: tuple[tuple[str, str], ...] = ()

    def unit_of(self, column: str) -> str:
        return dict(self.column_units).get(column, self.unit)


@dataclass(frozen=True, slots=True)
class Variable:
    """A dashboard variable filled by a query on the dashboard's own data source (single value)."""

    name: str
    label: str
    query: str  # SQL (ClickHouse) returning one column, or a PromQL ``label_values(...)`` query
    include_all: bool = False  # Prometheus dashboards: "All" matches every value (regex ``.*``)


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    source: Source
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = ("tokenpools",)
    time_from: str = "now-6h"
    refresh: str = ""  # live (Prometheus) dashboards refresh on their own
    links: tuple[str, ...] = field(default=())  # uids of related dashboards, linked from the top bar

    @property
    def panels(self) -> tuple[Panel, ...]:
        return tuple(p for row in self.rows for p in row.panels)


# The data source template variables every dashboard declares: a datasource-type variable per plugin, so an
# import picks the data source and no uid is written into the JSON.
DATASOURCE_VARIABLE = {Source.CLICKHOUSE: "ds_clickhouse", Source.PROMETHEUS: "ds_prometheus"}
PLUGIN_ID = {Source.CLICKHOUSE: "grafana-clickhouse-datasource", Source.PROMETHEUS: "prometheus"}
