"""Expand a ClickHouse panel's SQL the way Grafana and its ClickHouse plugin do before it reaches ClickHouse.

Grafana first interpolates dashboard variables (``${pool:sqlstring}`` is the value as a quoted SQL string
literal, ``'`` doubled); the plugin then replaces its macros (``grafana-clickhouse-datasource`` 4.x):

==============================  ====================================================================
``$__timeFilter(col)``          ``col >= toDateTime(<from s>) AND col <= toDateTime(<to s>)``
``$__timeFilter_ms(col)``       ``col >= fromUnixTimestamp64Milli(<from ms>) AND col <= ... (<to ms>)``
``$__fromTime`` / ``$__toTime``  ``toDateTime(<s>)``; ``_ms`` variants ``fromUnixTimestamp64Milli(<ms>)``
``$__timeInterval(col)``        ``toStartOfInterval(toDateTime(col), INTERVAL <n> second)``
``$__interval_s``               ``<n>``: the panel's interval in whole seconds, at least 1
==============================  ====================================================================

The same expansion runs in the tests (on chDB) and in ``tokenpools report``, so a panel that works in the
report works in Grafana with the same data. A macro or variable this module does not know is an error
that names it, never left in the SQL for ClickHouse to misread.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

# Grafana's own "nice" intervals, in seconds: $__interval is the range over the panel's max data points,
# rounded to one of these (public/app/core/utils/kbn's interval steps, in spirit: whole, readable steps).
NICE_INTERVALS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200,
                    86400, 7 * 86400, 30 * 86400, 365 * 86400)
DEFAULT_MAX_POINTS = 300

# Values a variable may take: what the product's names allow (specs are DNS-label-like), so nothing that
# could end a string literal or start a comment reaches the SQL, even quoted.
SAFE_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,252}")

_MACRO = re.compile(r"\$__([A-Za-z_]+)(?:\(([^()]*)\))?")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class MacroError(ValueError):
    """The SQL uses a macro or variable that cannot be expanded; the message names it."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime  # timezone-aware
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value.tzinfo is None:
                raise MacroError(f"time range {name} must carry a time zone (UTC), got a naive {value.isoformat()}")
        if not self.end > self.start:
            raise MacroError(f"time range must end after it starts: {self.start.isoformat()} .. {self.end.isoformat()}")

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @classmethod
    def of_epoch(cls, start_s: float, end_s: float) -> TimeRange:
        if not (math.isfinite(start_s) and math.isfinite(end_s)):
            raise MacroError("time range bounds must be finite")
        return cls(datetime.fromtimestamp(start_s, UTC), datetime.fromtimestamp(end_s, UTC))


def interval_seconds(time_range: TimeRange, max_points: int = DEFAULT_MAX_POINTS) -> int:
    """The interval Grafana would give a panel: the range over its max data points, rounded up to a nice step."""
    if max_points < 1:
        raise MacroError(f"max_points must be at least 1, got {max_points}")
    raw = time_range.seconds / max_points
    return next((step for step in NICE_INTERVALS_S if step >= raw), NICE_INTERVALS_S[-1])


def sqlstring(value: str) -> str:
    """Grafana's ``:sqlstring`` format: a single-quoted literal with ``'`` doubled."""
    return "'" + value.replace("'", "''") + "'"


def interpolate(sql: str, variables: Mapping[str, str]) -> str:
    """Replace ``${name:sqlstring}`` (and raw ``${name}`` / ``$name``) with the variable's value."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name.startswith("__"):
            return match.group(0)  # a macro, not a variable: the plugin's turn
        fmt = match.group(2)
        if name not in variables:
            raise MacroError(f"variable ${name} has no value (known: {', '.join(sorted(variables)) or 'none'})")
        value = variables[name]
        if not SAFE_VALUE.fullmatch(value):
            raise MacroError(f"variable ${name}: value is not a name (letters, digits, . _ : @ / -; at most 253)")
        if fmt is None:
            return value
        if fmt == "sqlstring":
            return sqlstring(value)
        raise MacroError(f"variable ${name}: format :{fmt} is not supported (use :sqlstring)")

    return _VARIABLE.sub(replace, sql)


def _column(macro: str, argument: str | None) -> str:
    column = (argument or "").strip()
    if not _COLUMN.fullmatch(column):
        raise MacroError(f"$__{macro}(...) takes one column name, got {column[:40]!r}")
    return column


def expand_macros(sql: str, time_range: TimeRange, interval_s: int) -> str:
    if interval_s < 1:
        raise MacroError(f"interval must be at least 1 s, got {interval_s}")
    from_s, to_s = int(time_range.start.timestamp()), int(time_range.end.timestamp())
    from_ms, to_ms = int(time_range.start.timestamp() * 1000), int(time_range.end.timestamp() * 1000)

    def replace(match: re.Match[str]) -> str:
        macro, argument = match.group(1), match.group(2)
        if macro == "timeFilter":
            col = _column(macro, argument)
            return f"{col} >= toDateTime({from_s}) AND {col} <= toDateTime({to_s})"
        if macro == "timeFilter_ms":
            col = _column(macro, argument)
            return f"{col} >= fromUnixTimestamp64Milli({from_ms}) AND {col} <= fromUnixTimestamp64Milli({to_ms})"
        if macro == "timeInterval":
            return f"toStartOfInterval(toDateTime({_column(macro, argument)}), INTERVAL {interval_s} second)"
        if argument is not None:
            raise MacroError(f"$__{macro} takes no argument")
        simple = {"fromTime": f"toDateTime({from_s})", "toTime": f"toDateTime({to_s})",
                  "fromTime_ms": f"fromUnixTimestamp64Milli({from_ms})",
                  "toTime_ms": f"fromUnixTimestamp64Milli({to_ms})", "interval_s": str(interval_s)}
        if macro in simple:
            return simple[macro]
        raise MacroError(f"macro $__{macro} is not one the ClickHouse plugin expands here "
                         f"(timeFilter, timeFilter_ms, timeInterval, fromTime, toTime, interval_s)")

    return _MACRO.sub(replace, sql)


def expand(sql: str, time_range: TimeRange, interval_s: int, variables: Mapping[str, str] | None = None) -> str:
    """The SQL ClickHouse receives for this range, interval and variable values."""
    return expand_macros(interpolate(sql, variables or {}), time_range, interval_s)


def variables_used(sql: str) -> set[str]:
    """The dashboard variables the SQL names (macros excluded)."""
    names = {m.group(1) or m.group(3) for m in _VARIABLE.finditer(sql)}
    return {n for n in names if not n.startswith("__")}
