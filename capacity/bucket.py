"""A token bucket for the throughput dimension, with the clock passed in."""

from __future__ import annotations

import math


class TokenBucket:
    """Rate = current throughput limit, depth = limit x burst window.

    The level may go negative: a request larger than the depth is admitted from a full bucket and
    repaid over time, and completion corrections can charge more than was reserved. Either way the
    long-run rate never exceeds the limit.
    """

    __slots__ = ("clipped", "deferred", "depth", "level", "owed", "primed", "rate", "updated")

    def __init__(self, rate: float, depth: float, now: float, level: float | None = None) -> None:
        self.rate = rate
        self.depth = depth
        self.level = depth if level is None else min(level, depth)
        self.updated = now
        self.clipped = 0.0  # credit above a cut's new depth, dropped (never debt: that is never forgiven)
        self.owed = 0.0  # spent beyond what a cut left in the level, collected from the next raises
        self.deferred = 0.0  # all debt ever moved from the level into ``owed`` (a counter)
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

    def reconfigure(self, rate: float, depth: float, now: float, *, share: bool = False) -> float:
        """Change rate and depth without creating tokens; the credit dropped.

        ``share=False``, the bucket of an entitlement's whole limit (one admitter runs the allocator):
        what has been spent (depth - level) is kept whichever way the depth moves, so a raised limit
        is usable at once and a limit moving up and down every tick gives nothing away and takes
        nothing away. After a large cut the level stops at minus the new depth, so the tenant waits
        at most about one burst window; the rest of what it spent is ``owed`` and taken out of the
        next raises before they add anything (it used to be forgiven, and the next raise handed it
        back as free tokens). What is admitted over any window is then at most the limit over it
        plus one depth.

        ``share=True``, this admitter's share of a limit split across admitters: the level is kept,
        clipped to the new depth, and a raise refills at the new rate. When the pipeline moves a
        share from one admitter to another, the one that lost it may already have spent its bucket,
        and the extra depth granted on the other's raise would be admitted twice. Summed over
        admitters whose rates add up to the limit, what is admitted over any window is again at most
        the limit over it plus one depth (docs/global-limit.md). The credit a cut drops is counted in
        ``clipped``. A bucket's first positive depth fills it, once, as creating it with that depth
        would have (an admitter's start).
        """
        self.refill(now)
        if not self.primed and depth > 0:
            self.primed = True
            if share:
                self.level = depth if self.level >= 0 else self.level + depth
        if share:
            dropped = self.level - depth if self.level > depth else 0.0
            if dropped:
                self.level = depth
        else:
            dropped = 0.0
            moved = depth - self.depth
            if moved > 0 and self.owed > 0:
                paid = self.owed if self.owed < moved else moved
                self.owed -= paid
                moved -= paid
            level = self.level + moved
            floor = self.level if self.level < -depth else -depth  # a cut never deepens a debt past both
            if level < floor:
                self.owed += floor - level
                self.deferred += floor - level
                level = floor
            self.level = depth if level > depth else level
        self.clipped += dropped
        self.rate = rate
        self.depth = depth
        return dropped
