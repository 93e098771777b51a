-- title: Refusals by pool, tier and the dimension that refused them
-- param: start DateTime64(3, 'UTC')  first hour counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
--
-- refusals: admission decisions refused, by the dimension the admitter named (throughput, kv,
-- concurrency; '' when it named none); decisions: all of the pool and tier's admission decisions
-- (admitted, queued_admitted, refused); refused_share = refusals / decisions.
SELECT
    pool,
    tier,
    refused_dimension,
    refusals,
    decisions,
    refusals / decisions AS refused_share
FROM
(
    SELECT
        r.pool AS pool,
        r.tier AS tier,
        r.refused_dimension AS refused_dimension,
        sumIf(r.events, r.outcome = 'refused') AS refusals,
        sum(sum(r.events)) OVER (PARTITION BY r.pool, r.tier) AS decisions
    FROM request_rollup_1h AS r
    WHERE r.hour >= {start:DateTime64(3, 'UTC')} AND r.hour < {end:DateTime64(3, 'UTC')}
      AND r.outcome IN ('admitted', 'queued_admitted', 'refused')
    GROUP BY pool, tier, refused_dimension
)
WHERE refusals > 0
ORDER BY pool, tier, refusals DESC, refused_dimension
