"""The host side of a node, what offload reads (spec/cluster.py HOST_FIELDS): host memory, host-device copy rates
and the CPU's AdamW rate, measured by every rank at once (so ranks sharing the PCIe switches, the memory channels
and the cores count).

On GPU: pinned host memory to device (`copy_(non_blocking=True)` from a `pin_memory()` tensor) and back, each timed
with CUDA events. The AdamW rate is the executor's own host optimizer step (execute/optimizer.py: fused AdamW in
its parameter groups, as it steps offload_optimizer's host shards) over a few million fp32 parameters, with the
rank's threads (one unless OMP_NUM_THREADS says otherwise: execute/launch.py). On CPU the "device" is the host: the
copy rates measured are a memcpy between two host tensors (bytes copied per second, one direction), not a PCIe
number, and every time is the thread's CPU time (as the compute tables). Host memory is the node's physical RAM
(/proc/meminfo).

`autoconf profile` measures all of it with the rest of a profile (profile/run.py). For a profile written by hand
(cpu-local), `python -m autoconf.profile.host PROFILE.json [--ranks N]` measures only its host object, N processes
at once, and writes it into the file.
"""

from __future__ import annotations

import torch

from autoconf.profile.hardware import physical_memory_bytes
from autoconf.profile.timing import median, time_repeated, work_times


def copy_rates(device: torch.device, nbytes: int, warmup: int, repeats: int) -> tuple[float, float]:
    """(host-to-device, device-to-host) bytes per second of one `nbytes` copy; on CPU both are a memcpy rate, timed
    as the thread's CPU time (`work_time`)."""
    numel = nbytes // 4
    on_gpu = device.type == "cuda"
    host = torch.ones(numel, dtype=torch.float32)
    if on_gpu:
        host = host.pin_memory()
    dev = torch.empty(numel, dtype=torch.float32, device=device)
    return (numel * 4 / median(work_times(lambda: dev.copy_(host, non_blocking=on_gpu), device, warmup, repeats)),
            numel * 4 / median(work_times(lambda: host.copy_(dev, non_blocking=on_gpu), device, warmup, repeats)))


# The parameters of the timed AdamW step: matrices of MATRIX x MATRIX (decayed) and one MATRIX-vector (not decayed)
# per matrix, as a transformer's weights and norms, in the executor's groups (execute/optimizer.py).
MATRIX = 1024
ADAM_LR, ADAM_WEIGHT_DECAY = 3e-4, 0.1  # TrainOptions' defaults; the step's work does not depend on their values


def adam_time_per_param(device: torch.device, numel: int, warmup: int, repeats: int) -> float:
    """Seconds per parameter of the executor's host optimizer step (execute/optimizer.py `adamw`, torch's fused
    kernel over offload_optimizer's host tensors) over about `numel` fp32 parameters in host memory, gradients set;
    the median of `repeats` steps with the rank's threads. On GPU nodes the wall time of the step; on CPU the thread's
    CPU time (`work_time`, as the compute tables: the wall time of a shared host depends on its other load)."""
    from autoconf.execute.optimizer import adamw, param_groups

    params = []
    for _ in range(max(1, numel // (MATRIX * MATRIX + MATRIX))):
        params += [torch.nn.Parameter(torch.randn(MATRIX, MATRIX)), torch.nn.Parameter(torch.ones(MATRIX))]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = adamw(param_groups(params, ADAM_WEIGHT_DECAY), ADAM_LR)
    if device.type == "cuda":  # the host step's wall time
        seconds = median(time_repeated(opt.step, torch.device("cpu"), warmup, repeats))
    else:
        seconds = median(work_times(opt.step, device, warmup, repeats))
    return seconds / sum(p.numel() for p in params)


def measure_host(device: torch.device, quick: bool, tiny: bool) -> dict:
    """This rank's host facts: {"memory_bytes", "h2d_Bps", "d2h_Bps", "adam_s_per_param"}."""
    on_gpu = device.type == "cuda"
    nbytes = (256 << 20 if not quick else 64 << 20) if on_gpu else (32 << 20 if not quick else 8 << 20)
    warmup, repeats = (1, 3) if tiny else ((2, 5) if quick else (3, 10))
    h2d, d2h = copy_rates(device, nbytes if not tiny else 4 << 20, warmup, repeats)
    numel = (1 << 20) if tiny else ((2 << 20) if quick else (4 << 20))
    return {"memory_bytes": float(physical_memory_bytes()), "h2d_Bps": h2d, "d2h_Bps": d2h,
            "adam_s_per_param": adam_time_per_param(device, numel, warmup, repeats), "copy_bytes": nbytes,
            "threads": torch.get_num_threads()}


def combine_host(measured: list[dict], on_gpu: bool, when: str) -> dict:
    """The profile's "host" object: the median over ranks of each rate, the node's RAM, and where they come from."""
    size = measured[0]["copy_bytes"] >> 20
    threads = measured[0]["threads"]
    adam = (f"the executor's host AdamW step (execute/optimizer.py, fused) over fp32 host tensors, {threads} "
            f"thread(s) per rank, median of repeats")
    what = (f"pinned host-device copies of {size} MiB (CUDA events) and {adam} (wall time)"
            if on_gpu else
            f"on CPU the device is the host: h2d_Bps and d2h_Bps are a memcpy of {size} MiB between host tensors "
            f"(one direction), not a PCIe rate, and {adam}, each timed as the thread's CPU time")
    return {"memory_bytes": median([m["memory_bytes"] for m in measured]),
            "h2d_Bps": median([m["h2d_Bps"] for m in measured]),
            "d2h_Bps": median([m["d2h_Bps"] for m in measured]),
            "adam_s_per_param": median([m["adam_s_per_param"] for m in measured]),
            "source": f"measured by the profiler (profile/host.py) on {when}, every rank at once (median over "
                      f"ranks): {what}; memory_bytes is the node's physical RAM (/proc/meminfo)"}


def _measure_one(barrier, quick: bool) -> dict:
    torch.set_num_threads(1)
    barrier.wait()  # every rank measures at once
    return measure_host(torch.device("cpu"), quick, tiny=False)


def main(argv: list[str] | None = None) -> int:
    """Measures this machine's host facts with `--ranks` CPU processes at once and writes them as the "host" object
    of the profile file given (its other fields are kept)."""
    import argparse
    import json
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    from autoconf.files import write_file
    from autoconf.spec.cluster import ClusterProfile

    parser = argparse.ArgumentParser(prog="python -m autoconf.profile.host",
                                     description="Measure this machine's host facts into a CPU profile's host object.")
    parser.add_argument("profile", help="the cluster profile JSON to update")
    parser.add_argument("--ranks", type=int, help="processes measuring at once (default: the profile's gpus_per_node)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    data = json.loads(open(args.profile).read())
    ranks = args.ranks or int(data["gpus_per_node"])
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(ranks)
    with ProcessPoolExecutor(ranks, mp_context=context) as pool:
        measured = list(pool.map(_measure_one, [barrier] * ranks, [args.quick] * ranks))
    data["host"] = combine_host(measured, on_gpu=False, when=time.strftime("%Y-%m-%d"))
    ClusterProfile.from_dict(data)  # the file stays a valid profile
    write_file(args.profile, json.dumps(data, indent=2) + "\n", force=True, package_ok=True)  # (the bundled one too)
    print(json.dumps(data["host"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
