"""torchrun worker for tests/test_memory_fsdp.py: the parameter, gradient and optimizer bytes each rank holds.

    python -m torch.distributed.run --nproc-per-node N tests/memory_fsdp_worker.py JOB.json OUT.json

Trains each plan of JOB.json ({"plans": [...], "steps": n}) with the executor and takes an inventory of the bytes
this rank holds, by storage (a storage shared by several tensors counts once), at every point where FSDP's
unsharded buffers are largest: just before each FSDP unit's post-forward and post-backward (the unit is gathered,
the next one may be prefetched, its unsharded gradient is complete; under pipelining also the stage's one
reduction after its last backward), after each backward call, after the pipeline's step and after the optimizer
step. Categories:

    params      the sharded fp32 parameters, every unsharded (gathered) copy and the all-gather outputs not yet
                freed (a prefetched unit's, or the previous unit's kept while the next gathers)
    grads       the sharded gradients, every unsharded gradient (accumulated or just computed) and the
                reduce-scatter inputs FSDP keeps until the next unit reduces
    optimizer   the optimizer's state tensors

FSDP2's own objects (`FSDPParam`: `sharded_param`, `_unsharded_param`, `unsharded_accumulated_grad`; the param
group's all-gather result; the shared all-gather and reduce-scatter states) are what torch's `FSDPMemTracker`
reads as well. OUT.json (rank 0): per plan, {"records": [...], "peaks": [per rank:
{category: bytes}]}.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

from autoconf.execute import train as train_module
from autoconf.spec.plan import Plan

TRAINER: list = []
PEAKS: dict = {}


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _add(seen: dict, t) -> None:
    if t is None:
        return
    t = _local(t)
    storage = t.untyped_storage()
    if storage.nbytes():
        seen[storage.data_ptr()] = storage.nbytes()


def inventory() -> dict:
    """Bytes by category held now by this rank's chunks and optimizers."""
    if not TRAINER:
        return {}
    trainer = TRAINER[0]
    params: dict = {}
    grads: dict = {}
    for model in trainer.models:
        for module in model.modules():
            if not isinstance(module, FSDPModule):
                continue
            state = module._get_fsdp_state()
            group = state._fsdp_param_group
            comm = getattr(state, "_comm_ctx", None)
            gathering = getattr(comm, "all_gather_state", None)  # set up at FSDP's lazy init
            if gathering is not None:
                _add(params, gathering.all_gather_result.all_gather_output)
            for rs in getattr(comm, "reduce_scatter_states", ()):
                _add(grads, rs.reduce_scatter_input)
            if group is not None and group._all_gather_result is not None:
                _add(params, group._all_gather_result.all_gather_output)
            for fp in (group.fsdp_params if group is not None else ()):
                _add(params, fp.sharded_param)
                _add(grads, fp.sharded_param.grad)
                _add(grads, fp.unsharded_accumulated_grad)
                if hasattr(fp, "_unsharded_param"):
                    _add(params, fp._unsharded_param)
                    _add(grads, fp._unsharded_param.grad)
    optimizer: dict = {}
    for opt in trainer.optimizers:
        for state in opt.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    _add(optimizer, value)
    return {"params": sum(params.values()), "grads": sum(grads.values()), "optimizer": sum(optimizer.values())}


def sample() -> None:
    for key, value in inventory().items():
        PEAKS[key] = max(PEAKS.get(key, 0), value)


_post_backward = FSDPParamGroup.post_backward
_post_forward = FSDPParamGroup.post_forward
_backward = torch.autograd.backward
_init = train_module.Trainer.__init__
_train_step = train_module.Trainer.train_step
_pipeline = train_module.Trainer._pipeline


def post_backward(self, *args, **kwargs):
    sample()
    return _post_backward(self, *args, **kwargs)


def post_forward(self, *args, **kwargs):
    sample()
    return _post_forward(self, *args, **kwargs)


def backward(*args, **kwargs):
    out = _backward(*args, **kwargs)
    sample()
    return out


def init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    TRAINER[:] = [self]


def train_step(self, step):
    out = _train_step(self, step)
    sample()  # after the optimizer step: its state exists
    return out


def pipeline(self, *args, **kwargs):
    out = _pipeline(self, *args, **kwargs)
    sample()
    return out


def main() -> None:
    job = json.load(open(sys.argv[1]))
    FSDPParamGroup.post_backward = post_backward
    FSDPParamGroup.post_forward = post_forward
    torch.autograd.backward = backward
    train_module.Trainer.__init__ = init
    train_module.Trainer.train_step = train_step
    train_module.Trainer._pipeline = pipeline
    device = torch.device("cpu")
    train_module.init_distributed(device, timeout_s=120)
    out = []
    for data in job["plans"]:
        plan = Plan.from_dict(data)
        PEAKS.clear()
        records = train_module.train(plan, train_module.TrainOptions(steps=job["steps"], quiet=True), device)
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, dict(PEAKS))
        out.append({"records": records, "peaks": gathered})
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
