"""Many replicas in simulated time: a discrete-event loop around :class:`~sim.engine.Engine`.

Each replica alternates between idle and "in a step": a step is scheduled at its start
(``Engine.step(t)``) and its outputs (first tokens, finished requests) are delivered at its end,
which is what a client of a real vLLM replica would observe. One heap holds step ends, wake-ups
of idle replicas and callbacks pushed by the caller, so the clock jumps from event to event and
runs far faster than real time.

The caller (an experiment harness) owns the other events: it interleaves its own arrivals and
ticks with :meth:`Cluster.run_until` / :meth:`Cluster.submit`, or pushes them with
:meth:`Cluster.call_at`. Autoscaling is :meth:`add_replica` (ready after a startup delay) and
:meth:`remove_replica` (drain: no new requests, removed once empty).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

from sim.costmodel import ReplicaCostModel
from sim.engine import Engine, Request, RequestId, RequestResult, StepResult
from sim.router import LeastOutstandingRouter, Router

FirstTokenCallback = Callable[[float, Request, int], None]
"""``(time, request, replica_id)`` when a request's first output token is produced."""
FinishCallback = Callable[[RequestResult], None]
"""Called with the result when a request finishes (not when it is aborted)."""
PreemptCallback = Callable[[float, Request, int], None]
"""``(time, request, replica_id)`` when a request is preempted by recompute (KV exhausted)."""

_STEP_END = 0
_WAKE = 1
_CALL = 2


class Replica:
    """One replica of the cluster: an engine plus lifecycle and accounting.

    ``outstanding`` counts requests routed here and not yet finished or aborted *as seen by
    clients* (a request finishing in the current step still counts until the step ends).
    """

    __slots__ = ("_in_flight", "_step_end", "_step_start", "_wake_pending", "created_at", "draining",
                 "engine", "id", "outstanding", "ready_at", "removed_at")

    def __init__(self, replica_id: int, engine: Engine, created_at: float, ready_at: float) -> None:
        self.id = replica_id
        self.engine = engine
        self.created_at = created_at
        self.ready_at = ready_at
        self.draining = False
        self.removed_at: float | None = None
        self.outstanding = 0
        self._in_flight: StepResult | None = None
        self._step_start = 0.0
        self._step_end = 0.0
        self._wake_pending = False

    def is_ready(self, now: float) -> bool:
        """Started up and not removed (it may be draining)."""
        return self.removed_at is None and self.ready_at <= now

    @property
    def in_step(self) -> bool:
        return self._in_flight is not None

    def busy_time(self, at: float | None = None) -> float:
        """Seconds spent in steps up to time ``at`` (default: including the whole current step)."""
        busy = self.engine.busy_time
        if at is not None and self._in_flight is not None and at < self._step_end:
            busy -= self._step_end - max(at, self._step_start)
        return busy

    def alive_time(self, at: float) -> float:
        """Seconds from creation to removal (or ``at``): what the replica costs, startup included."""
        end = self.removed_at if self.removed_at is not None and self.removed_at < at else at
        return max(0.0, end - self.created_at)

    def __repr__(self) -> str:
        state = "removed" if self.removed_at is not None else "draining" if self.draining else "active"
        return (f"Replica(id={self.id}, {state}, ready_at={self.ready_at}, "
                f"outstanding={self.outstanding})")


class Cluster:
    """Replicas behind a router, in simulated time.

    ``run_until(t)`` processes every event up to ``t`` and returns the requests finished
    meanwhile (unless ``collect_finished=False``, for callers that only use ``on_finish``);
    ``submit`` and ``abort`` first advance the clock to their ``now`` (delivering earlier events),
    so the caller only has to keep its own times non-decreasing. Callbacks run inside the event
    loop at their event's time: they may ``submit``/``abort`` at that time but must not call
    ``run_until``.
    """

    def __init__(
        self,
        num_replicas: int = 1,
        cost_model: ReplicaCostModel | None = None,
        router: Router | None = None,
        *,
        start_time: float = 0.0,
        on_first_token: FirstTokenCallback | None = None,
        on_finish: FinishCallback | None = None,
        on_preempt: PreemptCallback | None = None,
        collect_finished: bool = True,
    ) -> None:
        self.cost_model = cost_model if cost_model is not None else ReplicaCostModel()
        self.router: Router = router if router is not None else LeastOutstandingRouter()
        self.on_first_token = on_first_token
        self.on_finish = on_finish
        self.on_preempt = on_preempt
        self.collect_finished = collect_finished
        self.now = start_time
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._next_id = 0
        self.replicas: list[Replica] = []  # not removed (ready, starting or draining)
        self.removed: list[Replica] = []
        self._where: dict[RequestId, Replica] = {}
        self._finished_buf: list[RequestResult] = []
        # routing candidates, cached until the replica set changes or a starting replica is due
        self._elig: list[Replica] = []
        self._elig_until = -math.inf
        for _ in range(num_replicas):
            self.add_replica(start_time)

    # ---------------------------------------------------------------- queries
    @property
    def outstanding(self) -> int:
        """Requests submitted and neither finished nor aborted."""
        return len(self._where)

    def ready_replicas(self, now: float | None = None) -> list[Replica]:
        """Replicas that are up and accept new requests (ready, not draining)."""
        t = self.now if now is None else now
        return [r for r in self.replicas if not r.draining and r.ready_at <= t]

    @property
    def all_replicas(self) -> list[Replica]:
        """Every replica ever created, removed ones included (for accounting)."""
        return sorted(self.replicas + self.removed, key=lambda r: r.id)

    def replica(self, replica_id: int) -> Replica:
        for r in self.replicas:
            if r.id == replica_id:
                return r
        for r in self.removed:
            if r.id == replica_id:
                return r
        raise KeyError(replica_id)

    def replica_of(self, request_id: RequestId) -> Replica | None:
        """Where an outstanding request runs."""
        return self._where.get(request_id)

    def busy_time(self, at: float | None = None) -> float:
        """Total step time of all replicas (removed ones included) up to ``at``."""
        return sum(r.busy_time(at) for r in self.all_replicas)

    def replica_seconds(self, at: float | None = None) -> float:
        """Total alive time of all replicas up to ``at`` (default: now)."""
        t = self.now if at is None else at
        return sum(r.alive_time(t) for r in self.all_replicas)

    @property
    def next_event_time(self) -> float:
        """Time of the earliest pending event (``inf`` when idle)."""
        return self._heap[0][0] if self._heap else math.inf

    # --------------------------------------------------------------- commands
    def add_replica(self, ready_at: float | None = None) -> int:
        """Create a replica now that accepts requests from ``ready_at`` (startup delay); its id."""
        t = self.now if ready_at is None else max(ready_at, self.now)
        rid = self._next_id
        self._next_id += 1
        self.replicas.append(Replica(rid, Engine(self.cost_model, replica_id=rid), self.now, t))
        self._elig_until = -math.inf
        return rid

    def remove_replica(self, replica_id: int | None = None) -> int | None:
        """Drain a replica: no new requests; it is removed once its outstanding requests are done.

        Without an id, picks the cheapest to lose: a replica still starting up (latest first),
        else the one with the fewest outstanding requests (newest on ties). Returns its id, or
        ``None`` when no replica is left to drain.
        """
        candidates = [r for r in self.replicas if not r.draining]
        if replica_id is not None:
            candidates = [r for r in candidates if r.id == replica_id]
            if not candidates:
                raise KeyError(f"no active replica {replica_id}")
        if not candidates:
            return None
        starting = [r for r in candidates if r.ready_at > self.now]
        if starting:
            victim = max(starting, key=lambda r: (r.ready_at, r.id))
        else:
            victim = min(candidates, key=lambda r: (r.outstanding, -r.id))
        victim.draining = True
        self._elig_until = -math.inf
        self._maybe_remove(victim, self.now)
        return victim.id

    def submit(self, request: Request, now: float | None = None) -> int:
        """Route ``request`` (arriving at ``now``) to a replica; returns the replica id.

        Only ready, non-draining replicas are eligible; if none is ready, the request goes to a
        starting one and waits for it. Raises ``RuntimeError`` when no replica accepts work.
        """
        t = self.now if now is None else now
        if t != self.now:
            if t < self.now:
                raise ValueError(f"submit at {t} is before the cluster clock {self.now}")
            heap = self._heap
            if heap and heap[0][0] <= t:
                self._advance(t)
            self.now = t
        eligible = self._elig if t < self._elig_until else self._eligible(t)
        r = eligible[0] if len(eligible) == 1 else \
            eligible[self.router.pick([x.outstanding for x in eligible])]
        rid = request.request_id
        if rid in self._where:
            raise ValueError(f"duplicate request id {rid!r}")
        r.engine.add(request, t)
        r.outstanding += 1
        self._where[rid] = r
        if r._in_flight is None and not r._wake_pending:
            r._wake_pending = True
            self._push(t if t > r.ready_at else r.ready_at, _WAKE, r)
        return r.id

    def _eligible(self, t: float) -> list[Replica]:
        """Ready, non-draining replicas (or, if none, starting ones); cached until one is due."""
        live = [r for r in self.replicas if not r.draining]
        if not live:
            raise RuntimeError("no replica accepts requests")
        ready = [r for r in live if r.ready_at <= t]
        self._elig = ready or live
        self._elig_until = min((r.ready_at for r in live if r.ready_at > t), default=math.inf)
        return self._elig

    def abort(self, request_id: RequestId, now: float | None = None) -> RequestResult | None:
        """Cancel an outstanding request, freeing its blocks at once.

        Returns the engine's aborted result, or ``None`` if the request is unknown, already
        finished, or finishing in the step in flight (its completion is then not delivered).
        """
        t = self.now if now is None else now
        if t > self.now:
            self._advance(t)
        r = self._where.pop(request_id, None)
        if r is None:
            return None
        r.outstanding -= 1
        res = r.engine.abort(request_id, max(t, self.now))
        self._maybe_remove(r, t)
        return res

    def call_at(self, t: float, fn: Callable[[float], None]) -> None:
        """Run ``fn(t)`` when the clock reaches ``t`` (in order with step completions)."""
        if t < self.now:
            raise ValueError(f"call_at {t} is before the cluster clock {self.now}")
        self._push(t, _CALL, fn)

    def run_until(self, t: float) -> list[RequestResult]:
        """Advance to ``t``; return the requests that finished since the previous call."""
        if t > self.now:
            self._advance(t)
        out = self._finished_buf
        self._finished_buf = []
        return out

    # -------------------------------------------------------------- internals
    def _push(self, t: float, kind: int, obj: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, obj))

    def _maybe_remove(self, r: Replica, t: float) -> None:
        if r.draining and r.removed_at is None and r.outstanding == 0 and r._in_flight is None:
            r.removed_at = t
            self.replicas.remove(r)
            self.removed.append(r)
            self._elig_until = -math.inf

    def _start_step(self, r: Replica, t: float) -> None:
        """Schedule ``r``'s next step at ``t`` if it has work (hot path: see ``_advance``)."""
        eng = r.engine
        if r.removed_at is not None or not (eng._running or eng._n_waiting):
            return
        res = eng.step(t)
        dur = res.duration
        if dur <= 0.0:
            if eng.has_work:
                raise RuntimeError(f"replica {r.id}: engine has work but scheduled nothing")
            return
        r._in_flight = res
        r._step_start = t
        end = t + dur
        r._step_end = end
        self._seq += 1
        heapq.heappush(self._heap, (end, self._seq, _STEP_END, r))

    def _deliver(self, r: Replica, res: StepResult, t: float) -> None:
        where = self._where
        if res.preempted and self.on_preempt is not None:
            for req in res.preempted:
                if req.request_id in where:
                    self.on_preempt(t, req, r.id)
        if res.first_token and self.on_first_token is not None:
            cb = self.on_first_token
            for req in res.first_token:
                if req.request_id in where:
                    cb(t, req, r.id)
        if res.finished:
            buf = self._finished_buf
            cb2 = self.on_finish
            for result in res.finished:
                if where.pop(result.request.request_id, None) is None:
                    continue  # aborted while its last step was in flight
                r.outstanding -= 1
                if self.collect_finished:
                    buf.append(result)
                if cb2 is not None:
                    cb2(result)

    def _advance(self, t: float) -> None:
        """Process all events with time <= t, then set the clock to t."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= t:
            et, _, kind, obj = pop(heap)
            self.now = et
            if kind == _STEP_END:
                r: Replica = obj
                res = r._in_flight
                r._in_flight = None
                if res is not None and (res.finished or res.first_token or res.preempted):
                    self._deliver(r, res, et)
                if r.draining:
                    self._maybe_remove(r, et)
                self._start_step(r, et)
            elif kind == _WAKE:
                r = obj
                r._wake_pending = False
                if r._in_flight is None:
                    self._start_step(r, et)
            else:
                obj(et)
        self.now = t
