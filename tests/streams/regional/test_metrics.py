"""The global loop's metrics, read back from the registry's own exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from capacity.global_loop import Enforced
from schemas.wire import BadRecords
from streams.regional.metrics import RegionalMetrics

NAMES = {"tokenpools_regional_reports_total", "tokenpools_regional_share", "tokenpools_regional_status",
         "tokenpools_regional_lost_regions", "tokenpools_regional_split_epoch", "tokenpools_regional_writes_total",
         "tokenpools_regional_bad_records_total"}


def samples(m: RegionalMetrics) -> set[str]:
    return {s.name for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


def test_every_metric_is_exported_under_its_name() -> None:
    bad = BadRecords()
    bad.note("t", "invalid", "x")
    m = RegionalMetrics(bad)
    m.verdict("g", "b", "duplicate")
    m.wrote("g")
    m.enforced("g", Enforced((725.0, 1.0, 2.0), (290.0, 0.5, 1.0), "split", 12, lost=("b",)), "split")
    assert samples(m) >= NAMES
    assert m.value("tokenpools_regional_reports_total", entitlement="g", region="b", verdict="duplicate") == 1
    assert m.value("tokenpools_regional_share", entitlement="g", kind="burst", dimension="throughput") == 725
    assert m.value("tokenpools_regional_share", entitlement="g", kind="guarantee", dimension="kv") == 0.5
    assert m.value("tokenpools_regional_status", entitlement="g", status="split") == 1
    assert m.value("tokenpools_regional_status", entitlement="g", status="holding") == 0
    assert m.value("tokenpools_regional_lost_regions", entitlement="g") == 1
    assert m.value("tokenpools_regional_split_epoch", entitlement="g") == 12
    assert m.value("tokenpools_regional_writes_total", entitlement="g") == 1
    assert m.value("tokenpools_regional_bad_records_total", topic="t", reason="invalid") == 1


def test_an_ended_loop_leaves_no_gauges() -> None:
    m = RegionalMetrics(BadRecords())
    m.enforced("g", Enforced((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "waiting"), "waiting")
    assert m.value("tokenpools_regional_split_epoch", entitlement="g") == -1
    m.forget("g")
    m.forget("never-seen")
    assert m.value("tokenpools_regional_share", entitlement="g", kind="burst", dimension="kv") is None
    assert m.value("tokenpools_regional_status", entitlement="g", status="waiting") is None
