"""The parallel degrees and the rank grid (spec/grid.py): every group is a slice of one array."""

import itertools

import numpy as np
import pytest

from autoconf.spec.grid import AXES, ParallelDims, RankGrid


def test_groups_and_coordinates_follow_a_non_trivial_placement():
    grid = RankGrid([[[0, 1], [4, 5]], [[2, 3], [6, 7]]])  # pp 2, dp 2, tp 2, placed non-trivially
    assert grid.coords(6) == {"pp": 1, "dp": 1, "tp": 0}
    assert grid.group_of("pp", 5) == [5, 7]
    assert grid.group_of("dp", 3) == [3, 7]
    assert grid.group_of("tp", 4) == [4, 5]
    assert grid.first_group_array("dp", 1).tolist() == [2, 6]
    assert grid.pipeline_rank(1).tolist() == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="rank 9"):
        grid.coords(9)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 4), (4, 1, 2), (3, 2, 1)])
def test_groups_partition_the_ranks_and_agree_with_coordinates(shape):
    """Along every axis the groups cover each rank once, and a rank's group is the row of `groups` holding it,
    whose other coordinates equal the rank's."""
    dims = ParallelDims(*shape)
    grid = RankGrid(np.random.default_rng(0).permutation(dims.world_size).reshape(dims.shape))
    for axis in AXES:
        rows = grid.groups(axis)
        assert sorted(rows.reshape(-1).tolist()) == list(range(dims.world_size))
        assert rows.shape == (dims.world_size // getattr(dims, axis), getattr(dims, axis))
        for rank in range(dims.world_size):
            group = grid.group_of(axis, rank)
            assert any(row.tolist() == group for row in rows)
            fixed = {a: v for a, v in grid.coords(rank).items() if a != axis}
            for index, member in enumerate(group):
                assert grid.coords(member) == {**fixed, axis: index}


def test_dims_name_every_bad_factor():
    problems = ParallelDims(pp=0, dp=2, tp=True).problems(8)
    assert any("pp must be a positive integer" in p for p in problems)
    assert any("tp must be a positive integer" in p for p in problems)
    assert ParallelDims(2, 2, 3).problems(8) == ["pp*dp*tp = 2*2*3 = 12 but the cluster has 8 devices"]
    assert ParallelDims(2, 2, 2).problems(8) == []


def test_logical_grid_fills_tp_then_dp_then_pp():
    grid = RankGrid.logical(ParallelDims(pp=2, dp=2, tp=2))
    assert grid.flat() == list(range(8))
    assert grid.group_of("tp", 2) == [2, 3] and grid.group_of("dp", 1) == [1, 3] and grid.group_of("pp", 0) == [0, 4]
    for p, d, t in itertools.product(range(2), repeat=3):
        assert grid.devices[p, d, t] == (p * 2 + d) * 2 + t
