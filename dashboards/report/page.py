"""The report as one self-contained HTML page: inline CSS, images as ``data:`` URIs, no URL of any kind,
so it opens from a file, a mail attachment or an air-gapped machine the same way.

Each panel is a ``<figure class="panel">`` whose ``data-*`` attributes say what it holds (``data-panel``,
``data-rows``, ``data-status`` ok/nodata/error), laid out on Grafana's 24-column grid at the panel's width.
A few lines of inline script mark each figure ``data-rendered="image"`` once its image decoded,
``"table"`` for a table panel whose rows are on the page (a table is shown as HTML, not as a picture of
one), or ``"broken"``, so a headless browser's DOM tells whether the page a person sees is whole.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from dashboards.report.model import PanelResult, Report, Section, Status
from dashboards.report.units import cell, time_text

HTML_TABLE_ROWS = 500

CSS = """
:root { --ink: #202226; --muted: #6e7079; --line: #e4e5e9; --panel: #ffffff; --bg: #f4f5f8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); }
header.report { padding: 18px 28px 12px; background: #181b1f; color: #f0f0f2; }
header.report h1 { margin: 0 0 4px; font-size: 22px; }
header.report p { margin: 2px 0; color: #c7c8cd; }
header.report nav a { color: #8ab8ff; margin-right: 16px; text-decoration: none; }
main { padding: 8px 28px 40px; }
section.dashboard { margin-top: 22px; }
section.dashboard > h2 { margin: 0 0 2px; font-size: 19px; }
p.description { margin: 0 0 4px; color: var(--muted); }
p.note { margin: 4px 0 8px; padding: 6px 10px; background: #fff8e1; border-left: 3px solid #f2cc0c; }
h3.row { margin: 16px 0 8px; font-size: 15px; color: var(--muted); border-bottom: 1px solid var(--line); }
div.grid { display: grid; grid-template-columns: repeat(24, minmax(0, 1fr)); gap: 10px; }
figure.panel { margin: 0; padding: 10px 12px; background: var(--panel); border: 1px solid var(--line);
               border-radius: 4px; min-width: 0; }
figure.panel figcaption h4 { margin: 0; font-size: 14px; }
figure.panel figcaption p.answers { margin: 2px 0 6px; color: var(--muted); font-size: 12.5px; }
figure.panel img { display: block; width: 100%; height: auto; }
figure.panel[data-status="nodata"] { border-style: dashed; }
figure.panel[data-status="error"] { border-color: #c4162a; }
p.status { margin: 4px 0 0; font-size: 12.5px; color: var(--muted); }
p.status.error { color: #c4162a; }
div.table { max-height: 420px; overflow: auto; margin-top: 8px; border: 1px solid var(--line); }
table { border-collapse: collapse; width: 100%; font-size: 12px; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { position: sticky; top: 0; background: #f4f5f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
details { margin-top: 6px; font-size: 12px; }
details pre { white-space: pre-wrap; background: #f7f7f9; padding: 6px; margin: 4px 0 0; }
"""

# Marks each figure once its image has decoded: what a test (and a person's browser) can check.
SCRIPT = """
(function () {
  function mark() {
    var figures = document.querySelectorAll('figure.panel');
    var loaded = 0;
    figures.forEach(function (f) {
      var img = f.querySelector('img');
      var rows = f.querySelectorAll('table tbody tr').length;
      var how = img ? (img.complete && img.naturalWidth > 0 ? 'image' : 'broken') : (rows > 0 ? 'table' : 'broken');
      f.setAttribute('data-rendered', how);
      f.setAttribute('data-table-rows', String(rows));
      if (how !== 'broken') { loaded += 1; }
    });
    document.body.setAttribute('data-panels-rendered', String(loaded));
    document.body.setAttribute('data-height', String(document.documentElement.scrollHeight));
    document.body.setAttribute('data-checked', 'true');
  }
  if (document.readyState === 'complete') { mark(); } else { window.addEventListener('load', mark); }
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(result: PanelResult) -> str:
    rows = result.rows[:HTML_TABLE_ROWS]
    numeric = [all(isinstance(r[i], int | float) or r[i] is None for r in rows) for i in range(len(result.columns))]
    head = "".join(f"<th>{_e(c)}</th>" for c in result.columns)
    td = ['<td class="num">' if n else "<td>" for n in numeric]
    units = [result.panel.unit_of(c) for c in result.columns]
    body = "".join("<tr>" + "".join(f"{td[i]}{_e(cell(v, units[i]))}</td>" for i, v in enumerate(row))
                   + "</tr>" for row in rows)
    more = (f'<p class="status">first {len(rows)} of {len(result.rows)} rows (report.json has the SQL to get '
            "them all)</p>") if len(result.rows) > len(rows) else ""
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{more}'


def _status(result: PanelResult) -> str:
    n = len(result.rows)
    if result.status is Status.ERROR:
        return f'<p class="status error">{_e(result.error)}</p>'
    if result.status is Status.NO_DATA:
        return '<p class="status nodata">no data in this range</p>'
    return f'<p class="status">{n:,} row{"" if n == 1 else "s"}</p>'


def _figure(section: Section, result: PanelResult) -> str:
    panel = result.panel
    width = min(max(panel.width, 1), 24)
    attrs = {"data-dashboard": section.key, "data-uid": section.dashboard.uid, "data-panel": result.slug,
             "data-title": panel.title, "data-viz": panel.viz.value, "data-unit": panel.unit,
             "data-rows": str(len(result.rows)), "data-status": result.status.value}
    attr_text = " ".join(f'{k}="{_e(v)}"' for k, v in attrs.items())
    sql = "\n\n".join(result.sql)
    table = panel.viz.value == "table" and bool(result.rows)  # its PNG stays in png/ for slides and mail
    parts = [
        f'<figure class="panel" id="{_e(section.key)}--{_e(result.slug)}" style="grid-column: span {width}" '
        f"{attr_text}>",
        f'<figcaption><h4>{_e(panel.title)}</h4><p class="answers">{_e(panel.answers)}</p></figcaption>',
        _table(result) if table else f'<img alt="{_e(panel.title)}" src="{data_uri(result.png)}">' if result.png
        else "",
        _status(result),
        f"<details><summary>SQL as run</summary><pre>{_e(sql)}</pre></details>" if sql else "",
        "</figure>",
    ]
    return "".join(parts)


def _section(section: Section) -> str:
    dashboard = section.dashboard
    parts = [f'<section class="dashboard" id="{_e(section.key)}" data-dashboard="{_e(section.key)}" '
             f'data-uid="{_e(dashboard.uid)}" data-panels="{len(section.panels)}">',
             f"<h2>{_e(section.heading)}</h2>", f'<p class="description">{_e(dashboard.description)}</p>']
    if section.note:
        parts.append(f'<p class="note">{_e(section.note)}</p>')
    results = iter(section.panels)
    for row in dashboard.rows:
        if not row.panels:
            continue
        parts.append(f'<h3 class="row">{_e(row.title)}</h3><div class="grid">')
        parts += [_figure(section, next(results)) for _ in row.panels]
        parts.append("</div>")
    if not dashboard.panels:
        parts.append('<p class="status">this dashboard has no panels yet</p>')
    parts.append("</section>")
    return "".join(parts)


def render_page(report: Report, notes: Sequence[str] = ()) -> str:
    """The whole page as text (UTF-8)."""
    tr = report.time_range
    nav = "".join(f'<a href="#{_e(s.key)}">{_e(s.heading)}</a>' for s in report.sections)
    counts = {status: sum(1 for p in report.panels if p.status is status) for status in Status}
    summary = (f"{len(report.panels)} panels: {counts[Status.OK]} with data, {counts[Status.NO_DATA]} without, "
               f"{counts[Status.ERROR]} failed")
    extra = "".join(f"<p>{_e(n)}</p>" for n in (*report.notes, *notes))
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(report.title)}</title><style>{CSS}</style></head>",
        f'<body data-from="{_e(tr.start.isoformat())}" data-to="{_e(tr.end.isoformat())}" '
        f'data-interval="{report.interval_s}" data-panels="{len(report.panels)}">',
        f'<header class="report"><h1>{_e(report.title)}</h1>',
        f'<p class="range">From <time datetime="{_e(tr.start.isoformat())}">{_e(time_text(tr.start))}</time> '
        f'to <time datetime="{_e(tr.end.isoformat())}">{_e(time_text(tr.end))}</time> UTC; interval '
        f"{report.interval_s} s ($__interval for this range: every bucketed panel uses it)</p>",
        f'<p class="summary">{_e(summary)}. The same SQL as the Grafana dashboards, macros expanded as the '
        "ClickHouse plugin does.</p>",
        extra, f"<nav>{nav}</nav></header><main>",
        "".join(_section(s) for s in report.sections),
        f"</main><script>{SCRIPT}</script></body></html>\n",
    ])
