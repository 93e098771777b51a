"""Every ClickHouse dashboard panel's SQL, expanded as Grafana would, on chDB over the seeded history.

One seeded database for the module (``tests/streams/history/seed.py``). Each target of each panel, for a
few intervals and variable values, must return exactly the panel's columns, in the conventions of
``dashboards.spec``, and some rows; the variable queries must list the seed's pools and entitlements. Then
values the panels show are compared with answers computed here from the seed's Python records (never from
SQL): refusals by dimension, the latest refused requests, the monthly bill, utilisation per bucket (the
average over state versions, not an average of ratios), guaranteed capacity sold and used, latency against
the SLO in force, and limits against the spec in force.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from dashboards import catalog
from dashboards.clickhouse import entitlement_detail, pools_overview, tenants_cost
from dashboards.macros import TimeRange, expand, interval_seconds, variables_used
from dashboards.spec import Dashboard, Panel, Viz
from schemas.records import Outcome, Phase, PoolState, RequestEvent
from schemas.specs import Tier
from streams.history.catalog import questions
from streams.history.migrate import migrate
from streams.history.store import HistoryStore, QueryResult, open_store
from tests.history_store import store_settings_for
from tests.streams.history import seed as S
from tests.streams.history.test_questions import (
    FINISHED,
    PRICE_PARAMS,
    PRICES,
    Quantile,
    at,
    floor_to,
    mean,
    moment,
    normalised,
    seed,
    spec_in_force,
    tier_usage,
    utc_date,
)

# The seed's whole span, with room for finishes after its end; and a part of it, mid-day to mid-day.
ALL = TimeRange(moment(S.T0_MS - S.HOUR_MS), moment(S.END_MS + S.HOUR_MS))
PART = TimeRange(moment(S.T0_MS + 26 * S.HOUR_MS), moment(S.T0_MS + 50 * S.HOUR_MS))
HOUR_S = 3600
# Variable values to run every panel with: an entitlement with a spec all along, and one whose first spec
# came an hour after its first requests.
CHOICES = ({"pool": "pool-b", "entitlement": "initech-gold"}, {"pool": "pool-a", "entitlement": "acme-flex"})
INTERVALS = (interval_seconds(ALL), HOUR_S)

NUMERIC = ("Float", "UInt", "Int", "Decimal")


@pytest.fixture(scope="module")
def history(chdb_dir: Path) -> Iterator[HistoryStore]:
    settings = store_settings_for(chdb_dir, f"tokenpools_test_dashboards_{os.getpid()}")
    store = open_store(settings)
    try:
        migrate(store, settings)
        S.insert(store, seed())
        yield store
    finally:
        store.command(f"DROP DATABASE IF EXISTS {settings.database}")
        store.close()


def run(store: HistoryStore, sql: str, time_range: TimeRange = ALL, interval_s: int = HOUR_S,
        variables: dict[str, str] | None = None) -> QueryResult:
    return store.query(expand(sql, time_range, interval_s, variables))


def rows(store: HistoryStore, panel: Panel, time_range: TimeRange = ALL, interval_s: int = HOUR_S,
         variables: dict[str, str] | None = None) -> list[dict[str, Any]]:
    (target,) = panel.targets
    result = run(store, target.expr, time_range, interval_s, variables)
    assert tuple(result.columns) == panel.columns, panel.title
    return normalised(result)


def panel(dashboard: Dashboard, title_start: str) -> Panel:
    (found,) = (p for p in dashboard.panels if p.title.startswith(title_start))
    return found


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# -- every panel runs and returns its columns --------------------------------------------------------


def base(type_name: str) -> str:
    for wrapper in ("Nullable(", "LowCardinality("):
        while type_name.startswith(wrapper):
            type_name = type_name[len(wrapper):-1]
    return type_name


def check_conventions(panel: Panel, result: QueryResult) -> None:
    """dashboards.spec's column conventions, on the types the engine returned."""
    types = [base(t) for t in result.types]
    if panel.viz is Viz.TIMESERIES:
        assert panel.columns[0] == "t" and types[0].startswith("DateTime"), (panel.title, types)
        rest = types[1:]
        strings = next((i for i, t in enumerate(rest) if t != "String"), len(rest))
        assert rest[strings:] and all(t.startswith(NUMERIC) for t in rest[strings:]), (panel.title, types)
        times = [row[0] for row in result.rows]
        assert times == sorted(times), f"{panel.title}: not in time order"
    elif panel.viz is Viz.BARCHART:
        assert types[0] == "String" and all(t.startswith(NUMERIC) for t in types[1:]), (panel.title, types)
    elif panel.viz is Viz.STAT:
        assert all(t.startswith(NUMERIC) for t in types) and len(result.rows) == 1, panel.title


@pytest.mark.parametrize("dashboard", catalog.CLICKHOUSE, ids=lambda d: d.uid)
def test_every_panel_returns_its_columns(history: HistoryStore, dashboard: Dashboard) -> None:
    assert dashboard.rows and all(row.panels for row in dashboard.rows)
    declared = {v.name for v in dashboard.variables}
    for p in dashboard.panels:
        assert p.columns and p.answers and p.targets, p.title
        for target in p.targets:
            assert variables_used(target.expr) <= declared, f"{p.title}: a variable the dashboard does not declare"
            for variables in CHOICES:
                for interval_s in INTERVALS:
                    result = run(history, target.expr, ALL, interval_s, variables)
                    assert tuple(result.columns) == p.columns, (p.title, variables, interval_s)
                    assert result.rows, f"{p.title}: no rows for {variables} at {interval_s} s"
                    check_conventions(p, result)


def test_rows_fit_grafanas_24_columns() -> None:
    for dashboard in catalog.CLICKHOUSE:
        for row in dashboard.rows:
            assert row.title
            assert all(0 < p.width <= 24 for p in row.panels)


def test_the_variable_queries_list_the_seeds_pools_and_entitlements(history: HistoryStore) -> None:
    (pool, entitlement) = entitlement_detail.DASHBOARD.variables
    assert (pool.name, entitlement.name) == ("pool", "entitlement")
    pools = [r[0] for r in run(history, pool.query).rows]
    assert pools == sorted(p.name for _, p in seed().pool_specs) == ["pool-a", "pool-b"]
    for name in pools:
        listed = [r[0] for r in run(history, entitlement.query, variables={"pool": name}).rows]
        specified = sorted({v.entitlement for v in seed().spec_versions if v.spec and v.spec.pool == name})
        assert listed == specified and listed, name
    assert "${pool:sqlstring}" in entitlement.query


# -- values against the seed --------------------------------------------------------------------------


def refused(entitlement: str, time_range: TimeRange) -> list[RequestEvent]:
    lo, hi = round(time_range.start.timestamp() * 1000), round(time_range.end.timestamp() * 1000)
    return [ev for ev in seed().events if ev.entitlement == entitlement and ev.phase is Phase.DECISION
            and ev.outcome is Outcome.REFUSED and lo <= at(ev) <= hi]


def test_refusals_by_dimension_for_one_entitlement(history: HistoryStore) -> None:
    choice = {"pool": "pool-b", "entitlement": "initech-gold"}
    got = rows(history, panel(entitlement_detail.DASHBOARD, "Refusals by dimension"), variables=choice)
    expected = Counter((floor_to(at(ev), S.HOUR_MS), ev.refused_dimension.value if ev.refused_dimension
                        else "none named") for ev in refused("initech-gold", ALL))
    assert {(r["t"], r["dimension"]): r["refusals"] for r in got} == dict(expected)
    by_dimension = Counter(dim for _, dim in expected.elements())
    assert set(by_dimension) >= {"throughput", "kv"}, "the seed's hand-placed refusals are in it"


@pytest.mark.parametrize("time_range", [ALL, PART], ids=["all", "part"])
def test_latest_refused_requests(history: HistoryStore, time_range: TimeRange) -> None:
    choice = {"pool": "pool-b", "entitlement": "globex-batch"}
    got = rows(history, panel(entitlement_detail.DASHBOARD, "Latest refused"), time_range, variables=choice)
    every = sorted(refused("globex-batch", time_range), key=lambda ev: (at(ev), ev.id), reverse=True)
    if time_range is ALL:
        assert len(every) > 50, "more refusals than the table shows: the limit and the order matter"
    else:
        assert 0 < len(every) < len(refused("globex-batch", ALL)), "the range leaves some out"
    assert [(r["time"], r["request_id"], r["dimension"], r["status_code"], r["retry_after_s"], r["prompt_tokens"],
             r["max_tokens"]) for r in got] == [
        (at(ev), ev.request_id, ev.refused_dimension.value if ev.refused_dimension else "", ev.status_code,
         ev.retry_after_s, ev.prompt_tokens, ev.max_tokens) for ev in every[:50]]


def month_of(ms: int) -> date:
    return utc_date(ms).replace(day=1)


def bill(finishes: list[RequestEvent]) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": sum(ev.prompt_tokens for ev in finishes),
                           "output_tokens": sum(ev.output_tokens for ev in finishes)}
    for tier in Tier:
        prompt_price, output_price = PRICES[tier]
        out[f"{tier.value}_charge"] = sum(
            ev.prompt_tokens / 1000 * prompt_price + ev.output_tokens / 1000 * output_price
            for ev in finishes if ev.tier is tier)
    out["charge"] = out["guaranteed_charge"] + out["elastic_charge"] + out["spot_charge"]
    return out


def test_the_price_list_is_question_06s() -> None:
    prices = tenants_cost.PRICES_PER_1K
    assert prices == {tier.value: PRICES[tier] for tier in Tier}


def test_chargeback_tokens_and_charges_per_tenant_for_a_month(history: HistoryStore) -> None:
    finishes = [ev for ev in seed().events if ev.phase is Phase.FINISH and ev.outcome in FINISHED]
    this_month = month_of(S.END_MS)
    got = rows(history, panel(tenants_cost.DASHBOARD, "Chargeback"), PART)  # PART lies within this month
    assert {r["month"] for r in got} == {this_month}
    tenants = sorted({ev.tenant for ev in finishes if month_of(at(ev)) == this_month})
    assert [r["tenant"] for r in got] == tenants
    for r in got:
        expected = bill([ev for ev in finishes if ev.tenant == r["tenant"] and month_of(at(ev)) == this_month])
        assert (r["prompt_tokens"], r["output_tokens"]) == (expected["prompt_tokens"], expected["output_tokens"])
        assert all(close(r[k], v) for k, v in expected.items()), (r, expected)


def test_chargeback_bills_whole_months(history: HistoryStore) -> None:
    """A range that starts 30 minutes before this month bills last month whole (its first 90 minutes too)."""
    start = S.T0_MS + 90 * S.MINUTE_MS
    got = rows(history, panel(tenants_cost.DASHBOARD, "Chargeback"),
               TimeRange(moment(start), moment(start + S.HOUR_MS)))
    last_month = month_of(S.T0_MS)
    early = [ev for ev in seed().events
             if ev.phase is Phase.FINISH and at(ev) < start and month_of(at(ev)) == last_month]
    assert early, "finishes before the range's start, in its first month"
    billed = {r["tenant"]: r["prompt_tokens"] for r in got if r["month"] == last_month}
    whole = defaultdict(int)
    for ev in seed().events:
        if ev.phase is Phase.FINISH and month_of(at(ev)) == last_month:
            whole[ev.tenant] += ev.prompt_tokens
    assert billed == dict(whole)


def test_chargeback_is_question_06_over_whole_months(history: HistoryStore) -> None:
    """One definition: the panel gives the question's bill at the same prices."""
    got = run(history, panel(tenants_cost.DASHBOARD, "Chargeback").targets[0].expr)
    first = month_of(round(ALL.start.timestamp() * 1000))
    last = month_of(round(ALL.end.timestamp() * 1000))
    after = date(last.year + last.month // 12, last.month % 12 + 1, 1)
    whole_months = {"start": datetime(first.year, first.month, 1, tzinfo=UTC),
                    "end": datetime(after.year, after.month, 1, tzinfo=UTC)}
    answer = history.query(questions()["chargeback"].sql, {**whole_months, **PRICE_PARAMS})
    assert got.columns == answer.columns
    assert len(got.rows) == len(answer.rows) > 0
    for mine, theirs in zip(got.rows, answer.rows, strict=True):
        assert all(a == b or close(a, b) for a, b in zip(mine, theirs, strict=True)), (mine, theirs)


def pool_buckets(pool: str) -> dict[int, list[PoolState]]:
    out: dict[int, list[PoolState]] = defaultdict(list)
    for s in seed().pool_states:
        if s.id == pool:
            out[floor_to(at(s), S.HOUR_MS)].append(s)
    return out


def test_utilisation_is_average_usage_over_average_capacity(history: HistoryStore) -> None:
    got = {(r["pool"], r["t"]): r for r in rows(history, panel(pools_overview.DASHBOARD, "Utilisation"))}
    discriminating = 0
    for pool in ("pool-a", "pool-b"):
        for bucket, versions in pool_buckets(pool).items():
            r = got[(pool, bucket)]
            usage = mean(sum(tier_usage(s, tier) for tier in Tier) for s in versions)
            expected = usage / mean(s.capacity.throughput for s in versions)
            assert close(r["throughput"], expected), (pool, bucket, r["throughput"], expected)
            kv = mean(sum(u.kv for u in s.usage.values()) for s in versions) / mean(s.capacity.kv for s in versions)
            assert close(r["kv"], kv), (pool, bucket)
            ratios = mean(sum(tier_usage(s, tier) for tier in Tier) / s.capacity.throughput for s in versions)
            discriminating += not math.isclose(ratios, expected, rel_tol=1e-6)
    assert len(got) == len(pool_buckets("pool-a")) + len(pool_buckets("pool-b"))
    assert discriminating > 10, "buckets where the average of ratios differs: the check tells them apart"


def test_spot_backfill_one_pool(history: HistoryStore) -> None:
    got = {r["t"]: r for r in rows(history, panel(pools_overview.DASHBOARD, "Idle capacity")) if r["pool"] == "pool-a"}
    for bucket, versions in pool_buckets("pool-a").items():
        idle = [max(0.0, s.capacity.throughput - tier_usage(s, Tier.GUARANTEED) - tier_usage(s, Tier.ELASTIC))
                for s in versions]
        assert close(got[bucket]["idle"], mean(idle)) and close(got[bucket]["spot"],
                                                                mean(tier_usage(s, Tier.SPOT) for s in versions))


def test_stranded_capacity_is_unused_capacity_over_capacity_per_bucket(history: HistoryStore) -> None:
    got = {(r["pool"], r["t"]): r for r in rows(history, panel(pools_overview.DASHBOARD, "Stranded capacity"))}
    for pool in ("pool-a", "pool-b"):
        for bucket, versions in pool_buckets(pool).items():
            capacity = sum(s.capacity.throughput for s in versions)
            stranded = sum(max(0.0, max(0.0, s.capacity.throughput - tier_usage(s, Tier.GUARANTEED)
                                        - tier_usage(s, Tier.ELASTIC)) - tier_usage(s, Tier.SPOT))
                           for s in versions)
            spot = sum(tier_usage(s, Tier.SPOT) for s in versions)
            r = got[(pool, bucket)]
            assert close(r["stranded_share"], stranded / capacity), (pool, bucket)
            assert close(r["spot_share"], spot / capacity), (pool, bucket)
            assert 0 <= r["stranded_share"] <= 1


def test_guaranteed_capacity_sold_and_used(history: HistoryStore) -> None:
    end_ms = round(ALL.end.timestamp() * 1000)
    sold: dict[tuple[str, str], float] = defaultdict(float)
    for name in {v.entitlement for v in seed().spec_versions}:
        spec = spec_in_force(name, end_ms)
        if spec is not None and spec.tier is Tier.GUARANTEED:
            sold[(spec.pool, spec.tenant)] += spec.guarantee.throughput
    per_entitlement: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for s in seed().entitlement_states:
        spec = spec_in_force(s.id, at(s))
        if s.tier is Tier.GUARANTEED and spec is not None:
            per_entitlement[(s.pool, spec.tenant, s.id)].append(s.usage.throughput)
    used: dict[tuple[str, str], float] = defaultdict(float)
    for (pool, tenant, _), usages in per_entitlement.items():
        used[(pool, tenant)] += mean(usages)
    got = rows(history, panel(tenants_cost.DASHBOARD, "Guaranteed capacity sold"))
    assert [(r["pool"], r["tenant"]) for r in got] == sorted(set(sold) | set(used))
    assert sold[("pool-a", "acme")] == S.POOL_GUARANTEES["pool-a"]
    for r in got:
        key = (r["pool"], r["tenant"])
        assert close(r["guaranteed_sold"], sold[key]) and close(r["guaranteed_used"], used[key]), r
        assert close(r["used_share"], used[key] / sold[key] if sold[key] else None), r


def test_ttft_quantiles_against_the_slo_in_force(history: HistoryStore) -> None:
    """initech-gold's SLO was relaxed a day in: each bucket shows the one in force at its start."""
    choice = {"pool": "pool-b", "entitlement": "initech-gold"}
    got = rows(history, panel(entitlement_detail.DASHBOARD, "Time to first token"), variables=choice)
    samples: dict[int, list[float]] = defaultdict(list)
    for ev in seed().events:
        if ev.entitlement == "initech-gold" and ev.phase is Phase.FINISH and ev.ttft_s is not None:
            samples[floor_to(at(ev), S.HOUR_MS)].append(ev.ttft_s)
    assert [r["t"] for r in got] == sorted(samples)
    for r in got:
        xs = tuple(samples[r["t"]])
        for q in (0.5, 0.9, 0.99):
            assert Quantile(xs, q).allows(r[f"p{round(q * 100)}"]), (r, q)
        spec = spec_in_force("initech-gold", r["t"])
        assert spec is not None and spec.slo is not None and r["slo"] == spec.slo.ttft_seconds
    assert {r["slo"] for r in got} == {0.3, 0.6}


def test_throughput_against_the_spec_in_force(history: HistoryStore) -> None:
    """acme-flex had no spec for its first hour: no guarantee or burst then, its spec's after."""
    choice = {"pool": "pool-a", "entitlement": "acme-flex"}
    got = rows(history, panel(entitlement_detail.DASHBOARD, "Usage against limit"), variables=choice)
    states: dict[int, list[Any]] = defaultdict(list)
    for s in seed().entitlement_states:
        if s.id == "acme-flex":
            states[floor_to(at(s), S.HOUR_MS)].append(s)
    assert [r["t"] for r in got] == sorted(states)
    for r in got:
        versions = states[r["t"]]
        assert close(r["usage"], mean(s.usage.throughput for s in versions))
        assert close(r["limit"], mean(s.limits.throughput for s in versions))
        specs = [spec_in_force("acme-flex", at(s)) for s in versions]
        in_force = [spec for spec in specs if spec is not None]
        assert close(r["burst"], mean(spec.burst.throughput for spec in in_force) if in_force else None), r
        assert close(r["guarantee"], 0.0 if in_force else None), r
    assert got[0]["burst"] is None and got[1]["burst"] == 600


@pytest.mark.parametrize("interval_s", [HOUR_S, 30], ids=["hour", "under-a-minute"])
def test_usage_by_tenant_is_a_rate(history: HistoryStore, interval_s: int) -> None:
    """Weighted tokens charged per bucket over the bucket's seconds; buckets under the rollup's minute are
    minutes (what the rollup holds), so their rate is per minute, not the tokens of a minute over 30 s."""
    width_ms = max(interval_s, 60) * 1000
    lo, hi = round(PART.start.timestamp() * 1000), round(PART.end.timestamp() * 1000)
    charged: dict[tuple[int, str], float] = defaultdict(float)
    for ev in seed().events:  # the range filters the rollup's minutes: the minute at its end is in
        if ev.phase is Phase.FINISH and lo <= floor_to(at(ev), S.MINUTE_MS) <= hi:
            charged[(floor_to(at(ev), width_ms), ev.tenant)] += ev.charged.throughput if ev.charged else 0.0
    got = rows(history, panel(tenants_cost.DASHBOARD, "Usage by tenant"), PART, interval_s)
    expected = {k: v / (width_ms / 1000) for k, v in charged.items()}
    assert {(r["t"], r["tenant"]) for r in got} == set(expected)
    assert all(close(r["usage"], expected[(r["t"], r["tenant"])]) for r in got)
