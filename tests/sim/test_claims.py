"""The experiments' headline claims, asserted: one test per claim, so a failure names the claim.

`make demo` prints a PASS/FAIL line for each claim of experiment 1 (overload) and experiment 2
(fairness); these tests run the same experiments, seeded, once per module, and assert every one of
those claims. The bounds are written here, not read from the experiments, and each test computes
its claim from the measured values itself before checking that the experiment's own verdict
agrees, so loosening a bound in `sim/experiments/` does not loosen CI.

Length: the full timeline (600 s of simulated time) and the demo's seeds, because a shorter run
cannot carry the claims at their stated strength. Measured at 9f1548b (docs/experiments.md, "What
CI asserts"): with the whole timeline scaled to 300 s, overload throughput is 0.873-0.896 of the
baseline over four seeds (bound 0.9), guaranteed P99 grows 1.14x between the first and last third
for one of them (bound 1.1) and three of four never hold the 5 % convergence band; at 450 s two
seeds are at 0.897 and 0.9004. The fairness debt claim (debt at the end under a quarter of the
debt at the join) depends on the pool's absolute 300 s debt half-life, which a shorter timeline
does not shrink: 0.33-0.38 at 300 s, 0.25-0.30 at 450 s, 0.20-0.21 at 600 s. Both experiments at
full length take well under a minute of CPU together on this 2-core machine, so CI asserts the
claims as the README states them instead of weaker ones. The runs are deterministic (seeded,
simulated time), so the throughput claim's thin margin at the CI seed (0.910 against 0.9) cannot
flake; at seed 2 it is 0.8998, which docs/experiments.md reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from sim.experiments import fairness, overload

OVERLOAD_SEED = 42  # the demo's seeds and durations: CI asserts what `make demo` prints
FAIRNESS_SEED = 43
DURATION = 600.0

# The claims and their bounds, as the README and docs/experiments.md state them.
P99_VS_NO_SPOT_MAX = 1.5
LAST_VS_FIRST_THIRD_MAX = 1.1
THROUGHPUT_VS_BASELINE_MIN = 0.9
BASELINE_GROWTH_MIN = 1.1
FAIR_BAND = 0.05
JAIN_MIN = 0.99
DEBT_LEFT_MAX = 0.25

OVERLOAD_CLAIMS = {
    "guaranteed_p99_within_1.5x_of_no_spot",
    "guaranteed_p99_not_growing_(<=1.1x)",
    "throughput_>=90%_of_baseline",
    "baseline_p99_grows",
}
FAIRNESS_CLAIMS = {
    "tokenpools_converges_within_5%",
    "tokenpools_jain_>=0.99",
    "in-debt_tenant_starts_below_fair_and_debt_decays",
}


@pytest.fixture(scope="module")
def overload_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("overload")


@pytest.fixture(scope="module")
def fairness_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fairness")


@pytest.fixture(scope="module")
def overload_summary(overload_out: Path) -> dict[str, Any]:
    return overload.run(seed=OVERLOAD_SEED, duration=DURATION, out=overload_out, console=Console(quiet=True))


@pytest.fixture(scope="module")
def fairness_summary(fairness_out: Path) -> dict[str, Any]:
    return fairness.run(seed=FAIRNESS_SEED, duration=DURATION, out=fairness_out, console=Console(quiet=True))


def _ratio(a: float | None, b: float | None) -> float:
    assert a is not None and b, f"no measurement: {a!r} / {b!r}"
    return a / b


# Experiment 1: overload (spot surges to 3.4x capacity; guaranteed tenants at ~55 %).

def test_overload_every_claim_has_a_test(overload_summary: dict[str, Any]) -> None:
    """A claim added to the experiment without a test here fails this one."""
    assert set(overload_summary["checks"]["pass"]) == OVERLOAD_CLAIMS


def test_guaranteed_p99_within_1_5x_of_no_spot(overload_summary: dict[str, Any]) -> None:
    """Guaranteed P99 TTFT over the overload phase, token pools against the same run without spot."""
    c = overload_summary["checks"]
    p99, ref = c["tokenpools"]["overload_p99_ttft"], c["reference_p99_ttft"]
    ratio = _ratio(p99, ref)
    assert ratio <= P99_VS_NO_SPOT_MAX, (
        f"guaranteed P99 TTFT {p99:.3f} s is {ratio:.3f}x the no-spot {ref:.3f} s (bound {P99_VS_NO_SPOT_MAX}x)")
    assert c["pass"]["guaranteed_p99_within_1.5x_of_no_spot"], "the experiment's verdict disagrees"


def test_guaranteed_p99_not_growing(overload_summary: dict[str, Any]) -> None:
    """Guaranteed P99 TTFT in the last third of the overload phase against the first third."""
    tp = overload_summary["checks"]["tokenpools"]
    first, last = tp["first_third_p99_ttft"], tp["last_third_p99_ttft"]
    ratio = _ratio(last, first)
    assert ratio <= LAST_VS_FIRST_THIRD_MAX, (
        f"guaranteed P99 TTFT grew {ratio:.3f}x from the first third ({first:.3f} s) to the last "
        f"({last:.3f} s) (bound {LAST_VS_FIRST_THIRD_MAX}x)")
    assert overload_summary["checks"]["pass"]["guaranteed_p99_not_growing_(<=1.1x)"], \
        "the experiment's verdict disagrees"


def test_throughput_at_least_90_percent_of_baseline(overload_summary: dict[str, Any]) -> None:
    """Weighted tokens/s served during overload, token pools against no admission control."""
    served = overload_summary["checks"]["served_weighted_tokens_per_s"]
    ratio = _ratio(served["tokenpools"], served["baseline"])
    assert ratio >= THROUGHPUT_VS_BASELINE_MIN, (
        f"token pools served {served['tokenpools']:,.0f} weighted tok/s, {ratio:.3f} of the baseline's "
        f"{served['baseline']:,.0f} (bound {THROUGHPUT_VS_BASELINE_MIN})")
    assert overload_summary["checks"]["pass"]["throughput_>=90%_of_baseline"], "the experiment's verdict disagrees"


def test_baseline_p99_grows(overload_summary: dict[str, Any]) -> None:
    """Without admission control the guaranteed tenants' P99 grows through the overload phase (the
    control: it shows the overload is real)."""
    b = overload_summary["checks"]["baseline"]
    ratio = _ratio(b["last_third_p99_ttft"], b["first_third_p99_ttft"])
    assert ratio > BASELINE_GROWTH_MIN, (
        f"baseline guaranteed P99 TTFT went from {b['first_third_p99_ttft']:.1f} s to "
        f"{b['last_third_p99_ttft']:.1f} s, {ratio:.3f}x (must exceed {BASELINE_GROWTH_MIN}x)")
    assert overload_summary["checks"]["pass"]["baseline_p99_grows"], "the experiment's verdict disagrees"


def test_overload_writes_its_results(overload_summary: dict[str, Any], overload_out: Path) -> None:
    assert {"summary.json", "table.md", "p99_ttft.png"} <= {p.name for p in overload_out.iterdir()}
    assert {row["mode"] for row in overload_summary["rows"]} == {"no-spot", "tokenpools", "tokenpools-fcfs",
                                                                  "baseline"}


# Experiment 2: fairness under scarcity (weights 1:1:2; batch alone first, then 2.9x demand).

def test_fairness_every_claim_has_a_test(fairness_summary: dict[str, Any]) -> None:
    """A claim added to the experiment without a test here fails this one."""
    assert set(fairness_summary["pass"]) == FAIRNESS_CLAIMS


def test_elastic_shares_converge_within_5_percent(fairness_summary: dict[str, Any]) -> None:
    """From some window of the scarce phase on, every window holds every tenant within 5 % of its
    weighted fair share (weight / sum of weights of what the three were served together)."""
    s = fairness_summary
    tp = s["modes"]["tokenpools"]
    t = np.asarray(tp["time"])
    scarce = t >= s["join_time"] + s["window_seconds"] / 2
    held_from = {}
    last = {}
    for name in s["weights"]:
        share, fair = np.asarray(tp["shares"][name])[scarce], np.asarray(tp["fair"][name])[scarce]
        within = np.abs(share - fair) <= FAIR_BAND * fair
        last[name] = float(share[-1] / fair[-1])
        outside = np.nonzero(~within)[0]
        first_good = outside[-1] + 1 if outside.size else 0
        held_from[name] = max(0.0, float(t[scarce][first_good] - s["join_time"])) if within[-1] else None
    assert all(v is not None for v in held_from.values()), (
        f"not within {FAIR_BAND:.0%} of fair at the end: share / fair in the last window "
        + ", ".join(f"{n} {r:.3f}" for n, r in last.items())
        + f"; held from (s after the join): {held_from}")
    assert s["pass"]["tokenpools_converges_within_5%"], "the experiment's verdict disagrees"


def test_jain_index_at_least_0_99(fairness_summary: dict[str, Any]) -> None:
    """Jain's index of the steady-state shares (last third of the scarce phase) divided by weight."""
    s = fairness_summary
    steady = s["modes"]["tokenpools"]["steady_share"]
    x = np.array([steady[n] / w for n, w in s["weights"].items()])
    jain = float(x.sum() ** 2 / (x.size * (x ** 2).sum()))
    assert jain >= JAIN_MIN, f"Jain's index {jain:.4f} (bound {JAIN_MIN}); weight-normalised shares {x.round(4)}"
    assert s["pass"]["tokenpools_jain_>=0.99"], "the experiment's verdict disagrees"


def test_in_debt_tenant_starts_below_fair_and_debt_decays(fairness_summary: dict[str, Any]) -> None:
    """The tenant that ran alone yields first (below its fair share over the first third of the
    scarce phase) and its debt, positive at the join, is under a quarter of that at the end."""
    s = fairness_summary
    tp, alone, join = s["modes"]["tokenpools"], s["alone_tenant"], s["join_time"]
    t = np.asarray(tp["time"])
    early = (t >= join) & (t < join + (t[-1] - join) / 3)
    share = float(np.mean(np.asarray(tp["shares"][alone])[early]))
    fair = float(np.mean(np.asarray(tp["fair"][alone])[early]))
    debt, debt_t = np.asarray(tp["debt"][alone]), np.asarray(tp["debt_time"])
    at_join = float(debt[debt_t >= join][0])
    at_end = float(debt[-1])
    assert share < fair, f"{alone} did not yield first: early share {share:.3f} against fair {fair:.3f}"
    assert at_join > 0, f"{alone} had no debt when the others joined ({at_join:.3f})"
    assert at_end < DEBT_LEFT_MAX * at_join, (
        f"{alone}'s debt fell from {at_join:.2f} to {at_end:.2f}, {at_end / at_join:.3f} of it "
        f"(bound {DEBT_LEFT_MAX})")
    assert s["pass"]["in-debt_tenant_starts_below_fair_and_debt_decays"], "the experiment's verdict disagrees"


def test_fairness_writes_its_results_and_runs_every_mode(fairness_summary: dict[str, Any], fairness_out: Path) -> None:
    assert set(fairness_summary["modes"]) == {"tokenpools", "no-debt", "vtc", "fcfs"}
    assert {"summary.json", "table.md", "shares.png"} <= {p.name for p in fairness_out.iterdir()}
    assert (fairness_out / "shares.png").stat().st_size > 0


def test_work_conserving_while_alone(fairness_summary: dict[str, Any]) -> None:
    """Alone on an idle pool (from a cold start), the batch tenant fills most of it in every mode."""
    for mode, m in fairness_summary["modes"].items():
        assert m["alone_share"] > 0.8, f"{mode}: {m['alone_share']:.3f} of the pool while alone"
