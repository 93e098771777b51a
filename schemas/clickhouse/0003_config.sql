-- Every version of the config topic's manifests (deleted = 1 for a tombstone): what was sold, and
-- the SLOs requests are measured against. Kept without TTL: config is small and old bills need it.
CREATE TABLE IF NOT EXISTS entitlement_specs
(
    entitlement             LowCardinality(String),
    ts                      DateTime64(3, 'UTC'),
    deleted                 UInt8,
    pool                    LowCardinality(String),
    tenant                  LowCardinality(String),
    tier                    LowCardinality(String),
    guarantee_throughput    Float64,
    guarantee_kv            Float64,
    guarantee_concurrency   Float64,
    burst_throughput        Float64,
    burst_kv                Float64,
    burst_concurrency       Float64,
    weight                  Float64,
    slo_ttft_s              Nullable(Float64),
    slo_tpot_s              Nullable(Float64),
    kafka_partition         UInt32,
    kafka_offset            UInt64
)
ENGINE = MergeTree
ORDER BY (entitlement, ts, kafka_offset)
SETTINGS non_replicated_deduplication_window = $dedup_window;

CREATE TABLE IF NOT EXISTS pool_specs
(
    pool                     LowCardinality(String),
    ts                       DateTime64(3, 'UTC'),
    deleted                  UInt8,
    model                    LowCardinality(String),
    region                   LowCardinality(String),
    per_replica_throughput   Float64,
    per_replica_kv           Float64,
    per_replica_concurrency  Float64,
    token_weight_input       Float64,
    token_weight_output      Float64,
    min_replicas             UInt32,
    max_replicas             UInt32,
    kafka_partition          UInt32,
    kafka_offset             UInt64
)
ENGINE = MergeTree
ORDER BY (pool, ts, kafka_offset)
SETTINGS non_replicated_deduplication_window = $dedup_window;
