-- title: Debt and effective weight per entitlement over time
-- param: start DateTime64(3, 'UTC')  first instant counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
-- param: bucket_s UInt32             bucket width in seconds (60, 300, 3600, ...)
--
-- From every state version the pipeline published (entitlement_state): per entitlement and bucket,
-- the last version's debt, effective weight, fair share and throughput limit (last by time, then by
-- allocator tick), the largest debt seen in the bucket and how many versions the bucket holds.
SELECT
    toStartOfInterval(s.ts, toIntervalSecond({bucket_s:UInt32})) AS bucket,
    s.pool AS pool,
    s.entitlement AS entitlement,
    argMax(s.tier, (s.ts, s.seq)) AS tier,
    argMax(s.debt, (s.ts, s.seq)) AS debt,
    max(s.debt) AS max_debt,
    argMax(s.effective_weight, (s.ts, s.seq)) AS effective_weight,
    argMax(s.fair_share, (s.ts, s.seq)) AS fair_share,
    argMax(s.limit_throughput, (s.ts, s.seq)) AS limit_throughput,
    count() AS versions
FROM entitlement_state AS s
WHERE s.ts >= {start:DateTime64(3, 'UTC')} AND s.ts < {end:DateTime64(3, 'UTC')}
GROUP BY bucket, pool, entitlement
ORDER BY pool, entitlement, bucket
