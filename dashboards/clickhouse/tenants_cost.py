"""Every tenant: usage over time, the monthly chargeback, and the guaranteed capacity sold against what it used.

Chargeback is defined as in question 06 (``streams/history/questions/06_chargeback.sql``): the tokens
finished requests used (completed, preempted, cancelled, failed), in the month they finished, at a price per
1,000 prompt and per 1,000 output tokens of the tier the request ran on. Question 06 takes the prices as
parameters; a dashboard has none to give, so ``PRICES_PER_1K`` below holds them.
"""

from __future__ import annotations

from dashboards.spec import Dashboard, Panel, Row, Source, Target, Viz

# Per tier, the price of 1,000 (prompt, output) tokens. The product has no price list of its own: these are
# the numbers question 06 is tested and benchmarked with (tests/streams/history/test_questions.py PRICES,
# bench/bench_history.py PRICES), so the panel and the question give the same bill; a test keeps them equal.
PRICES_PER_1K: dict[str, tuple[float, float]] = {
    "guaranteed": (3.0, 9.0),
    "elastic": (1.5, 4.5),
    "spot": (0.4, 1.2),
}

USAGE = """\
SELECT
    $__timeInterval(minute) AS t,
    tenant,
    sum(charged_throughput) / greatest($__interval_s, 60) AS usage
FROM tenant_rollup_1m
WHERE $__timeFilter(minute)
GROUP BY t, tenant
ORDER BY t, tenant"""


def _charge(tier: str) -> str:
    prompt, output = PRICES_PER_1K[tier]
    return (f"sumIf(r.prompt_tokens, r.tier = '{tier}') / 1000 * {prompt!r}\n"
            f"            + sumIf(r.output_tokens, r.tier = '{tier}') / 1000 * {output!r} AS {tier}_charge")


# Whole months: every month the range touches is billed in full (the current one up to now), since a bill
# for part of a month is no month's bill. Months are UTC months, as in question 06.
CHARGEBACK = f"""\
SELECT
    month,
    tenant,
    prompt_tokens,
    output_tokens,
    guaranteed_charge,
    elastic_charge,
    spot_charge,
    guaranteed_charge + elastic_charge + spot_charge AS charge
FROM
(
    SELECT
        toStartOfMonth(r.hour) AS month,
        r.tenant AS tenant,
        sum(r.prompt_tokens) AS prompt_tokens,
        sum(r.output_tokens) AS output_tokens,
        {_charge("guaranteed")},
        {_charge("elastic")},
        {_charge("spot")}
    FROM request_rollup_1h AS r
    WHERE toStartOfMonth(r.hour) >= toStartOfMonth(toTimeZone($__fromTime, 'UTC'))
      AND toStartOfMonth(r.hour) <= toStartOfMonth(toTimeZone($__toTime, 'UTC'))
      AND r.outcome IN ('completed', 'preempted', 'cancelled', 'failed')
    GROUP BY month, tenant
)
ORDER BY month, tenant"""

# Sold: the guarantees of the guaranteed entitlements whose spec in force at the range's end is not deleted.
# Used: per guaranteed entitlement, its usage averaged over its state versions in the range (tenant from the
# spec in force at each version), summed per pool and tenant: a sum of rates, not of ratios.
GUARANTEED_SOLD_VS_USED = """\
SELECT
    pool,
    tenant,
    sum(sold) AS guaranteed_sold,
    sum(used) AS guaranteed_used,
    if(guaranteed_sold = 0, NULL, guaranteed_used / guaranteed_sold) AS used_share
FROM
(
    SELECT pool, tenant, guarantee AS sold, 0.0 AS used
    FROM
    (
        SELECT
            entitlement,
            argMax(pool, (ts, kafka_offset)) AS pool,
            argMax(tenant, (ts, kafka_offset)) AS tenant,
            argMax(tier, (ts, kafka_offset)) AS tier,
            argMax(guarantee_throughput, (ts, kafka_offset)) AS guarantee,
            argMax(deleted, (ts, kafka_offset)) AS deleted
        FROM entitlement_specs
        WHERE ts <= $__toTime
        GROUP BY entitlement
    )
    WHERE deleted = 0 AND tier = 'guaranteed'
    UNION ALL
    SELECT pool, tenant, 0.0 AS sold, avg(usage) AS used
    FROM
    (
        SELECT e.pool AS pool, e.entitlement AS entitlement, s.tenant AS tenant, e.usage_throughput AS usage
        FROM
        (
            SELECT pool, entitlement, ts, usage_throughput
            FROM entitlement_state
            WHERE $__timeFilter(ts) AND tier = 'guaranteed'
        ) AS e
        ASOF INNER JOIN
        (
            SELECT entitlement, ts, tenant
            FROM entitlement_specs
            WHERE deleted = 0
        ) AS s ON e.entitlement = s.entitlement AND e.ts >= s.ts
    )
    GROUP BY pool, tenant, entitlement
)
GROUP BY pool, tenant
ORDER BY pool, tenant"""

DASHBOARD = Dashboard(
    uid="tokenpools-tenants",
    title="Token pools: tenants and cost",
    description="Every tenant: usage over time, the monthly chargeback, and the guaranteed capacity sold "
                "against what it used.",
    source=Source.CLICKHOUSE,
    time_from="now-30d",
    links=("tokenpools-pools", "tokenpools-entitlement"),
    rows=(
        Row("Usage", (
            Panel(
                title="Usage by tenant (weighted tokens/s)",
                answers="How much throughput did each tenant's finished requests use, in the unit guarantees "
                        "are sold in?",
                viz=Viz.TIMESERIES, targets=(Target(USAGE),), unit="short", width=24, stack=True,
                columns=("t", "tenant", "usage"),
            ),
        )),
        Row("Cost", (
            Panel(
                title="Chargeback by tenant and month",
                answers="What does each tenant owe for each whole month the range touches, per tier, at the "
                        "price list's prices per 1,000 prompt and output tokens?",
                viz=Viz.TABLE, targets=(Target(CHARGEBACK),), unit="short", width=24,
                column_units=(("prompt_tokens", "none"), ("output_tokens", "none"), ("guaranteed_charge", "none"),
                              ("elastic_charge", "none"), ("spot_charge", "none"), ("charge", "none")),
                columns=("month", "tenant", "prompt_tokens", "output_tokens", "guaranteed_charge",
                         "elastic_charge", "spot_charge", "charge"),
            ),
            Panel(
                title="Guaranteed capacity sold vs used (weighted tokens/s)",
                answers="Per pool and tenant, how much guaranteed throughput was sold (specs in force at the "
                        "range's end) and how much did its guaranteed entitlements use on average?",
                viz=Viz.TABLE, targets=(Target(GUARANTEED_SOLD_VS_USED),), unit="short", width=24,
                column_units=(("used_share", "percentunit"),),
                columns=("pool", "tenant", "guaranteed_sold", "guaranteed_used", "used_share"),
            ),
        )),
    ),
)
