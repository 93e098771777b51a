"""The simulated-time cluster: event ordering, routing, autoscaling, accounting."""

from __future__ import annotations

import pytest

from sim.cluster import Cluster
from sim.costmodel import ReplicaCostModel
from sim.engine import Engine, Request, RequestResult

A, B, K = 5.43, 0.0155, 2.64e-5


def single_engine_results(reqs: list[tuple[Request, float]]) -> dict[object, RequestResult]:
    """The same requests on a lone engine, stepped by hand."""
    eng = Engine()
    out: dict[object, RequestResult] = {}
    pending = sorted(reqs, key=lambda x: x[1])
    t = 0.0
    while pending or eng.has_work:
        while pending and pending[0][1] <= t:
            req, at = pending.pop(0)
            eng.add(req, at)
        if not eng.has_work:
            t = pending[0][1]
            continue
        r = eng.step(t)
        out.update({x.request_id: x for x in r.finished})
        t = r.end
    return out


def test_one_replica_matches_engine() -> None:
    reqs = [(Request(i, 50 + 10 * i, 5 + i), 0.002 * i) for i in range(6)]
    firsts: list[tuple[float, object, int]] = []
    cl = Cluster(1, on_first_token=lambda t, q, rep: firsts.append((t, q.request_id, rep)))
    done: list[RequestResult] = []
    for req, at in reqs:
        done += cl.run_until(at)
        cl.submit(req, at)
    done += cl.run_until(10.0)
    expect = single_engine_results(reqs)
    assert {r.request_id for r in done} == set(expect)
    for r in done:
        assert r.finish_time == pytest.approx(expect[r.request_id].finish_time)
        assert r.ttft == pytest.approx(expect[r.request_id].ttft)
    assert [f[1] for f in firsts] == sorted(f[1] for f in firsts)
    assert all(f[2] == 0 for f in firsts)
    assert cl.outstanding == 0 and cl.now == 10.0


def test_routes_to_least_outstanding() -> None:
    cl = Cluster(3)
    # all idle: ties -> lowest index
    assert [cl.submit(Request(i, 10, 100), 0.0) for i in range(3)] == [0, 1, 2]
    assert cl.submit(Request(3, 10, 100), 0.0) == 0
    assert cl.submit(Request(4, 10, 100), 0.0) == 1
    cl.abort(0)  # replica 0 now has 1, replica 1 has 2, replica 2 has 1
    assert cl.submit(Request(5, 10, 100), 0.0) == 0
    assert [r.outstanding for r in cl.replicas] == [2, 2, 1]


def test_simultaneous_arrivals_share_the_first_step() -> None:
    cl = Cluster(1)
    firsts: list[float] = []
    cl.on_first_token = lambda t, q, rep: firsts.append(t)
    cl.submit(Request("a", 10, 2), 1.0)
    cl.submit(Request("b", 10, 2), 1.0)
    cl.run_until(2.0)
    assert firsts == [pytest.approx(1.0 + A / 1000)] * 2


def test_add_replica_with_startup_delay() -> None:
    cl = Cluster(1)
    new = cl.add_replica(ready_at=5.0)
    assert new == 1
    assert [r.id for r in cl.ready_replicas(0.0)] == [0]
    # before the new replica is ready everything goes to replica 0
    for i in range(3):
        assert cl.submit(Request(i, 10, 10_000), 1.0 + i) == 0
    assert [r.id for r in cl.ready_replicas(5.0)] == [0, 1]
    assert cl.submit(Request("late", 10, 5), 5.0) == 1
    res = cl.run_until(6.0)
    late = next(r for r in res if r.request_id == "late")
    assert late.replica == 1
    assert late.ttft == pytest.approx(A / 1000)


def test_cold_start_waits_for_ready() -> None:
    cl = Cluster(0)
    cl.add_replica(ready_at=30.0)
    assert cl.submit(Request("a", 100, 1), 0.0) == 0  # no ready replica: queue on the starting one
    res = cl.run_until(31.0)
    assert len(res) == 1 and res[0].ttft == pytest.approx(30.0 + A / 1000)
    assert cl.replicas[0].busy_time() == pytest.approx(A / 1000)
    assert cl.replica_seconds(31.0) == pytest.approx(31.0)


def test_drain_then_remove() -> None:
    cl = Cluster(2)
    cl.submit(Request("a", 10, 3), 0.0)  # replica 0
    cl.submit(Request("b", 10, 100), 0.0)  # replica 1
    assert cl.remove_replica(1) == 1
    r1 = cl.replica(1)
    assert r1.draining and r1.removed_at is None  # still has b
    assert cl.submit(Request("c", 10, 3), 0.001) == 0  # draining replica gets nothing new
    done = cl.run_until(5.0)
    b = next(r for r in done if r.request_id == "b")
    assert r1.removed_at == pytest.approx(b.finish_time)
    assert [r.id for r in cl.replicas] == [0] and [r.id for r in cl.removed] == [1]
    assert r1.alive_time(5.0) == pytest.approx(b.finish_time)
    assert r1.busy_time() == pytest.approx(b.finish_time)  # busy from 0 until b finished
    # an empty replica is removed at once; with no id the least loaded is chosen
    cl.add_replica()
    assert cl.remove_replica() == 2
    assert cl.replica(2).removed_at == 5.0
    assert len(cl.all_replicas) == 3


def test_remove_prefers_starting_replica() -> None:
    cl = Cluster(2)
    cl.add_replica(ready_at=100.0)
    cl.add_replica(ready_at=50.0)
    assert cl.remove_replica() == 2
    assert cl.remove_replica() == 3
    cl.submit(Request("x", 10, 50), 0.0)
    assert cl.remove_replica() == 1  # idle one, not replica 0 which has work


def test_abort_in_flight_drops_completion() -> None:
    cl = Cluster(1)
    finished: list[RequestResult] = []
    cl.on_finish = finished.append
    cl.submit(Request("a", 10, 1), 0.0)
    cl.submit(Request("b", 10, 50), 0.0)
    cl.run_until(0.001)  # the first step (both prefills) is in flight; it finishes a
    assert cl.abort("a", 0.001) is None  # already done inside the engine
    res = cl.abort("b", 0.001)
    assert res is not None and res.aborted
    cl.run_until(1.0)
    assert finished == [] and cl.outstanding == 0
    assert cl.replicas[0].outstanding == 0


def test_call_at_interleaves_with_steps() -> None:
    cl = Cluster(1)
    seen: list[tuple[float, int]] = []
    cl.submit(Request("a", 10, 3), 0.0)
    cl.call_at(0.004, lambda t: seen.append((t, cl.outstanding)))
    cl.call_at(0.5, lambda t: seen.append((t, cl.outstanding)))
    cl.run_until(1.0)
    assert seen == [(0.004, 1), (0.5, 0)]
    with pytest.raises(ValueError):
        cl.call_at(0.9, lambda t: None)


def test_busy_time_partial_step_and_utilisation() -> None:
    cl = Cluster(1)
    cl.submit(Request("a", 1000, 1), 0.0)  # one prefill step of 27.6 ms
    cl.run_until(0.01)
    rep = cl.replicas[0]
    assert rep.busy_time(0.01) == pytest.approx(0.01)
    assert rep.busy_time() == pytest.approx(0.0276)
    cl.run_until(1.0)
    assert cl.busy_time(1.0) == pytest.approx(0.0276)


def test_preempt_callback() -> None:
    cost = ReplicaCostModel(kv_capacity_tokens=64)
    seen: list[object] = []
    cl = Cluster(1, cost, on_preempt=lambda t, q, rep: seen.append(q.request_id))
    cl.submit(Request("a", 16, 20), 0.0)
    cl.submit(Request("b", 16, 20), 0.0)
    res = cl.run_until(10.0)
    assert seen == ["b"] and {r.request_id: r.preemptions for r in res} == {"a": 0, "b": 1}


def test_submit_in_the_past_and_without_replicas() -> None:
    cl = Cluster(1)
    cl.run_until(2.0)
    with pytest.raises(ValueError):
        cl.submit(Request("a", 1, 1), 1.0)
    cl.remove_replica()
    with pytest.raises(RuntimeError):
        cl.submit(Request("b", 1, 1), 2.0)


def test_many_requests_conserve_tokens() -> None:
    cl = Cluster(4)
    n = 400
    for i in range(n):
        cl.submit(Request(i, 200 + i % 300, 1 + (7 * i) % 150), i * 0.004)
    res = cl.run_until(100.0)
    assert len(res) == n
    assert sum(r.output_tokens for r in res) == sum(1 + (7 * i) % 150 for i in range(n))
    assert {r.replica for r in res} == {0, 1, 2, 3}
    for r in res:
        assert r.ttft is not None and r.ttft > 0 and r.e2e >= r.ttft
    assert all(rep.engine.used_blocks == 0 for rep in cl.replicas)


def test_closed_loop_clients_submit_from_callbacks() -> None:
    """on_finish may submit the client's next request at the finish time (closed-loop load)."""
    sent = [0]

    def again(res: RequestResult) -> None:
        if sent[0] < 5:
            sent[0] += 1
            cl.submit(Request(f"r{sent[0]}", 10, 2), res.finish_time)

    cl = Cluster(1, on_finish=again, collect_finished=False)
    cl.submit(Request("r0", 10, 2), 0.0)
    assert cl.run_until(1.0) == []
    assert sent[0] == 5 and cl.outstanding == 0
    assert cl.replicas[0].engine.finished_total == 6
