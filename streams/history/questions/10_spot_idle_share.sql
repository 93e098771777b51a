-- title: The share of idle capacity that spot took, per pool over time (throughput)
-- param: start DateTime64(3, 'UTC')  first instant counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
-- param: bucket_s UInt32             bucket width in seconds
--
-- Per state version: idle = max(0, capacity - guaranteed usage - elastic usage), what the two tiers
-- above spot left unused; spot = spot usage (a tier missing from the version counts 0). Per bucket:
-- averages over the versions, and spot_idle_share = sum(spot) / sum(idle) over them (NULL when nothing
-- was idle). It can exceed 1: spot may backfill the unsold part of the rated throughput beyond capacity.
SELECT
    bucket,
    pool,
    count() AS versions,
    avg(capacity) AS avg_capacity_throughput,
    avg(idle) AS avg_idle_throughput,
    avg(spot) AS avg_spot_throughput,
    if(sum(idle) = 0, NULL, sum(spot) / sum(idle)) AS spot_idle_share
FROM
(
    SELECT
        toStartOfInterval(p.ts, toIntervalSecond({bucket_s:UInt32})) AS bucket,
        p.pool AS pool,
        p.capacity_throughput AS capacity,
        greatest(p.capacity_throughput - ifNull(t.guaranteed, 0) - ifNull(t.elastic, 0), 0) AS idle,
        ifNull(t.spot, 0) AS spot
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
        WHERE ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')}
        GROUP BY pool, seq, ts
    ) AS t ON p.pool = t.pool AND p.seq = t.seq AND p.ts = t.ts
    WHERE p.ts >= {start:DateTime64(3, 'UTC')} AND p.ts < {end:DateTime64(3, 'UTC')}
)
GROUP BY bucket, pool
ORDER BY pool, bucket
