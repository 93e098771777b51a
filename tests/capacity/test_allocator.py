import numpy as np
import pytest

from capacity.allocator import AllocatorPolicy, TickInput, allocate


def tick_input(rank, weight=None, guarantee=None, burst=None, demand=None, usage=None, debt=None,
               capacity=(100.0, 100.0, 100.0), dt=1.0):
    n = len(rank)
    return TickInput(
        capacity=np.array(capacity, dtype=float),
        rank=np.array(rank),
        weight=np.array(weight if weight is not None else [1.0] * n, dtype=float),
        guarantee=np.array(guarantee if guarantee is not None else [[0.0] * 3] * n, dtype=float),
        burst=np.array(burst if burst is not None else [[1e9] * 3] * n, dtype=float),
        demand=np.array(demand if demand is not None else [[0.0] * 3] * n, dtype=float),
        usage=np.array(usage if usage is not None else [[0.0] * 3] * n, dtype=float),
        debt=np.array(debt if debt is not None else [0.0] * n, dtype=float),
        dt=dt,
    )


NO_BUFFER = AllocatorPolicy(reclaim_buffer=0.0)


def test_guaranteed_first_then_elastic_then_spot():
    inp = tick_input(
        rank=[0, 1, 2],
        guarantee=[[40, 40, 40], [0, 0, 0], [0, 0, 0]],
        demand=[[30, 30, 30], [50, 50, 50], [100, 100, 100]],
    )
    res = allocate(inp, NO_BUFFER)
    # throughput lends the guarantee's unused 10 to spot (elastic is satisfied)
    assert np.allclose(res.allocation[:, 0], [30, 50, 20])
    # held dims: elastic gets at most capacity minus all guarantees (60); spot backfills the rest
    assert np.allclose(res.allocation[:, 1], [30, 50, 20])


def test_held_dimensions_keep_guarantees_from_elastic():
    inp = tick_input(rank=[0, 1], guarantee=[[40, 40, 40], [0, 0, 0]], demand=[[0, 0, 0], [100, 100, 100]])
    res = allocate(inp, NO_BUFFER)
    assert res.allocation[1, 0] == pytest.approx(100)  # throughput: the unused guarantee is lent
    assert res.allocation[1, 1] == pytest.approx(60)  # kv: it is reserved
    assert res.allocation[1, 2] == pytest.approx(60)


def test_demand_includes_refused_work_and_elastic_splits_by_weight():
    inp = tick_input(rank=[1, 1, 1], weight=[1, 1, 2], demand=[[100, 100, 100]] * 3)
    res = allocate(inp, NO_BUFFER)
    assert np.allclose(res.allocation[:, 0], [25, 25, 50])


def test_spot_leaves_the_reclaim_buffer():
    inp = tick_input(rank=[2], demand=[[500, 500, 500]])
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=0.1))
    assert np.allclose(res.allocation[0], [90, 90, 90])
    assert np.allclose(res.limits[0], [90, 90, 90])


def test_headroom_lets_idle_tenants_start_but_limits_stay_within_burst():
    inp = tick_input(rank=[1, 1], burst=[[30, 30, 30], [1e9, 1e9, 1e9]], demand=[[0, 0, 0], [10, 10, 10]])
    res = allocate(inp, NO_BUFFER)
    assert np.allclose(res.allocation[:, 0], [0, 10])
    assert res.limits[0, 0] == pytest.approx(30)
    assert res.limits.sum(axis=0)[0] <= 100 + 1e-9


def test_under_provisioned_guarantees_are_scaled_in_proportion():
    inp = tick_input(rank=[0, 0], guarantee=[[100, 100, 100], [50, 50, 50]], demand=[[100, 100, 100], [50, 50, 50]],
                     capacity=(75, 75, 75))
    res = allocate(inp, NO_BUFFER)
    assert np.allclose(res.allocation[:, 0], [50, 25])


def test_usage_memory_grows_with_use_and_lowers_effective_weight():
    # tenant 0 alone uses the whole pool while its configured share is 1/2
    inp = tick_input(rank=[1, 1], demand=[[100, 0, 0], [0, 0, 0]], usage=[[100, 0, 0], [0, 0, 0]], dt=10)
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=0.0, debt_half_life=600))
    assert res.fair_share[0] == pytest.approx(0.5)
    assert res.debt[0] == pytest.approx(10.0)  # 1.0 dominant share x 10 s
    assert res.debt[1] == 0.0
    assert res.over_use[0] == pytest.approx(5.0) and res.over_use[1] == pytest.approx(-5.0)
    # remembered share 1 against configured 1/2: factor 2^-2; the idle tenant keeps 2^0
    assert res.effective_weight[0] == pytest.approx(0.25)
    assert res.effective_weight[1] == pytest.approx(1.0)


def test_memory_shifts_the_split_toward_the_tenant_that_used_less():
    inp = tick_input(rank=[1, 1], demand=[[100, 100, 100]] * 2, debt=[30.0, 0.0])
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=0.0))
    assert res.allocation[0, 0] < res.allocation[1, 0]


def test_equal_remembered_shares_split_by_weight():
    inp = tick_input(rank=[1, 1, 1], weight=[1, 1, 2], demand=[[100, 100, 100]] * 3, debt=[10.0, 10.0, 20.0])
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=0.0))
    assert np.allclose(res.allocation[:, 0], [25, 25, 50])


def test_no_memory_policy_ignores_debt():
    inp = tick_input(rank=[1, 1], demand=[[100, 100, 100]] * 2, debt=[30.0, 0.0])
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=0.0, use_debt=False))
    assert np.allclose(res.allocation[:, 0], [50, 50])
    assert np.all(res.debt == 0)


def test_spot_backfills_up_to_the_rated_capacity_and_elastic_only_to_the_sold_one():
    """Capacity sold is 100; the replicas are rated 125 on throughput (a 0.8 utilisation target)."""
    demand = [[30, 30, 30], [100, 100, 100], [100, 100, 100]]
    plain = allocate(tick_input(rank=[0, 1, 2], demand=demand), NO_BUFFER)
    inp = tick_input(rank=[0, 1, 2], demand=demand)
    inp.backfill = np.array([125.0, 100.0, 100.0])
    res = allocate(inp, AllocatorPolicy(reclaim_buffer=0.2))
    assert np.allclose(plain.allocation[:, 0], [30, 70, 0])  # without backfill spot gets nothing
    assert np.allclose(res.allocation[:, 0], [30, 70, 0])  # 125 x 0.8 = 100: all of it is sold
    inp.backfill = np.array([125.0, 100.0, 100.0])
    res = allocate(inp, NO_BUFFER)
    assert np.allclose(res.allocation[:, 0], [30, 70, 25])  # the utilisation target's headroom goes to spot
    assert np.allclose(res.allocation[:, 1:], plain.allocation[:, 1:])  # held dimensions: the sold capacity only


def test_backfill_never_lowers_what_spot_gets():
    inp = tick_input(rank=[2], demand=[[100, 100, 100]])
    inp.backfill = np.array([50.0, 50.0, 50.0])
    assert np.allclose(allocate(inp, NO_BUFFER).allocation[0], [100, 100, 100])
