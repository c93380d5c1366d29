"""Every process group the executor's meshes make times out after the job's collective timeout, not torch's default
for a new subgroup (30 minutes under gloo): a peer hung inside a TP, CP, DP, pipeline or expert collective ends the job
as soon as one hung in the default group would (docs/reliability.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from autoconf.execute.mesh import build_expert_mesh, build_mesh, subgroup_backend
from autoconf.spec.grid import RankGrid
from autoconf.spec.plan import ParallelConfig

TIMEOUT_S = 7.0


def _timeout(group) -> timedelta:
    return group._get_backend(torch.device("cpu")).options._timeout


def _check_groups(rank: int, world: int, store: str, failures) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT_S))
    try:
        groups = subgroup_backend("cpu", TIMEOUT_S)
        config = ParallelConfig(tp=2, pp=1, dp=1, cp=2, micro_batch_size=1, global_batch_size=1, seq_len=64)
        grid = RankGrid.logical(config.dims)
        mesh = build_mesh(grid, "cpu", solo=True, groups=groups)
        experts = build_expert_mesh(grid, ep=2, etp=1, device_type="cpu", groups=groups)
        seen = {f"mesh {name}": mesh[name].get_group() for name in mesh.mesh_dim_names}
        seen["mesh dp_cp"] = mesh["dp", "cp"]._flatten("dp_cp").get_group()  # parallelize.replica_mesh's
        seen |= {f"experts {name}": experts[name].get_group() for name in experts.mesh_dim_names}
        expected = timedelta(seconds=TIMEOUT_S)
        wrong = {name: _timeout(group) for name, group in seen.items() if _timeout(group) != expected}
        total = torch.ones(1)
        dist.all_reduce(total, group=seen["mesh dp_cp"])  # the flattened group is the cp pair of this rank
        if wrong or total.item() != 2:
            failures.put((rank, wrong, total.item()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_mesh_subgroup_times_out_with_the_job(tmp_path):
    world = 4
    failures = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_check_groups, args=(world, str(tmp_path / "store"), failures), nprocs=world,
                       start_method="spawn")
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert not found, found
