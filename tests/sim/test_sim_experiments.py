"""Invariants of the control loop on a short run, and the experiments' helpers (simulated time, no services).

The experiments' claims are asserted in test_claims.py, on the full-length seeded runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from schemas.arrivals import generate_arrivals, scaled
from sim import analysis
from sim.control import ControlLoop, LoopSettings, Mode, SimOutcome
from sim.experiments import overload
from sim.experiments.common import ENGINE, load


@pytest.fixture(scope="module")
def overload_runs() -> dict[Mode, list]:
    config = load()
    spec = scaled(config.workloads["overload"].spec, 90)
    pool = config.pools[spec.pool]
    arrivals = generate_arrivals(spec, seed=7)
    out = {}
    for mode in (Mode.TOKENPOOLS, Mode.BASELINE):
        loop = ControlLoop(pool, config.entitlements_of(pool.name), mode,
                           LoopSettings(replicas=4, max_replicas=8, cost_model=ENGINE))
        out[mode] = loop.run(arrivals, spec.duration_seconds).records
    return out


def test_tokenpools_never_refuses_guaranteed_work_within_guarantee(overload_runs):
    guaranteed = [r for r in overload_runs[Mode.TOKENPOOLS] if r.tier == "guaranteed"]
    assert guaranteed
    assert not [r for r in guaranteed if r.outcome in (SimOutcome.REFUSED, SimOutcome.QUEUE_TIMEOUT)]


def test_tokenpools_throttles_spot_and_baseline_admits_everything(overload_runs):
    spot = [r for r in overload_runs[Mode.TOKENPOOLS] if r.tier == "spot"]
    assert any(r.outcome is SimOutcome.REFUSED for r in spot)
    assert all(r.refused_dimension for r in spot if r.outcome is SimOutcome.REFUSED)
    assert not [r for r in overload_runs[Mode.BASELINE] if r.outcome is SimOutcome.REFUSED]


def test_same_seed_same_arrivals_in_both_modes(overload_runs):
    ids = {m: sorted(r.request_id for r in recs) for m, recs in overload_runs.items()}
    assert ids[Mode.TOKENPOOLS] == ids[Mode.BASELINE]


def test_phases_follow_the_spot_profile():
    phases = overload.phases_of([(0, 0), (60, 0), (120, 400), (480, 400), (540, 0)], 600)
    assert phases.spans == {"warm-up": (0.0, 60), "ramp": (60, 120), "overload": (120, 480),
                            "fall": (480, 540), "tail": (540, 600)}
    assert phases.thirds()[0] == (120, 240)


def test_jain_and_percentiles():
    assert analysis.jain([1, 1, 1]) == pytest.approx(1.0)
    assert analysis.jain([1, 0, 0]) == pytest.approx(1 / 3)
    assert analysis.pct(np.array([np.nan, 1.0, 2.0, 3.0]), 50) == 2.0
    assert analysis.pct(np.array([np.nan]), 50) is None
