"""One vLLM replica's scheduler (V1), emulated step by step, independent of any clock.

What is modelled, and how it maps to vLLM's V1 scheduler:

* **Continuous batching.** A step schedules at most ``max_num_batched_tokens`` tokens over at
  most ``max_num_seqs`` running sequences. Decodes go first (one token each), then prefill chunks
  of partially prefilled running sequences, then waiting requests in FCFS order.
* **Chunked prefill.** A prompt longer than the remaining token budget is split across steps
  (20_000 tokens with a budget of 8192: 8192, 8192, 3616). The step that completes a prefill also
  samples the request's next output token, as vLLM does.
* **Paged KV cache.** A sequence of ``L`` cached tokens holds ``ceil(L / 16)`` blocks. When a
  running sequence needs a block and none is free, the newest running sequence is preempted by
  recompute (blocks freed, computed tokens reset, pushed to the *front* of the waiting queue; its
  prompt plus the output generated so far must be prefilled again) until the rest fit. Waiting
  requests are only admitted when their chunk's blocks are free, and not in a step that preempted
  (vLLM V1 does the same). No prefix caching.
* **Step time** from :class:`~sim.costmodel.ReplicaCostModel`, with ``B`` = decode sequences of
  the step and ``K`` = their cached tokens *including the token decoded in this step* (the context
  each one attends to: prompt + output so far).

Why it is fast: a step never loops over the running batch. Every decoding sequence gains exactly
one token per step (``max_num_batched_tokens >= max_num_seqs`` guarantees that), so the engine keeps
a per-replica step counter ``c`` and stores, per decoding sequence, an offset ``base`` with
``generated = c + base``. From that:

* the step at which a sequence finishes is known when it starts decoding: a dict
  ``counter -> sequences`` gives the finishers of a step in O(1);
* a sequence needs a new KV block exactly when its cached tokens are a multiple of the block
  size, i.e. on steps with ``c % block_size`` equal to a fixed *phase*; ``block_size`` buckets of
  sequences by phase give the number of blocks a step needs as ``len(bucket)``;
* ``K`` grows by ``B`` per step and is corrected only when a sequence joins or leaves.

Only prefill chunks, finishes, preemptions and aborts cost work proportional to the requests
they touch. Token-by-token delivery (``stream_tokens=True``) is O(B) per step and meant for the
real-time driver only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from sim.costmodel import ReplicaCostModel

RequestId = Hashable
"""Any hashable id (str or int); unique among the requests an engine or cluster holds."""

# Sequence states.
_WAITING = 0
_PREFILL = 1  # running, prompt (or recompute) not fully computed yet
_DECODE = 2  # running, one token per step, tracked lazily
_DONE = 3  # finished or aborted

_EMPTY: tuple[()] = ()


@dataclass(slots=True)
class Request:
    """A request as the emulator sees it.

    ``output_tokens`` is the length the emulator will "generate" (the workload's target), capped
    by ``max_tokens``; a request always produces at least one token, as in vLLM. ``payload`` is
    opaque to the emulator (tenant, entitlement, anything the caller wants back in results).
    """

    request_id: RequestId
    prompt_tokens: int
    output_tokens: int
    max_tokens: int | None = None
    payload: Any = None
    priority: int = 0  # used only under scheduling_policy="priority"; lower is served first

    @property
    def target_tokens(self) -> int:
        """Tokens that will actually be generated: ``min(output_tokens, max_tokens)``, at least 1."""
        n = self.output_tokens
        if self.max_tokens is not None and self.max_tokens < n:
            n = self.max_tokens
        return n if n > 0 else 1


@dataclass(slots=True)
class RequestResult:
    """Outcome of one request on one replica; times are in the engine's time base (seconds).

    TTFT and end-to-end latency are measured from ``arrival_time``, the ``now`` given to
    :meth:`Engine.add`; a caller that queued the request before submitting it can recompute them
    from ``first_token_time`` and ``finish_time``.
    """

    request: Request
    replica: int
    arrival_time: float
    first_token_time: float | None
    finish_time: float
    output_tokens: int
    preemptions: int
    finish_reason: str  # "stop" (target length reached), "length" (max_tokens), "abort"

    @property
    def request_id(self) -> RequestId:
        return self.request.request_id

    @property
    def prompt_tokens(self) -> int:
        return self.request.prompt_tokens

    @property
    def aborted(self) -> bool:
        return self.finish_reason == "abort"

    @property
    def ttft(self) -> float | None:
        """Time to first token (``None`` if aborted before it)."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (``None`` with fewer than two tokens)."""
        if self.first_token_time is None or self.output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.output_tokens - 1)

    @property
    def e2e(self) -> float:
        """End-to-end latency: finish (or abort) time minus arrival."""
        return self.finish_time - self.arrival_time

    def to_dict(self) -> dict[str, Any]:
        """Flat record for logs and data frames."""
        return {
            "request_id": self.request_id,
            "replica": self.replica,
            "arrival_time": self.arrival_time,
            "first_token_time": self.first_token_time,
            "finish_time": self.finish_time,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "preemptions": self.preemptions,
            "finish_reason": self.finish_reason,
            "ttft": self.ttft,
            "tpot": self.tpot,
            "e2e": self.e2e,
        }


@dataclass(slots=True)
class StepResult:
    """What one step did; its outputs become visible at ``start + duration``.

    ``first_token``: requests whose first output token was produced by this step.
    ``finished``: requests that completed in this step.
    ``preempted``: requests preempted (by recompute) while scheduling this step.
    ``new_tokens``: ``(request_id, n)`` for every request that gained ``n`` output tokens in this
    step (``n`` is 1 for every entry in this model); only filled when the engine was built with
    ``stream_tokens=True``, empty otherwise.
    A step with ``duration == 0`` did nothing (the engine had no schedulable work).
    """

    start: float
    duration: float
    num_decode: int
    num_prefill_tokens: int
    first_token: Sequence[Request] = _EMPTY
    finished: Sequence[RequestResult] = _EMPTY
    preempted: Sequence[Request] = _EMPTY
    new_tokens: Sequence[tuple[RequestId, int]] = _EMPTY

    @property
    def end(self) -> float:
        return self.start + self.duration


class _Seq:
    """Engine-internal state of one request.

    ``generated`` is exact except while decoding, where it is ``counter + base`` (lazy).
    ``computed`` (tokens with KV in the cache) is tracked only while prefilling; while decoding it
    is ``prompt + generated - 1``.
    """

    __slots__ = ("arrival", "base", "computed", "fin_key", "first_token_time", "generated", "phase",
                 "preemptions", "prompt", "req", "rid", "state", "target")

    def __init__(self, req: Request, arrival: float) -> None:
        self.req = req
        self.rid = req.request_id
        self.prompt = req.prompt_tokens
        self.target = req.target_tokens
        self.arrival = arrival
        self.state = _WAITING
        self.computed = 0
        self.generated = 0
        self.base = 0
        self.phase = 0
        self.fin_key = 0
        self.first_token_time: float | None = None
        self.preemptions = 0


class Engine:
    """One replica's scheduler, driven by whoever owns the clock.

    ``add(request, now)`` queues a request, ``step(now)`` runs one scheduler step starting at
    ``now`` and says how long it takes and what it produced; ``abort(request_id)`` cancels. The
    caller decides what ``now`` means: simulated seconds (:mod:`sim.cluster`) or the wall clock
    (:mod:`sim.realtime`). Call ``step`` again no earlier than the previous step's end.
    """

    __slots__ = ("_K", "_a", "_b", "_bs", "_buckets", "_busy", "_c", "_decoding", "_fin", "_finished",
                 "_gen_total", "_k", "_last_time", "_max_batched", "_max_seqs", "_n_waiting",
                 "_p", "_preempt_total", "_prefill_total", "_prefilling", "_running", "_seqs", "_steps",
                 "_total_blocks", "_used", "_waiting", "_waiting_levels", "cost", "replica_id", "stream_tokens")

    def __init__(self, cost: ReplicaCostModel | None = None, *, replica_id: int = 0,
                 stream_tokens: bool = False) -> None:
        cost = cost if cost is not None else ReplicaCostModel()
        self.cost = cost
        self.replica_id = replica_id
        self.stream_tokens = stream_tokens
        self._a = cost.decode_base_ms
        self._b = cost.decode_per_seq_ms
        self._k = cost.decode_per_cached_token_ms
        self._p = cost.prefill_per_token_ms
        self._bs = cost.block_size
        self._max_seqs = cost.max_num_seqs
        self._max_batched = cost.max_num_batched_tokens
        self._total_blocks = cost.total_blocks
        self._used = 0
        self._c = 0  # counter value of the next step
        self._K = 0  # sum over decoding sequences of prompt + generated
        self._seqs: dict[RequestId, _Seq] = {}
        self._running: dict[RequestId, _Seq] = {}  # admission order: last = newest
        self._decoding: dict[RequestId, _Seq] = {}
        self._prefilling: dict[RequestId, _Seq] = {}
        self._waiting: deque[_Seq] = deque()  # may hold aborted entries (skipped lazily)
        # Priority policy: one FCFS deque per priority level, served lowest level first.
        self._waiting_levels: dict[int, deque[_Seq]] | None = (
            {} if cost.scheduling_policy == "priority" else None
        )
        self._n_waiting = 0
        self._buckets: list[set[_Seq]] = [set() for _ in range(self._bs)]
        # finishers by step counter; dicts (not sets) so results come in a reproducible order
        self._fin: dict[int, dict[_Seq, None]] = {}
        self._last_time = 0.0
        self._steps = 0
        self._busy = 0.0
        self._prefill_total = 0
        self._gen_total = 0
        self._preempt_total = 0
        self._finished = 0

    # ------------------------------------------------------------------ state
    @property
    def num_running(self) -> int:
        """Sequences holding a slot in the batch (prefilling or decoding)."""
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Requests in the waiting queue (new or preempted)."""
        return self._n_waiting

    @property
    def outstanding(self) -> int:
        """Running + waiting: what a least-outstanding router balances on."""
        return len(self._running) + self._n_waiting

    @property
    def has_work(self) -> bool:
        return bool(self._running) or self._n_waiting > 0

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use."""
        return self._used / self._total_blocks

    @property
    def used_blocks(self) -> int:
        return self._used

    @property
    def total_blocks(self) -> int:
        return self._total_blocks

    @property
    def num_steps(self) -> int:
        return self._steps

    @property
    def busy_time(self) -> float:
        """Sum of the durations of all steps run so far (seconds)."""
        return self._busy

    @property
    def prompt_tokens_total(self) -> int:
        """Prefill tokens computed so far, recomputation after preemption included."""
        return self._prefill_total

    @property
    def generation_tokens_total(self) -> int:
        """Output tokens produced so far."""
        return self._gen_total

    @property
    def preemptions_total(self) -> int:
        return self._preempt_total

    @property
    def finished_total(self) -> int:
        return self._finished

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._seqs

    def generated(self, request_id: RequestId) -> int:
        """Output tokens produced so far by a request this engine holds."""
        seq = self._seqs[request_id]
        return self._c + seq.base if seq.state == _DECODE else seq.generated

    # --------------------------------------------------------------- commands
    def add(self, request: Request, now: float) -> None:
        """Queue ``request`` (arrived at ``now``) at the back of the waiting queue.

        Raises ``ValueError`` for a request that could never fit in the KV cache on its own (vLLM
        refuses those too: it would preempt itself forever) or a duplicate id.
        """
        rid = request.request_id
        if rid in self._seqs:
            raise ValueError(f"duplicate request id {rid!r}")
        if request.prompt_tokens <= 0:
            raise ValueError("prompt_tokens must be positive")
        seq = _Seq(request, now)
        if -(-(seq.prompt + seq.target - 1) // self._bs) > self._total_blocks:
            raise ValueError(
                f"request {rid!r} needs {seq.prompt + seq.target - 1} KV tokens, more than the "
                f"replica's {self._total_blocks * self._bs}")
        self._seqs[rid] = seq
        self._queue_of(seq).append(seq)
        self._n_waiting += 1

    def _queue_of(self, seq: _Seq) -> deque[_Seq]:
        levels = self._waiting_levels
        if levels is None:
            return self._waiting
        queue = levels.get(seq.req.priority)
        if queue is None:
            queue = levels[seq.req.priority] = deque()
            self._waiting_levels = dict(sorted(levels.items()))
        return queue

    def abort(self, request_id: RequestId, now: float | None = None) -> RequestResult | None:
        """Cancel a request wherever it is and free its blocks.

        Returns its (aborted) result, or ``None`` if the engine does not hold it (unknown or
        already finished). ``now`` stamps ``finish_time`` (default: end of the last step).
        """
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return None
        if seq.state == _WAITING:
            self._n_waiting -= 1  # the deque entry is skipped lazily
        else:
            self._used -= self._detach(seq, self._c, False)
        seq.state = _DONE
        t = self._last_time if now is None else now
        return RequestResult(seq.req, self.replica_id, seq.arrival, seq.first_token_time, t,
                             seq.generated, seq.preemptions, "abort")

    # -------------------------------------------------------------- internals
    def _detach(self, seq: _Seq, c: int, alloc_done: bool) -> int:
        """Remove a running sequence from the running structures; return the blocks it holds.

        ``c`` is the counter of the step being scheduled (or of the next step between steps);
        ``alloc_done`` says whether this step's decode blocks were already allocated.
        """
        rid = seq.rid
        if seq.state == _DECODE:
            g = c + seq.base
            seq.generated = g
            held = -(-(seq.prompt + g - 1) // self._bs)
            if alloc_done and seq.phase == c % self._bs:
                held += 1
            self._buckets[seq.phase].discard(seq)
            fs = self._fin.get(seq.fin_key)
            if fs is not None:
                fs.pop(seq, None)
            del self._decoding[rid]
            self._K -= seq.prompt + g
        else:
            held = -(-seq.computed // self._bs)
            self._prefilling.pop(rid, None)
        del self._running[rid]
        return held

    def _preempt_newest(self, c: int, alloc_done: bool) -> _Seq:
        """Preempt by recompute the newest running sequence (under the priority policy, as vLLM does,
        the lowest-priority one, newest among equals); return it."""
        running = self._running
        if self._waiting_levels is None:
            seq = running[next(reversed(running))]
        else:
            seq = max(reversed(running.values()), key=lambda q: q.req.priority)
        self._used -= self._detach(seq, c, alloc_done)
        seq.state = _WAITING
        seq.computed = 0
        seq.preemptions += 1
        self._preempt_total += 1
        self._queue_of(seq).appendleft(seq)
        self._n_waiting += 1
        return seq

    # ------------------------------------------------------------------- step
    def step(self, now: float) -> StepResult:
        """Schedule and run one step starting at ``now``; return its duration and outputs."""
        c = self._c
        bs = self._bs
        total = self._total_blocks
        preempted: list[Request] | None = None

        # 1. Decodes: every decoding sequence gets one token; those whose cached tokens fill their
        # last block need one more block. Out of blocks: preempt the newest running sequences.
        bucket = self._buckets[c % bs]
        need = len(bucket)
        if need and self._used + need > total:
            preempted = []
            while self._used + need > total:
                victim = self._preempt_newest(c, False)
                preempted.append(victim.req)
                need = len(bucket)  # the victim left its bucket if it was in this one
        self._used += need

        num_decode = len(self._decoding)
        budget = self._max_batched - num_decode
        prefill_tokens = 0
        completed: list[_Seq] | None = None

        # 2. Chunks of partially prefilled running sequences, oldest first. (A partial prefill
        # always took the whole remaining budget, so in practice there is at most one and it is
        # the newest running sequence; the general case is handled anyway.)
        if self._prefilling:
            for seq in list(self._prefilling.values()):
                if budget <= 0:
                    break
                if seq.state != _PREFILL:
                    continue  # preempted while scheduling an older one
                remaining = seq.prompt + seq.generated - seq.computed
                chunk = remaining if remaining < budget else budget
                nb = -(-(seq.computed + chunk) // bs) - -(-seq.computed // bs)
                while self._used + nb > total:
                    if preempted is None:
                        preempted = []
                    victim = self._preempt_newest(c, True)
                    preempted.append(victim.req)
                    if victim is seq:
                        break
                if seq.state != _PREFILL:
                    break  # preempted itself: nothing more from the running queue (as vLLM)
                self._used += nb
                seq.computed += chunk
                budget -= chunk
                prefill_tokens += chunk
                if chunk == remaining:
                    del self._prefilling[seq.rid]
                    if completed is None:
                        completed = []
                    completed.append(seq)
            # decodes preempted above no longer use their budget slot
            budget = self._max_batched - len(self._decoding) - prefill_tokens

        # 3. Waiting requests, FCFS, while budget, seats and blocks last (not after a preemption,
        # unless nothing at all could be scheduled).
        if self._n_waiting and budget > 0 and (
                preempted is None or (not self._decoding and prefill_tokens == 0)):
            running = self._running
            max_seqs = self._max_seqs
            levels = (self._waiting,) if self._waiting_levels is None else tuple(self._waiting_levels.values())
            blocked = False
            for waiting in levels:
                while waiting and budget > 0 and len(running) < max_seqs:
                    seq = waiting[0]
                    if seq.state != _WAITING:
                        waiting.popleft()  # aborted while waiting
                        continue
                    n = seq.prompt + seq.generated
                    chunk = n if n < budget else budget
                    nb = -(-chunk // bs)
                    if self._used + nb > total:
                        blocked = True
                        break
                    waiting.popleft()
                    self._n_waiting -= 1
                    self._used += nb
                    seq.state = _PREFILL
                    seq.computed = chunk
                    running[seq.rid] = seq
                    budget -= chunk
                    prefill_tokens += chunk
                    if chunk == n:
                        if completed is None:
                            completed = []
                        completed.append(seq)
                    else:
                        self._prefilling[seq.rid] = seq
                if blocked or budget <= 0 or len(running) >= max_seqs:
                    break

        # 4. Duration.
        num_decode = len(self._decoding)
        if num_decode:
            ms = self._a + self._b * num_decode + self._k * self._K + self._p * prefill_tokens
        elif prefill_tokens:
            ms = self._p * prefill_tokens
            if ms < self._a:
                ms = self._a
        else:
            return StepResult(now, 0.0, 0, 0, preempted=preempted or _EMPTY)
        dur = ms / 1000.0
        end = now + dur
        self._last_time = end
        self._steps += 1
        self._busy += dur
        self._prefill_total += prefill_tokens
        new_tokens: list[tuple[RequestId, int]] | None = None
        if self.stream_tokens:
            new_tokens = [(rid, 1) for rid in self._decoding]

        # 5. Outputs of the decodes.
        finished: list[RequestResult] | None = None
        if num_decode:
            self._K += num_decode
            self._gen_total += num_decode
            done = self._fin.pop(c, None)
            if done:
                finished = []
                seqs = self._seqs
                decoding = self._decoding
                running = self._running
                buckets = self._buckets
                rep = self.replica_id
                for seq in done:
                    g = seq.target
                    seq.generated = g
                    seq.state = _DONE
                    p = seq.prompt
                    self._K -= p + g
                    self._used -= -(-(p + g - 1) // bs)
                    buckets[seq.phase].discard(seq)
                    rid = seq.rid
                    del decoding[rid]
                    del running[rid]
                    del seqs[rid]
                    req = seq.req
                    mt = req.max_tokens
                    finished.append(RequestResult(
                        req, rep, seq.arrival, seq.first_token_time, end, g, seq.preemptions,
                        "length" if mt is not None and mt < req.output_tokens else "stop"))
        c += 1
        self._c = c

        # 6. Outputs of completed prefills: each samples one token.
        first: list[Request] | None = None
        if completed:
            for seq in completed:
                g = seq.generated + 1
                seq.generated = g
                if seq.first_token_time is None:
                    seq.first_token_time = end
                    if first is None:
                        first = []
                    first.append(seq.req)
                if new_tokens is not None:
                    new_tokens.append((seq.rid, 1))
                self._gen_total += 1
                p = seq.prompt
                if g >= seq.target:
                    seq.state = _DONE
                    self._used -= -(-(p + g - 1) // bs)
                    rid = seq.rid
                    del self._running[rid]
                    del self._seqs[rid]
                    if finished is None:
                        finished = []
                    req = seq.req
                    mt = req.max_tokens
                    finished.append(RequestResult(
                        req, self.replica_id, seq.arrival, seq.first_token_time, end, g,
                        seq.preemptions, "length" if mt is not None and mt < req.output_tokens else "stop"))
                    continue
                seq.state = _DECODE
                base = g - c
                seq.base = base
                ph = (1 - p - base) % bs
                seq.phase = ph
                self._buckets[ph].add(seq)
                fk = seq.target - 1 - base
                seq.fin_key = fk
                fs = self._fin.get(fk)
                if fs is None:
                    self._fin[fk] = {seq: None}
                else:
                    fs[seq] = None
                self._decoding[seq.rid] = seq
                self._K += p + g
        if finished:
            self._finished += len(finished)

        return StepResult(now, dur, num_decode, prefill_tokens,
                          first or _EMPTY, finished or _EMPTY, preempted or _EMPTY,
                          new_tokens or _EMPTY)
