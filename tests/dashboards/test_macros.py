"""dashboards.macros: each macro and variable expanded as the ClickHouse plugin and Grafana do (the expected
strings are written out by hand), every refusal a MacroError that names what it refused, and the time
filter's bounds on a real engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dashboards.macros import (
    MacroError,
    TimeRange,
    expand,
    expand_macros,
    interpolate,
    interval_seconds,
    sqlstring,
    variables_used,
)
from streams.history.store import HistoryStore

# 2024-05-01 00:00:00.250 UTC .. 2024-05-01 06:00:00.750 UTC
FROM_S, TO_S = 1714521600, 1714543200
RANGE = TimeRange.of_epoch(FROM_S + 0.25, TO_S + 0.75)


def test_time_filter() -> None:
    assert expand_macros("WHERE $__timeFilter(ts)", RANGE, 60) == (
        "WHERE ts >= toDateTime(1714521600) AND ts <= toDateTime(1714543200)")


def test_time_filter_takes_a_qualified_column() -> None:
    assert expand_macros("$__timeFilter(e.ts)", RANGE, 60) == (
        "e.ts >= toDateTime(1714521600) AND e.ts <= toDateTime(1714543200)")


def test_time_filter_ms_keeps_the_milliseconds() -> None:
    assert expand_macros("$__timeFilter_ms(ts)", RANGE, 60) == (
        "ts >= fromUnixTimestamp64Milli(1714521600250) AND ts <= fromUnixTimestamp64Milli(1714543200750)")


def test_from_and_to() -> None:
    sql = "$__fromTime, $__toTime, $__fromTime_ms, $__toTime_ms"
    assert expand_macros(sql, RANGE, 60) == (
        "toDateTime(1714521600), toDateTime(1714543200), "
        "fromUnixTimestamp64Milli(1714521600250), fromUnixTimestamp64Milli(1714543200750)")


def test_time_interval_and_interval_s() -> None:
    sql = "SELECT $__timeInterval(minute) AS t, sum(x) / $__interval_s"
    assert expand_macros(sql, RANGE, 600) == (
        "SELECT toStartOfInterval(toDateTime(minute), INTERVAL 600 second) AS t, sum(x) / 600")


def test_expand_interpolates_variables_before_macros() -> None:
    sql = "WHERE pool = ${pool:sqlstring} AND $__timeFilter(ts)"
    assert expand(sql, RANGE, 60, {"pool": "pool-a"}) == (
        "WHERE pool = 'pool-a' AND ts >= toDateTime(1714521600) AND ts <= toDateTime(1714543200)")


def test_sqlstring_quotes_and_doubles_quotes() -> None:
    assert sqlstring("pool-a") == "'pool-a'"
    assert sqlstring("o'brien") == "'o''brien'"
    assert sqlstring("''") == "''''''"


def test_variable_forms() -> None:
    values = {"pool": "pool-a", "entitlement": "acme.gold@eu/1:x"}
    assert interpolate("${pool:sqlstring} ${pool} $pool", values) == "'pool-a' pool-a pool-a"
    assert interpolate("e = ${entitlement:sqlstring}", values) == "e = 'acme.gold@eu/1:x'"
    assert interpolate("$__timeFilter(ts)", {}) == "$__timeFilter(ts)"  # the plugin's, left for it


def test_variables_used_leaves_macros_out() -> None:
    sql = "WHERE pool = ${pool:sqlstring} AND e = $entitlement AND $__timeFilter(ts) AND $__interval_s > 0"
    assert variables_used(sql) == {"pool", "entitlement"}


@pytest.mark.parametrize(("sql", "named"), [
    ("$__timeGroup(ts, '1m')", "$__timeGroup"),
    ("SELECT $__conditionalAll(x, $pool)", "$__conditionalAll"),
    ("WHERE $__timeFilter()", "$__timeFilter"),
    ("WHERE $__timeFilter(ts OR 1=1)", "$__timeFilter"),
    ("$__timeInterval(toDate(ts))", "$__timeInterval"),
    ("LIMIT $__interval_s(5)", "$__interval_s"),
    ("$__fromTime(ts)", "$__fromTime"),
])
def test_a_macro_that_cannot_be_expanded_is_named(sql: str, named: str) -> None:
    with pytest.raises(MacroError, match=named.replace("$", "[$]")):
        expand_macros(sql, RANGE, 60)


def test_a_variable_without_a_value_is_named() -> None:
    with pytest.raises(MacroError, match=r"variable \$tenant has no value \(known: pool\)"):
        interpolate("tenant = ${tenant:sqlstring}", {"pool": "pool-a"})
    with pytest.raises(MacroError, match=r"\$pool has no value \(known: none\)"):
        interpolate("pool = $pool", {})


@pytest.mark.parametrize("value", ["a' OR '1'='1", "", "pool a", "-pool", "pool;DROP", "x" * 254, "$__fromTime",
                                   "pool\n", "p'--"])
def test_an_unsafe_value_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(MacroError, match=r"variable \$pool: value is not a name"):
        interpolate("pool = ${pool:sqlstring}", {"pool": value})


def test_an_unknown_format_is_named() -> None:
    with pytest.raises(MacroError, match=r"variable \$pool: format :csv is not supported"):
        interpolate("pool IN (${pool:csv})", {"pool": "pool-a"})


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(MacroError, match="start must carry a time zone"):
        TimeRange(datetime(2024, 5, 1), datetime(2024, 5, 2, tzinfo=UTC))
    with pytest.raises(MacroError, match="end must carry a time zone"):
        TimeRange(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2))


def test_a_range_must_end_after_it_starts() -> None:
    moment = datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(MacroError, match="must end after it starts"):
        TimeRange(moment, moment)
    with pytest.raises(MacroError, match="finite"):
        TimeRange.of_epoch(0, float("inf"))


def test_an_interval_below_one_second_is_refused() -> None:
    with pytest.raises(MacroError, match="at least 1 s, got 0"):
        expand_macros("$__interval_s", RANGE, 0)


@pytest.mark.parametrize(("seconds", "max_points", "expected"), [
    (6 * 3600, 300, 120),  # 72 s rounds up to 2 min
    (3600, 300, 15),  # 12 s
    (300, 300, 1),  # exactly 1 s
    (301, 300, 2),  # just over: the next step
    (1, 300, 1),  # never below 1 s
    (30 * 86400, 300, 10800),  # 8,640 s rounds up to 3 h
    (3 * 86400, 300, 900),  # 864 s
    (600, 1, 600),
    (100 * 365 * 86400, 300, 365 * 86400),  # beyond the largest step: the largest
])
def test_interval_seconds_rounds_up_to_a_nice_step(seconds: int, max_points: int, expected: int) -> None:
    assert interval_seconds(TimeRange.of_epoch(FROM_S, FROM_S + seconds), max_points) == expected


def test_interval_seconds_needs_a_point() -> None:
    with pytest.raises(MacroError, match="max_points must be at least 1, got 0"):
        interval_seconds(RANGE, 0)


def test_the_time_filter_on_chdb_selects_the_range_bounds_included(store: HistoryStore) -> None:
    """As the plugin does: rows at the range's first and last second are in, one millisecond outside is out;
    the seconds filter drops the range's sub-second part, the ms filter keeps it."""
    start = datetime(2024, 5, 1, 0, 0, 0, tzinfo=UTC)
    end = start + timedelta(hours=1)
    ms = timedelta(milliseconds=1)
    at = {"before": start - ms, "first": start, "inside": start + timedelta(minutes=30), "last": end,
          "after": end + ms, "late": end + timedelta(seconds=2)}
    store.command("CREATE TABLE points (name String, ts DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY ts")
    store.insert("points", {"name": list(at), "ts": list(at.values())}, "points-1")

    def selected(macro: str, time_range: TimeRange) -> list[str]:
        sql = expand(f"SELECT name FROM points WHERE {macro}(ts) ORDER BY ts", time_range, 60)
        return [row[0] for row in store.query(sql).rows]

    assert selected("$__timeFilter", TimeRange(start, end)) == ["first", "inside", "last"]
    assert selected("$__timeFilter_ms", TimeRange(start, end)) == ["first", "inside", "last"]
    assert selected("$__timeFilter_ms", TimeRange(start - ms, end + ms)) == [
        "before", "first", "inside", "last", "after"]
    # Whole seconds: 00:00:00.500 .. 01:00:01.500 filters as 00:00:00 .. 01:00:01.
    wide = TimeRange(start + 500 * ms, end + timedelta(milliseconds=1500))
    assert selected("$__timeFilter", wide) == ["first", "inside", "last", "after"]
    assert selected("$__timeFilter_ms", wide) == ["inside", "last", "after"]
