"""Hand-computed cases for the emulated vLLM scheduler (one replica)."""

from __future__ import annotations

import pytest

from sim.costmodel import ReplicaCostModel
from sim.engine import Engine, Request, StepResult

A, B, K, P = 5.43, 0.0155, 2.64e-5, 0.0276  # published fit, ms


def decode_ms(b: int, k: int) -> float:
    return A + B * b + K * k


def run(eng: Engine, t: float = 0.0, max_steps: int = 100_000) -> list[StepResult]:
    out = []
    while eng.has_work and max_steps:
        r = eng.step(t)
        out.append(r)
        t = r.end
        max_steps -= 1
    return out


def test_single_request_ttft_tpot_e2e() -> None:
    eng = Engine()
    eng.add(Request("a", prompt_tokens=100, output_tokens=5), now=1.0)
    steps = run(eng, 1.0)
    # prefill of 100 tokens costs 2.76 ms, floored at the 5.43 ms base; it samples token 1
    assert steps[0].duration == pytest.approx(A / 1000)
    assert [q.request_id for q in steps[0].first_token] == ["a"]
    # 4 decode steps; K = prompt + output so far = 101, 102, 103, 104
    decodes = [decode_ms(1, 100 + g) / 1000 for g in (1, 2, 3, 4)]
    assert [s.duration for s in steps[1:]] == pytest.approx(decodes)
    (res,) = steps[-1].finished
    assert res.output_tokens == 5 and res.finish_reason == "stop" and res.preemptions == 0
    assert res.ttft == pytest.approx(0.00543)
    assert res.first_token_time == pytest.approx(1.00543)
    assert res.e2e == pytest.approx(0.00543 + 0.021792824)
    assert res.tpot == pytest.approx(0.021792824 / 4)
    assert res.to_dict()["tpot"] == res.tpot
    assert eng.used_blocks == 0 and eng.outstanding == 0
    assert eng.generation_tokens_total == 5 and eng.prompt_tokens_total == 100


def test_one_token_request_has_no_tpot() -> None:
    eng = Engine()
    eng.add(Request("a", 10, 1), 0.0)
    (step,) = run(eng)
    (res,) = step.finished
    assert res.output_tokens == 1 and res.tpot is None and res.ttft == pytest.approx(A / 1000)


def test_step_time_formula() -> None:
    c = ReplicaCostModel()
    assert c.step_ms(0, 0, 0) == 0.0
    assert c.step_ms(0, 0, 100) == A  # floor
    assert c.step_ms(0, 0, 1000) == pytest.approx(27.6)
    assert c.step_ms(1, 600, 0) == pytest.approx(A + B + K * 600)
    assert c.step_ms(256, 256 * 700, 0) == pytest.approx(A + B * 256 + K * 256 * 700)
    assert c.step_ms(3, 51, 16) == pytest.approx(A + 3 * B + 51 * K + 16 * P)
    assert c.step_seconds(2, 0, 0) == pytest.approx((A + 2 * B) / 1000)


def test_batch_size_changes_step_time() -> None:
    eng = Engine()
    for rid in "abc":
        eng.add(Request(rid, 16, 10), 0.0)
    s1 = eng.step(0.0)
    assert s1.num_prefill_tokens == 48 and s1.num_decode == 0
    assert s1.duration == pytest.approx(A / 1000)
    s2 = eng.step(s1.end)
    assert s2.num_decode == 3
    assert s2.duration == pytest.approx(decode_ms(3, 3 * 17) / 1000)
    eng.add(Request("d", 16, 10), s2.end)
    s3 = eng.step(s2.end)  # mixed: 3 decodes + 16 prefill tokens
    assert (s3.num_decode, s3.num_prefill_tokens) == (3, 16)
    assert s3.duration == pytest.approx((decode_ms(3, 3 * 18) + 16 * P) / 1000)
    s4 = eng.step(s3.end)
    assert s4.num_decode == 4
    assert s4.duration == pytest.approx(decode_ms(4, 3 * 19 + 17) / 1000)


def test_chunked_prefill_splits_long_prompt() -> None:
    eng = Engine()
    eng.add(Request("long", 20_000, 2), 0.0)
    eng.add(Request("short", 100, 2), 0.0)
    s = [eng.step(0.0)]
    s.append(eng.step(s[-1].end))
    s.append(eng.step(s[-1].end))
    assert [x.num_prefill_tokens for x in s] == [8192, 8192, 3616 + 100]
    assert [x.first_token for x in s[:2]] == [(), ()]
    assert [q.request_id for q in s[2].first_token] == ["long", "short"]
    assert [x.duration for x in s] == pytest.approx([8192 * P / 1000, 8192 * P / 1000, 3716 * P / 1000])
    rest = run(eng, s[-1].end)
    res = {r.request_id: r for x in rest for r in x.finished}
    assert res["long"].ttft == pytest.approx((20_000 + 100) * P / 1000)
    assert res["short"].ttft == pytest.approx((20_000 + 100) * P / 1000)


def test_chunked_prefill_budget_leaves_room_for_decodes() -> None:
    eng = Engine()
    eng.add(Request("d", 10, 100), 0.0)
    s0 = eng.step(0.0)
    eng.add(Request("long", 20_000, 2), s0.end)
    chunks = []
    t = s0.end
    for _ in range(3):
        r = eng.step(t)
        assert r.num_decode == 1
        chunks.append(r.num_prefill_tokens)
        t = r.end
    assert chunks == [8191, 8191, 3618]


def test_kv_exhaustion_preempts_newest_and_recomputes() -> None:
    # 4 blocks of 16 tokens. a and b: prompt 16, 20 output tokens each.
    cost = ReplicaCostModel(kv_capacity_tokens=64)
    eng = Engine(cost)
    eng.add(Request("a", 16, 20), 0.0)
    eng.add(Request("b", 16, 20), 0.0)
    steps = run(eng)
    # step 0: both prefill (1 block each); step 1: 17 tokens -> 2 blocks each (KV full);
    # step 17: both reach 33 tokens and need a 3rd block: b (newest) is preempted with 17 tokens
    # generated; a continues, finishes at step 19 (20 tokens); step 20 recomputes b's 16 + 17 = 33
    # tokens (3 blocks) and samples its 18th token; b finishes at step 22.
    assert len(steps) == 23
    pre = [(i, [q.request_id for q in s.preempted]) for i, s in enumerate(steps) if s.preempted]
    assert pre == [(17, ["b"])]
    fin = {r.request_id: (i, r) for i, s in enumerate(steps) for r in s.finished}
    assert fin["a"][0] == 19 and fin["b"][0] == 22
    ra, rb = fin["a"][1], fin["b"][1]
    assert (ra.output_tokens, ra.preemptions) == (20, 0)
    assert (rb.output_tokens, rb.preemptions) == (20, 1)
    assert rb.first_token_time == pytest.approx(steps[0].end)  # recompute does not move TTFT
    assert steps[18].num_decode == 1 and steps[18].num_prefill_tokens == 0  # b does not fit yet
    assert steps[20].num_prefill_tokens == 33 and steps[20].num_decode == 0
    assert eng.prompt_tokens_total == 16 + 16 + 33
    assert eng.preemptions_total == 1 and eng.used_blocks == 0


def test_kv_usage_and_preempted_goes_to_front() -> None:
    cost = ReplicaCostModel(kv_capacity_tokens=64)
    eng = Engine(cost)
    eng.add(Request("a", 16, 20), 0.0)
    eng.add(Request("b", 16, 20), 0.0)
    t = eng.step(0.0).end
    assert eng.kv_usage == pytest.approx(2 / 4)
    t = eng.step(t).end
    assert eng.kv_usage == 1.0
    eng.add(Request("c", 1, 1), t)  # waits: no block free
    for _ in range(15):
        t = eng.step(t).end
    r = eng.step(t)  # step 17: b preempted, pushed in front of c
    assert [q.request_id for q in r.preempted] == ["b"]
    assert eng.num_waiting == 2 and eng.num_running == 1
    rest = run(eng, r.end)
    # step 18: b (front) needs 3 blocks, 1 is free: head-of-line blocks c too; step 19: a finishes;
    # step 20: b's 33-token recompute and c's 1-token prompt, in that order
    assert [s.num_prefill_tokens for s in rest[:3]] == [0, 0, 34]
    assert [q.request_id for q in rest[2].first_token] == ["c"]  # b's first token was long ago
    assert [x.request_id for x in rest[2].finished] == ["c"]
    assert rest[-1].finished[0].request_id == "b"


def test_fcfs_and_max_num_seqs() -> None:
    cost = ReplicaCostModel(max_num_seqs=2)
    eng = Engine(cost)
    for i in range(3):
        eng.add(Request(i, 10, 3), 0.0)
    steps = []
    t = 0.0
    while eng.has_work:
        r = eng.step(t)
        assert eng.num_running <= 2
        steps.append(r)
        t = r.end
    firsts = [[q.request_id for q in s.first_token] for s in steps]
    assert firsts == [[0, 1], [], [], [2], [], []]
    assert [[x.request_id for x in s.finished] for s in steps][2] == [0, 1]


def test_fcfs_head_of_line_blocks_on_kv() -> None:
    cost = ReplicaCostModel(kv_capacity_tokens=64)  # 4 blocks
    eng = Engine(cost)
    eng.add(Request("a", 40, 5), 0.0)  # 3 blocks
    t = eng.step(0.0).end
    eng.add(Request("b", 40, 5), t)  # needs 3 blocks, 1 free
    eng.add(Request("c", 10, 5), t)  # would fit, but is behind b
    steps = run(eng, t)
    first = [(i, q.request_id) for i, s in enumerate(steps) for q in s.first_token]
    fin_a = next(i for i, s in enumerate(steps) if any(x.request_id == "a" for x in s.finished))
    assert first == [(fin_a + 1, "b"), (fin_a + 1, "c")]


def test_abort_frees_blocks_everywhere() -> None:
    eng = Engine()
    eng.add(Request("dec", 100, 50), 0.0)
    t = eng.step(0.0).end
    t = eng.step(t).end
    assert eng.used_blocks == 7 and eng.generated("dec") == 2
    res = eng.abort("dec", now=t)
    assert res is not None and res.aborted and res.output_tokens == 2 and res.finish_time == t
    assert res.ttft == pytest.approx(A / 1000)
    assert eng.used_blocks == 0 and eng.outstanding == 0
    assert eng.abort("dec") is None
    # a partially prefilled request
    eng.add(Request("long", 20_000, 5), t)
    eng.add(Request("w", 10, 5), t)
    t = eng.step(t).end
    assert eng.used_blocks == 8192 // 16 and eng.num_waiting == 1
    res = eng.abort("long")
    assert res is not None and res.first_token_time is None and res.ttft is None
    assert eng.used_blocks == 0
    # a waiting request
    assert eng.abort("w") is not None
    assert eng.num_waiting == 0 and not eng.has_work
    assert eng.step(t).duration == 0.0


def test_abort_waiting_is_skipped_by_scheduler() -> None:
    eng = Engine(ReplicaCostModel(max_num_seqs=1))
    for rid in "xyz":
        eng.add(Request(rid, 10, 2), 0.0)
    eng.abort("y")
    steps = run(eng)
    assert [q.request_id for s in steps for q in s.first_token] == ["x", "z"]


def test_max_tokens_caps_output() -> None:
    eng = Engine()
    eng.add(Request("a", 10, 50, max_tokens=3), 0.0)
    eng.add(Request("b", 10, 2, max_tokens=3), 0.0)
    res = {r.request_id: r for s in run(eng) for r in s.finished}
    assert (res["a"].output_tokens, res["a"].finish_reason) == (3, "length")
    assert (res["b"].output_tokens, res["b"].finish_reason) == (2, "stop")


def test_invalid_requests() -> None:
    eng = Engine(ReplicaCostModel(kv_capacity_tokens=64))
    with pytest.raises(ValueError, match="KV"):
        eng.add(Request("big", 60, 10), 0.0)
    eng.add(Request("ok", 60, 5), 0.0)  # 64 tokens exactly: the last token is never cached
    with pytest.raises(ValueError, match="duplicate"):
        eng.add(Request("ok", 1, 1), 0.0)
    with pytest.raises(ValueError):
        eng.add(Request("empty", 0, 1), 0.0)
    assert run(eng)[-1].finished[0].output_tokens == 5


def test_stream_tokens() -> None:
    eng = Engine(stream_tokens=True)
    eng.add(Request("a", 10, 3), 0.0)
    t = eng.step(0.0).end
    eng.add(Request("b", 10, 2), t)
    r = eng.step(t)
    assert sorted(r.new_tokens) == [("a", 1), ("b", 1)]
    assert eng.generated("a") == 2 and eng.generated("b") == 1
    quiet = Engine()
    quiet.add(Request("a", 10, 3), 0.0)
    assert quiet.step(0.0).new_tokens == ()


def test_busy_time_and_counters() -> None:
    eng = Engine()
    eng.add(Request("a", 100, 5), 0.0)
    steps = run(eng)
    assert eng.num_steps == 5
    assert eng.busy_time == pytest.approx(sum(s.duration for s in steps))
    assert eng.finished_total == 1
