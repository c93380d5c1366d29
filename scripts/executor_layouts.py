"""torchrun worker for the executor tests: trains several plans in one process group, writes their losses.

    python -m torch.distributed.run --nproc-per-node N scripts/executor_layouts.py JOB.json OUT.json

JOB.json: {"plans": [plan, ...], "steps": 3, "seed": 0, "lr": 3e-4, "options": [{...}, ...], "names": [...]};
"options" (optional, one per plan) are further TrainOptions fields, e.g. {"checkpoint_dir": D, "stop_after": 2}
or {"steps": 4}, plus "copy_checkpoint": a step directory (written by an earlier plan) that rank 0 copies into the
plan's checkpoint_dir before it trains, so that it resumes there, and "probe": a Python file (a test's
instrument) whose `Probe(plan)` patches what it watches while the plan trains and whose `finish()` restores it and
returns this rank's findings (JSON). "names" (optional) label the plans in the log. OUT.json (rank 0): per plan,
the records (loss, grad_norm) of each step, the seconds it took and, with a probe, "probe": every rank's findings.
Start-up (imports, process group) is paid once per job.
"""

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from autoconf.execute.train import TrainOptions, init_distributed, train
from autoconf.spec.plan import Plan

TIMEOUT_S = 300.0  # every collective of the shared jobs, in the default group and the meshes' subgroups


def load_probe(path: str):
    """The `Probe` class of the file at `path`."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Probe


def main() -> None:
    job = json.load(open(sys.argv[1]))
    device = torch.device("cpu")
    init_distributed(device, timeout_s=TIMEOUT_S)
    import torch.distributed as dist

    results = []
    names = job.get("names", [str(i) for i in range(len(job["plans"]))])
    for index, data in enumerate(job["plans"]):
        plan = Plan.from_dict(data)
        c = plan.config
        print(f"[rank {dist.get_rank()}] plan {names[index]}: tp {c.tp} cp {c.cp} pp {c.pp} dp {c.dp} vpp {c.vpp} "
              f"{c.schedule} zero {c.zero_stage} sp {c.sequence_parallel}", file=sys.stderr, flush=True)
        extra = dict(job.get("options", [{}] * len(job["plans"]))[index])
        source = extra.pop("copy_checkpoint", None)
        if source is not None:
            if dist.get_rank() == 0:
                shutil.copytree(source, Path(extra["checkpoint_dir"]) / Path(source).name)
            dist.barrier()
        probe_file = extra.pop("probe", None)
        settings = {"steps": job.get("steps"), "seed": job.get("seed", 0), "lr": job.get("lr", 3e-4),
                    "max_grad_norm": job.get("max_grad_norm", 1.0), "quiet": True, "timeout_s": TIMEOUT_S,
                    **extra}
        probe = load_probe(probe_file)(plan) if probe_file else None
        t0 = time.perf_counter()
        records = train(plan, TrainOptions(**settings), device)
        result = {"records": records, "seconds": time.perf_counter() - t0}
        if probe is not None:
            result["probe"] = [None] * dist.get_world_size()
            dist.all_gather_object(result["probe"], probe.finish())
        results.append(result)
        dist.barrier()
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
