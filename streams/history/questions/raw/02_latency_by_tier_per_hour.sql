-- title: TTFT and TPOT percentiles (P50, P90, P99) by tier per hour
-- param: start DateTime64(3)  first hour counted (UTC)
-- param: end DateTime64(3)    first instant not counted
--
-- The same answer from the raw events, with the same sketch (quantilesDD, 1 % relative accuracy).
SELECT
    hour,
    tier,
    ttft_n,
    ttft[1] AS ttft_p50,
    ttft[2] AS ttft_p90,
    ttft[3] AS ttft_p99,
    tpot_n,
    if(tpot_n = 0, NULL, tpot[1]) AS tpot_p50,
    if(tpot_n = 0, NULL, tpot[2]) AS tpot_p90,
    if(tpot_n = 0, NULL, tpot[3]) AS tpot_p99
FROM
(
    SELECT
        toStartOfHour(e.ts) AS hour,
        e.tier AS tier,
        count(e.ttft_s) AS ttft_n,
        count(e.tpot_s) AS tpot_n,
        quantilesDDIf(0.01, 0.5, 0.9, 0.99)(ifNull(e.ttft_s, 0), e.ttft_s IS NOT NULL) AS ttft,
        quantilesDDIf(0.01, 0.5, 0.9, 0.99)(ifNull(e.tpot_s, 0), e.tpot_s IS NOT NULL) AS tpot
    FROM request_events AS e
    WHERE e.ts >= {start:DateTime64(3)} AND e.ts < {end:DateTime64(3)}
    GROUP BY hour, tier
)
WHERE ttft_n > 0
ORDER BY hour, tier
