"""Reconciliation: the raw rows against the rollups, and against the pipeline's own window totals.

Two checks over a time range, per entitlement:

- **raw vs rollups** (per minute and per hour): events, prompt and output tokens. Rollups hold whole
  minutes and hours, so the range is widened to whole hours for both sides; the figures must be equal,
  since the rollups are fed by views from the same inserts.
- **raw vs pipeline**: decisions, refusals, finishes, prompt and output tokens, over stage 1's closed
  tumbling windows that lie inside the range (``pipeline_windows``, one row per window: the latest
  summary of it). The raw side counts the events whose time falls in those same windows. Stage 1
  leaves out events it saw too late for its windows (its ``late`` total); a difference there is real
  and the report says how many late events the pipeline counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.history.store import HistoryStore

ROLLUP_MEASURES = ("events", "prompt_tokens", "output_tokens")
PIPELINE_MEASURES = ("decisions", "refused", "finished", "prompt_tokens", "output_tokens")

_RAW_VS_ROLLUP = """
SELECT entitlement, count() AS events, sum(prompt_tokens) AS prompt_tokens, sum(output_tokens) AS output_tokens
FROM request_events WHERE ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')}
GROUP BY entitlement
"""
_ROLLUP = """
SELECT entitlement, sum(events), sum(prompt_tokens), sum(output_tokens)
FROM {table:Identifier}
WHERE {column:Identifier} >= {start:DateTime64(3, 'UTC')} AND {column:Identifier} < {end:DateTime64(3, 'UTC')}
GROUP BY entitlement
"""
_PIPELINE = """
SELECT entitlement, requests_partition, window_start, window_end,
       argMax(decisions, summary_ts), argMax(refused, summary_ts), argMax(finished, summary_ts),
       argMax(prompt_tokens, summary_ts), argMax(output_tokens, summary_ts), max(total_late)
FROM pipeline_windows
WHERE window_start >= {start:DateTime64(3, 'UTC')} AND window_end <= {end:DateTime64(3, 'UTC')}
GROUP BY entitlement, requests_partition, window_start, window_end
"""
_RAW_IN_WINDOWS = """
SELECT entitlement, countIf(phase = 'decision'), countIf(outcome = 'refused'), countIf(phase = 'finish'),
       sumIf(prompt_tokens, phase = 'finish'), sumIf(output_tokens, phase = 'finish')
FROM request_events
WHERE entitlement = {entitlement:String} AND ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')}
  AND arrayExists(w -> ts >= w.1 AND ts < w.2, {windows:Array(Tuple(DateTime64(3, 'UTC'), DateTime64(3, 'UTC')))})
GROUP BY entitlement
"""


@dataclass(slots=True)
class ReconcileReport:
    start: datetime
    end: datetime
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _param(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    first = start.replace(minute=0, second=0, microsecond=0)
    last = end.replace(minute=0, second=0, microsecond=0)
    return first, last if last == end else last + timedelta(hours=1)


def reconcile(store: HistoryStore, start: datetime, end: datetime) -> ReconcileReport:
    start, end = _utc(start), _utc(end)
    report = ReconcileReport(start, end)
    _rollups(store, report)
    _pipeline(store, report)
    return report


def _rollups(store: HistoryStore, report: ReconcileReport) -> None:
    first, last = _hours(report.start, report.end)
    span = {"start": _param(first), "end": _param(last)}
    raw = {r[0]: r[1:] for r in store.query(_RAW_VS_ROLLUP, span).rows}
    for table, column in (("request_rollup_1m", "minute"), ("request_rollup_1h", "hour")):
        rolled = {r[0]: r[1:] for r in store.query(_ROLLUP, {**span, "table": table, "column": column}).rows}
        for ent in sorted(set(raw) | set(rolled)):
            a, b = raw.get(ent, (0, 0, 0)), rolled.get(ent, (0, 0, 0))
            for i, measure in enumerate(ROLLUP_MEASURES):
                report.rows.append({"check": f"raw vs {table}", "entitlement": ent, "measure": measure,
                                    "raw": int(a[i]), "other": int(b[i]), "ok": int(a[i]) == int(b[i]),
                                    "from": first, "to": last})


def _pipeline(store: HistoryStore, report: ReconcileReport) -> None:
    span = {"start": _param(report.start), "end": _param(report.end)}
    windows = store.query(_PIPELINE, span).rows
    by_ent: dict[str, list[int]] = {}
    late: dict[str, int] = {}
    spans: dict[str, set[tuple[datetime, datetime]]] = {}
    for ent, _part, w_start, w_end, *values, total_late in windows:
        acc = by_ent.setdefault(ent, [0] * len(PIPELINE_MEASURES))
        for i, v in enumerate(values):
            acc[i] += int(v)
        late[ent] = max(late.get(ent, 0), int(total_late))
        spans.setdefault(ent, set()).add((w_start, w_end))
    for ent in sorted(by_ent):
        windows_of = sorted(spans[ent])
        raw = store.query(_RAW_IN_WINDOWS, {**span, "entitlement": ent,
                                            "windows": [(_param(a), _param(b)) for a, b in windows_of]}).rows
        counted = next((r[1:] for r in raw if r[0] == ent), (0,) * len(PIPELINE_MEASURES))
        for i, measure in enumerate(PIPELINE_MEASURES):
            report.rows.append({"check": "raw vs pipeline windows", "entitlement": ent, "measure": measure,
                                "raw": int(counted[i]), "other": by_ent[ent][i],
                                "ok": int(counted[i]) == by_ent[ent][i], "windows": len(windows_of),
                                "pipeline_late_events": late[ent]})
