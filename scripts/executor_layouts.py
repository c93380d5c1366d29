"""torchrun worker for the executor tests: trains several plans in one process group, writes their losses.

    python -m torch.distributed.run --nproc-per-node N scripts/executor_layouts.py JOB.json OUT.json

JOB.json: {"plans": [plan, ...], "steps": 3, "seed": 0, "lr": 3e-4, "options": [{...}, ...]}; "options" (optional,
one per plan) are further TrainOptions fields, e.g. {"checkpoint_dir": D, "stop_after": 2}. OUT.json (rank 0): per
plan, the records (loss, grad_norm) of each step and the seconds it took. Start-up (imports, process group) is paid
once per job.
"""

import json
import sys
import time

import torch

from autoconf.execute.train import TrainOptions, init_distributed, train
from autoconf.spec.plan import Plan


def main() -> None:
    job = json.load(open(sys.argv[1]))
    device = torch.device("cpu")
    init_distributed(device, timeout_s=300)
    import torch.distributed as dist

    results = []
    for index, data in enumerate(job["plans"]):
        plan = Plan.from_dict(data)
        c = plan.config
        print(f"[rank {dist.get_rank()}] plan {index}: tp {c.tp} cp {c.cp} pp {c.pp} dp {c.dp} vpp {c.vpp} "
              f"{c.schedule} zero {c.zero_stage} sp {c.sequence_parallel}", file=sys.stderr, flush=True)
        extra = job.get("options", [{}] * len(job["plans"]))[index]
        opts = TrainOptions(steps=job["steps"], seed=job.get("seed", 0), lr=job.get("lr", 3e-4), quiet=True,
                            max_grad_norm=job.get("max_grad_norm", 1.0), **extra)
        t0 = time.perf_counter()
        records = train(plan, opts, device)
        results.append({"records": records, "seconds": time.perf_counter() - t0})
        dist.barrier()
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
