"""Admission glue around the capacity model: decide, wait in a bounded priority queue, release.

One ``PoolGate`` per pool owns that pool's ``PoolLive`` (the model's state), the prompt estimator,
the requests waiting for room and the registry of admitted requests with their cancel handles.
All of it runs on the event loop thread, so no locks: a decision and the registration of its
reservation happen in one synchronous step, and a victim named by ``decide`` is always findable.

Cancel handles are anyio ``CancelScope``s: preempting a request (or its client going away) cancels
exactly the proxy work inside that request's scope, wherever it is awaiting (queue, replica
connect, stream read), and the scope absorbs the cancellation so the handler can still answer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable

import anyio

from capacity.admission import Decision, Verdict, decide, queue_bound
from capacity.cost import BytesPerTokenEstimator, RequestCost
from capacity.live import EntitlementLive, PoolLive


class Flight:
    """One request from arrival to end: its id, entitlement and cancel handle.

    ``preempted_by`` / ``cancelled`` say why the scope was cancelled; ``closing`` is set once the
    last byte is on its way, after which neither can interrupt the request any more.
    """

    __slots__ = ("cancelled", "closing", "ent", "preempted_by", "request_id", "scope")

    def __init__(self, request_id: str, ent: EntitlementLive) -> None:
        self.request_id = request_id
        self.ent = ent
        self.scope = anyio.CancelScope()
        self.preempted_by: str | None = None
        self.cancelled = False
        self.closing = False

    @property
    def interrupted(self) -> bool:
        return self.cancelled or self.preempted_by is not None

    def preempt(self, by: str) -> None:
        if not self.closing and not self.interrupted:
            self.preempted_by = by
            self.scope.cancel()

    def cancel(self) -> None:
        if not self.closing and not self.interrupted:
            self.cancelled = True
            self.scope.cancel()


class _Waiter:
    __slots__ = ("cost", "dead", "deadline", "flight", "future", "last", "timer")

    def __init__(self, flight: Flight, cost: RequestCost, deadline: float, last: Decision,
                 future: asyncio.Future[Decision]) -> None:
        self.flight = flight
        self.cost = cost
        self.deadline = deadline
        self.last = last
        self.future = future
        self.dead = False
        self.timer: asyncio.TimerHandle | None = None


class PoolGate:
    """Admission for one pool: ``decide`` / ``wait`` / ``end``, plus queue retries on every change."""

    MIN_RETRY_DELAY = 0.001

    def __init__(self, live: PoolLive, *, max_queue: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.live = live
        self.estimator = BytesPerTokenEstimator()
        self.flights: dict[str, Flight] = {}
        self.max_queue = max_queue
        self.clock = clock
        self.waiting = 0
        self.preemptions = 0
        self._queue: list[tuple[tuple[int, float], int, _Waiter]] = []
        self._seq = itertools.count()
        self._drain_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_at = math.inf

    @property
    def name(self) -> str:
        return self.live.name

    def deadline(self, ent: EntitlementLive, arrival: float) -> float:
        """Queue order within a tier: arrival + the entitlement's TTFT target (none: after those with one)."""
        return arrival + ent.slo_ttft if ent.slo_ttft else math.inf

    def decide(self, flight: Flight, cost: RequestCost, now: float, deadline: float) -> Decision:
        """A first decision; ADMIT/PREEMPT hold the reservation and victims are already interrupted."""
        decision = decide(self.live, flight.ent, flight.request_id, cost, now, deadline)
        if decision.admitted:
            self._admitted(flight, decision)
        return decision

    def _admitted(self, flight: Flight, decision: Decision) -> None:
        self.flights[flight.request_id] = flight
        for victim in decision.victims:
            # decide() has released the victim's reservation; cancel its proxy work right away.
            handle = self.flights.pop(victim.request_id, None)
            if handle is not None:
                self.preemptions += 1
                handle.preempt(flight.request_id)

    def max_wait(self, ent: EntitlementLive) -> float:
        return queue_bound(self.live, ent)

    async def wait(self, flight: Flight, cost: RequestCost, deadline: float, first: Decision) -> Decision:
        """Wait for room after a QUEUE decision: the admitting decision, or REFUSE once the bound passes."""
        if self.waiting >= self.max_queue:
            return Decision(Verdict.REFUSE, dimension=first.dimension, retry_after=self._refuse_after(first))
        loop = asyncio.get_running_loop()
        waiter = _Waiter(flight, cost, deadline, first, loop.create_future())
        heapq.heappush(self._queue, (first.priority, next(self._seq), waiter))
        self.waiting += 1
        waiter.timer = loop.call_later(self.max_wait(flight.ent), self._expire, waiter)
        self._retry_in(first.retry_after)
        try:
            return await waiter.future
        finally:
            waiter.timer.cancel()
            if not waiter.dead:  # cancelled while waiting (client gone): leave the queue
                waiter.dead = True
                self.waiting -= 1

    def _refuse_after(self, last: Decision) -> float:
        return last.retry_after if math.isfinite(last.retry_after) and last.retry_after > 0 else self.live.tick_seconds

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.dead:
            return
        last = waiter.last
        self._resolve(waiter, Decision(Verdict.REFUSE, dimension=last.dimension, retry_after=self._refuse_after(last)))

    def _resolve(self, waiter: _Waiter, decision: Decision) -> None:
        waiter.dead = True
        self.waiting -= 1
        if not waiter.future.done():
            waiter.future.set_result(decision)

    def end(self, flight: Flight, prompt_tokens: int | None, output_tokens: int | None) -> bool:
        """Release what the request holds, corrected with the usage known (None: keep the reserved charge)."""
        self.flights.pop(flight.request_id, None)
        released = self.live.release(flight.request_id, self.clock(), prompt_tokens, output_tokens) is not None
        if released and self.waiting:
            self._schedule_drain()
        return released

    def limits_changed(self) -> None:
        """New limits (allocator tick or state topic): retry the queue."""
        if self.waiting:
            self._schedule_drain()
        elif self._queue:
            self._queue.clear()

    def _schedule_drain(self) -> None:
        # Coalesce: many releases in one loop iteration cost one pass over the queue.
        if self._drain_handle is None:
            self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def _retry_in(self, delay: float) -> None:
        """Wake the queue when the earliest waiter's expected wait is over (a bucket refills with time)."""
        if not math.isfinite(delay):
            return
        delay = max(delay, self.MIN_RETRY_DELAY)
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if at >= self._retry_at and self._retry_handle is not None:
            return
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._retry_at = at
        self._retry_handle = loop.call_at(at, self._retry_fired)

    def _retry_fired(self) -> None:
        self._retry_handle = None
        self._retry_at = math.inf
        self._drain()

    def _drain(self) -> None:
        """Retry waiters, highest priority first.

        Within an entitlement the order is strict: once one of its waiters does not fit, its later
        ones are not tried in this pass (they must not overtake it). Other entitlements still get
        their turn, so one throttled tenant does not block the whole queue. A pass costs one
        decision per waiting entitlement plus a sort.
        """
        self._drain_handle = None
        if not self.waiting:
            self._queue.clear()
            return
        now = self.clock()
        items = sorted(self._queue)
        self._queue = []
        blocked: set[str] = set()
        keep: list[tuple[tuple[int, float], int, _Waiter]] = []
        soonest = math.inf
        for item in items:
            waiter = item[2]
            if waiter.dead:
                continue
            ent = waiter.flight.ent
            if ent.name in blocked:
                keep.append(item)
                continue
            decision = decide(self.live, ent, waiter.flight.request_id, waiter.cost, now, waiter.deadline, retry=True)
            if decision.admitted:
                self._admitted(waiter.flight, decision)
                self._resolve(waiter, decision)
            elif decision.verdict is Verdict.REFUSE:
                self._resolve(waiter, decision)
            else:
                waiter.last = decision
                blocked.add(ent.name)
                keep.append(item)
                soonest = min(soonest, decision.retry_after)
        self._queue = keep  # still sorted, hence a valid heap
        if keep:
            self._retry_in(soonest)
