-- title: TTFT and TPOT percentiles (P50, P90, P99) by tier per hour
-- param: start DateTime64(3, 'UTC')  first hour counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
--
-- From the latency rollup's DDSketch states (per pool, tier and hour), which hold milliseconds
-- (DDSketch is within 1 % from 1.0 up, so from 1 ms up; schemas/clickhouse/0008_narrow_rollups.sql),
-- divided by 1000: each percentile, in seconds, is within 1 % of a true order statistic around that
-- rank. TTFT is measured from arrival (queue wait included) on finish events that saw a first token;
-- TPOT is (latency - TTFT) / (output tokens - 1) where at least two tokens came out.
-- Hours in which a tier saw no first token are left out; a percentile without samples is NULL.
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
        r.hour AS hour,
        r.tier AS tier,
        sum(r.ttft_n) AS ttft_n,
        sum(r.tpot_n) AS tpot_n,
        quantilesDDMerge(0.01, 0.5, 0.9, 0.99)(r.ttft_ms_q) AS ttft_ms,
        quantilesDDMerge(0.01, 0.5, 0.9, 0.99)(r.tpot_ms_q) AS tpot_ms
    FROM latency_rollup_1h AS r
    WHERE r.hour >= {start:DateTime64(3, 'UTC')} AND r.hour < {end:DateTime64(3, 'UTC')}
    GROUP BY hour, tier
)
WHERE ttft_n > 0
ORDER BY hour, tier
