import pytest

from capacity.split import split_by_demand


def test_split_follows_demand_with_a_floor():
    shares = split_by_demand(100, {"a": 3.0, "b": 1.0, "c": 0.0}, floor_fraction=0.3)
    assert sum(shares.values()) == pytest.approx(100)
    assert shares["c"] == pytest.approx(10)
    assert shares["a"] == pytest.approx(10 + 70 * 0.75)


def test_no_demand_splits_evenly_and_no_admitters_gives_nothing():
    assert split_by_demand(90, {"a": 0, "b": 0, "c": 0}) == {"a": 30, "b": 30, "c": 30}
    assert split_by_demand(90, {}) == {}


def test_bad_floor_is_rejected():
    with pytest.raises(ValueError):
        split_by_demand(1, {"a": 1}, floor_fraction=2)
