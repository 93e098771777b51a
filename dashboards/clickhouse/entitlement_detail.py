"""One entitlement: its limits, usage, debt, latency against its SLO, and its refusals."""

from __future__ import annotations

from dashboards.spec import Dashboard, Source

DASHBOARD = Dashboard(uid="tokenpools-entitlement", title="Token pools: entitlement detail", description="One entitlement: its limits, usage, debt, latency against its SLO, and its refusals.", source=Source.CLICKHOUSE, rows=())
