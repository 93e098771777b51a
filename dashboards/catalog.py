"""Every dashboard the product ships, in the order the README lists them."""

from __future__ import annotations

from dashboards.clickhouse import entitlement_detail, pools_overview, tenants_cost
from dashboards.prometheus import admitters_live, pipeline_live
from dashboards.spec import Dashboard

CLICKHOUSE: tuple[Dashboard, ...] = (pools_overview.DASHBOARD, entitlement_detail.DASHBOARD, tenants_cost.DASHBOARD)
PROMETHEUS: tuple[Dashboard, ...] = (admitters_live.DASHBOARD, pipeline_live.DASHBOARD)
ALL: tuple[Dashboard, ...] = CLICKHOUSE + PROMETHEUS


def by_uid(uid: str) -> Dashboard:
    for dashboard in ALL:
        if dashboard.uid == uid:
            return dashboard
    raise KeyError(f"no dashboard {uid!r}; known: {', '.join(d.uid for d in ALL)}")
