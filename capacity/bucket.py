"""A token bucket for the throughput dimension, with the clock passed in."""

from __future__ import annotations

import math


class TokenBucket:
    """Rate = current throughput limit, depth = limit x burst window.

    The level may go negative: a request larger than the depth is admitted from a full bucket and
    repaid over time, and completion corrections can charge more than was reserved. Either way the
    long-run rate never exceeds the limit.
    """

    __slots__ = ("depth", "level", "rate", "updated")

    def __init__(self, rate: float, depth: float, now: float, level: float | None = None) -> None:
        self.rate = rate
        self.depth = depth
        self.level = depth if level is None else min(level, depth)
        self.updated = now

    def refill(self, now: float) -> None:
        dt = now - self.updated
        if dt > 0:
            level = self.level + self.rate * dt
            self.level = level if level < self.depth else self.depth
            self.updated = now

    def can_take(self, amount: float) -> bool:
        need = amount if amount < self.depth else self.depth
        return self.level >= need and self.depth > 0

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        level = self.level + amount
        self.level = level if level < self.depth else self.depth

    def wait_for(self, amount: float) -> float:
        """Seconds until ``can_take(amount)`` holds at the current rate (inf if it never will)."""
        if self.depth <= 0 or self.rate <= 0:
            return 0.0 if self.can_take(amount) else math.inf
        need = amount if amount < self.depth else self.depth
        deficit = need - self.level
        if deficit <= 0:
            return 0.0
        return deficit / self.rate

    def reconfigure(self, rate: float, depth: float, now: float) -> None:
        """Keep what has been spent (depth - level) across a change, whichever way the depth moves.

        A raised limit is usable at once, and a limit that moves up and down (an admitter's share
        following its demand, every tick) gives nothing away: keeping the level on a cut would hand
        out the difference again on the next raise. After a large cut the debt is capped at one new
        depth, so a tenant waits at most about one burst window.
        """
        self.refill(now)
        level = self.level + depth - self.depth
        floor = self.level if self.level < -depth else -depth
        self.level = depth if level > depth else (level if level > floor else floor)
        self.rate = rate
        self.depth = depth
