"""The share of a device that a collective takes from a GEMM running beside it: what the GPU profiles state as
`collective_sm_share` (0.159, an average from Lee et al., arXiv 2507.03114; docs/accuracy.md "Compute beside
collectives"), measured on this machine's parts.

Every rank times a loop of GEMMs alone, then beside an all-gather and beside a reduce-scatter sized to outlast the
loop (from the collective's own time alone), the loop timed on the compute stream (CUDA events; the collective runs on
NCCL's stream). Compute C entirely beside a collective lasts C / (1 - f), so f = 1 - alone / beside. A repeat whose
collective ended before the loop did is not counted (`outlasted`). Rank 0 prints one JSON object: per collective the
median share over repeats and ranks, the loop's times alone and beside, the collective's bytes, and the share the
bundled data sheet of this part states. It needs two ranks or more: one GPU has no one to talk to.

    torchrun --nproc-per-node 8 scripts/collective_contention.py               # the GPUs of one node
    torchrun --nproc-per-node 2 scripts/collective_contention.py --tiny        # a CPU dry run under gloo
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

from autoconf.profile.timing import sync

REPEATS = 5
OPS = ("all_gather", "reduce_scatter")


class Clock:
    """Seconds of work on the current stream: CUDA events on a GPU (the collective's stream is not waited for),
    the wall clock on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, work) -> float:
        if not self.cuda:
            start = time.perf_counter()
            work()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        work()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


def settle(device: torch.device) -> None:
    """Every stream of the device idle, every rank here."""
    sync(device)
    dist.barrier()


def gemm_loop(device: torch.device, tiny: bool, seconds: float, clock: Clock):
    """A loop of square GEMMs lasting about `seconds` alone: (work, calls)."""
    n, dtype = (256, torch.float32) if tiny else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    one = min(clock.time(lambda: torch.mm(a, b, out=out)) for _ in range(3))
    calls = torch.tensor([max(1, round(seconds / max(one, 1e-9)))], device=device)
    dist.all_reduce(calls, op=dist.ReduceOp.MAX)  # every rank runs the same loop

    def work():
        for _ in range(int(calls.item())):
            torch.mm(a, b, out=out)

    return work, int(calls.item())


def collective(op: str, nbytes: int, device: torch.device, world: int):
    """An asynchronous `op` of about `nbytes` (the all-gather's output, the reduce-scatter's input) in fp32: a
    function that starts it and returns its work handle."""
    numel = max(world, nbytes // 4 // world * world)
    whole = torch.zeros(numel, device=device)
    part = torch.zeros(numel // world, device=device)
    # torch 2.13 names them *_single; older releases (the lent GPUs' 2.11) *_into_tensor / *_tensor.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    if op == "all_gather":
        return lambda: gather(whole, part, async_op=True)
    return lambda: scatter(part, whole, async_op=True)


def measure(op: str, device: torch.device, tiny: bool, seconds: float) -> dict:
    world = dist.get_world_size()
    clock = Clock(device)
    work, calls = gemm_loop(device, tiny, seconds, clock)
    probe = (4 if tiny else 256) << 20
    start = collective(op, probe, device, world)
    settle(device)
    began = time.perf_counter()
    start().wait()
    settle(device)
    probe_s = time.perf_counter() - began
    # Sized to last about three loops, so that it outlasts the loop beside it; every rank takes the largest size.
    size = torch.tensor([min(probe * 3 * seconds / max(probe_s, 1e-9), (256 if tiny else 8192) << 20)],
                        dtype=torch.float64, device=device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    nbytes = int(size.item())
    start = collective(op, nbytes, device, world)
    shares, alone_times, beside_times, outlasted = [], [], [], 0
    for _ in range(REPEATS):
        settle(device)
        alone = clock.time(work)
        settle(device)
        handle = start()
        beside = clock.time(work)
        done = handle.is_completed()
        handle.wait()
        alone_times.append(alone)
        beside_times.append(beside)
        if not done:
            outlasted += 1
            shares.append(max(0.0, 1.0 - alone / beside))
    settle(device)
    return {"bytes": nbytes, "gemm_calls": calls, "alone_s": alone_times, "beside_s": beside_times,
            "shares": shares, "outlasted": outlasted}


def stated_share(device_name: str) -> float | None:
    """The collective_sm_share of the bundled data sheet for this part (None on CPU or an unknown part)."""
    from autoconf.profile.hardware import base_profile_for
    from autoconf.spec.cluster import load_cluster

    base = base_profile_for(device_name)
    return load_cluster(base).collective_sm_share if base else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.1, help="the GEMM loop's length alone")
    parser.add_argument("--tiny", action="store_true", help="small fp32 GEMMs and buffers (a CPU dry run)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(1)
    world = dist.get_world_size()
    if world < 2:
        if dist.get_rank() == 0:
            print(json.dumps({"error": "one rank: a collective needs two or more (torchrun --nproc-per-node 2+)"}))
        dist.destroy_process_group()
        return 2
    result = {}
    for op in OPS:
        try:
            mine = measure(op, device, args.tiny, args.seconds)
        except (RuntimeError, NotImplementedError) as error:  # gloo has no reduce-scatter on some builds
            mine = {"error": str(error).splitlines()[0]}
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        if all("error" not in m for m in everyone):
            shares = [s for m in everyone for s in m["shares"]]
            result[op] = {"share_median": statistics.median(shares) if shares else None,
                          "outlasted": sum(m["outlasted"] for m in everyone), "repeats": REPEATS * world,
                          "bytes": everyone[0]["bytes"], "gemm_calls": everyone[0]["gemm_calls"],
                          "alone_s_median": statistics.median(t for m in everyone for t in m["alone_s"]),
                          "beside_s_median": statistics.median(t for m in everyone for t in m["beside_s"])}
        else:
            result[op] = {"error": next(m["error"] for m in everyone if "error" in m)}
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    if dist.get_rank() == 0:
        print(json.dumps({"device": name, "world": world, "backend": dist.get_backend(), "ops": result,
                          "profile_states": stated_share(name) if cuda else None}, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
