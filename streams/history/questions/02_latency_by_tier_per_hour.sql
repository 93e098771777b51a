-- title: TTFT and TPOT percentiles (P50, P90, P99) by tier per hour
-- param: start DateTime64(3)  first hour counted (UTC)
-- param: end DateTime64(3)    first instant not counted
--
-- From the hour rollup's DDSketch states: each percentile is within 1 % of a true order statistic
-- around that rank. TTFT is measured from arrival (queue wait included) on finish events that saw a
-- first token; TPOT is (latency - TTFT) / (output tokens - 1) where at least two tokens came out.
-- Hours in which a tier saw no first token are left out; a percentile without samples is NULL.
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
        r.hour AS hour,
        r.tier AS tier,
        sum(r.ttft_n) AS ttft_n,
        sum(r.tpot_n) AS tpot_n,
        quantilesDDMerge(0.01, 0.5, 0.9, 0.99)(r.ttft_q) AS ttft,
        quantilesDDMerge(0.01, 0.5, 0.9, 0.99)(r.tpot_q) AS tpot
    FROM request_rollup_1h AS r
    WHERE r.hour >= {start:DateTime64(3)} AND r.hour < {end:DateTime64(3)}
    GROUP BY hour, tier
)
WHERE ttft_n > 0
ORDER BY hour, tier
