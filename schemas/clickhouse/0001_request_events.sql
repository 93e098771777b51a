-- One row per RequestEvent: a decision (admitted, queued_admitted, refused) or a finish
-- (completed, preempted, cancelled, failed). Ordered for per-pool and per-entitlement time ranges;
-- partitioned by day so the retention TTL drops whole parts (ttl_only_drop_parts).
-- kafka_* say where the row came from: the sink's exactly-once bookkeeping and reconciliation use them.
CREATE TABLE IF NOT EXISTS request_events
(
    event_id            String,
    request_id          String,
    ts                  DateTime64(3, 'UTC'),
    region              LowCardinality(String),
    pool                LowCardinality(String),
    entitlement         LowCardinality(String),
    tenant              LowCardinality(String),
    tier                LowCardinality(String),
    admitter            LowCardinality(String),
    model               LowCardinality(String),
    phase               LowCardinality(String),
    outcome             LowCardinality(String),
    refused_dimension   LowCardinality(String),
    status_code         UInt16,
    prompt_tokens       UInt32,
    max_tokens          UInt32,
    output_tokens       UInt32,
    reserved_throughput Float64,
    reserved_kv         Float64,
    reserved_concurrency Float64,
    charged_throughput  Float64,
    kv_seconds          Float64,
    seq_seconds         Float64,
    queue_wait_s        Float64,
    ttft_s              Nullable(Float64),
    tpot_s              Nullable(Float64),
    latency_s           Nullable(Float64),
    retry_after_s       Nullable(Float64),
    replica             LowCardinality(String),
    preempted_by        String,
    kafka_topic         LowCardinality(String),
    kafka_partition     UInt32,
    kafka_offset        UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (pool, entitlement, ts, event_id)
TTL toDateTime(ts) + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;
