-- title: Guaranteed capacity sold vs used, per pool over time (throughput)
-- param: start DateTime64(3, 'UTC')  first instant counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
-- param: bucket_s UInt32             bucket width in seconds
--
-- Averages over the pool's state versions in the bucket: capacity, and the guarantees sold on it
-- (pool_state.guarantees_throughput: the sum of its guaranteed entitlements' guarantees), against what
-- the guaranteed tier used (pool_tier_state, tier guaranteed; a version without that row counts 0).
-- sold_share = sold / capacity; used_share = used / sold (above 1: guaranteed tenants bursting past
-- their guarantees). Throughput in weighted tokens/s.
SELECT
    p.bucket AS bucket,
    p.pool AS pool,
    p.avg_capacity_throughput AS avg_capacity_throughput,
    p.avg_guarantees_throughput AS avg_sold_throughput,
    ifNull(g.usage_sum, 0) / p.versions AS avg_used_throughput,
    avg_sold_throughput / avg_capacity_throughput AS sold_share,
    if(avg_sold_throughput = 0, NULL, avg_used_throughput / avg_sold_throughput) AS used_share
FROM
(
    SELECT
        toStartOfInterval(ts, toIntervalSecond({bucket_s:UInt32})) AS bucket,
        pool,
        count() AS versions,
        avg(capacity_throughput) AS avg_capacity_throughput,
        avg(guarantees_throughput) AS avg_guarantees_throughput
    FROM pool_state
    WHERE ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')}
    GROUP BY bucket, pool
) AS p
LEFT JOIN
(
    SELECT
        toStartOfInterval(ts, toIntervalSecond({bucket_s:UInt32})) AS bucket,
        pool,
        sum(usage_throughput) AS usage_sum
    FROM pool_tier_state
    WHERE ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')} AND tier = 'guaranteed'
    GROUP BY bucket, pool
) AS g ON p.pool = g.pool AND p.bucket = g.bucket
ORDER BY pool, bucket
