"""The report's files: ``index.html`` (self-contained), ``png/<section>/<panel>.png`` and ``report.json``
(every panel's row count, status and SQL as run, so a number on the page can be traced to its query)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dashboards.report.model import Report
from dashboards.report.page import render_page


def summary(report: Report) -> dict[str, Any]:
    """What report.json holds; paths relative to the report's folder."""
    return {
        "title": report.title,
        "from": report.time_range.start.isoformat(),
        "to": report.time_range.end.isoformat(),
        "interval_s": report.interval_s,
        "panels": len(report.panels),
        "errors": list(report.errors),
        "sections": [{
            "key": s.key, "uid": s.dashboard.uid, "title": s.heading, "variables": dict(s.variables),
            "note": s.note,
            "panels": [{
                "title": p.panel.title, "slug": p.slug, "viz": p.panel.viz.value, "unit": p.panel.unit,
                "columns": list(p.columns), "rows": len(p.rows), "status": p.status.value, "error": p.error,
                "png": f"png/{s.key}/{p.slug}.png", "sql": list(p.sql),
            } for p in s.panels],
        } for s in report.sections],
    }


def write_report(report: Report, out: Path) -> Path:
    """Write the report into ``out`` (created); the path of index.html."""
    out.mkdir(parents=True, exist_ok=True)
    for section in report.sections:
        folder = out / "png" / section.key
        folder.mkdir(parents=True, exist_ok=True)
        for result in section.panels:
            (folder / f"{result.slug}.png").write_bytes(result.png)
    (out / "report.json").write_text(json.dumps(summary(report), indent=2) + "\n", encoding="utf-8")
    index = out / "index.html"
    index.write_text(render_page(report), encoding="utf-8")
    return index
