"""The parallel degrees and the rank grid (spec/grid.py): every group is a slice of one array."""

import itertools

import numpy as np
import pytest

from autoconf.spec.grid import AXES, ParallelDims, RankGrid


def test_groups_and_coordinates_follow_a_non_trivial_placement():
    # pp 2, dp 2, tp 2, placed non-trivially, written as plans were before the cp axis: read with cp = 1
    grid = RankGrid([[[0, 1], [4, 5]], [[2, 3], [6, 7]]])
    assert grid.dims == ParallelDims(pp=2, dp=2, cp=1, tp=2)
    assert grid.coords(6) == {"pp": 1, "dp": 1, "cp": 0, "tp": 0}
    assert grid.group_of("pp", 5) == [5, 7]
    assert grid.group_of("dp", 3) == [3, 7]
    assert grid.group_of("tp", 4) == [4, 5]
    assert grid.first_group_array("dp", 1).tolist() == [2, 6]
    assert grid.pipeline_rank(1).tolist() == [[[2, 3]], [[6, 7]]]
    with pytest.raises(ValueError, match="rank 9"):
        grid.coords(9)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 1, 4), (4, 1, 2, 1), (3, 2, 1, 1), (2, 2, 3, 2)])
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
    assert ParallelDims(pp=2, dp=2, tp=3).problems(8) == ["pp*dp*cp*tp = 2*2*1*3 = 12 but the cluster has 8 devices"]
    assert ParallelDims(pp=2, dp=1, cp=3, tp=2).problems(8) == [
        "pp*dp*cp*tp = 2*1*3*2 = 12 but the cluster has 8 devices"]
    assert ParallelDims(pp=2, dp=2, tp=2).problems(8) == []


def test_logical_grid_fills_tp_then_cp_then_dp_then_pp():
    grid = RankGrid.logical(ParallelDims(pp=2, dp=2, cp=2, tp=2))
    assert grid.flat() == list(range(16))
    assert grid.group_of("tp", 2) == [2, 3] and grid.group_of("cp", 1) == [1, 3]
    assert grid.group_of("dp", 1) == [1, 5] and grid.group_of("pp", 0) == [0, 8]
    for p, d, c, t in itertools.product(range(2), repeat=4):
        assert grid.devices[p, d, c, t] == ((p * 2 + d) * 2 + c) * 2 + t
    # TP x CP of one data-parallel replica fill consecutive devices (one node's links when tp * cp <= its size)
    assert grid.pipeline_rank(1)[1].reshape(-1).tolist() == [12, 13, 14, 15]
