-- The same rollup per hour (what month-long questions read: 60 times fewer rows than per minute).
-- Its sketches hold milliseconds, as in 0004 (DDSketch is within 1 % only from 1.0 up): divide a
-- merged quantile by 1000 for seconds.
CREATE TABLE IF NOT EXISTS request_rollup_1h
(
    hour               DateTime('UTC'),
    pool                 LowCardinality(String),
    entitlement          LowCardinality(String),
    tenant               LowCardinality(String),
    tier                 LowCardinality(String),
    outcome              LowCardinality(String),
    refused_dimension    LowCardinality(String),
    events               SimpleAggregateFunction(sum, UInt64),
    prompt_tokens        SimpleAggregateFunction(sum, UInt64),
    output_tokens        SimpleAggregateFunction(sum, UInt64),
    reserved_throughput  SimpleAggregateFunction(sum, Float64),
    charged_throughput   SimpleAggregateFunction(sum, Float64),
    kv_seconds           SimpleAggregateFunction(sum, Float64),
    seq_seconds          SimpleAggregateFunction(sum, Float64),
    queue_wait_sum       SimpleAggregateFunction(sum, Float64),
    ttft_n               SimpleAggregateFunction(sum, UInt64),
    ttft_sum             SimpleAggregateFunction(sum, Float64),
    tpot_n               SimpleAggregateFunction(sum, UInt64),
    tpot_sum             SimpleAggregateFunction(sum, Float64),
    ttft_ms_q            AggregateFunction(quantilesDD(0.01, 0.5, 0.9, 0.99), Float64),
    tpot_ms_q            AggregateFunction(quantilesDD(0.01, 0.5, 0.9, 0.99), Float64),
    queue_wait_ms_q      AggregateFunction(quantilesDD(0.01, 0.5, 0.9, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (pool, entitlement, hour, tier, outcome, refused_dimension, tenant)
TTL hour + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS request_rollup_1h_mv TO request_rollup_1h AS
SELECT
    toStartOfHour(ts) AS hour,
    pool, entitlement, tenant, tier, outcome, refused_dimension,
    count() AS events,
    sum(prompt_tokens) AS prompt_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reserved_throughput) AS reserved_throughput,
    sum(charged_throughput) AS charged_throughput,
    sum(kv_seconds) AS kv_seconds,
    sum(seq_seconds) AS seq_seconds,
    sum(queue_wait_s) AS queue_wait_sum,
    count(ttft_s) AS ttft_n,
    sum(ifNull(ttft_s, 0)) AS ttft_sum,
    count(tpot_s) AS tpot_n,
    sum(ifNull(tpot_s, 0)) AS tpot_sum,
    quantilesDDStateIf(0.01, 0.5, 0.9, 0.99)(ifNull(ttft_s, 0) * 1000, ttft_s IS NOT NULL) AS ttft_ms_q,
    quantilesDDStateIf(0.01, 0.5, 0.9, 0.99)(ifNull(tpot_s, 0) * 1000, tpot_s IS NOT NULL) AS tpot_ms_q,
    quantilesDDStateIf(0.01, 0.5, 0.9, 0.99)(queue_wait_s * 1000, phase = 'decision' AND outcome != 'refused') AS queue_wait_ms_q
FROM request_events
GROUP BY hour, pool, entitlement, tenant, tier, outcome, refused_dimension;
