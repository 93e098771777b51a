"""Grafana dashboard JSON from a ``dashboards.spec.Dashboard``, with grafana-foundation-sdk's typed builders.

No data source uid is written: every dashboard declares a datasource variable (``ds_clickhouse`` or
``ds_prometheus``, ``spec.DATASOURCE_VARIABLE``) and every panel, target and query variable points at
``${ds_...}``, so an import (UI or provisioning) picks the data source and the JSON stays the same
everywhere.

The SDK has builders for Prometheus queries but none for the ClickHouse plugin, so ``ClickHouseQuery`` /
``ClickHouseDataquery`` below are its query model (plugin 4.x, SQL editor) in the SDK's own shape: a
``cogvariants.Dataquery`` with ``to_json``/``from_json`` and a ``Builder``, registered as the dataquery
variant of ``grafana-clickhouse-datasource`` so that ``Dashboard.from_json`` decodes it (and drops
fields it does not know, which is what ``dashboards.validate`` relies on).
"""

from __future__ import annotations

import enum
import json
import typing
from collections.abc import Mapping

from grafana_foundation_sdk.builders import barchart, common, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import plugins as cogplugins
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models

from dashboards.spec import DATASOURCE_VARIABLE, PLUGIN_ID, Dashboard, Panel, Source, Target, Variable, Viz

GRID_COLUMNS = 24
ROW_HEIGHT = 1
# The ClickHouse plugin major version the query model below follows (written into each target, as the
# plugin's own editor does, so it can migrate the query when a later major changes the model).
CLICKHOUSE_PLUGIN_VERSION = "4.0.0"
ALL_VALUE = ".*"  # spec.Variable.include_all: "All" is a regex matching every value (label matchers use =~)


class EditorType(enum.StrEnum):
    """The plugin's ``EditorType`` (src/types/sql.ts): raw SQL or its query builder."""

    SQL = "sql"
    BUILDER = "builder"


class Format(enum.IntEnum):
    """The plugin's ``format``: Grafana's sqlutil FormatQueryOption, which its backend (sqlds) reads.

    0 asks for a time series (long rows are pivoted to one series per label value: the first column the
    time, string columns the series names), 1 a table as returned; 2 and 3 are logs and traces. The
    plugin's editor stores the same numbers; the table value 1 is also what the plugin's own bundled
    dashboards carry. Written as numbers because that is what the backend unmarshals.
    """

    TIME_SERIES = 0
    TABLE = 1
    LOGS = 2
    TRACE = 3


class QueryType(enum.StrEnum):
    """The plugin's ``QueryType`` (4.x, src/types/sql.ts): which editor view and default panel the query
    opens with; the backend goes by ``format``."""

    TABLE = "table"
    LOGS = "logs"
    TIME_SERIES = "timeSeries"
    TRACES = "traces"


class ClickHouseQuery(cogvariants.Dataquery):
    """One target of a ClickHouse panel (or a query variable), in the plugin's JSON field names."""

    ref_id: str
    datasource: models.DataSourceRef | None
    editor_type: EditorType
    raw_sql: str
    format_val: Format
    query_type: QueryType
    plugin_version: str | None
    hide: bool | None

    def __init__(self, ref_id: str = "", datasource: models.DataSourceRef | None = None,
                 editor_type: EditorType = EditorType.SQL, raw_sql: str = "", format_val: Format = Format.TABLE,
                 query_type: QueryType = QueryType.TABLE, plugin_version: str | None = None,
                 hide: bool | None = None) -> None:
        self.ref_id = ref_id
        self.datasource = datasource
        self.editor_type = editor_type
        self.raw_sql = raw_sql
        self.format_val = format_val
        self.query_type = query_type
        self.plugin_version = plugin_version
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {"refId": self.ref_id, "editorType": self.editor_type, "rawSql": self.raw_sql,
                                      "format": self.format_val, "queryType": self.query_type}
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.plugin_version is not None:
            payload["pluginVersion"] = self.plugin_version
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> typing.Self:
        args: dict[str, typing.Any] = {}
        for key, arg in (("refId", "ref_id"), ("editorType", "editor_type"), ("rawSql", "raw_sql"),
                         ("format", "format_val"), ("queryType", "query_type"), ("pluginVersion", "plugin_version"),
                         ("hide", "hide")):
            if key in data:
                args[arg] = data[key]
        if "datasource" in data:
            args["datasource"] = models.DataSourceRef.from_json(data["datasource"])
        return cls(**args)


class ClickHouseDataquery(cogbuilder.Builder[ClickHouseQuery]):
    """Builder of a ClickHouse target, shaped like the SDK's ``prometheus.Dataquery``."""

    _internal: ClickHouseQuery

    def __init__(self) -> None:
        self._internal = ClickHouseQuery()

    def build(self) -> ClickHouseQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> typing.Self:
        self._internal.ref_id = ref_id
        return self

    def datasource(self, datasource: models.DataSourceRef) -> typing.Self:
        self._internal.datasource = datasource
        return self

    def raw_sql(self, sql: str) -> typing.Self:
        self._internal.editor_type = EditorType.SQL
        self._internal.raw_sql = sql
        return self

    def format(self, format_val: Format) -> typing.Self:
        self._internal.format_val = format_val
        return self

    def query_type(self, query_type: QueryType) -> typing.Self:
        self._internal.query_type = query_type
        return self

    def plugin_version(self, plugin_version: str) -> typing.Self:
        self._internal.plugin_version = plugin_version
        return self


def register_plugins() -> None:
    """Let ``Dashboard.from_json`` decode every panel and query type these dashboards use (the SDK
    registers none by itself; an unregistered query type would come back as an opaque bag)."""
    cogplugins.register_default_plugins()
    cogruntime.register_dataquery_variant(cogruntime.DataqueryConfig(
        identifier=PLUGIN_ID[Source.CLICKHOUSE], from_json_hook=ClickHouseQuery.from_json))


def datasource_ref(source: Source) -> models.DataSourceRef:
    return models.DataSourceRef(type_val=PLUGIN_ID[source], uid="${" + DATASOURCE_VARIABLE[source] + "}")


def _target(source: Source, panel: Panel, target: Target) -> cogbuilder.Builder[cogvariants.Dataquery]:
    ref = datasource_ref(source)
    if source is Source.PROMETHEUS:
        query = prometheus.Dataquery().expr(target.expr).ref_id(target.ref).datasource(ref)
        query.legend_format(target.legend or "__auto")
        query.instant() if panel.viz in (Viz.STAT, Viz.TABLE, Viz.BARCHART) else query.range()
        return query
    series = panel.viz is Viz.TIMESERIES
    return (ClickHouseDataquery().ref_id(target.ref).datasource(ref).raw_sql(target.expr)
            .format(Format.TIME_SERIES if series else Format.TABLE)
            .query_type(QueryType.TIME_SERIES if series else QueryType.TABLE)
            .plugin_version(CLICKHOUSE_PLUGIN_VERSION))


PanelBuilder = timeseries.Panel | barchart.Panel | stat.Panel | table.Panel


def _panel(source: Source, panel: Panel, panel_id: int, pos: models.GridPos) -> PanelBuilder:
    # Each panel sets its type's custom field config: the SDK's decoder always gives a panel with a
    # fieldConfig one, so a panel without it would not survive dashboards.validate's round trip.
    builder: PanelBuilder
    if panel.viz is Viz.TIMESERIES:
        builder = timeseries.Panel().fill_opacity(30 if panel.stack else 10)
        if panel.stack:
            builder.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
    elif panel.viz is Viz.BARCHART:
        builder = barchart.Panel().fill_opacity(80)
        if panel.stack:
            builder.stacking(common_models.StackingMode.NORMAL)
    elif panel.viz is Viz.STAT:
        builder = stat.Panel()
    else:
        builder = table.Panel().filterable(True)
    builder.id(panel_id).title(panel.title).description(panel.answers).unit(panel.unit)
    builder.datasource(datasource_ref(source)).grid_pos(pos)
    for column, unit in panel.column_units:
        builder.override_by_name(column, [models.DynamicConfigValue(id_val="unit", value=unit)])
    for target in panel.targets:
        builder.with_target(_target(source, panel, target))
    return builder


def _variable(source: Source, variable: Variable) -> dash.QueryVariable:
    builder = dash.QueryVariable(variable.name).label(variable.label).datasource(datasource_ref(source))
    if source is Source.PROMETHEUS:
        builder.query(variable.query).refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
    else:
        # The plugin's variable editor stores its query as a query model; a string would be migrated to one.
        query = ClickHouseQuery(ref_id="variable", raw_sql=variable.query)
        builder.query(json.loads(json.dumps(query, cls=JSONEncoder)))
        builder.refresh(models.VariableRefresh.ON_DASHBOARD_LOAD)
    builder.sort(models.VariableSort.ALPHABETICAL_ASC).include_all(variable.include_all)
    if variable.include_all:
        builder.all_value(ALL_VALUE)
    return builder


Placed = list[tuple[Panel, models.GridPos]]


def _layout(spec: Dashboard) -> list[tuple[str, int, Placed]]:
    """Rows top to bottom (title, y, panels); in a row, panels left to right, wrapping at 24 columns."""
    rows: list[tuple[str, int, Placed]] = []
    y = 0
    for row in spec.rows:
        placed: Placed = []
        row_y = y
        y += ROW_HEIGHT
        x, line_height = 0, 0
        for panel in row.panels:
            if not 1 <= panel.width <= GRID_COLUMNS:
                raise ValueError(f"{spec.uid}: panel {panel.title!r} is {panel.width} columns wide (1-24)")
            if x + panel.width > GRID_COLUMNS:
                y, x, line_height = y + line_height, 0, 0
            placed.append((panel, models.GridPos(x=x, y=y, w=panel.width, h=panel.height)))
            x, line_height = x + panel.width, max(line_height, panel.height)
        y += line_height
        rows.append((row.title, row_y, placed))
    return rows


def build(spec: Dashboard, titles: Mapping[str, str] | None = None) -> models.Dashboard:
    """The SDK's dashboard model of ``spec``; ``titles`` (uid -> title) names the linked dashboards."""
    source = spec.source
    builder = (dash.Dashboard(spec.title).uid(spec.uid).description(spec.description).tags(list(spec.tags))
               .time(spec.time_from, "now").timezone("browser").tooltip(models.DashboardCursorSync.CROSSHAIR))
    if spec.refresh:
        builder.refresh(spec.refresh)
    builder.with_variable(dash.DatasourceVariable(DATASOURCE_VARIABLE[source])
                          .label("ClickHouse" if source is Source.CLICKHOUSE else "Prometheus")
                          .type(PLUGIN_ID[source]))
    for variable in spec.variables:
        builder.with_variable(_variable(source, variable))
    builder.link(dash.DashboardLink("Token pools").type(models.DashboardLinkType.DASHBOARDS).tags(["tokenpools"])
                 .as_dropdown(True).keep_time(True).include_vars(False).target_blank(False))
    for uid in spec.links:
        builder.link(dash.DashboardLink((titles or {}).get(uid, uid)).type(models.DashboardLinkType.LINK)
                     .url(f"/d/{uid}").keep_time(True).include_vars(False).target_blank(False))
    panel_id = 0
    for title, row_y, placed in _layout(spec):
        panel_id += 1
        # Expanded rows: Grafana keeps a row's panels after it in the dashboard's list, not inside it.
        builder.with_row(dash.Row(title).id(panel_id).collapsed(False)
                         .grid_pos(models.GridPos(x=0, y=row_y, w=GRID_COLUMNS, h=ROW_HEIGHT)))
        for panel, pos in placed:
            panel_id += 1
            builder.with_panel(_panel(source, panel, panel_id, pos))
    return builder.build()


def to_json(spec: Dashboard, titles: Mapping[str, str] | None = None) -> str:
    """The dashboard's JSON as committed: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(build(spec, titles), cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
