"""The lazy engine against a naive reference scheduler, on random workloads.

The reference keeps every sequence's generated and computed tokens and held blocks explicitly and
walks the whole batch each step, exactly as the rules in ``sim/engine.py``'s docstring read. The
engine's O(1)-per-step bookkeeping (step counter offsets, block phases, finish keys, incremental
``K``) must produce the same steps: same durations, same first tokens, finishes and preemptions,
same block usage, under preemption, chunked prefill and aborts.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from sim.costmodel import ReplicaCostModel
from sim.engine import Engine, Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class RefSeq:
    def __init__(self, req: Request) -> None:
        self.req = req
        self.p = req.prompt_tokens
        self.target = req.target_tokens
        self.g = 0
        self.computed = 0
        self.held = 0
        self.state = "waiting"  # waiting | prefill | decode
        self.preemptions = 0


class RefEngine:
    def __init__(self, cost: ReplicaCostModel) -> None:
        self.cost = cost
        self.total = cost.total_blocks
        self.used = 0
        self.running: list[RefSeq] = []
        self.waiting: deque[RefSeq] = deque()
        self.seqs: dict[object, RefSeq] = {}

    def add(self, req: Request) -> None:
        s = RefSeq(req)
        self.seqs[req.request_id] = s
        self.waiting.append(s)

    def abort(self, rid: object) -> int | None:
        s = self.seqs.pop(rid, None)
        if s is None:
            return None
        if s.state == "waiting":
            self.waiting.remove(s)
        else:
            self.running.remove(s)
            self.used -= s.held
        return s.g

    def _preempt_last(self) -> RefSeq:
        v = self.running.pop()
        self.used -= v.held
        v.held = 0
        v.computed = 0
        v.state = "waiting"
        v.preemptions += 1
        self.waiting.appendleft(v)
        return v

    def step(self) -> tuple[float, list[object], list[object], list[object]]:
        bs = self.cost.block_size
        preempted: list[object] = []
        # decodes
        while True:
            need = sum(cdiv(s.p + s.g, bs) - s.held for s in self.running if s.state == "decode")
            if self.used + need <= self.total:
                break
            preempted.append(self._preempt_last().req.request_id)
        for s in self.running:
            if s.state == "decode":
                nb = cdiv(s.p + s.g, bs) - s.held
                s.held += nb
                self.used += nb
        decoders = [s for s in self.running if s.state == "decode"]
        budget = self.cost.max_num_batched_tokens - len(decoders)
        chunks: dict[int, int] = {}
        # partial prefills, oldest first
        for s in [x for x in self.running if x.state == "prefill"]:
            if budget <= 0:
                break
            if s.state != "prefill" or s not in self.running:
                continue
            rem = s.p + s.g - s.computed
            chunk = min(rem, budget)
            nb = cdiv(s.computed + chunk, bs) - s.held
            stop = False
            while self.used + nb > self.total:
                v = self._preempt_last()
                preempted.append(v.req.request_id)
                if v in decoders:
                    decoders.remove(v)
                if v is s:
                    stop = True
                    break
            if stop:
                break
            s.held += nb
            self.used += nb
            s.computed += chunk
            chunks[id(s)] = chunk
            budget = self.cost.max_num_batched_tokens - len(decoders) - sum(chunks.values())
        budget = self.cost.max_num_batched_tokens - len(decoders) - sum(chunks.values())
        new_prefill: list[RefSeq] = []
        if self.waiting and budget > 0 and (not preempted or (not decoders and not chunks)):
            while self.waiting and budget > 0 and len(self.running) < self.cost.max_num_seqs:
                s = self.waiting[0]
                n = s.p + s.g
                chunk = min(n, budget)
                nb = cdiv(chunk, bs)
                if self.used + nb > self.total:
                    break
                self.waiting.popleft()
                self.used += nb
                s.held = nb
                s.computed = chunk
                s.state = "prefill"
                self.running.append(s)
                chunks[id(s)] = chunk
                new_prefill.append(s)
                budget -= chunk
        t_prefill = sum(chunks.values())
        b = len(decoders)
        k = sum(s.p + s.g for s in decoders)
        ms = self.cost.step_ms(b, k, t_prefill)
        first: list[object] = []
        finished: list[object] = []
        for s in decoders:
            s.g += 1
            s.computed += 1
        for s in list(self.running):
            if s.state == "prefill" and id(s) in chunks and s.computed == s.p + s.g:
                if s.g == 0:  # a recompute after preemption samples a later token
                    first.append(s.req.request_id)
                s.g += 1
                s.state = "decode"
        for s in list(self.running):
            if s.state == "decode" and s.g >= s.target:
                finished.append(s.req.request_id)
                self.running.remove(s)
                self.used -= s.held
                del self.seqs[s.req.request_id]
        return ms / 1000.0, first, finished, preempted


def random_run(seed: int, cost: ReplicaCostModel, n_requests: int, abort_p: float) -> None:
    rng = random.Random(seed)
    eng = Engine(cost)
    ref = RefEngine(cost)
    t = 0.0
    next_id = 0
    max_len = cost.total_blocks * cost.block_size
    live: list[int] = []
    first_seen: set[object] = set()
    steps = 0
    while next_id < n_requests or eng.has_work:
        # arrivals
        for _ in range(rng.choice([0, 0, 1, 1, 2, 5])):
            if next_id >= n_requests:
                break
            p = rng.choice([1, 5, 15, 16, 17, 31, 32, 33, 100, 300, 1000, 5000])
            o = rng.choice([1, 2, 3, 15, 16, 17, 40, 100, 250])
            mt = rng.choice([None, None, None, 10, 64])
            req = Request(next_id, p, o, mt)
            if p + req.target_tokens - 1 > max_len:
                with pytest.raises(ValueError):
                    eng.add(req, t)
                next_id += 1
                continue
            eng.add(req, t)
            ref.add(req)
            live.append(next_id)
            next_id += 1
        # aborts
        if live and rng.random() < abort_p:
            rid = live.pop(rng.randrange(len(live)))
            g_ref = ref.abort(rid)
            res = eng.abort(rid, t)
            if g_ref is None:
                assert res is None
            else:
                assert res is not None and res.output_tokens == g_ref and res.aborted
        if not eng.has_work:
            assert not ref.running and not ref.waiting
            continue
        r = eng.step(t)
        dur, first, finished, preempted = ref.step()
        steps += 1
        assert r.duration == pytest.approx(dur, rel=1e-12, abs=1e-15), (seed, steps)
        assert [q.request_id for q in r.first_token] == first, (seed, steps)
        assert sorted(x.request_id for x in r.finished) == sorted(finished), (seed, steps)
        assert [q.request_id for q in r.preempted] == preempted, (seed, steps)
        assert eng.used_blocks == ref.used, (seed, steps)
        assert eng.num_running == len(ref.running)
        assert eng.num_waiting == len(ref.waiting)
        assert eng.num_running <= cost.max_num_seqs
        for x in r.finished:
            live.remove(x.request_id)
            assert x.output_tokens == x.request.target_tokens
            assert x.first_token_time is not None
            assert x.finish_time == pytest.approx(t + dur)
        for q in r.first_token:
            assert q.request_id not in first_seen
            first_seen.add(q.request_id)
        for rid in live:
            if rid in ref.seqs:
                assert eng.generated(rid) == ref.seqs[rid].g
        t = r.end
    assert eng.used_blocks == 0


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_tiny_kv(seed: int) -> None:
    """Heavy preemption: a few hundred tokens of KV, small budget, few seats."""
    cost = ReplicaCostModel(kv_capacity_tokens=16 * 24, max_num_seqs=6, max_num_batched_tokens=64)
    random_run(seed, cost, 120, abort_p=0.05)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_medium(seed: int) -> None:
    cost = ReplicaCostModel(kv_capacity_tokens=16 * 700, max_num_seqs=32, max_num_batched_tokens=512,
                            block_size=16)
    random_run(100 + seed, cost, 300, abort_p=0.1)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_block_size_5(seed: int) -> None:
    cost = ReplicaCostModel(kv_capacity_tokens=5 * 300, max_num_seqs=16, max_num_batched_tokens=300,
                            block_size=5)
    random_run(200 + seed, cost, 200, abort_p=0.05)


def test_reference_run_preempts() -> None:
    """The tiny configuration really exercises preemption (otherwise the comparison proves little)."""
    cost = ReplicaCostModel(kv_capacity_tokens=16 * 24, max_num_seqs=6, max_num_batched_tokens=64)
    eng = Engine(cost)
    for i in range(20):
        eng.add(Request(i, 40, 100), 0.0)
    t = 0.0
    while eng.has_work:
        t = eng.step(t).end
    assert eng.preemptions_total > 5
