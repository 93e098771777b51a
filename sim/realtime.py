"""The emulated replicas on the wall clock, for an OpenAI-compatible HTTP emulator.

:class:`RealtimeDriver` runs one :class:`~sim.engine.Engine` in an asyncio task: step, sleep for
the step's duration, then deliver the step's tokens into per-request queues, so an HTTP handler
can stream them as a real vLLM server would. :class:`RealtimeCluster` puts several drivers behind
the same router as the simulated cluster.

Time: the engines run on a *model clock*, ``epoch + (loop.time() - start) * speedup`` seconds.
With ``speedup=1`` that is real time; a larger ``speedup`` divides every sleep (fast tests), while
latencies in results stay in model seconds, i.e. what a real replica would have shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

from sim.costmodel import ReplicaCostModel
from sim.engine import Engine, Request, RequestId, RequestResult
from sim.router import LeastOutstandingRouter, Router


@dataclass(slots=True)
class TokenChunk:
    """``n`` new output tokens of one request, produced by the step ending at model time ``time``.

    ``total`` is the request's output tokens so far; ``first`` marks the chunk holding the first
    token; the last chunk of a stream has ``finished=True`` and the request's ``result`` (also on
    abort, with ``n == 0`` and ``result.finish_reason == "abort"``).
    """

    request_id: RequestId
    n: int
    total: int
    time: float
    first: bool = False
    finished: bool = False
    result: RequestResult | None = None


class ModelClock:
    """Maps the event loop's clock to model seconds (see the module docstring)."""

    __slots__ = ("_start", "epoch", "speedup")

    def __init__(self, speedup: float = 1.0, epoch: float = 0.0) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        self.speedup = speedup
        self.epoch = epoch
        self._start: float | None = None

    def start(self) -> None:
        if self._start is None:
            self._start = asyncio.get_running_loop().time()

    def now(self) -> float:
        """Current model time (seconds)."""
        if self._start is None:
            return self.epoch
        return self.epoch + (asyncio.get_running_loop().time() - self._start) * self.speedup

    async def sleep_until(self, t: float) -> None:
        """Sleep until model time ``t``."""
        delay = (t - self.now()) / self.speedup
        await asyncio.sleep(delay if delay > 0 else 0)


class RequestStream:
    """The tokens of one request, as an async iterator of :class:`TokenChunk`.

    ``async for chunk in stream`` ends after the chunk with ``finished=True``;
    ``await stream.result()`` drains the stream and returns the final :class:`RequestResult`.
    """

    __slots__ = ("_done", "queue", "replica", "request")

    def __init__(self, request: Request, replica: int) -> None:
        self.request = request
        self.replica = replica
        self.queue: asyncio.Queue[TokenChunk] = asyncio.Queue()
        self._done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> TokenChunk:
        if self._done:
            raise StopAsyncIteration
        chunk = await self.queue.get()
        if chunk.finished:
            self._done = True
        return chunk

    async def result(self) -> RequestResult:
        """Consume the rest of the stream; the request's result (aborted or not)."""
        last: TokenChunk | None = None
        async for chunk in self:
            last = chunk
        if last is None or last.result is None:
            raise RuntimeError("stream already consumed")
        return last.result


class RealtimeDriver:
    """Runs one engine against the wall clock (through a :class:`ModelClock`).

    The loop: wait for work, ``engine.step(now)``, sleep for the step, deliver its tokens; a step
    that starts late (a busy event loop) starts at the current model time, as a real server would.
    """

    def __init__(self, engine: Engine, clock: ModelClock | None = None, *,
                 ready_at: float | None = None) -> None:
        if not engine.stream_tokens:
            engine.stream_tokens = True  # the driver delivers tokens one step at a time
        self.engine = engine
        self.clock = clock if clock is not None else ModelClock()
        self.ready_at = ready_at
        self.draining = False
        self._streams: dict[RequestId, RequestStream] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: Sequence[RequestResult] = ()  # finishes of the step being slept through
        self._on_idle: Callable[[RealtimeDriver], None] | None = None

    @property
    def replica_id(self) -> int:
        return self.engine.replica_id

    @property
    def outstanding(self) -> int:
        """Requests submitted and not yet delivered as finished (or aborted)."""
        return len(self._streams)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def is_ready(self) -> bool:
        return self.ready_at is None or self.ready_at <= self.clock.now()

    def start(self) -> None:
        """Start the step loop in the running event loop (idempotent)."""
        self.clock.start()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop and abort what is left (their streams end with an abort chunk)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for rid in list(self._streams):
            self.abort(rid)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def submit(self, request: Request) -> RequestStream:
        """Queue a request now; returns the stream its tokens will arrive on."""
        rid = request.request_id
        if rid in self._streams:
            raise ValueError(f"duplicate request id {rid!r}")
        self.engine.add(request, self.clock.now())
        stream = RequestStream(request, self.replica_id)
        self._streams[rid] = stream
        self._wake.set()
        return stream

    def abort(self, request_id: RequestId) -> RequestResult | None:
        """Cancel a request; its stream gets a final abort chunk. ``None`` if not outstanding."""
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return None
        now = self.clock.now()
        res = self.engine.abort(request_id, now)
        if res is None:  # finished inside the step in flight: its tokens are cut off by the abort
            done = next((r for r in self._in_flight if r.request_id == request_id), None)
            if done is None:
                res = RequestResult(stream.request, self.replica_id, now, None, now, 0, 0, "abort")
            else:
                res = dataclasses.replace(done, finish_time=now, finish_reason="abort")
        stream.queue.put_nowait(TokenChunk(request_id, 0, res.output_tokens, now, False, True, res))
        self._check_idle()
        return res

    def _check_idle(self) -> None:
        if self.draining and not self._streams and self._on_idle is not None:
            self._on_idle(self)

    async def _run(self) -> None:
        """Step, sleep until the step's end, deliver; back-to-back steps stay contiguous in model time.

        Starting each step at ``clock.now()`` would add the event loop's wake-up latency (about a
        millisecond of wall time, multiplied by ``speedup``) to every step; so while the engine is
        busy and the loop keeps up within a few wall milliseconds, the next step starts exactly where
        the previous one ended.
        """
        eng = self.engine
        clock = self.clock
        slack = 0.005 * clock.speedup  # model seconds the loop may lag before time is re-anchored
        prev_end: float | None = None
        while True:
            if self.ready_at is not None and clock.now() < self.ready_at:
                await clock.sleep_until(self.ready_at)
                continue
            if not eng.has_work:
                prev_end = None
                self._wake.clear()
                await self._wake.wait()
                continue
            now = clock.now()
            start = prev_end if prev_end is not None and now - prev_end <= slack else now
            res = eng.step(start)
            prev_end = res.end
            if res.duration <= 0.0:
                await asyncio.sleep(0)
                continue
            self._in_flight = res.finished
            await clock.sleep_until(res.end)
            self._in_flight = ()
            self._deliver(res.new_tokens, res.finished, res.end)
            self._check_idle()

    def _deliver(self, new_tokens: Sequence[tuple[RequestId, int]], finished: Sequence[RequestResult],
                 t: float) -> None:
        streams = self._streams
        done = {r.request_id: r for r in finished}
        for rid, n in new_tokens:
            stream = streams.get(rid)
            if stream is None:
                continue  # aborted while the step was in flight
            res = done.get(rid)
            total = res.output_tokens if res is not None else self.engine.generated(rid)
            chunk = TokenChunk(rid, n, total, t, total == n, res is not None, res)
            if res is not None:
                del streams[rid]
            stream.queue.put_nowait(chunk)


class RealtimeCluster:
    """Several real-time replicas behind a router, sharing one model clock.

    ``add_replica(startup_delay)`` and ``remove_replica()`` (drain, then stop) let a local scaler
    act on emulated replicas.
    """

    def __init__(self, num_replicas: int = 1, cost_model: ReplicaCostModel | None = None,
                 router: Router | None = None, *, speedup: float = 1.0, epoch: float = 0.0) -> None:
        self.cost_model = cost_model if cost_model is not None else ReplicaCostModel()
        self.router: Router = router if router is not None else LeastOutstandingRouter()
        self.clock = ModelClock(speedup, epoch)
        self.replicas: list[RealtimeDriver] = []
        self._next_id = 0
        self._started = False
        self._stopping: set[asyncio.Task[None]] = set()
        for _ in range(num_replicas):
            self.add_replica()

    def now(self) -> float:
        return self.clock.now()

    def start(self) -> None:
        self._started = True
        self.clock.start()
        for d in self.replicas:
            d.start()

    async def stop(self) -> None:
        for d in list(self.replicas):
            await d.stop()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        self._started = False

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def outstanding(self) -> int:
        return sum(d.outstanding for d in self.replicas)

    def add_replica(self, startup_delay: float = 0.0) -> int:
        """A new replica accepting requests after ``startup_delay`` model seconds; its id."""
        rid = self._next_id
        self._next_id += 1
        ready = self.clock.now() + startup_delay if startup_delay > 0 else None
        d = RealtimeDriver(Engine(self.cost_model, replica_id=rid, stream_tokens=True), self.clock,
                           ready_at=ready)
        d._on_idle = self._drained
        self.replicas.append(d)
        if self._started:
            d.start()
        return rid

    def remove_replica(self, replica_id: int | None = None) -> int | None:
        """Drain a replica (default: the least loaded, newest on ties); removed once empty."""
        cands = [d for d in self.replicas if not d.draining]
        if replica_id is not None:
            cands = [d for d in cands if d.replica_id == replica_id]
            if not cands:
                raise KeyError(replica_id)
        if not cands:
            return None
        d = min(cands, key=lambda x: (x.outstanding, -x.replica_id))
        d.draining = True
        d._check_idle()
        return d.replica_id

    def _drained(self, d: RealtimeDriver) -> None:
        if d in self.replicas:
            self.replicas.remove(d)
            if d.running:
                task = asyncio.get_running_loop().create_task(d.stop())
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def submit(self, request: Request) -> RequestStream:
        """Route a request (least outstanding by default) and return its token stream."""
        live = [d for d in self.replicas if not d.draining]
        eligible = [d for d in live if d.is_ready()] or live
        if not eligible:
            raise RuntimeError("no replica accepts requests")
        d = eligible[self.router.pick([x.outstanding for x in eligible])]
        return d.submit(request)

    def abort(self, request_id: RequestId) -> RequestResult | None:
        """Cancel a request on whichever replica holds it; ``None`` if none does."""
        for d in self.replicas:
            if request_id in d._streams:
                return d.abort(request_id)
        return None

    async def generate(self, request: Request) -> RequestResult:
        """Submit and wait for completion (non-streaming requests)."""
        return await self.submit(request).result()
