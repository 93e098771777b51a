-- title: Top burst tenants: peak per-minute usage against their average and their guarantee
-- param: start DateTime64(3, 'UTC')  first minute counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
-- param: top UInt32                  how many tenants to list
--
-- The same answer from the raw events (per-minute usage from request_events).
WITH
per_minute AS
(
    SELECT e.tenant AS tenant, toStartOfMinute(e.ts) AS minute, sum(e.charged_throughput) / 60 AS rate
    FROM request_events AS e
    WHERE e.ts >= {start:DateTime64(3, 'UTC')} AND e.ts < {end:DateTime64(3, 'UTC')}
      AND e.phase = 'finish'
    GROUP BY tenant, minute
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
