-- title: Capacity vs demand and usage by tier vs ready replicas, per pool over time (throughput)
-- param: start DateTime64(3, 'UTC')  first instant counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
-- param: bucket_s UInt32             bucket width in seconds
--
-- Averages over the pool's state versions in the bucket (one per allocator tick that published, so a
-- time average): capacity and ready replicas from pool_state, each tier's demand and usage from
-- pool_tier_state, where a version that lists no row for a tier counts as 0 for it. Throughput is in
-- weighted tokens/s; demand_share = avg_demand / avg_capacity.
SELECT
    t.bucket AS bucket,
    t.pool AS pool,
    t.tier AS tier,
    t.demand_sum / p.versions AS avg_demand_throughput,
    t.usage_sum / p.versions AS avg_usage_throughput,
    p.avg_capacity_throughput AS avg_capacity_throughput,
    avg_demand_throughput / p.avg_capacity_throughput AS demand_share,
    p.avg_ready_replicas AS avg_ready_replicas,
    p.max_ready_replicas AS max_ready_replicas
FROM
(
    SELECT
        toStartOfInterval(ts, toIntervalSecond({bucket_s:UInt32})) AS bucket,
        pool,
        tier,
        sum(demand_throughput) AS demand_sum,
        sum(usage_throughput) AS usage_sum
    FROM pool_tier_state
    WHERE ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')}
    GROUP BY bucket, pool, tier
) AS t
INNER JOIN
(
    SELECT
        toStartOfInterval(ts, toIntervalSecond({bucket_s:UInt32})) AS bucket,
        pool,
        count() AS versions,
        avg(capacity_throughput) AS avg_capacity_throughput,
        avg(ready_replicas) AS avg_ready_replicas,
        max(ready_replicas) AS max_ready_replicas
    FROM pool_state
    WHERE ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')}
    GROUP BY bucket, pool
) AS p ON t.pool = p.pool AND t.bucket = p.bucket
ORDER BY pool, bucket, tier
