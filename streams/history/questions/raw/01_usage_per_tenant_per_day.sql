-- title: Usage per tenant per day: requests, refusals, prompt and output tokens, charged throughput
-- param: start DateTime64(3, 'UTC')  first instant counted (UTC); from the hour rollup: whole hours from here
-- param: end DateTime64(3, 'UTC')    first instant not counted
--
-- The same answer from the raw events (what 01_usage_per_tenant_per_day reads from request_rollup_1h).
SELECT
    toDate(e.ts) AS day,
    e.tenant AS tenant,
    countIf(e.phase = 'decision') AS requests,
    countIf(e.outcome = 'refused') AS refused,
    sumIf(toUInt64(e.prompt_tokens), e.phase = 'finish') AS prompt_tokens,
    sumIf(toUInt64(e.output_tokens), e.phase = 'finish') AS output_tokens,
    sumIf(e.charged_throughput, e.phase = 'finish') AS charged_throughput
FROM request_events AS e
WHERE e.ts >= {start:DateTime64(3, 'UTC')} AND e.ts < {end:DateTime64(3, 'UTC')}
GROUP BY day, tenant
ORDER BY day, tenant
