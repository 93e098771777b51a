"""Usage and chargeback by tenant and month; guaranteed capacity sold against used."""

from __future__ import annotations

from dashboards.spec import Dashboard, Source

DASHBOARD = Dashboard(uid="tokenpools-tenants", title="Token pools: tenants and cost", description="Usage and chargeback by tenant and month; guaranteed capacity sold against used.", source=Source.CLICKHOUSE, rows=())
