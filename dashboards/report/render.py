"""One PNG per panel with matplotlib's Agg canvas, drawn by the column conventions of ``dashboards.spec``.

- timeseries: the first column is the time; string columns name a series (long form, pivoted to one line
  per distinct name); every numeric column is a line (stacked areas when the panel stacks);
- barchart: the first string column is the category, numeric columns are bars (grouped, or stacked);
- stat: the first row's numbers as large text, each under its column name;
- table: the first rows as an image (the page carries the full table as HTML).

A panel with no rows gets an image that says so; a failed panel an image with the error. No pyplot: a
``Figure`` of its own per panel keeps no global state between panels (or threads), and saving it as PNG
uses the Agg renderer whatever backend the process has chosen.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import textwrap
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import matplotlib.dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import Bbox

from dashboards.macros import TimeRange
from dashboards.report.model import PanelResult, Status
from dashboards.report.units import as_number, cell, format_value, is_numeric
from dashboards.spec import Viz

DPI = 100
FULL_WIDTH_IN = 13.6  # a 24-column panel; narrower panels are their share of it
ROW_HEIGHT_IN = 0.34  # one of Grafana's grid rows (30 px) at the report's scale
TABLE_IMAGE_ROWS = 12
LEGEND_MAX = 16
NO_DATA = "no data in this range"
# Grafana's classic palette, so the series look as they will on the dashboards.
PALETTE = ("#73BF69", "#F2CC0C", "#5794F2", "#FF9830", "#F2495C", "#B877D9", "#37872D", "#C4162A", "#1F60C4",
           "#8F3BB8", "#FADE2A", "#FFB357", "#8AB8FF", "#CA95E5", "#96D98D", "#FF7383")
MUTED, GRID = "#6e7079", "#e4e5e9"


def _figure(result: PanelResult, *, min_height_in: float = 2.6) -> Figure:
    panel = result.panel
    width = max(4.2, FULL_WIDTH_IN * min(max(panel.width, 1), 24) / 24)
    height = max(min_height_in, panel.height * ROW_HEIGHT_IN)
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")


def _style(ax: Axes) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(GRID)
    ax.tick_params(colors=MUTED, labelsize=8)
    ax.grid(True, color=GRID, linewidth=0.7)
    ax.set_axisbelow(True)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: it would carry matplotlib's URL into every image.
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buffer.getvalue()


def _message(result: PanelResult, text: str, colour: str) -> bytes:
    fig = _figure(result)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color=colour, wrap=True,
            transform=ax.transAxes)
    return _png(fig)


def _time(value: Any) -> dt.datetime | None:
    """A time cell: a datetime (store), an ISO string (an endpoint's JSON) or Unix seconds/milliseconds."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
    number = as_number(value)
    if number is None or not math.isfinite(number):
        return None
    return dt.datetime.fromtimestamp(number / 1000 if abs(number) > 1e11 else number, dt.UTC)


def column_kinds(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """``num`` or ``str`` per column, by the values in it (a column of NULLs only is numeric)."""
    kinds = []
    for i in range(len(columns)):
        values = [row[i] for row in rows if i < len(row) and row[i] is not None]
        kinds.append("num" if all(is_numeric(v) for v in values) else "str")
    return kinds


def _label(value: Any) -> str:
    return cell(value, "none") if value is not None else "(none)"


def _unit_axis(axis: Any, unit: str) -> None:
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: format_value(float(x), unit)))


def _legend(ax: Axes, count: int) -> None:
    if count <= 1:
        return
    handles, labels = ax.get_legend_handles_labels()
    extra = len(handles) - LEGEND_MAX
    handles, labels = handles[:LEGEND_MAX], labels[:LEGEND_MAX]
    if extra > 0:
        labels[-1] += f" (+{extra} more)"
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def pivot(columns: Sequence[str], rows: Sequence[Sequence[Any]]
          ) -> tuple[list[dt.datetime], dict[str, list[float]]]:
    """Long form to wide: the sorted times and one value list per series (NaN where a series has no row).

    A series is the values of the string columns, and the numeric column's name when there are several.
    """
    kinds = column_kinds(columns, rows)
    labels = [i for i in range(1, len(columns)) if kinds[i] == "str"]
    numbers = [i for i in range(1, len(columns)) if kinds[i] == "num"]
    points: dict[str, dict[dt.datetime, float]] = {}
    order: list[str] = []
    for row in rows:
        t = _time(row[0])
        if t is None:
            continue
        # An empty label (a refusal dimension on an admitted row) names nothing: left out of the series name.
        key = " / ".join(text for i in labels if (text := _label(row[i])))
        for i in numbers:
            name = key if len(numbers) == 1 and key else " ".join(p for p in (key, columns[i]) if p)
            if name not in points:
                points[name] = {}
                order.append(name)
            value = as_number(row[i])
            points[name][t] = value if value is not None else math.nan
    times = sorted({t for series in points.values() for t in series})
    return times, {name: [points[name].get(t, math.nan) for t in times] for name in order}


def _steps(times: Sequence[float], interval_s: int) -> tuple[list[float], list[int]]:
    """Edges of stacked buckets and, per segment, the index of its bucket (-1: a gap with no row).

    A bucket is as wide as the closest two buckets (the query's bucket width), or the interval when
    there is one; where buckets are missing the stack drops to zero instead of bridging the gap."""
    gaps = [b - a for a, b in pairwise(times) if b > a]
    width = min(gaps) if gaps else interval_s / 86400
    edges: list[float] = []
    index: list[int] = []
    for i, t in enumerate(times):
        if edges and t > edges[-1]:
            index.append(-1)  # the gap up to this bucket
        elif edges:
            edges.pop()
        edges.append(t)
        end = min(t + width, times[i + 1]) if i + 1 < len(times) else t + width
        edges.append(end)
        index.append(i)
    return edges, index


def _timeseries(result: PanelResult, time_range: TimeRange, interval_s: int) -> bytes:
    times, series = pivot(result.columns, result.rows)
    if not times:
        return _message(result, f"cannot draw: no row has a time in column {result.columns[0]!r}", "#C4162A")
    fig = _figure(result)
    ax = fig.add_subplot()
    _style(ax)
    xs = mdates.date2num(times)  # type: ignore[no-untyped-call]  # matplotlib's dates are untyped
    names = list(series)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    if result.panel.stack and names:
        # Stacked buckets as steps: an area would interpolate across buckets that have no row, drawing
        # slopes where nothing happened. One filled step outline per series, not a bar per bucket: fast.
        edges, index = _steps([float(x) for x in xs], interval_s)
        base = [0.0] * len(index)
        for name, colour in zip(names, colours, strict=True):
            values = series[name]
            top = [b + (0.0 if k < 0 or math.isnan(values[k]) else values[k]) for b, k in zip(base, index, strict=True)]
            ax.stairs(top, edges, baseline=base, fill=True, color=colour, label=name, alpha=0.85)
            base = top
    else:
        marker = "o" if len(times) <= 40 else None
        for name, colour in zip(names, colours, strict=True):
            ax.plot(xs, series[name], label=name, color=colour, linewidth=1.4, marker=marker, markersize=3)
    ax.set_xlim(float(mdates.date2num(time_range.start)),  # type: ignore[no-untyped-call]
                float(mdates.date2num(time_range.end)))  # type: ignore[no-untyped-call]
    locator = mdates.AutoDateLocator(tz=dt.UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.UTC))  # type: ignore[no-untyped-call]
    finite = [v for values in series.values() for v in values if not math.isnan(v)]
    if finite and min(finite) >= 0:
        ax.set_ylim(bottom=0)
    _unit_axis(ax.yaxis, result.panel.unit)
    # One series named by a string column still needs its name shown (which dimension, which pool).
    named = any(k == "str" for k in column_kinds(result.columns, result.rows)[1:])
    _legend(ax, len(names) + (1 if named else 0))
    return _png(fig)


def _barchart(result: PanelResult) -> bytes:
    columns, rows = result.columns, result.rows
    kinds = column_kinds(columns, rows)
    category = next((i for i, k in enumerate(kinds) if k == "str"), 0)
    numbers = [i for i, k in enumerate(kinds) if k == "num" and i != category]
    categories = [_label(row[category]) for row in rows]
    fig = _figure(result)
    ax = fig.add_subplot()
    _style(ax)
    horizontal = len(categories) > 8 or max((len(c) for c in categories), default=0) > 14
    n = max(len(numbers), 1)
    width = 0.8 if result.panel.stack else 0.8 / n
    base = [0.0] * len(rows)
    positions = list(range(len(rows)))
    for k, i in enumerate(numbers):
        values = [as_number(row[i]) or 0.0 for row in rows]
        offsets = positions if result.panel.stack else [p - 0.4 + width * (k + 0.5) for p in positions]
        colour = PALETTE[k % len(PALETTE)]
        if horizontal:
            ax.barh(offsets, values, height=width, left=base if result.panel.stack else None, color=colour,
                    label=columns[i])
        else:
            ax.bar(offsets, values, width=width, bottom=base if result.panel.stack else None, color=colour,
                   label=columns[i])
        if result.panel.stack:
            base = [b + v for b, v in zip(base, values, strict=True)]
    if horizontal:
        ax.set_yticks(positions, categories, fontsize=8)
        ax.invert_yaxis()  # first row on top, as the query ordered them
        _unit_axis(ax.xaxis, result.panel.unit)
        ax.grid(False, axis="y")
    else:
        ax.set_xticks(positions, categories, fontsize=8)
        _unit_axis(ax.yaxis, result.panel.unit)
        ax.grid(False, axis="x")
    _legend(ax, len(numbers))
    return _png(fig)


def _stat(result: PanelResult) -> bytes:
    row = result.rows[0]
    shown = [(name, as_number(row[i])) for i, name in enumerate(result.columns) if i < len(row)
             and (is_numeric(row[i]) or row[i] is None)]
    fig = _figure(result, min_height_in=2.0)
    ax = fig.add_subplot()
    ax.set_axis_off()
    n = max(len(shown), 1)
    size = 30 if n <= 2 else (24 if n <= 4 else 16)
    for k, (name, value) in enumerate(shown):
        x = (k + 0.5) / n
        text = "-" if value is None else format_value(value, result.panel.unit)
        ax.text(x, 0.58, text, ha="center", va="center", fontsize=size, fontweight="bold",
                color=PALETTE[k % len(PALETTE)] if n > 1 else "#37872D", transform=ax.transAxes)
        ax.text(x, 0.12, name.replace("_", " "), ha="center", va="center", fontsize=9, color=MUTED,
                transform=ax.transAxes)
    return _png(fig)


def _table(result: PanelResult) -> bytes:
    shown = result.rows[:TABLE_IMAGE_ROWS]
    units = [result.panel.unit_of(c) for c in result.columns]
    text = [[textwrap.shorten(cell(v, units[i]), 28, placeholder="…") for i, v in enumerate(row)] for row in shown]
    more = len(result.rows) > len(shown)
    panel = result.panel
    # As tall as its rows, not as the panel: the page shows the whole table under it anyway.
    footer_in = 0.3 if more else 0.05  # room under the table for "first N of M rows"
    height_in = 0.25 * (len(shown) + 1) + footer_in + 0.05
    fig = Figure(figsize=(max(4.2, FULL_WIDTH_IN * min(max(panel.width, 1), 24) / 24), height_in), dpi=DPI,
                 facecolor="white")
    ax = fig.add_axes((0.005, footer_in / height_in, 0.99, 1 - (footer_in + 0.03) / height_in))
    ax.set_axis_off()
    table = ax.table(cellText=text, colLabels=list(result.columns), loc="upper center", cellLoc="left",
                     bbox=Bbox.from_bounds(0.0, 0.0, 1.0, 1.0))
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(result.columns))))
    for (r, _c), box in table.get_celld().items():
        box.set_edgecolor(GRID)
        if r == 0:
            box.set_facecolor("#f4f5f8")
            box.get_text().set_fontweight("bold")
    if more:
        fig.text(0.005, 0.04 / height_in, f"first {len(shown)} of {len(result.rows)} rows", fontsize=8, color=MUTED,
                 va="bottom")
    return _png(fig)


def render_panel(result: PanelResult, time_range: TimeRange, interval_s: int) -> bytes:
    """The panel's PNG: its chart, or an image saying it has no data or why it failed."""
    if result.status is Status.ERROR:
        return _message(result, "query failed:\n" + "\n".join(textwrap.wrap(result.error, 90)[:6]), "#C4162A")
    if result.status is Status.NO_DATA:
        return _message(result, NO_DATA, MUTED)
    viz = result.panel.viz
    if viz is Viz.TIMESERIES:
        return _timeseries(result, time_range, interval_s)
    if viz is Viz.BARCHART:
        return _barchart(result)
    if viz is Viz.STAT:
        return _stat(result)
    return _table(result)
