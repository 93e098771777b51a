-- Every version of the state the pipeline publishes, and the scaler's replica reports.
CREATE TABLE IF NOT EXISTS entitlement_state
(
    entitlement          LowCardinality(String),
    pool                 LowCardinality(String),
    tier                 LowCardinality(String),
    seq                  UInt64,
    ts                   DateTime64(3, 'UTC'),
    limit_throughput     Float64,
    limit_kv             Float64,
    limit_concurrency    Float64,
    demand_throughput    Float64,
    demand_kv            Float64,
    demand_concurrency   Float64,
    usage_throughput     Float64,
    usage_kv             Float64,
    usage_concurrency    Float64,
    debt                 Float64,
    effective_weight     Float64,
    fair_share           Float64,
    dominant_share       Float64,
    admitters            UInt32,
    kafka_partition      UInt32,
    kafka_offset         UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (pool, entitlement, ts, seq)
TTL toDateTime(ts) + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS pool_state
(
    pool                    LowCardinality(String),
    seq                     UInt64,
    ts                      DateTime64(3, 'UTC'),
    ready_replicas          UInt32,
    desired_replicas        Nullable(UInt32),
    capacity_throughput     Float64,
    capacity_kv             Float64,
    capacity_concurrency    Float64,
    guarantees_throughput   Float64,
    guarantees_kv           Float64,
    guarantees_concurrency  Float64,
    kafka_partition         UInt32,
    kafka_offset            UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (pool, ts, seq)
TTL toDateTime(ts) + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;

-- One row per (pool state version, tier): what pool_state's demand and usage maps hold, long form.
CREATE TABLE IF NOT EXISTS pool_tier_state
(
    pool                 LowCardinality(String),
    seq                  UInt64,
    ts                   DateTime64(3, 'UTC'),
    tier                 LowCardinality(String),
    demand_throughput    Float64,
    demand_kv            Float64,
    demand_concurrency   Float64,
    usage_throughput     Float64,
    usage_kv             Float64,
    usage_concurrency    Float64,
    kafka_partition      UInt32,
    kafka_offset         UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (pool, tier, ts, seq)
TTL toDateTime(ts) + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS replicas
(
    pool             LowCardinality(String),
    ts               DateTime64(3, 'UTC'),
    ready_replicas   UInt32,
    endpoints        Array(String),
    kafka_partition  UInt32,
    kafka_offset     UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (pool, ts)
TTL toDateTime(ts) + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;
