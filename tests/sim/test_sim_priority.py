"""vLLM's --scheduling-policy priority: the waiting queue serves lower priority values first."""

from sim.costmodel import ReplicaCostModel
from sim.engine import Engine, Request


def first_token_order(policy: str) -> list[str]:
    cost = ReplicaCostModel(max_num_seqs=1, max_num_batched_tokens=256, scheduling_policy=policy)
    eng = Engine(cost)
    eng.add(Request("busy", prompt_tokens=10, output_tokens=3), 0.0)
    eng.add(Request("spot", prompt_tokens=10, output_tokens=1, priority=2), 0.0)
    eng.add(Request("guaranteed", prompt_tokens=10, output_tokens=1, priority=0), 0.0)
    order: list[str] = []
    now = 0.0
    while eng.has_work:
        res = eng.step(now)
        order.extend(r.request_id for r in res.first_token if r.request_id not in order)
        now = res.end
    return order


def test_fcfs_ignores_priority():
    assert first_token_order("fcfs") == ["busy", "spot", "guaranteed"]


def test_priority_policy_serves_lower_values_first():
    assert first_token_order("priority") == ["busy", "guaranteed", "spot"]


def test_unknown_policy_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="scheduling_policy"):
        ReplicaCostModel(scheduling_policy="lifo")


def test_priority_policy_preempts_the_lowest_priority_running_request():
    # Two blocks of 16 tokens: two running sequences fill them; decoding needs a third block.
    cost = ReplicaCostModel(kv_capacity_tokens=32, block_size=16, max_num_seqs=4, max_num_batched_tokens=64,
                            scheduling_policy="priority")
    eng = Engine(cost)
    eng.add(Request("spot", prompt_tokens=16, output_tokens=5, priority=2), 0.0)
    eng.add(Request("guaranteed", prompt_tokens=16, output_tokens=5, priority=0), 0.0)
    now, preempted = 0.0, []
    for _ in range(4):
        res = eng.step(now)
        preempted.extend(r.request_id for r in res.preempted)
        now = res.end
    assert preempted and preempted[0] == "spot"
