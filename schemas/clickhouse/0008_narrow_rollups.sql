-- Narrow rollups for the two questions the wide rollups (0004, 0005) answer slowly: each keyed by only
-- what its question groups on, so it has far fewer rows to merge. Fed from request_events by their own
-- materialized views; like every table they set the deduplication window, so a retried block (same
-- token, deduplicate_blocks_in_dependent_materialized_views = 1) adds nothing to them either.

-- Question 02 (TTFT and TPOT percentiles by tier per hour): per (pool, tier, hour), the TTFT and TPOT
-- counts and DDSketch states. The sketches hold MILLISECONDS (seconds * 1000), as in 0004: ClickHouse's
-- DDSketch keeps its 1 % relative error only from 1.0 up. Divide a merged quantile by 1000 for seconds.
-- Only events with a TTFT or a TPOT feed it (the others would add nothing but empty rows).
CREATE TABLE IF NOT EXISTS latency_rollup_1h
(
    hour                 DateTime('UTC'),
    pool                 LowCardinality(String),
    tier                 LowCardinality(String),
    ttft_n               SimpleAggregateFunction(sum, UInt64),
    tpot_n               SimpleAggregateFunction(sum, UInt64),
    ttft_ms_q            AggregateFunction(quantilesDD(0.01, 0.5, 0.9, 0.99), Float64),
    tpot_ms_q            AggregateFunction(quantilesDD(0.01, 0.5, 0.9, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (pool, tier, hour)
TTL hour + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS latency_rollup_1h_mv TO latency_rollup_1h AS
SELECT
    toStartOfHour(ts) AS hour,
    pool, tier,
    count(ttft_s) AS ttft_n,
    count(tpot_s) AS tpot_n,
    quantilesDDStateIf(0.01, 0.5, 0.9, 0.99)(ifNull(ttft_s, 0) * 1000, ttft_s IS NOT NULL) AS ttft_ms_q,
    quantilesDDStateIf(0.01, 0.5, 0.9, 0.99)(ifNull(tpot_s, 0) * 1000, tpot_s IS NOT NULL) AS tpot_ms_q
FROM request_events
WHERE ttft_s IS NOT NULL OR tpot_s IS NOT NULL
GROUP BY hour, pool, tier;

-- Question 08 (top burst tenants): per (tenant, minute), the throughput its finish events were charged
-- (weighted tokens) and how many finish events there were. Decisions carry no charge and do not feed it.
CREATE TABLE IF NOT EXISTS tenant_rollup_1m
(
    minute               DateTime('UTC'),
    tenant               LowCardinality(String),
    finishes             SimpleAggregateFunction(sum, UInt64),
    charged_throughput   SimpleAggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (tenant, minute)
TTL minute + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS tenant_rollup_1m_mv TO tenant_rollup_1m AS
SELECT
    toStartOfMinute(ts) AS minute,
    tenant,
    count() AS finishes,
    sum(charged_throughput) AS charged_throughput
FROM request_events
WHERE phase = 'finish'
GROUP BY minute, tenant;
