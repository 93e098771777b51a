"""The pipeline now: events/s, consumer lag, ticks, event-to-limit lag, bad records, and the history sink."""

from __future__ import annotations

from dashboards.spec import Dashboard, Source

DASHBOARD = Dashboard(uid="tokenpools-pipeline", title="Token pools: pipeline (live)", description="The pipeline now: events/s, consumer lag, ticks, event-to-limit lag, bad records, and the history sink.", source=Source.PROMETHEUS, rows=())
