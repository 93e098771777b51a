-- title: One tenant's usage per hour or per day, per entitlement (what /v1/usage serves)
-- param: tenant String               the tenant; only its own rows are read
-- param: start DateTime64(3, 'UTC')  first hour counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
-- param: bucket_s UInt32             3600 (per hour) or 86400 (per day); a multiple of 3600
--
-- The same answer from the raw events.
SELECT
    toStartOfInterval(toStartOfHour(e.ts), toIntervalSecond({bucket_s:UInt32})) AS bucket,
    e.tenant AS tenant,
    e.entitlement AS entitlement,
    e.pool AS pool,
    e.tier AS tier,
    countIf(e.phase = 'decision') AS requests,
    countIf(e.outcome = 'refused') AS refused,
    sumIf(toUInt64(e.prompt_tokens), e.phase = 'finish') AS prompt_tokens,
    sumIf(toUInt64(e.output_tokens), e.phase = 'finish') AS output_tokens,
    sumIf(e.charged_throughput, e.phase = 'finish') AS charged_throughput
FROM request_events AS e
WHERE e.tenant = {tenant:String} AND e.ts >= {start:DateTime64(3, 'UTC')} AND e.ts < {end:DateTime64(3, 'UTC')}
GROUP BY bucket, tenant, entitlement, pool, tier
ORDER BY bucket, entitlement, pool, tier
