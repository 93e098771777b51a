"""Split an entitlement's global limit across admitters by their recent demand.

Each admitter enforces only its share, so N admitters do not admit N times the limit. A small
floor per admitter lets one that sees its first request in a while admit it without waiting for
the pipeline to notice.
"""

from __future__ import annotations

from collections.abc import Mapping


def split_by_demand(limit: float, demand: Mapping[str, float], floor_fraction: float = 0.1) -> dict[str, float]:
    """Shares summing to ``limit``: a floor of ``floor_fraction / n`` each, the rest by demand."""
    n = len(demand)
    if n == 0:
        return {}
    if not 0 <= floor_fraction <= 1:
        raise ValueError("floor_fraction must lie in [0, 1]")
    total = sum(max(0.0, d) for d in demand.values())
    if total <= 0:
        return dict.fromkeys(demand, limit / n)
    floor = limit * floor_fraction / n
    rest = limit * (1.0 - floor_fraction)
    return {a: floor + rest * max(0.0, d) / total for a, d in demand.items()}
