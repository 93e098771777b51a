-- Records the sink could not use, with their raw bytes (a batch's bad event: that event's JSON and its
-- index in the batch; -1 for a whole record), and where they were.
CREATE TABLE IF NOT EXISTS dead_letters
(
    received_at      DateTime64(3, 'UTC'),
    topic            LowCardinality(String),
    partition        UInt32,
    offset           UInt64,
    event_index      Int32,
    key              String,
    raw              String,
    reason           LowCardinality(String),
    detail           String
)
ENGINE = MergeTree
PARTITION BY toDate(received_at)
ORDER BY (topic, partition, offset, event_index)
TTL toDateTime(received_at) + toIntervalDay($retention_days)
SETTINGS non_replicated_deduplication_window = $dedup_window, ttl_only_drop_parts = 1;

-- The sink's block plan: one row per insert block, written before the block's rows. After a crash the
-- sink rebuilds the last planned block of each partition exactly (same offsets, same token), so a block
-- that half landed (raw table but not a rollup) is completed and one that fully landed adds nothing.
CREATE TABLE IF NOT EXISTS sink_blocks
(
    topic            LowCardinality(String),
    partition        UInt32,
    first_offset     UInt64,
    last_offset      UInt64,
    records          UInt32,
    planned_at       DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (topic, partition, first_offset)
SETTINGS non_replicated_deduplication_window = $dedup_window;
