-- title: Top burst tenants: peak per-minute usage against their average and their guarantee
-- param: start DateTime64(3, 'UTC')  first minute counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
-- param: top UInt32                  how many tenants to list
--
-- A tenant's usage in a minute is the throughput its finished requests were charged (weighted
-- tokens) in that minute, divided by 60: weighted tokens/s, the unit guarantees are sold in.
-- peak_rate: its busiest minute; avg_rate: everything it was charged over the whole range / the range's
-- seconds (idle minutes included); burst_ratio = peak_rate / avg_rate, the ranking.
-- guarantee_throughput: the sum of its entitlements' throughput guarantees in the spec versions in force
-- at the range's end (deleted entitlements excluded); over_guarantee = peak_rate - guarantee_throughput
-- (positive: its peak exceeded what it was sold).
-- Per-minute charges from the tenant rollup (finish events only, per tenant and minute;
-- schemas/clickhouse/0008_narrow_rollups.sql). FINAL merges the partial rows of each (tenant, minute) as
-- it reads, so each row is a whole minute (on 10M events: 30-50 ms where GROUP BY tenant, minute took 190).
WITH
per_minute AS
(
    SELECT r.tenant AS tenant, r.minute AS minute, r.charged_throughput / 60 AS rate
    FROM tenant_rollup_1m AS r FINAL
    WHERE r.minute >= {start:DateTime64(3, 'UTC')} AND r.minute < {end:DateTime64(3, 'UTC')}
),
specs_at_end AS
(
    SELECT
        entitlement,
        argMax(tenant, (ts, kafka_offset)) AS tenant,
        argMax(guarantee_throughput, (ts, kafka_offset)) AS guarantee_throughput,
        argMax(deleted, (ts, kafka_offset)) AS deleted
    FROM entitlement_specs
    WHERE ts < {end:DateTime64(3, 'UTC')}
    GROUP BY entitlement
),
guarantees AS
(
    SELECT tenant, sum(guarantee_throughput) AS guarantee_throughput
    FROM specs_at_end
    WHERE deleted = 0
    GROUP BY tenant
)
SELECT
    u.tenant AS tenant,
    u.peak_minute AS peak_minute,
    u.peak_rate AS peak_rate,
    u.avg_rate AS avg_rate,
    u.peak_rate / u.avg_rate AS burst_ratio,
    g.guarantee_throughput AS guarantee_throughput,
    u.peak_rate - g.guarantee_throughput AS over_guarantee
FROM
(
    SELECT
        tenant,
        argMax(minute, rate) AS peak_minute,
        max(rate) AS peak_rate,
        sum(rate) * 60 / dateDiff('second', {start:DateTime64(3, 'UTC')}, {end:DateTime64(3, 'UTC')}) AS avg_rate
    FROM per_minute
    GROUP BY tenant
    HAVING peak_rate > 0
) AS u
LEFT JOIN guarantees AS g ON u.tenant = g.tenant
ORDER BY burst_ratio DESC, tenant
LIMIT {top:UInt32}
