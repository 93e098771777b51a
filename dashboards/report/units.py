"""Numbers as Grafana shows them for a panel's unit id (``short``, ``percentunit``, ``s``, ``reqps``, ...),
so the report's axes and tables read like the dashboards. Unknown ids fall back to ``short`` with the id
as a suffix rather than failing: a unit is presentation, never a reason to lose a panel."""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Any

_ISO_UTC = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(:\d{2}(?:\.\d+)?)?(Z|[+-]00:?00)?$")
_SI = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
_IEC = ((2.0**40, "TiB"), (2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB"))


def number(value: float) -> str:
    """A readable number: three significant figures below 100, whole numbers with separators above."""
    if not math.isfinite(value):
        return "-" if math.isnan(value) else ("∞" if value > 0 else "-∞")
    size = abs(value)
    if size == 0:
        return "0"
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 1:
        text = f"{value:.2f}" if size < 10 else f"{value:.1f}"
    else:
        text = f"{value:.3g}"
        if "e" in text:
            return text
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(value: float, steps: tuple[tuple[float, str], ...], sep: str = "") -> str:
    for scale, suffix in steps:
        if abs(value) >= scale:
            return f"{number(value / scale)}{sep}{suffix}"
    return number(value)


def _duration(seconds: float) -> str:
    size = abs(seconds)
    if size == 0 or not math.isfinite(seconds):
        return number(seconds) + (" s" if seconds == 0 else "")
    if size < 1e-3:
        return f"{number(seconds * 1e6)} µs"
    if size < 1:
        return f"{number(seconds * 1e3)} ms"
    if size < 60:
        return f"{number(seconds)} s"
    if size < 3600:
        return f"{number(seconds / 60)} min"
    if size < 86400:
        return f"{number(seconds / 3600)} h"
    return f"{number(seconds / 86400)} day"


def format_value(value: float, unit: str) -> str:
    """One number in the panel's unit."""
    if not math.isfinite(value):
        return number(value)
    if unit == "percentunit":
        return f"{number(value * 100)}%"
    if unit == "percent":
        return f"{number(value)}%"
    if unit == "s":
        return _duration(value)
    if unit == "ms":
        return _duration(value / 1000)
    if unit == "reqps":
        return f"{_scaled(value, _SI)} req/s"
    if unit in ("bytes", "decbytes"):
        return _scaled(value, _IEC, " ") if unit == "bytes" else _scaled(value, ((1e12, "TB"), (1e9, "GB"),
                                                                             (1e6, "MB"), (1e3, "kB")), " ")
    if unit == "none":
        return number(value)
    if unit == "currencyUSD":
        return f"${_scaled(value, _SI)}"
    if unit.startswith("suffix:"):
        return f"{_scaled(value, _SI)}{unit[len('suffix:'):]}"
    if unit.startswith("prefix:"):
        return f"{unit[len('prefix:'):]}{_scaled(value, _SI)}"
    if unit in ("short", ""):
        return _scaled(value, _SI)
    return f"{_scaled(value, _SI)} {unit}"


def as_number(value: Any) -> float | None:
    """A numeric cell as a float (``None`` for NULL or a non-number)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | Decimal):
        return float(value)
    return None


def is_numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal)


def time_text(value: dt.datetime) -> str:
    value = value.astimezone(dt.UTC) if value.tzinfo is not None else value
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    return text[:-3] if text.endswith(":00") else text


def cell(value: Any, unit: str) -> str:
    """A table cell: numbers in the panel's unit (as Grafana applies a panel's unit to every number field),
    times in UTC without the ISO clutter, NULL empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and unit in ("short", "none", ""):
        return f"{value:,}"
    number_value = as_number(value)
    if number_value is not None:
        return format_value(number_value, unit)
    if isinstance(value, dt.datetime):
        return time_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        match = _ISO_UTC.match(value)
        if match is not None:
            seconds = (match.group(3) or "")[:3]
            return f"{match.group(1)} {match.group(2)}{'' if seconds in ('', ':00') else seconds}"
        return value
    if isinstance(value, list | tuple):
        return ", ".join(cell(v, "none") for v in value)
    return str(value)
