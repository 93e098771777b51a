"""``tokenpools report``: the ClickHouse dashboards' panels rendered from the same SQL to PNGs and one
self-contained HTML page, for a time range, without Grafana.

The caller hands in ``RunSql`` (the history store in-process, or a history endpoint over HTTP); this
package runs no store of its own and does no I/O but writing the report's files.
"""

from __future__ import annotations

from dashboards.report.model import PanelResult, Report, ReportError, RunSql, Section, Status, slugify
from dashboards.report.page import render_page
from dashboards.report.render import render_panel
from dashboards.report.runner import MAX_DEFAULT_ENTITLEMENTS, Progress, ProgressEvent, run_panel, run_report
from dashboards.report.write import summary, write_report

__all__ = [
    "MAX_DEFAULT_ENTITLEMENTS", "PanelResult", "Progress", "ProgressEvent", "Report", "ReportError", "RunSql",
    "Section", "Status", "render_page", "render_panel", "run_panel", "run_report", "slugify", "summary",
    "write_report",
]
