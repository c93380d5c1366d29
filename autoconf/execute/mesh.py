"""The torch DeviceMesh of a plan: one dimension per axis of the rank grid (`spec/grid.py`), in its order.

Grid position i runs as global rank i (the launcher puts each rank on the device the plan's placement names), so
the executor's mesh is the logical grid of the plan's degrees and every group is a slice of it.
"""

from __future__ import annotations

from autoconf.spec.grid import AXES, RankGrid


def build_mesh(grid: RankGrid, device_type: str):
    """A DeviceMesh over the default process group with the grid's shape and axis names."""
    import torch
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh(device_type, torch.tensor(grid.devices, dtype=torch.int64), mesh_dim_names=AXES)
