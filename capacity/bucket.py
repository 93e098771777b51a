"""A token bucket for the throughput dimension, with the clock passed in."""

from __future__ import annotations

import math


class TokenBucket:
    """Rate = current throughput limit, depth = limit x burst window.

    The level may go negative: a request larger than the depth is admitted from a full bucket and
    repaid over time, and completion corrections can charge more than was reserved. Either way the
    long-run rate never exceeds the limit.
    """

    __slots__ = ("clipped", "depth", "level", "primed", "rate", "updated")

    def __init__(self, rate: float, depth: float, now: float, level: float | None = None) -> None:
        self.rate = rate
        self.depth = depth
        self.level = depth if level is None else min(level, depth)
        self.updated = now
        self.clipped = 0.0  # credit above a cut's new depth, dropped (never debt: that is never forgiven)
        # A bucket starts full once: at its first positive depth (an elastic entitlement's first
        # tick takes it from 0), as a bucket created with that depth would have.
        self.primed = depth > 0

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

    def reconfigure(self, rate: float, depth: float, now: float) -> float:
        """Change rate and depth, keeping the level (clipped to the new depth); the credit dropped.

        Neither way of moving the depth creates tokens. A raise refills at the new rate, it does
        not hand over the extra depth at once: when the pipeline moves a share from one admitter
        to another, the one that lost it may already have spent its bucket, and tokens granted on
        the raise would be admitted twice. A cut keeps any debt (a negative level from an oversized
        request or an under-reserved completion) whole, so it is repaid at the new rate and never
        comes back as free tokens on the next raise. Summed over admitters whose rates add up to
        the limit, what is admitted over any window T is then at most limit x T, plus the levels
        at its start (at most one burst depth), plus one request's overshoot per admitter. The one
        exception is a bucket's first positive depth, which starts it full as if it had been created
        with that depth: once per bucket, part of the levels at the start.
        """
        self.refill(now)
        if not self.primed and depth > 0:
            self.primed = True
            self.level = depth if self.level >= 0 else self.level + depth
        dropped = self.level - depth if self.level > depth else 0.0
        if dropped:
            self.level = depth
            self.clipped += dropped
        self.rate = rate
        self.depth = depth
        return dropped
