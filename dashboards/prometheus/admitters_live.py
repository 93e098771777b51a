"""The admitters now: requests by outcome, decision latency, queues, spool, limit staleness, upstream errors, preemptions."""

from __future__ import annotations

from dashboards.spec import Dashboard, Source

DASHBOARD = Dashboard(uid="tokenpools-admitters", title="Token pools: admitters (live)", description="The admitters now: requests by outcome, decision latency, queues, spool, limit staleness, upstream errors, preemptions.", source=Source.PROMETHEUS, rows=())
