"""One entitlement of one pool: usage against its limits, debt and weight, latency against its SLO, refusals.

The variables pick a pool, then one of its entitlements. Limits, usage, debt and weight come from every state
version the pipeline published (one row per version, about one per allocator tick: a bucket shows their
average); guarantee, burst and SLO come from the spec version in force (the latest ``entitlement_specs`` row
at or before the moment, ASOF JOIN; none while the entitlement had no spec or was deleted). Latencies come
from the per-minute rollup's DDSketch states, which hold milliseconds (``schemas/clickhouse/0004_rollups.sql``).
"""

from __future__ import annotations

from dashboards.spec import Dashboard, Panel, Row, Source, Target, Variable, Viz

_THIS_STATE = "pool = ${pool:sqlstring} AND entitlement = ${entitlement:sqlstring}"

# Per state version, the spec in force at its time; toNullable so that a version before any spec, or under a
# tombstone, shows no guarantee or burst rather than 0.
_STATE_WITH_SPEC = f"""\
    SELECT
        $__timeInterval(e.ts) AS t,
        e.*,
        if(s.deleted = 1, NULL, s.guarantee_throughput) AS guarantee_throughput,
        if(s.deleted = 1, NULL, s.burst_throughput) AS burst_throughput,
        if(s.deleted = 1, NULL, s.burst_kv) AS burst_kv,
        if(s.deleted = 1, NULL, s.burst_concurrency) AS burst_concurrency
    FROM
    (
        SELECT *
        FROM entitlement_state
        WHERE {_THIS_STATE} AND $__timeFilter(ts)
    ) AS e
    ASOF LEFT JOIN
    (
        SELECT
            entitlement, ts, toNullable(deleted) AS deleted,
            toNullable(guarantee_throughput) AS guarantee_throughput,
            toNullable(burst_throughput) AS burst_throughput, toNullable(burst_kv) AS burst_kv,
            toNullable(burst_concurrency) AS burst_concurrency
        FROM entitlement_specs
        WHERE entitlement = ${{entitlement:sqlstring}}
    ) AS s ON e.entitlement = s.entitlement AND e.ts >= s.ts"""

THROUGHPUT = f"""\
SELECT
    t,
    avg(usage_throughput) AS usage,
    avg(limit_throughput) AS limit,
    avg(guarantee_throughput) AS guarantee,
    avg(burst_throughput) AS burst
FROM
(
{_STATE_WITH_SPEC}
)
GROUP BY t
ORDER BY t"""

KV = f"""\
SELECT t, avg(usage_kv) AS usage, avg(limit_kv) AS limit, avg(burst_kv) AS burst
FROM
(
{_STATE_WITH_SPEC}
)
GROUP BY t
ORDER BY t"""

CONCURRENCY = f"""\
SELECT t, avg(usage_concurrency) AS usage, avg(limit_concurrency) AS limit, avg(burst_concurrency) AS burst
FROM
(
{_STATE_WITH_SPEC}
)
GROUP BY t
ORDER BY t"""

DEBT = f"""\
SELECT
    $__timeInterval(ts) AS t,
    avg(s.debt) AS debt,
    max(s.debt) AS max_debt,
    avg(s.effective_weight) AS effective_weight
FROM entitlement_state AS s
WHERE {_THIS_STATE} AND $__timeFilter(ts)
GROUP BY t
ORDER BY t"""


def _latency(sketch: str, count: str, slo: str) -> str:
    """Percentiles of one rollup sketch per bucket (milliseconds / 1000), against the SLO in force at the
    bucket's start; buckets without samples are left out."""
    return f"""\
SELECT l.t AS t, l.p50 AS p50, l.p90 AS p90, l.p99 AS p99, s.slo AS slo
FROM
(
    SELECT
        t, entitlement, toDateTime64(t, 3, 'UTC') AS t_ms,
        q[1] / 1000 AS p50, q[2] / 1000 AS p90, q[3] / 1000 AS p99
    FROM
    (
        SELECT
            $__timeInterval(minute) AS t,
            entitlement,
            sum({count}) AS n,
            quantilesDDMerge(0.01, 0.5, 0.9, 0.99)({sketch}) AS q
        FROM request_rollup_1m
        WHERE {_THIS_STATE} AND $__timeFilter(minute)
        GROUP BY t, entitlement
    )
    WHERE n > 0
) AS l
ASOF LEFT JOIN
(
    SELECT entitlement, ts, if(deleted = 1, NULL, {slo}) AS slo
    FROM entitlement_specs
    WHERE entitlement = ${{entitlement:sqlstring}}
) AS s ON l.entitlement = s.entitlement AND l.t_ms >= s.ts
ORDER BY t"""


TTFT = _latency("ttft_ms_q", "ttft_n", "slo_ttft_s")
TPOT = _latency("tpot_ms_q", "tpot_n", "slo_tpot_s")

REFUSALS = f"""\
SELECT
    $__timeInterval(minute) AS t,
    if(refused_dimension = '', 'none named', refused_dimension) AS dimension,
    sum(events) AS refusals
FROM request_rollup_1m
WHERE {_THIS_STATE} AND $__timeFilter(minute) AND outcome = 'refused'
GROUP BY t, dimension
ORDER BY t, dimension"""

LATEST_REFUSED = f"""\
SELECT
    ts AS time,
    request_id,
    refused_dimension AS dimension,
    status_code,
    retry_after_s,
    prompt_tokens,
    max_tokens
FROM request_events
WHERE {_THIS_STATE} AND $__timeFilter(ts) AND phase = 'decision' AND outcome = 'refused'
ORDER BY ts DESC, event_id DESC
LIMIT 50"""

DASHBOARD = Dashboard(
    uid="tokenpools-entitlement",
    title="Token pools: entitlement detail",
    description="One entitlement: usage against its limits, guarantee and burst, debt and weight, latency "
                "against its SLO, and its refusals.",
    source=Source.CLICKHOUSE,
    variables=(
        Variable("pool", "Pool", "SELECT DISTINCT pool FROM pool_specs ORDER BY pool"),
        Variable("entitlement", "Entitlement",
                 "SELECT DISTINCT entitlement FROM entitlement_specs WHERE pool = ${pool:sqlstring} "
                 "ORDER BY entitlement"),
    ),
    links=("tokenpools-pools", "tokenpools-tenants"),
    rows=(
        Row("Throughput", (
            Panel(
                title="Usage against limit, guarantee and burst (weighted tokens/s)",
                answers="How much throughput did the entitlement use against the limit the pipeline gave it, "
                        "the guarantee it was sold and its burst ceiling?",
                viz=Viz.TIMESERIES, targets=(Target(THROUGHPUT),), unit="short", width=24,
                columns=("t", "usage", "limit", "guarantee", "burst"),
            ),
        )),
        Row("KV cache and concurrency", (
            Panel(
                title="KV cache usage against its limit (tokens)",
                answers="How much KV cache did the entitlement hold against its limit and its burst ceiling?",
                viz=Viz.TIMESERIES, targets=(Target(KV),), unit="short",
                columns=("t", "usage", "limit", "burst"),
            ),
            Panel(
                title="Concurrency against its limit (sequences)",
                answers="How many sequences did the entitlement run at once against its limit and burst ceiling?",
                viz=Viz.TIMESERIES, targets=(Target(CONCURRENCY),), unit="short",
                columns=("t", "usage", "limit", "burst"),
            ),
        )),
        Row("Fairness", (
            Panel(
                title="Debt and effective weight",
                answers="How much debt did the entitlement carry (average and largest) and what weight did the "
                        "allocator give it for it?",
                viz=Viz.TIMESERIES, targets=(Target(DEBT),), unit="short", width=24,
                columns=("t", "debt", "max_debt", "effective_weight"),
            ),
        )),
        Row("Latency", (
            Panel(
                title="Time to first token against the SLO",
                answers="What were the entitlement's TTFT p50, p90 and p99 against the TTFT its SLO set then?",
                viz=Viz.TIMESERIES, targets=(Target(TTFT),), unit="s",
                columns=("t", "p50", "p90", "p99", "slo"),
            ),
            Panel(
                title="Time per output token against the SLO",
                answers="What were the entitlement's TPOT p50, p90 and p99 against the TPOT its SLO set then?",
                viz=Viz.TIMESERIES, targets=(Target(TPOT),), unit="s",
                columns=("t", "p50", "p90", "p99", "slo"),
            ),
        )),
        Row("Refusals", (
            Panel(
                title="Refusals by dimension (requests per bucket)",
                answers="How many of the entitlement's requests were refused, and on which dimension?",
                viz=Viz.TIMESERIES, targets=(Target(REFUSALS),), unit="short", width=24, stack=True,
                columns=("t", "dimension", "refusals"),
            ),
            Panel(
                title="Latest refused requests",
                answers="Which of the entitlement's requests were refused last, on which dimension, with what "
                        "status and retry-after?",
                viz=Viz.TABLE, targets=(Target(LATEST_REFUSED),), unit="none", width=24, height=10,
                column_units=(("retry_after_s", "s"),),
                columns=("time", "request_id", "dimension", "status_code", "retry_after_s", "prompt_tokens",
                         "max_tokens"),
            ),
        )),
    ),
)
