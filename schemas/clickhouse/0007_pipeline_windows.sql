-- Stage 1's closed tumbling windows per entitlement and requests partition, as the pipeline counted
-- them (tokenpools.entitlement-usage). A window arrives once per summary interval until the next one
-- closes: take one row per (entitlement, requests_partition, window_start), the latest summary_ts.
-- `tokenpools history reconcile` compares them with the raw rows.
CREATE TABLE IF NOT EXISTS pipeline_windows
(
    entitlement         LowCardinality(String),
    pool                LowCardinality(String),
    tier                LowCardinality(String),
    requests_partition  UInt32,
    window_start        DateTime64(3, 'UTC'),
    window_end          DateTime64(3, 'UTC'),
    summary_ts          DateTime64(3, 'UTC'),
    decisions           UInt64,
    admitted            UInt64,
    queued              UInt64,
    refused             UInt64,
    finished            UInt64,
    prompt_tokens       UInt64,
    output_tokens       UInt64,
    kv_seconds          Float64,
    seq_seconds         Float64,
    total_events        UInt64,
    total_duplicates    UInt64,
    total_late          UInt64,
    kafka_partition     UInt32,
    kafka_offset        UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(window_start)
ORDER BY (entitlement, requests_partition, window_start, summary_ts)
TTL toDateTime(window_start) + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;
