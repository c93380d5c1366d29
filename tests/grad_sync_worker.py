"""torchrun worker for tests/test_execute.py::test_zero0_reduces_buckets_during_the_last_backward.

    python -m torch.distributed.run --nproc-per-node N tests/grad_sync_worker.py JOB.json OUT.json

Trains each plan of JOB.json ({"plans": [...], "steps": n}) while recording, on every rank, each backward call
(torch.autograd.backward: the training loop's and the pipeline stages' full backward) and each `dist.all_reduce`
issued over this rank's data-parallel group: the step, the index of the backward call within the step and whether
that call was still running. OUT.json (rank 0): per plan, {"records": [...], "events": [per rank: [...]]}.
"""

import json
import sys

import torch
import torch.distributed as dist

from autoconf.execute import train as train_module
from autoconf.spec.grid import RankGrid
from autoconf.spec.plan import Plan

STATE = {"step": -1, "backward": 0, "inside": False}
EVENTS: list[dict] = []
DP_RANKS: list[int] = []

_backward = torch.autograd.backward
_all_reduce = dist.all_reduce
_train_step = train_module.Trainer.train_step


def backward(*args, **kwargs):
    STATE["inside"] = True
    try:
        return _backward(*args, **kwargs)
    finally:
        STATE["inside"] = False
        EVENTS.append({"kind": "backward", "step": STATE["step"], "index": STATE["backward"]})
        STATE["backward"] += 1


def all_reduce(tensor, *args, group=None, **kwargs):
    if group is not None and dist.get_process_group_ranks(group) == DP_RANKS:
        EVENTS.append({"kind": "all_reduce", "step": STATE["step"], "index": STATE["backward"],
                       "inside_backward": STATE["inside"], "numel": tensor.numel()})
    return _all_reduce(tensor, *args, group=group, **kwargs)


def train_step(self, step):
    STATE["step"], STATE["backward"] = step, 0
    return _train_step(self, step)


def main() -> None:
    job = json.load(open(sys.argv[1]))
    torch.autograd.backward = backward
    dist.all_reduce = all_reduce
    train_module.Trainer.train_step = train_step
    device = torch.device("cpu")
    train_module.init_distributed(device, timeout_s=120)
    out = []
    for data in job["plans"]:
        plan = Plan.from_dict(data)
        c = plan.config
        DP_RANKS[:] = RankGrid.logical(c.dims).group_of("dp", dist.get_rank())
        EVENTS.clear()
        records = train_module.train(plan, train_module.TrainOptions(steps=job["steps"], quiet=True), device)
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, list(EVENTS))
        out.append({"records": records, "events": gathered})
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
