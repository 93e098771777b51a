"""Where an admitter's limits come from, behind one small interface.

Today ``LocalAllocator`` runs the capacity model's allocator tick in-process every
``pool.spec.tickSeconds`` (one admitter, or a demo). Later a Kafka follower of the
``tokenpools.entitlement-state`` topic will implement the same ``LimitSource`` by applying the
pipeline's per-admitter shares; the gate only cares that limits change and queues get retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from admitter.stats import AllocatorStats
from capacity.live import PoolLive
from capacity.tick import tick

log = logging.getLogger("tokenpools.admitter")


class LimitTarget(Protocol):
    """What a limit source updates: a pool's live state, then a nudge to retry its queue."""

    live: PoolLive

    def limits_changed(self) -> None: ...


class LimitSource(Protocol):
    async def start(self, targets: Mapping[str, LimitTarget]) -> None:
        """Begin keeping the targets' limits current (called once, from the app's lifespan)."""

    async def stop(self) -> None: ...

    def refresh(self, pool: str) -> None:
        """The pool's entitlements changed (admin API); recompute its limits now if this source can."""

    def add_pool(self, name: str, target: LimitTarget) -> None:
        """A pool appeared after start (the config topic); keep its limits current too."""

    def remove_pool(self, name: str) -> None:
        """A pool was deleted; stop updating it."""


class LocalAllocator:
    """Runs ``capacity.tick.tick`` per pool on the monotonic clock; one asyncio task per pool.

    The first tick runs at start, so entitlements get limits (headroom up to burst) before the
    first request instead of refusing everything for a tick. A tick the capacity model rejects
    (inputs or results not finite) keeps the previous limits; ``rejected`` counts those by pool and
    reason for ``admitter.metrics``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._targets: dict[str, LimitTarget] = {}
        self._last: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.ticks = 0
        self.rejected: Counter[tuple[str, str]] = Counter()  # (pool, reason) -> rejected ticks

    async def start(self, targets: Mapping[str, LimitTarget]) -> None:
        self._targets = dict(targets)
        for name, target in self._targets.items():
            self._tick(name, target, first=True)
            self._tasks[name] = asyncio.create_task(self._run(name, target), name=f"allocator-{name}")

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def refresh(self, pool: str) -> None:
        target = self._targets.get(pool)
        if target is not None:
            self._tick(pool, target)

    def add_pool(self, name: str, target: LimitTarget) -> None:
        self.remove_pool(name)
        self._targets[name] = target
        self._tick(name, target, first=True)
        self._tasks[name] = asyncio.create_task(self._run(name, target), name=f"allocator-{name}")

    def remove_pool(self, name: str) -> None:
        self._targets.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def stats(self) -> Sequence[AllocatorStats]:
        return [AllocatorStats(rejected=dict(self.rejected))]

    async def _run(self, name: str, target: LimitTarget) -> None:
        while True:
            await asyncio.sleep(target.live.tick_seconds)
            self._tick(name, target)

    def _tick(self, name: str, target: LimitTarget, first: bool = False) -> None:
        now = self._clock()
        dt = target.live.tick_seconds if first else now - self._last.get(name, now)
        self._last[name] = now
        try:
            result = tick(target.live, now, dt if dt > 0 else target.live.tick_seconds)
        except Exception:  # a bad tick must not stop enforcement: keep the last limits
            log.exception("allocator tick failed for pool %s; keeping the previous limits", name)
            return
        if result.rejected is not None:
            self.rejected[name, result.rejected] += 1
            log.warning("allocator tick of pool %s rejected (%s); keeping the previous limits", name, result.rejected)
            return
        self.ticks += 1
        target.limits_changed()
