"""dashboards.promql: metric names out of PromQL, summed ratios, and names out of a text exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest

from dashboards.catalog import PROMETHEUS
from dashboards.promql import PromQLError, exposed_names, metric_names, summed_ratios

PRODUCT_PREFIXES = ("tokenpools_admitter_", "tokenpools_streams_", "tokenpools_history_")


@pytest.mark.parametrize(("expr", "names"), [
    ('rate(a_total{pool=~"$pool", kind="sum"}[5m])', {"a_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}),
    ("a / on(pool) group_left b", {"a", "b"}),
    ("a / on(pool) group_left(tier) b", {"a", "b"}),
    ("sum(rate(x[1m])) / sum(rate(y[1m]))", {"x", "y"}),
    ("sum without (instance, job) (x)", {"x"}),
    ("sum(x) by (pool, le)", {"x"}),
    ('{__name__="by_name", job="a"}', {"by_name"}),
    ('{__name__=~"a|b"}', set()),  # a regex names no single metric
    ("rate(x_total[$__rate_interval])", {"x_total"}),
    ("max_over_time(x[10m:1m]) > bool Inf", {"x"}),
    ("x offset 5m unless y", {"x", "y"}),
    ("topk(3, x) or vector(0)", {"x"}),
    ('label_replace(x, "dst", "$1", "src", "(.*)")', {"x"}),
    ('count_values("value", build_info)', {"build_info"}),
    ("recorded:rate5m{a='b'} * 1e3 - 0x10", {"recorded:rate5m"}),
    ("# a comment\nup", {"up"}),
    ("label_values(q_len, pool)", {"q_len"}),
    ('label_values(q_len{job="x"}, pool)', {"q_len"}),
    ("label_values(pool)", set()),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_unreadable_promql_is_an_error() -> None:
    with pytest.raises(PromQLError):
        summed_ratios("sum(x")
    with pytest.raises(PromQLError):
        metric_names("sum by (le (x)")
    with pytest.raises(PromQLError):
        metric_names("x ; y")


@pytest.mark.parametrize("expr", [
    "sum(rate(x[1m])) / sum(rate(y[1m]))",
    "sum by (pool) (rate(x[1m])) / on(pool) group_left sum by (pool) (rate(y[1m]))",
    "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))",
    "sum(rate(x_bytes[1m]) / 1024)",  # a unit conversion, not a ratio
    "max by (pool) (tokenpools_admitter_state_staleness_seconds)",
    "sum(rate(x_seconds_sum[5m]))",
    "avg(some_ratio)",
])
def test_sums_that_add_up(expr: str) -> None:
    assert summed_ratios(expr) == []


@pytest.mark.parametrize(("expr", "flagged"), [
    ("sum(rate(x[1m]) / rate(y[1m]))", "division"),
    ("sum by (pool) (a / on(pool) group_left b)", "division"),
    ("sum(tokenpools_admitter_state_staleness_seconds)", "tokenpools_admitter_state_staleness_seconds"),
    ("sum by (pool) (tokenpools_admitter_kafka_producer_connected)", "kafka_producer_connected"),
    ("sum(x) by (pool) + sum(cache_hit_ratio)", "cache_hit_ratio"),
    ("sum(histogram_quantile(0.9, rate(h_bucket[5m])))", "quantile"),
    ("SUM(up)", "up"),
])
def test_summed_ratios_are_flagged(expr: str, flagged: str) -> None:
    problems = summed_ratios(expr)
    assert len(problems) == 1 and flagged in problems[0], problems


def test_summed_ratios_takes_names_of_its_own() -> None:
    assert summed_ratios("sum(fill_level)") == []
    assert summed_ratios("sum(fill_level)", ratio_names={"fill_level"})


def test_exposed_names_from_each_family_type() -> None:
    r = CollectorRegistry()
    Counter("c", "a counter", ["x"], registry=r)  # no label values yet: no samples, still exposed
    Counter("d_total", "a counter named with its suffix", registry=r).inc()
    Gauge("g", "a gauge", registry=r).set(1)
    Histogram("h_seconds", "a histogram", registry=r, buckets=(1,)).observe(0.5)
    Summary("s", "a summary", registry=r).observe(1)
    assert exposed_names(generate_latest(r).decode()) == {
        "c_total", "c_created",
        "d_total", "d_created",
        "g",
        "h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "h_seconds_created",
        "s", "s_sum", "s_count", "s_created",
    }


def _targets() -> list[tuple[str, str, str]]:
    return [(d.uid, p.title, t.expr) for d in PROMETHEUS for p in d.panels for t in p.targets]


@pytest.mark.parametrize(("uid", "title", "expr"), _targets(), ids=[f"{u}:{t}" for u, t, _ in _targets()])
def test_every_dashboard_target(uid: str, title: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{uid} / {title}: selects no metric"
    assert all(n.startswith(PRODUCT_PREFIXES) for n in names), f"{uid} / {title}: {names}"
    assert summed_ratios(expr) == [], f"{uid} / {title}"


def test_every_variable_reads_a_product_metric() -> None:
    for d in PROMETHEUS:
        for v in d.variables:
            names = metric_names(v.query)
            assert names and all(n.startswith(PRODUCT_PREFIXES) for n in names), (d.uid, v.name, names)


def test_pipeline_and_history_metrics_the_dashboards_read_exist() -> None:
    """The workers' and the history process's registries are built here as the processes build them, so
    a renamed metric fails now; the admitters' (and all three live) are checked by the integration test."""
    from schemas.wire import BadRecords
    from streams.history.metrics import HistoryMetrics
    from streams.metrics import PipelineMetrics

    exposed = exposed_names(PipelineMetrics(BadRecords()).render().decode())
    exposed |= exposed_names(generate_latest(HistoryMetrics().registry).decode())
    read = {n for _, _, expr in _targets() for n in metric_names(expr)}
    missing = {n for n in read if n.startswith(("tokenpools_streams_", "tokenpools_history_"))} - exposed
    assert not missing
