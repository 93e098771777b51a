import numpy as np

from capacity.waterfill import waterfill


def test_everyone_gets_their_cap_when_it_fits():
    out = waterfill(10, np.array([2.0, 3.0]), np.array([1.0, 1.0]))
    assert out.tolist() == [2.0, 3.0]


def test_weighted_split_when_scarce():
    out = waterfill(12, np.array([100.0, 100.0, 100.0]), np.array([1.0, 1.0, 2.0]))
    assert np.allclose(out, [3, 3, 6])


def test_small_demand_is_met_and_the_rest_shared():
    out = waterfill(10, np.array([1.0, 100.0, 100.0]), np.array([1.0, 1.0, 1.0]))
    assert np.allclose(out, [1, 4.5, 4.5])


def test_zero_capacity_and_empty_input():
    assert waterfill(0, np.array([1.0]), np.array([1.0])).tolist() == [0.0]
    assert waterfill(5, np.array([]), np.array([])).shape == (0,)
