"""The torch DeviceMesh of a plan: one dimension per axis of the rank grid (`spec/grid.py`), in its order.

Grid position i runs as global rank i (the launcher puts each rank on the device the plan's placement names), so
the executor's mesh is the logical grid of the plan's degrees and every group is a slice of it.
"""

from __future__ import annotations

from datetime import timedelta

from autoconf.spec.grid import AXES, RankGrid

# A size-1 axis after "dp": the one-rank FSDP mesh of a rank that holds whole parameters while dp > 1 (ZeRO-0), on
# which FSDP2 only casts (bf16 compute copies, fp32 gradients); a slice of the same mesh as "tp", so FSDP composes
# with tensor parallelism.
SOLO = "solo"


def process_group_backend(device_type: str) -> str:
    """The torch.distributed backend of the executor's process groups on this device type."""
    return "nccl" if device_type == "cuda" else "gloo"


def subgroup_backend(device_type: str, timeout_s: float):
    """(backend, options) every subgroup of the executor's meshes is made with: the default group's backend at the
    job's collective timeout. Without options torch makes a subgroup with its backend's default timeout (30 minutes
    under gloo, 10 under NCCL), not the default group's, so a peer hung in a TP, CP, DP or EP collective would outlive
    `--timeout`."""
    import torch.distributed as dist

    backend = process_group_backend(device_type)
    options = dist.ProcessGroupNCCL.Options() if backend == "nccl" else dist.ProcessGroupGloo._Options()
    options._timeout = timedelta(seconds=timeout_s)  # the field DeviceMesh passes on as the subgroup's timeout
    return backend, options


def torchrun_store(timeout: timedelta):
    """The c10d TCP store of this torchrun attempt's ranks (MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE from the
    environment), whose operations wait at most `timeout`."""
    import os

    from torch.distributed.rendezvous import _create_c10d_store

    return _create_c10d_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["RANK"]),
                              int(os.environ["WORLD_SIZE"]), timeout)


def build_mesh(grid: RankGrid, device_type: str, solo: bool = False, groups=None):
    """A DeviceMesh over the default process group with the grid's shape and axis names (and the SOLO axis), its
    subgroups made with `groups` (`subgroup_backend`; torch's defaults when None). With context parallelism it also
    holds "dp_cp" (dp x cp flattened, `parallelize.replica_mesh`), made here so that it gets the same options."""
    import torch
    from torch.distributed.device_mesh import DeviceMesh

    devices = torch.tensor(grid.devices, dtype=torch.int64)
    names = AXES
    if solo:
        at = AXES.index("dp") + 1
        devices, names = devices.unsqueeze(at), (*AXES[:at], SOLO, *AXES[at:])
    mesh = DeviceMesh(device_type, devices, mesh_dim_names=names,
                      backend_override=None if groups is None else (groups,) * devices.dim())
    if grid.size("cp") > 1:
        mesh["dp", "cp"]._flatten("dp_cp", backend_override=groups)
    return mesh


def build_expert_mesh(grid: RankGrid, ep: int, etp: int, device_type: str, groups=None):
    """The DeviceMesh the MoE layers' routed experts live on: ("pp", "edp", SOLO, "ep", "etp"), each pipeline rank's
    devices folded as `spec/grid.py` `expert_grid` says (edp x ep x etp, etp innermost), with a size-1 SOLO axis
    after "edp" for the one-rank FSDP units of unsharded (ZeRO-0) experts; subgroups made with `groups` as in
    `build_mesh`."""
    import numpy as np
    import torch
    from torch.distributed.device_mesh import DeviceMesh

    from autoconf.spec.grid import EXPERT_AXES, expert_grid

    folded = np.stack([expert_grid(grid, r, ep, etp) for r in range(grid.size("pp"))])
    devices = torch.tensor(folded, dtype=torch.int64).unsqueeze(2)
    return DeviceMesh(device_type, devices, mesh_dim_names=("pp", EXPERT_AXES[0], SOLO, *EXPERT_AXES[1:]),
                      backend_override=None if groups is None else (groups,) * devices.dim())
