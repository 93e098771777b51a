-- title: Refusals by pool, tier and the dimension that refused them
-- param: start DateTime64(3, 'UTC')  first hour counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
--
-- The same answer from the raw events.
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
        e.pool AS pool,
        e.tier AS tier,
        e.refused_dimension AS refused_dimension,
        countIf(e.outcome = 'refused') AS refusals,
        sum(count()) OVER (PARTITION BY e.pool, e.tier) AS decisions
    FROM request_events AS e
    WHERE e.ts >= {start:DateTime64(3, 'UTC')} AND e.ts < {end:DateTime64(3, 'UTC')}
      AND e.phase = 'decision'
    GROUP BY pool, tier, refused_dimension
)
WHERE refusals > 0
ORDER BY pool, tier, refusals DESC, refused_dimension
