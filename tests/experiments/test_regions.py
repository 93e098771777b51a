"""Experiment 3, regions at scale (sim.experiments.regions), on a short run and small sizes.

The full run (5 regions, 50 pools, 5,000 entitlements) is `tokenpools experiment regions`; here 3
regions, 6 pools and 60 entitlements over 150 simulated seconds, plus a two-region platform with
constant demand whose shares are known in closed form.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from rich.console import Console

from sim.experiments import regions


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("regions")
    summary = regions.run(seed=5, duration=150, out=out, console=Console(file=io.StringIO()),
                          regions=3, pools=6, entitlements=60)
    return summary, out


def test_the_short_run_writes_every_output(small: tuple[dict[str, Any], Path]) -> None:
    summary, out = small
    for name in ("regions.json", "table.md", "shares.png", "error.png", "failover.png"):
        assert (out / name).stat().st_size > 0, name
    stored = json.loads((out / "regions.json").read_text())
    assert stored["checks"] == summary["checks"]
    assert stored["platform"]["pools"] == 6 and stored["platform"]["entitlements"] == 60
    assert "PASS" in (out / "table.md").read_text() or "FAIL" in (out / "table.md").read_text()


def test_the_short_run_converges_and_fails_over(small: tuple[dict[str, Any], Path]) -> None:
    summary, _ = small
    checks = summary["checks"]
    assert checks["converges"], summary["convergence"]
    assert checks["failover_holds_as_without_failure"], summary["failover"]["held"]
    assert checks["failover_claims_guarantee"], summary["failover"]
    fo = summary["failover"]
    # Claimed (held or being released) is a weaker condition than held, so it is met no later; and neither
    # before the dead region's last heartbeat is lostAfter old.
    assert fo["detection_s"] <= fo["claimed"]["max_s"] <= fo["max_s"]
    assert fo["detection_s"] <= fo["claimed"]["p50_s"] <= fo["p50_s"]
    # The TTFT claim is judged on the full run only: with 3 regions a loss moves +50 % of the load onto
    # pools of 2-3 replicas that a 60 s start-up delay cannot absorb at once, so here it depends on the seed.
    # Here: both runs were measured, and the survivors' pools grew in the failure run.
    ttft = summary["ttft"]
    for run in ("failure", "no_failure"):
        assert ttft[run]["requests"] > 0 and ttft[run]["p99"] is not None and ttft[run]["p99"] > 0
    grown = ttft["replicas"]["failure"]
    assert sum(r["end"] for r in grown.values()) > sum(r["start"] for r in grown.values())
    assert summary["platform"]["provisionable"]["fits"]
    assert summary["ideal_split_vs_split_global_max_gap"] < 1e-9
    # Admitted traffic, integrated over each window, never exceeds the global burst.
    assert summary["global_limit_error"]["max"] <= 1e-9
    tick = summary["split_tick"]
    assert tick["entitlements"] == 60 and tick["per_entitlement_us_p50"] > 0  # measured, not asserted on


def test_the_enforced_shares_never_sum_above_the_global_burst(small: tuple[dict[str, Any], Path]) -> None:
    summary, _ = small
    assert summary["checks"]["never_over_global"], summary["global_limit_error"]


class Constant(regions.Platform):
    """Demand fixed at 70 % in the first region and 30 % in the second, whatever the time."""

    def demand(self, t: float, idx: NDArray[np.int64], failed: bool) -> NDArray[np.float64]:
        d = np.outer(self.level[idx], [0.7, 0.3])
        if failed and t >= self.timeline.fail_at:
            d = np.outer(self.level[idx], [1.0, 0.0])
        return d


def constant_platform() -> Constant:
    p = regions.build(3, 2, 2, 8, 150)
    return Constant(**{f: getattr(p, f) for f in p.__dataclass_fields__})


def test_constant_demand_70_30_gives_the_floor_plus_the_demand_share() -> None:
    p = constant_platform()
    fluid = regions.run_fluid(p, np.arange(p.n), False, seed=3)
    last = np.array(fluid.sample["enforced"][-1])
    b = fluid.sample["burst"]
    # A floor of 10 % split evenly over 2 regions, the rest by demand: 0.05 + 0.9 x 0.7 of the burst.
    assert last[0] == pytest.approx(b * (0.05 + 0.9 * 0.7), abs=b * regions.QUANTUM)
    assert last[1] == pytest.approx(b * (0.05 + 0.9 * 0.3), abs=b * regions.QUANTUM)
    assert fluid.max_live_sum <= 1 + 1e-9
    # Converged within one epoch of the start; the step change does nothing to constant demand.
    assert np.nanmax(fluid.converge) == 0.0


def test_the_survivor_takes_the_whole_guarantee_after_lost_after() -> None:
    p = constant_platform()
    fluid = regions.run_fluid(p, np.arange(p.n), True, seed=3)
    assert fluid.failover.size and not np.isnan(fluid.failover).any()
    # Not before the dead region's last heartbeat is lostAfter old, and within one epoch and a delay of it.
    last_heartbeat = (p.timeline.fail_at // regions.EPOCH_S) * regions.EPOCH_S
    earliest = last_heartbeat + regions.LOST_AFTER_S - p.timeline.fail_at
    assert (fluid.failover >= earliest).all()
    assert (fluid.failover <= earliest + regions.EPOCH_S + regions.DELAY[1] + regions.DT).all()


def test_the_ideal_split_is_split_global_when_capacity_does_not_bind() -> None:
    p = regions.build(9, 3, 3, 30, 120)
    assert regions.check_ideal(p, 50, seed=9) < 1e-9
