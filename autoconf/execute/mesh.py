"""The device mesh of a plan: global ranks laid out [pp][dp][tp] in grid order (rank = grid position); the
launcher puts each rank on the device that plan.placement["mesh"] names for its grid position.

The rank-grid helpers are pure functions of the nested list (testable without a process group); `build_mesh`
turns the grid into a torch DeviceMesh with dimension names ("pp", "dp", "tp").
"""

from __future__ import annotations

from dataclasses import dataclass

DIMS = ("pp", "dp", "tp")


@dataclass(frozen=True)
class Coords:
    pp: int
    dp: int
    tp: int


def logical_grid(pp: int, dp: int, tp: int) -> list:
    """Global ranks 0..pp*dp*tp-1 laid out [pp][dp][tp] in order."""
    return [[[(p * dp + d) * tp + t for t in range(tp)] for d in range(dp)] for p in range(pp)]


def grid_shape(grid: list) -> tuple[int, int, int]:
    return len(grid), len(grid[0]), len(grid[0][0])


def coords_of(grid: list, rank: int) -> Coords:
    """Position (pp, dp, tp) of a global rank in the grid."""
    for p, plane in enumerate(grid):
        for d, row in enumerate(plane):
            for t, r in enumerate(row):
                if r == rank:
                    return Coords(p, d, t)
    raise ValueError(f"rank {rank} is not in the placement mesh")


def group_ranks(grid: list, dim: str, rank: int) -> list[int]:
    """The global ranks of `rank`'s group along one mesh dimension, in dimension order."""
    c = coords_of(grid, rank)
    pp, dp, tp = grid_shape(grid)
    if dim == "pp":
        return [grid[p][c.dp][c.tp] for p in range(pp)]
    if dim == "dp":
        return [grid[c.pp][d][c.tp] for d in range(dp)]
    if dim == "tp":
        return [grid[c.pp][c.dp][t] for t in range(tp)]
    raise ValueError(f"unknown mesh dimension {dim!r}")


def all_groups(grid: list, dim: str) -> list[list[int]]:
    """Every group along `dim` (each a list of global ranks), in a fixed order every rank agrees on."""
    pp, dp, tp = grid_shape(grid)
    if dim == "pp":
        return [[grid[p][d][t] for p in range(pp)] for d in range(dp) for t in range(tp)]
    if dim == "dp":
        return [[grid[p][d][t] for d in range(dp)] for p in range(pp) for t in range(tp)]
    if dim == "tp":
        return [[grid[p][d][t] for t in range(tp)] for p in range(pp) for d in range(dp)]
    raise ValueError(f"unknown mesh dimension {dim!r}")


def build_mesh(grid: list, device_type: str):
    """A 3-D DeviceMesh over the default process group, named ("pp", "dp", "tp"), following the plan's grid."""
    import torch
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh(device_type, torch.tensor(grid, dtype=torch.int64), mesh_dim_names=DIMS)
