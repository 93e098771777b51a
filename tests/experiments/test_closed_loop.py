"""The closed-loop demo's claims and plot, on a synthetic timeline and synthetic records.

The live run itself (``tokenpools experiment closed-loop``: Kafka, worker, scaler, admitters, load)
takes about four minutes, so the suite does not run it; its parts are covered by
tests/integration/test_up.py (``tokenpools up`` under load through both admitters) and
test_scaling.py (grow, then shrink after the stabilisation window). Here: does the analysis accept
a run that behaved, and reject each way a run can misbehave?
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.plan import make_plan
from loadgen.report import report
from loadgen.runner import OK, REFUSED, LoadResult, Record
from schemas.records import Amounts, EntitlementState, PoolState, ReplicasReport
from tokenpools.experiments import closed_loop

T0 = 1_000_000.0
PLAN = make_plan([closed_loop.CONFIG], closed_loop.WORKLOAD)
POOL = PLAN.spec.pool


def served(entitlement: str, tier: str, per_second: int, lo: float, hi: float, ttft: float = 0.1) -> list[Record]:
    """``per_second`` ok requests of 250 weighted tokens (0.5 x 300 + 100) each second in [lo, hi)."""
    out = []
    for s in range(int(lo), int(hi)):
        for k in range(per_second):
            r = Record(f"{entitlement}-{s}-{k}", entitlement, entitlement, tier, True, 0, s + k / per_second,
                       300, 100, 200, sent=s, ended=s + 1, status=200, outcome=OK, ttft=ttft, e2e=1.0,
                       prompt_tokens=300, output_tokens=100)
            out.append(r)
    return out


def run(replicas: list[tuple[float, int]], *, b_rate: int = 2, ttft: float = 0.1
        ) -> tuple[LoadResult, closed_loop.Timeline]:
    records = [*served("acme-live", "guaranteed", 1, 0, 130, ttft=ttft),
               *served("tenant-a-live", "elastic", 4, 25, 80), *served("tenant-b-live", "elastic", b_rate, 25, 80)]
    records.append(Record("spot-1", "batchco", "batchco-live", "spot", False, 0, 50.0, 300, 100, 200, sent=50.0,
                          ended=50.01, status=429, outcome=REFUSED))
    timeline = closed_loop.Timeline(
        replicas=[ReplicasReport(pool=POOL, ready_replicas=n, ts=T0 + t) for t, n in replicas],
        pools=[PoolState(id=POOL, seq=i, ts=T0 + t, ready_replicas=n, capacity=Amounts(throughput=540.0 * n),
                         guarantees=Amounts(), demand={"guaranteed": Amounts(throughput=300.0)})
               for i, (t, n) in enumerate(replicas)],
        entitlements=[EntitlementState(id="tenant-a-live", pool=POOL, tier="elastic", seq=1, ts=T0 + 30,
                                       limits=Amounts(throughput=800.0))],
    )
    return LoadResult(records, 130.0, 131.0, 0, 1.0, ["http://a", "http://b"]), timeline


GOOD = [(0.0, 1), (10.0, 1), (27.0, 2), (30.0, 3), (60.0, 3), (101.0, 2), (103.0, 1), (120.0, 1)]


def analyse(result: LoadResult, timeline: closed_loop.Timeline) -> dict[str, bool]:
    pool = PLAN.config.pools[POOL]
    summary = report(result, (pool.spec.token_weights.input, pool.spec.token_weights.output))
    return closed_loop.analyse(PLAN, result, timeline, T0, summary)["pass"]


def test_a_run_that_behaved_meets_every_claim() -> None:
    checks = analyse(*run(GOOD))
    assert all(checks.values()), checks


@pytest.mark.parametrize(("replicas", "kw", "broken"), [
    ([(0.0, 1), (10.0, 2), (30.0, 3), (103.0, 1)], {}, "spot alone does not scale the pool"),
    ([(0.0, 1), (30.0, 1), (103.0, 1)], {}, "elastic demand above capacity grows the pool"),
    ([(0.0, 1), (30.0, 3), (85.0, 1)], {}, "the pool shrinks back, after the stabilisation window"),
    ([(0.0, 1), (30.0, 3), (125.0, 3)], {}, "the pool shrinks back, after the stabilisation window"),
    (GOOD, {"b_rate": 4}, "elastic tenants share about 2:1 (weights 2 and 1)"),
    (GOOD, {"ttft": 1.5}, "guaranteed P99 TTFT within its SLO"),
])
def test_each_way_a_run_can_misbehave_fails_its_claim(replicas: list[tuple[float, int]], kw: dict[str, int],
                                                      broken: str) -> None:
    checks = analyse(*run(replicas, **kw))
    assert not checks[broken]
    assert all(ok for name, ok in checks.items() if name != broken), checks


def test_the_plot_and_the_timeline_are_written(tmp_path: Path) -> None:
    result, timeline = run(GOOD)
    closed_loop.plot(PLAN, result, timeline, T0, tmp_path / "closed_loop.png")
    assert (tmp_path / "closed_loop.png").stat().st_size > 10_000
    data = closed_loop.timeline_json(timeline, T0)
    assert [r["ready_replicas"] for r in data["replicas"]] == [n for _, n in GOOD]
    assert data["entitlement_state"][0] == {"t": 30.0, "id": "tenant-a-live", "seq": 1, "limit": 800.0,
                                            "usage": 0.0, "demand": 0.0, "debt": 0.0}
