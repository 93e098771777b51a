"""Every pool over time: capacity against demand by tier, utilisation, admissions and refusals, spot backfill.

No pool variable: the overview shows every pool, each series named by its pool; one entitlement's detail is
on ``tokenpools-entitlement``. Pool state has one row per published version (about one per allocator tick),
so a bucket's capacity, demand or usage is the average over the versions in it, a tier missing from a version
counting 0 (as in questions 05 and 10); a ratio is a ratio of those averages, never an average of ratios.
Throughput is in the pool's weighted tokens per second, the unit capacity and guarantees are sold in.
"""

from __future__ import annotations

from dashboards.spec import Dashboard, Panel, Row, Source, Target, Viz

CAPACITY_VS_DEMAND = """\
SELECT
    p.t AS t,
    p.pool AS pool,
    p.capacity AS capacity,
    d.guaranteed / p.versions AS guaranteed_demand,
    d.elastic / p.versions AS elastic_demand,
    d.spot / p.versions AS spot_demand
FROM
(
    SELECT $__timeInterval(ts) AS t, pool, count() AS versions, avg(capacity_throughput) AS capacity
    FROM pool_state
    WHERE $__timeFilter(ts)
    GROUP BY t, pool
) AS p
LEFT JOIN
(
    SELECT
        $__timeInterval(ts) AS t,
        pool,
        sumIf(demand_throughput, tier = 'guaranteed') AS guaranteed,
        sumIf(demand_throughput, tier = 'elastic') AS elastic,
        sumIf(demand_throughput, tier = 'spot') AS spot
    FROM pool_tier_state
    WHERE $__timeFilter(ts)
    GROUP BY t, pool
) AS d ON p.pool = d.pool AND p.t = d.t
ORDER BY t, pool"""

READY_REPLICAS = """\
SELECT
    $__timeInterval(ts) AS t,
    pool,
    avg(p.ready_replicas) AS ready_replicas,
    max(p.ready_replicas) AS max_ready_replicas
FROM pool_state AS p
WHERE $__timeFilter(ts)
GROUP BY t, pool
ORDER BY t, pool"""

# Usage summed over every tier row of the bucket's versions, over the capacity summed over the same versions:
# avg(usage) / avg(capacity), since both averages divide by the same number of versions.
UTILISATION = """\
SELECT
    p.t AS t,
    p.pool AS pool,
    if(p.capacity_throughput = 0, NULL, u.usage_throughput / p.capacity_throughput) AS throughput,
    if(p.capacity_kv = 0, NULL, u.usage_kv / p.capacity_kv) AS kv,
    if(p.capacity_concurrency = 0, NULL, u.usage_concurrency / p.capacity_concurrency) AS concurrency
FROM
(
    SELECT
        $__timeInterval(ts) AS t,
        pool,
        sum(capacity_throughput) AS capacity_throughput,
        sum(capacity_kv) AS capacity_kv,
        sum(capacity_concurrency) AS capacity_concurrency
    FROM pool_state
    WHERE $__timeFilter(ts)
    GROUP BY t, pool
) AS p
LEFT JOIN
(
    SELECT
        $__timeInterval(ts) AS t,
        pool,
        sum(usage_throughput) AS usage_throughput,
        sum(usage_kv) AS usage_kv,
        sum(usage_concurrency) AS usage_concurrency
    FROM pool_tier_state
    WHERE $__timeFilter(ts)
    GROUP BY t, pool
) AS u ON p.pool = u.pool AND p.t = u.t
ORDER BY t, pool"""

DECISIONS = """\
SELECT
    $__timeInterval(minute) AS t,
    pool,
    outcome,
    refused_dimension,
    sum(events) AS requests
FROM request_rollup_1m
WHERE $__timeFilter(minute) AND outcome IN ('admitted', 'queued_admitted', 'refused')
GROUP BY t, pool, outcome, refused_dimension
ORDER BY t, pool, outcome, refused_dimension"""

# Per version: idle = what capacity the guaranteed and elastic tiers left unused (never below 0), spot = what
# the spot tier used; as in question 10, a tier missing from a version counts 0.
_SPOT_PER_VERSION = """\
    SELECT
        $__timeInterval(p.ts) AS t,
        p.pool AS pool,
        p.capacity_throughput AS capacity,
        greatest(p.capacity_throughput - ifNull(v.guaranteed, 0) - ifNull(v.elastic, 0), 0) AS idle,
        ifNull(v.spot, 0) AS spot
    FROM pool_state AS p
    LEFT JOIN
    (
        SELECT
            pool,
            seq,
            ts,
            sumIf(usage_throughput, tier = 'guaranteed') AS guaranteed,
            sumIf(usage_throughput, tier = 'elastic') AS elastic,
            sumIf(usage_throughput, tier = 'spot') AS spot
        FROM pool_tier_state
        WHERE $__timeFilter(ts)
        GROUP BY pool, seq, ts
    ) AS v ON p.pool = v.pool AND p.seq = v.seq AND p.ts = v.ts
    WHERE $__timeFilter(p.ts)"""

SPOT_BACKFILL = f"""\
SELECT t, pool, avg(idle) AS idle, avg(spot) AS spot
FROM
(
{_SPOT_PER_VERSION}
)
GROUP BY t, pool
ORDER BY t, pool"""

# Stranded: capacity no tier used, spot included (what backfill is for). A ratio of sums over the bucket's
# versions (= average over average), bounded by [0, 1] unlike spot / idle, which explodes when idle is ~0.
STRANDED = f"""\
SELECT
    t, pool,
    if(sum(capacity) = 0, NULL, sum(greatest(idle - spot, 0)) / sum(capacity)) AS stranded_share,
    if(sum(capacity) = 0, NULL, sum(spot) / sum(capacity)) AS spot_share
FROM
(
{_SPOT_PER_VERSION}
)
GROUP BY t, pool
ORDER BY t, pool"""

DASHBOARD = Dashboard(
    uid="tokenpools-pools",
    title="Token pools: pools overview",
    description="Every pool over time: capacity against demand by tier, replicas, utilisation, admissions and "
                "refusals, spot backfill.",
    source=Source.CLICKHOUSE,
    links=("tokenpools-entitlement", "tokenpools-tenants"),
    rows=(
        Row("Capacity and demand", (
            Panel(
                title="Capacity vs demand by tier (weighted tokens/s)",
                answers="Per pool, how did the demand of each tier compare with the capacity its replicas gave?",
                viz=Viz.TIMESERIES, targets=(Target(CAPACITY_VS_DEMAND),), unit="short",
                columns=("t", "pool", "capacity", "guaranteed_demand", "elastic_demand", "spot_demand"),
            ),
            Panel(
                title="Ready replicas",
                answers="Per pool, how many replicas were ready (the average and the most in each bucket)?",
                viz=Viz.TIMESERIES, targets=(Target(READY_REPLICAS),), unit="short",
                columns=("t", "pool", "ready_replicas", "max_ready_replicas"),
            ),
        )),
        Row("Utilisation", (
            Panel(
                title="Utilisation (usage / capacity)",
                answers="Per pool and dimension, what share of the capacity did all tiers together use?",
                viz=Viz.TIMESERIES, targets=(Target(UTILISATION),), unit="percentunit", width=24,
                columns=("t", "pool", "throughput", "kv", "concurrency"),
            ),
        )),
        Row("Admissions", (
            Panel(
                title="Admitted, queued and refused (requests per bucket)",
                answers="Per pool, how many requests were admitted, admitted after queueing, or refused, and on "
                        "which dimension?",
                viz=Viz.TIMESERIES, targets=(Target(DECISIONS),), unit="short", width=24, stack=True,
                columns=("t", "pool", "outcome", "refused_dimension", "requests"),
            ),
        )),
        Row("Spot backfill", (
            Panel(
                title="Idle capacity and what spot used of it (weighted tokens/s)",
                answers="Per pool, how much capacity did the guaranteed and elastic tiers leave idle, and how much "
                        "did spot use?",
                viz=Viz.TIMESERIES, targets=(Target(SPOT_BACKFILL),), unit="short",
                columns=("t", "pool", "idle", "spot"),
            ),
            Panel(
                title="Stranded capacity (share of capacity)",
                answers="Per pool, what share of the capacity did no tier use, spot included, and what share did "
                        "spot fill?",
                viz=Viz.TIMESERIES, targets=(Target(STRANDED),), unit="percentunit",
                columns=("t", "pool", "stranded_share", "spot_share"),
            ),
        )),
    ),
)
