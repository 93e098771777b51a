-- title: Usage per tenant per day: requests, refusals, prompt and output tokens, charged throughput
-- param: start DateTime64(3, 'UTC')  first instant counted (UTC); from the hour rollup: whole hours from here
-- param: end DateTime64(3, 'UTC')    first instant not counted
--
-- requests: admission decisions (admitted, queued_admitted, refused); refused: those refused.
-- prompt_tokens, output_tokens, charged_throughput (weighted tokens): what finished requests used
-- (completed, preempted, cancelled, failed), counted on the day they finished.
SELECT
    toDate(r.hour) AS day,
    r.tenant AS tenant,
    sumIf(r.events, r.outcome IN ('admitted', 'queued_admitted', 'refused')) AS requests,
    sumIf(r.events, r.outcome = 'refused') AS refused,
    sumIf(r.prompt_tokens, r.outcome IN ('completed', 'preempted', 'cancelled', 'failed')) AS prompt_tokens,
    sumIf(r.output_tokens, r.outcome IN ('completed', 'preempted', 'cancelled', 'failed')) AS output_tokens,
    sumIf(r.charged_throughput, r.outcome IN ('completed', 'preempted', 'cancelled', 'failed')) AS charged_throughput
FROM request_rollup_1h AS r
WHERE r.hour >= {start:DateTime64(3, 'UTC')} AND r.hour < {end:DateTime64(3, 'UTC')}
GROUP BY day, tenant
ORDER BY day, tenant
