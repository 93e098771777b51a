-- title: Why was this request refused: its decision, the entitlement's limits and the pool's state then
-- param: request_id String  the request's id (the admitter's x-request-id)
--
-- The request's decision row, the entitlement's latest published state at or before the decision
-- (state_* columns: its limits, usage and demand per dimension, debt, effective weight, fair share)
-- and the pool's latest state at or before it (pool_* columns: replicas, capacity, guarantees sold).
-- The admitter decided with the last state it had applied, which the pipeline published at or before
-- that moment (clocks of different hosts allowed for). Without a state yet, the state_* and pool_*
-- columns are NULL.
SELECT
    d.request_id AS request_id,
    d.ts AS ts,
    d.pool AS pool,
    d.entitlement AS entitlement,
    d.tenant AS tenant,
    d.tier AS tier,
    d.admitter AS admitter,
    d.outcome AS outcome,
    d.refused_dimension AS refused_dimension,
    d.retry_after_s AS retry_after_s,
    d.prompt_tokens AS prompt_tokens,
    d.max_tokens AS max_tokens,
    d.reserved_throughput AS reserved_throughput,
    d.reserved_kv AS reserved_kv,
    d.reserved_concurrency AS reserved_concurrency,
    s.state_ts AS state_ts,
    s.state_seq AS state_seq,
    s.limit_throughput AS state_limit_throughput,
    s.limit_kv AS state_limit_kv,
    s.limit_concurrency AS state_limit_concurrency,
    s.usage_throughput AS state_usage_throughput,
    s.usage_kv AS state_usage_kv,
    s.usage_concurrency AS state_usage_concurrency,
    s.demand_throughput AS state_demand_throughput,
    s.debt AS state_debt,
    s.effective_weight AS state_effective_weight,
    s.fair_share AS state_fair_share,
    p.pool_ts AS pool_ts,
    p.ready_replicas AS pool_ready_replicas,
    p.capacity_throughput AS pool_capacity_throughput,
    p.capacity_kv AS pool_capacity_kv,
    p.capacity_concurrency AS pool_capacity_concurrency,
    p.guarantees_throughput AS pool_guarantees_throughput
FROM
(
    SELECT *
    FROM request_events
    WHERE request_id = {request_id:String} AND phase = 'decision'
) AS d
ASOF LEFT JOIN
(
    SELECT
        entitlement, ts,
        toNullable(ts) AS state_ts, toNullable(seq) AS state_seq,
        toNullable(limit_throughput) AS limit_throughput, toNullable(limit_kv) AS limit_kv,
        toNullable(limit_concurrency) AS limit_concurrency,
        toNullable(usage_throughput) AS usage_throughput, toNullable(usage_kv) AS usage_kv,
        toNullable(usage_concurrency) AS usage_concurrency, toNullable(demand_throughput) AS demand_throughput,
        toNullable(debt) AS debt, toNullable(effective_weight) AS effective_weight,
        toNullable(fair_share) AS fair_share
    FROM entitlement_state
    WHERE entitlement IN (SELECT entitlement FROM request_events WHERE request_id = {request_id:String})
) AS s ON d.entitlement = s.entitlement AND d.ts >= s.ts
ASOF LEFT JOIN
(
    SELECT
        pool, ts,
        toNullable(ts) AS pool_ts, toNullable(ready_replicas) AS ready_replicas,
        toNullable(capacity_throughput) AS capacity_throughput, toNullable(capacity_kv) AS capacity_kv,
        toNullable(capacity_concurrency) AS capacity_concurrency,
        toNullable(guarantees_throughput) AS guarantees_throughput
    FROM pool_state
    WHERE pool IN (SELECT pool FROM request_events WHERE request_id = {request_id:String})
) AS p ON d.pool = p.pool AND d.ts >= p.ts
ORDER BY ts
