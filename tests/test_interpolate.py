"""The cost model's one interpolation rule (autoconf.cost.interpolate): piecewise-linear, with named edge rules."""

import numpy as np
import pytest

from autoconf.cost.interpolate import CLAMP, interpolate, interpolate_many

POINTS = [(4.0, 3.0), (1.0, 1.0), (2.0, 2.0)]  # any order


def test_inside_the_range_both_rules_are_the_piecewise_linear_function():
    """Between measured points both rules read the straight line between the neighbours (numpy.interp's values)."""
    for x in (1.0, 1.5, 2.0, 3.0, 3.9, 4.0):
        expected = float(np.interp(x, [1.0, 2.0, 4.0], [1.0, 2.0, 3.0]))
        assert interpolate(POINTS, x) == pytest.approx(expected, rel=1e-15)
        assert interpolate(POINTS, x, CLAMP) == pytest.approx(expected, rel=1e-15)


def test_extrapolate_continues_the_end_segments_and_clips_at_zero():
    """Beyond the ends `extrapolate` continues the end segment's line, never below zero."""
    assert interpolate(POINTS, 6.0) == pytest.approx(4.0)  # slope 0.5 from (2, 2)-(4, 3)
    assert interpolate(POINTS, 0.5) == pytest.approx(0.5)  # slope 1 from (1, 1)-(2, 2)
    assert interpolate(POINTS, -5.0) == 0.0
    assert interpolate([(1.0, 2.0)], 3.0) == pytest.approx(6.0)  # one point: proportional to x


def test_clamp_holds_the_nearest_end_value():
    """Beyond the ends `clamp` holds the end value; one point is a constant."""
    assert interpolate(POINTS, 100.0, CLAMP) == 3.0
    assert interpolate(POINTS, -100.0, CLAMP) == 1.0
    assert interpolate([(1.0, 2.0)], 3.0, CLAMP) == 2.0


def test_vectors_are_read_componentwise_and_bad_input_is_refused():
    """Tuple values interpolate each component with the same weight; no points or an unknown rule is a ValueError."""
    assert interpolate_many([(1.0, (1.0, 10.0)), (3.0, (3.0, 30.0))], 2.0) == pytest.approx((2.0, 20.0))
    with pytest.raises(ValueError):
        interpolate([], 1.0)
    with pytest.raises(ValueError):
        interpolate(POINTS, 1.0, edges="nearest")
