"""Split an entitlement's global limit across admitters by their recent demand.

Each admitter enforces only its share, so N admitters do not admit N times the limit. A small
floor per admitter lets one that sees its first request in a while admit it without waiting for
the pipeline to notice.

The two rules below keep the sum of what admitters enforce within the limit by construction:
``hold_raises`` (the pipeline) against admitters that apply consecutive records at different
moments, ``share_for`` (each admitter) against an admitter a record does not list.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.specs import Triple


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


NOTHING: Triple = (0.0, 0.0, 0.0)


def hold_raises(targets: Mapping[str, Triple], previous: Mapping[str, Triple]) -> dict[str, Triple]:
    """The shares to publish: per admitter and dimension, the smaller of this tick's and the last tick's target.

    Admitters apply a record when it reaches them, so for a moment some enforce tick k while the
    rest still enforce tick k-1. Each published share is at most the admitter's target of k-1, and
    those sum to the limit, so any mix of two consecutive records stays within it: a share moves
    down at once and up one tick later. An admitter with no target last tick (new to the
    entitlement) gets nothing for one tick, for the same reason, and one dropped this tick is
    still listed, with nothing, so that the record is never empty (an empty one leaves every
    admitter its fallback, ``share_for``) right after one that was not.
    """
    out: dict[str, Triple] = {}
    for admitter in {**previous, **targets}:
        t = targets.get(admitter, NOTHING)
        p = previous.get(admitter, NOTHING)
        out[admitter] = (min(t[0], p[0]), min(t[1], p[1]), min(t[2], p[2]))
    return out


def share_for(admitter: str, shares: Mapping[str, Triple], limits: Triple, admitters: int) -> tuple[Triple, bool]:
    """One admitter's part of an entitlement's limits from a state record, and whether it is a fallback.

    A record that lists any admitter has split the whole limit among those it lists, so one it
    does not list gets nothing (until the pipeline lists it, one tick after it is first seen): any
    other choice admits more than the limit. A record that lists none (nothing seen from any
    admitter of the pool) leaves ``limits / admitters`` to each, which holds the limit as long
    as ``admitters`` is at least the number running.
    """
    mine = shares.get(admitter)
    if mine is not None:
        return mine, False
    if shares:
        return NOTHING, True
    n = max(1, admitters)
    return (limits[0] / n, limits[1] / n, limits[2] / n), True
