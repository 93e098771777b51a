-- title: One tenant's usage per hour or per day, per entitlement (what /v1/usage serves)
-- param: tenant String               the tenant; only its own rows are read
-- param: start DateTime64(3, 'UTC')  first hour counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
-- param: bucket_s UInt32             3600 (per hour) or 86400 (per day); a multiple of 3600
--
-- requests: admission decisions (admitted, queued_admitted, refused); refused: those refused;
-- prompt_tokens, output_tokens, charged_throughput (weighted tokens): what finished requests used,
-- in the bucket they finished. Keyed by the tenant each event carried, so an entitlement name that
-- later served another tenant shows only this tenant's part. The tenant column lets a consumer check
-- every row (the admitter drops any row that is not the tenant's).
SELECT
    toStartOfInterval(r.hour, toIntervalSecond({bucket_s:UInt32})) AS bucket,
    r.tenant AS tenant,
    r.entitlement AS entitlement,
    r.pool AS pool,
    r.tier AS tier,
    sumIf(r.events, r.outcome IN ('admitted', 'queued_admitted', 'refused')) AS requests,
    sumIf(r.events, r.outcome = 'refused') AS refused,
    sumIf(r.prompt_tokens, r.outcome IN ('completed', 'preempted', 'cancelled', 'failed')) AS prompt_tokens,
    sumIf(r.output_tokens, r.outcome IN ('completed', 'preempted', 'cancelled', 'failed')) AS output_tokens,
    sumIf(r.charged_throughput, r.outcome IN ('completed', 'preempted', 'cancelled', 'failed')) AS charged_throughput
FROM request_rollup_1h AS r
WHERE r.tenant = {tenant:String} AND r.hour >= {start:DateTime64(3, 'UTC')} AND r.hour < {end:DateTime64(3, 'UTC')}
GROUP BY bucket, tenant, entitlement, pool, tier
ORDER BY bucket, entitlement, pool, tier
