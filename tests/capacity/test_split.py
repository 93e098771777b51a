import pytest

from capacity.split import hold_raises, share_for, split_by_demand


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


def test_hold_raises_cuts_at_once_raises_a_tick_late_and_lists_the_dropped():
    prev = {"a": (100.0, 10.0, 1.0), "b": (0.0, 0.0, 0.0), "gone": (5.0, 5.0, 5.0)}
    now = {"a": (40.0, 20.0, 1.0), "b": (60.0, 0.0, 0.0), "new": (9.0, 9.0, 9.0)}
    assert hold_raises(now, prev) == {"a": (40.0, 10.0, 1.0), "b": (0.0, 0.0, 0.0), "new": (0.0, 0.0, 0.0),
                                      "gone": (0.0, 0.0, 0.0)}
    assert hold_raises({}, {}) == {}


def test_share_for_unlisted_gets_nothing_and_an_empty_record_splits_evenly():
    limits = (90.0, 9.0, 3.0)
    assert share_for("a", {"a": (1.0, 2.0, 3.0)}, limits, 3) == ((1.0, 2.0, 3.0), False)
    assert share_for("z", {"a": (90.0, 9.0, 3.0)}, limits, 3) == ((0.0, 0.0, 0.0), True)
    assert share_for("z", {}, limits, 3) == ((30.0, 3.0, 1.0), True)
    assert share_for("z", {}, limits, 0) == (limits, True)
