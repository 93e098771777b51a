"""Experiment 2's measures on small hand-made runs, the expected values worked out by hand.

Each run is a few `RequestRecord`s in a `SimResult` (no simulation): windows of 10 s, the last
window left out as the experiment does. Capacity is (1000 weighted tokens/s, 1e9 KV tokens, 1e9
sequences), so a tenant's dominant share in a window is its weighted tokens/s (0.5 x prompt + 1.0 x
output, spread over first token -> finish) / 1000.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim import analysis
from sim.control import Mode, RequestRecord, SimOutcome, SimResult
from sim.experiments import fairness
from tokenpools.infra.results import write_json

CAPACITY = (1000.0, 1e9, 1e9)
WINDOW = 10.0


def _rec(tenant: str, arrival: float, first: float | None = None, finish: float | None = None, prompt: int = 0,
         output: int = 0, outcome: SimOutcome = SimOutcome.COMPLETED) -> RequestRecord:
    rec = RequestRecord(f"{tenant}-{arrival}-{prompt}-{output}", tenant, f"ent-{tenant}", "elastic", arrival,
                        prompt, output, max(output, 1))
    rec.outcome, rec.first_token, rec.finish, rec.output_tokens = outcome, first, finish, output
    return rec


def _refused(tenant: str, arrival: float) -> RequestRecord:
    return _rec(tenant, arrival, outcome=SimOutcome.REFUSED)


def _result(records: list[RequestRecord], duration: float) -> SimResult:
    return SimResult(Mode.TOKENPOOLS, duration, duration, records, [], CAPACITY, 0.0, 0.0, [], 0.5, 1.0)


def _summary(records: list[RequestRecord], weights: dict[str, float], duration: float = 40.0,
             slos: dict[str, float | None] | None = None, join: float = 20.0) -> dict:
    res = _result(records, duration)
    return fairness.summarise({label: res for label in fairness.MODES}, weights,
                              slos or dict.fromkeys(weights), next(iter(weights)), join, CAPACITY, WINDOW)


def test_fair_share_counts_only_tenants_present_and_backlogged() -> None:
    """`a` (weight 1) is alone for two windows; `b` (weight 3) arrives at 20 s.

    `a` runs one request per window, 0.5 x 1000 + 500 = 1000 weighted tokens over the window's
    10 s: share 0.1; `b` 0.5 x 2000 + 1000 = 2000 in [20, 30): 0.2. Both have a refusal in every
    window they are present (backlogged). Fair in windows 0-1: `a` alone is owed all that was
    served, 0.1 (it was 1/4 x 0.1 = 0.025 when `b`'s weight counted before it arrived), `b` 0. In
    window 2: the 0.3 served split 1:3, 0.075 and 0.225.
    """
    records = [_rec("a", lo, lo, lo + 10, 1000, 500) for lo in (0.0, 10.0, 20.0)]
    records += [_refused("a", lo + 1) for lo in (0.0, 10.0, 20.0)]
    records += [_rec("b", 20.0, 20.0, 30.0, 2000, 1000), _refused("b", 21.0)]
    mode = _summary(records, {"a": 1.0, "b": 3.0})["modes"]["tokenpools"]
    np.testing.assert_allclose(mode["shares"]["a"], [0.1, 0.1, 0.1])
    np.testing.assert_allclose(mode["shares"]["b"], [0.0, 0.0, 0.2], atol=1e-12)
    np.testing.assert_allclose(mode["fair"]["a"], [0.1, 0.1, 0.075])
    np.testing.assert_allclose(mode["fair"]["b"], [0.0, 0.0, 0.225], atol=1e-12)
    assert mode["backlogged"]["b"].tolist() == [False, False, True]


def test_a_tenant_served_all_it_asks_is_owed_what_it_got() -> None:
    """Water-filling: `c` (weight 1) is not backlogged and was served 0.05; `a` and `d` (weights
    1 and 1, both refused work) split the rest: of 0.05 + 0.1 + 0.25 = 0.4, 0.35 / 2 = 0.175 each."""
    shares = {"a": np.array([0.1]), "c": np.array([0.05]), "d": np.array([0.25])}
    backlog = {"a": np.array([True]), "c": np.array([False]), "d": np.array([True])}
    fair = fairness.fair_shares(shares, {"a": 1.0, "c": 1.0, "d": 1.0}, backlog)
    assert fair["a"][0] == pytest.approx(0.175)
    assert fair["d"][0] == pytest.approx(0.175)
    assert fair["c"][0] == pytest.approx(0.05)


def test_backlogged_means_turned_away_or_waiting_half_the_window() -> None:
    """Window 0: waited 0 -> 6 s (6 of 10): backlogged. Window 1: waited 10 -> 13 (3): not.
    Window 2: two waits 20 -> 23 and 21 -> 24 overlap, 4 s of waiting (not 6): not. Window 3: a
    queue timeout: backlogged. Window 4: still waiting from 45 s at the end (60 s): 5 of 10, backlogged."""
    records = [
        _rec("c", 0.0, 6.0, 7.0, 10, 10), _rec("c", 10.0, 13.0, 14.0, 10, 10),
        _rec("c", 20.0, 23.0, 24.0, 10, 10), _rec("c", 21.0, 24.0, 25.0, 10, 10),
        _rec("c", 31.0, outcome=SimOutcome.QUEUE_TIMEOUT), _rec("c", 45.0, outcome=SimOutcome.UNFINISHED),
    ]
    cols = analysis.Columns.of(records, 60.0)
    backlog = fairness.backlogged(cols, ["c"], 50.0, WINDOW)
    assert backlog["c"].tolist() == [True, False, False, True, True]


def test_slo_attainment_does_not_count_requests_still_waiting_as_met() -> None:
    """`b`, SLO 1 s, end of the run 40 s, arrivals from the join (20 s) on: one served at once (met),
    one with a 2 s TTFT (missed), one refused (missed), one still waiting since 30 s (deadline 31 s
    passed: missed), one still waiting since 39.5 s (deadline 40.5 s not passed: undecided, left
    out). Met 1 of the 4 decided = 0.25; the old measure counted the undecided one as met, 2 / 5.
    Of the served: 1 of 2."""
    records = [
        _rec("a", 0.0, 0.0, 10.0, 100, 100), _rec("b", 20.0, 20.0, 20.5, 10, 10), _rec("b", 22.0, 24.0, 25.0, 10, 10),
        _refused("b", 23.0), _rec("b", 30.0, outcome=SimOutcome.UNFINISHED),
        _rec("b", 39.5, outcome=SimOutcome.UNFINISHED),
    ]
    slo = _summary(records, {"a": 1.0, "b": 1.0}, slos={"a": None, "b": 1.0})["modes"]["tokenpools"]
    got = slo["slo_attainment"]["b"]
    assert got["of_arrivals"] == pytest.approx(0.25)
    assert got["undecided"] == 1
    assert got["arrivals"] == 5
    assert got["of_served"] == pytest.approx(0.5)


def test_service_is_counted_in_vtc_tokens_input_1_output_2() -> None:
    """A request with a 300-token prompt and 400 output tokens, first token at 5 s, finished at 25 s:
    300 input tokens at 5 s, 2 x 400 = 800 output tokens spread over 20 s (400 per 10 s). Windows
    [0, 10), [10, 20), [20, 30): 300 + 200, 400, 200."""
    cols = analysis.Columns.of([_rec("a", 0.0, 5.0, 25.0, 300, 400)], 40.0)
    service = fairness.vtc_service(cols, ["a"], 30.0, WINDOW)
    np.testing.assert_allclose(service["a"], [500.0, 400.0, 200.0])


def test_max_service_difference_between_backlogged_tenants() -> None:
    """Service per window `a` (weight 1): 300, 300, 300; `b` (weight 2): 400, 400, 400, i.e. 200 per
    weight. The per-weight difference is +100 a window, so over all three windows it accumulates
    to 300; with `b` not backlogged in window 1 the stretches are windows 0 and 2 alone: 100."""
    service = {"a": np.array([300.0, 300.0, 300.0]), "b": np.array([400.0, 400.0, 400.0])}
    weights = {"a": 1.0, "b": 2.0}
    always = {"a": np.array([True, True, True]), "b": np.array([True, True, True])}
    gap = {"a": always["a"], "b": np.array([True, False, True])}
    assert fairness.max_service_difference(service, weights, always) == {"tokens_per_weight": 300.0,
                                                                          "pair": ["a", "b"]}
    assert fairness.max_service_difference(service, weights, gap)["tokens_per_weight"] == pytest.approx(100.0)
    # a difference that turns back: +100, +100, -300 accumulates 0, 100, 200, -100: the widest stretch is 300
    turning = {"a": np.array([300.0, 300.0, 0.0]), "b": np.array([400.0, 400.0, 600.0])}
    assert fairness.max_service_difference(turning, weights, always)["tokens_per_weight"] == pytest.approx(300.0)


def test_summary_and_table_report_service_per_weight_and_the_vtc_metric(tmp_path: Path) -> None:
    """Windows as in the first test, with steady state the last window (20-30 s): `a` served
    (1000 input + 2 x 500 output) per 10 s = 200 VTC tokens/s per weight 1; `b` (2000 + 2 x 1000)
    / 10 s / 3 = 133.3. Both backlogged only in window 2: a difference of 2000 - 4000 / 3 = 666.7."""
    records = [_rec("a", lo, lo, lo + 10, 1000, 500) for lo in (0.0, 10.0, 20.0)]
    records += [_refused("a", lo + 1) for lo in (0.0, 10.0, 20.0)]
    records += [_rec("b", 20.0, 20.0, 30.0, 2000, 1000), _refused("b", 21.0)]
    summary = _summary(records, {"a": 1.0, "b": 3.0})
    mode = summary["modes"]["tokenpools"]
    assert mode["steady_service_per_weight"]["a"] == pytest.approx(200.0)
    assert mode["steady_service_per_weight"]["b"] == pytest.approx(4000 / 30)
    assert mode["max_service_difference"]["tokens_per_weight"] == pytest.approx(2000 - 4000 / 3)
    summary.update(seed=1, duration=40.0, window_seconds=WINDOW, weights={"a": 1.0, "b": 3.0}, alone_tenant="a",
                   join_time=20.0)
    write_json(tmp_path / "summary.json", summary)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["modes"]["vtc"]["steady_service_per_weight"]["a"] == pytest.approx(200.0)
    table = fairness.render(summary)
    assert "service / weight" in table and "max service diff" in table
    assert "666.667" in table


def test_plot_takes_any_number_of_tenants(tmp_path: Path) -> None:
    """Six tenants (the colours were three): one request each, all in the pool together."""
    names = [f"t{i}" for i in range(6)]
    records = [_rec(n, 0.0, 0.0, 30.0, 100 * (i + 1), 50) for i, n in enumerate(names)]
    records += [_refused(n, 1.0) for n in names]
    weights = {n: float(i + 1) for i, n in enumerate(names)}
    summary = _summary(records, weights, join=0.0)
    summary.update(weights=weights, join_time=0.0)
    fairness.plot(summary, tmp_path / "shares.png")
    assert (tmp_path / "shares.png").stat().st_size > 0
