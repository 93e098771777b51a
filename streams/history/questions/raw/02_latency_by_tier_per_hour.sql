-- title: TTFT and TPOT percentiles (P50, P90, P99) by tier per hour
-- param: start DateTime64(3, 'UTC')  first hour counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
--
-- The same answer from the raw events, with the same sketch (quantilesDD, 1 % relative accuracy)
-- over milliseconds, as the rollups keep it.
SELECT
    hour,
    tier,
    ttft_n,
    ttft_ms[1] / 1000 AS ttft_p50,
    ttft_ms[2] / 1000 AS ttft_p90,
    ttft_ms[3] / 1000 AS ttft_p99,
    tpot_n,
    if(tpot_n = 0, NULL, tpot_ms[1] / 1000) AS tpot_p50,
    if(tpot_n = 0, NULL, tpot_ms[2] / 1000) AS tpot_p90,
    if(tpot_n = 0, NULL, tpot_ms[3] / 1000) AS tpot_p99
FROM
(
    SELECT
        toStartOfHour(e.ts) AS hour,
        e.tier AS tier,
        count(e.ttft_s) AS ttft_n,
        count(e.tpot_s) AS tpot_n,
        quantilesDDIf(0.01, 0.5, 0.9, 0.99)(ifNull(e.ttft_s, 0) * 1000, e.ttft_s IS NOT NULL) AS ttft_ms,
        quantilesDDIf(0.01, 0.5, 0.9, 0.99)(ifNull(e.tpot_s, 0) * 1000, e.tpot_s IS NOT NULL) AS tpot_ms
    FROM request_events AS e
    WHERE e.ts >= {start:DateTime64(3, 'UTC')} AND e.ts < {end:DateTime64(3, 'UTC')}
    GROUP BY hour, tier
)
WHERE ttft_n > 0
ORDER BY hour, tier
