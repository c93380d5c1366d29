"""Worker of tests/test_tp_collective_counts.py (2 gloo ranks under torchrun): the collectives one TP block of the
executor runs in its forward and in its backward, counted by DTensor's CommDebugMode (functional and c10d ops
alike), for a dense GeLU block (tiny-gpt), a dense SwiGLU block and an MoE block with and without shared experts
(tiny-moe), each with and without sequence parallelism. Rank 0 writes {case: {"forward": {op: n}, "backward": ...}}
as JSON to argv[1]."""

import dataclasses
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode

from autoconf.execute.model import build_model
from autoconf.execute.parallelize import apply_tp, materialize
from autoconf.spec.presets import load_model

OPS = {"all_reduce": "all_reduce", "allgather": "all_gather", "all_gather": "all_gather",
       "reduce_scatter": "reduce_scatter"}
SEQ = 16


def _kinds(counts) -> dict:
    out: dict = {}
    for op, n in counts.items():
        name = str(op).split(".")[-1]
        kind = next(kind for key, kind in OPS.items() if key in name)
        out[kind] = out.get(kind, 0) + n
    return out


def _count(spec, layer: int, sp: bool, mesh) -> dict:
    net = build_model(spec, layer, layer + 1)
    apply_tp(net, mesh, sp)
    materialize(net, torch.device("cpu"), 0)
    block = next(iter(net.layers.values()))
    x = torch.randn(2, SEQ // 2 if sp else SEQ, spec.hidden_size, requires_grad=True)
    with CommDebugMode() as forward:
        out = block(x)
    with CommDebugMode() as backward:
        (out.to_local() if isinstance(out, DTensor) else out).sum().backward()
    return {"forward": _kinds(forward.get_comm_counts()), "backward": _kinds(backward.get_comm_counts())}


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    moe = load_model("tiny-moe")
    unshared = dataclasses.replace(moe, moe=dataclasses.replace(moe.moe, num_shared_experts=0,
                                                               shared_expert_intermediate_size=0))
    cases = {"gelu": (load_model("tiny-gpt"), 0), "swiglu": (moe, 0), "moe_shared": (moe, 1),
             "moe_unshared": (unshared, 1)}
    out = {f"{name}{'_sp' if sp else ''}": _count(spec, layer, sp, mesh)
           for name, (spec, layer) in cases.items() for sp in (False, True)}
    if dist.get_rank() == 0:
        with open(sys.argv[1] + ".part", "w") as f:
            json.dump(out, f)
        os.replace(sys.argv[1] + ".part", sys.argv[1])  # (whole or absent: the test reads it after an abort)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
