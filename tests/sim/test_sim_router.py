"""Least-outstanding routing."""

from __future__ import annotations

import pytest

from sim.router import LeastOutstandingRouter, RoundRobinRouter


def test_picks_least_outstanding() -> None:
    r = LeastOutstandingRouter()
    assert r.pick([3, 1, 2]) == 1
    assert r.pick([0, 5]) == 0
    assert r.pick([7]) == 0


def test_ties_lowest_index() -> None:
    r = LeastOutstandingRouter()
    assert [r.pick([2, 1, 1, 1]) for _ in range(3)] == [1, 1, 1]


def test_ties_round_robin() -> None:
    r = LeastOutstandingRouter(tie_break="round_robin")
    assert [r.pick([0, 0, 0]) for _ in range(4)] == [0, 1, 2, 0]
    assert r.pick([5, 0, 5]) == 1  # load still wins over rotation


def test_round_robin_router_and_errors() -> None:
    rr = RoundRobinRouter()
    assert [rr.pick([9, 0]) for _ in range(3)] == [0, 1, 0]
    with pytest.raises(ValueError):
        LeastOutstandingRouter().pick([])
    with pytest.raises(ValueError):
        LeastOutstandingRouter(tie_break="random")  # type: ignore[arg-type]
