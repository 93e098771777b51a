"""Capacity against demand by tier, utilisation, admissions and refusals, spot backfill, per pool."""

from __future__ import annotations

from dashboards.spec import Dashboard, Source

DASHBOARD = Dashboard(uid="tokenpools-pools", title="Token pools: pools overview", description="Capacity against demand by tier, utilisation, admissions and refusals, spot backfill, per pool.", source=Source.CLICKHOUSE, rows=())
