"""The torch DeviceMesh of a plan: one dimension per axis of the rank grid (`spec/grid.py`), in its order.

Grid position i runs as global rank i (the launcher puts each rank on the device the plan's placement names), so
the executor's mesh is the logical grid of the plan's degrees and every group is a slice of it.
"""

from __future__ import annotations

from autoconf.spec.grid import AXES, RankGrid

# A size-1 axis after "dp": the one-rank FSDP mesh of a rank that holds whole parameters while dp > 1 (ZeRO-0), on
# which FSDP2 only casts (bf16 compute copies, fp32 gradients); a slice of the same mesh as "tp", so FSDP composes
# with tensor parallelism.
SOLO = "solo"


def build_mesh(grid: RankGrid, device_type: str, solo: bool = False):
    """A DeviceMesh over the default process group with the grid's shape and axis names (and the SOLO axis)."""
    import torch
    from torch.distributed.device_mesh import DeviceMesh

    devices = torch.tensor(grid.devices, dtype=torch.int64)
    names = AXES
    if solo:
        at = AXES.index("dp") + 1
        devices, names = devices.unsqueeze(at), (*AXES[:at], SOLO, *AXES[at:])
    return DeviceMesh(device_type, devices, mesh_dim_names=names)


def build_expert_mesh(grid: RankGrid, ep: int, etp: int, device_type: str):
    """The DeviceMesh the MoE layers' routed experts live on: ("pp", "edp", SOLO, "ep", "etp"), each pipeline rank's
    devices folded as `spec/grid.py` `expert_grid` says (edp x ep x etp, etp innermost), with a size-1 SOLO axis
    after "edp" for the one-rank FSDP units of unsharded (ZeRO-0) experts."""
    import numpy as np
    import torch
    from torch.distributed.device_mesh import DeviceMesh

    from autoconf.spec.grid import EXPERT_AXES, expert_grid

    folded = np.stack([expert_grid(grid, r, ep, etp) for r in range(grid.size("pp"))])
    devices = torch.tensor(folded, dtype=torch.int64).unsqueeze(2)
    return DeviceMesh(device_type, devices, mesh_dim_names=("pp", EXPERT_AXES[0], SOLO, *EXPERT_AXES[1:]))
