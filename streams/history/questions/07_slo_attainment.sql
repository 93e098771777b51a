-- title: SLO attainment per entitlement: share of completed requests that met the SLO in force
-- param: start DateTime64(3, 'UTC')  first instant counted (UTC)
-- param: end DateTime64(3, 'UTC')    first instant not counted
--
-- Completed requests (finish events, outcome completed) measured against the entitlement's spec version
-- in force when the request finished (the latest entitlement_specs row at or before it, ASOF JOIN);
-- requests whose entitlement had no SLO then, or had been deleted, are not counted.
-- ttft_met: TTFT at most the SLO's ttft (a request without a TTFT misses). tpot_measured: requests
-- whose SLO sets a TPOT and that have one (two or more output tokens); tpot_met: TPOT at most it.
-- met: TTFT met and, where measured, TPOT met; attainment = met / completed.
SELECT
    entitlement,
    tenant,
    tier,
    countIf(in_force) AS completed,
    countIf(in_force AND ttft_ok) AS ttft_met,
    ttft_met / completed AS ttft_attainment,
    countIf(in_force AND tpot_applies) AS tpot_measured,
    countIf(in_force AND tpot_applies AND tpot_ok) AS tpot_met,
    if(tpot_measured = 0, NULL, tpot_met / tpot_measured) AS tpot_attainment,
    countIf(in_force AND ttft_ok AND (NOT tpot_applies OR tpot_ok)) AS met,
    met / completed AS attainment
FROM
(
    SELECT
        e.entitlement AS entitlement,
        e.tenant AS tenant,
        e.tier AS tier,
        s.deleted = 0 AND s.slo_ttft_s IS NOT NULL AS in_force,
        ifNull(e.ttft_s <= s.slo_ttft_s, 0) AS ttft_ok,
        s.slo_tpot_s IS NOT NULL AND e.tpot_s IS NOT NULL AS tpot_applies,
        ifNull(e.tpot_s <= s.slo_tpot_s, 0) AS tpot_ok
    FROM request_events AS e
    ASOF INNER JOIN
    (
        SELECT entitlement, ts, deleted, slo_ttft_s, slo_tpot_s
        FROM entitlement_specs
    ) AS s ON e.entitlement = s.entitlement AND e.ts >= s.ts
    WHERE e.ts >= {start:DateTime64(3, 'UTC')} AND e.ts < {end:DateTime64(3, 'UTC')}
      AND e.phase = 'finish' AND e.outcome = 'completed'
)
GROUP BY entitlement, tenant, tier
HAVING completed > 0
ORDER BY entitlement, tenant, tier
