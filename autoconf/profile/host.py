"""The host side of a node, what offload reads (spec/cluster.py HOST_FIELDS): host memory, host-device copy rates
and the CPU's AdamW rate, measured by every rank at once (so ranks sharing the PCIe switches, the memory channels
and the cores count).

On GPU: pinned host memory to device (`copy_(non_blocking=True)` from a `pin_memory()` tensor) and back, each timed
with CUDA events; AdamW (foreach) over fp32 tensors in host memory with torch's default CPU threads. On CPU the
"device" is the host: the copy rates measured are a memcpy between two host tensors (bytes copied per second, one
direction), not a PCIe number, and AdamW runs on the rank's one thread. Host memory is the node's physical RAM
(/proc/meminfo).
"""

from __future__ import annotations

import torch

from autoconf.profile.hardware import physical_memory_bytes
from autoconf.profile.timing import median, time_repeated


def copy_rates(device: torch.device, nbytes: int, warmup: int, repeats: int) -> tuple[float, float]:
    """(host-to-device, device-to-host) bytes per second of one `nbytes` copy; on CPU both are a memcpy rate."""
    numel = nbytes // 4
    on_gpu = device.type == "cuda"
    host = torch.ones(numel, dtype=torch.float32)
    if on_gpu:
        host = host.pin_memory()
    dev = torch.empty(numel, dtype=torch.float32, device=device)
    h2d = median(time_repeated(lambda: dev.copy_(host, non_blocking=on_gpu), device, warmup, repeats))
    d2h = median(time_repeated(lambda: host.copy_(dev, non_blocking=on_gpu), device, warmup, repeats))
    return numel * 4 / h2d, numel * 4 / d2h


def adam_time_per_param(numel: int, warmup: int, repeats: int) -> float:
    """Seconds per parameter of one AdamW step (foreach) over `numel` fp32 parameters in host memory, in 1M-element
    tensors, gradients set."""
    chunk = 1 << 20
    params = [torch.nn.Parameter(torch.randn(min(chunk, numel - i))) for i in range(0, numel, chunk)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, foreach=True)
    cpu = torch.device("cpu")
    return median(time_repeated(opt.step, cpu, warmup, repeats)) / numel


def measure_host(device: torch.device, quick: bool, tiny: bool) -> dict:
    """This rank's host facts: {"memory_bytes", "h2d_Bps", "d2h_Bps", "adam_s_per_param"}."""
    on_gpu = device.type == "cuda"
    nbytes = (256 << 20 if not quick else 64 << 20) if on_gpu else (32 << 20 if not quick else 8 << 20)
    warmup, repeats = (1, 3) if tiny else ((2, 5) if quick else (3, 10))
    h2d, d2h = copy_rates(device, nbytes if not tiny else 4 << 20, warmup, repeats)
    numel = (1 << 18) if tiny else ((1 << 20) if quick else (16 << 20))
    return {"memory_bytes": float(physical_memory_bytes()), "h2d_Bps": h2d, "d2h_Bps": d2h,
            "adam_s_per_param": adam_time_per_param(numel, warmup, repeats), "copy_bytes": nbytes}


def combine_host(measured: list[dict], on_gpu: bool, when: str) -> dict:
    """The profile's "host" object: the median over ranks of each rate, the node's RAM, and where they come from."""
    size = measured[0]["copy_bytes"] >> 20
    what = (f"pinned host-device copies of {size} MiB (CUDA events) and AdamW (foreach) over fp32 host tensors"
            if on_gpu else
            f"on CPU the device is the host: h2d_Bps and d2h_Bps are a memcpy of {size} MiB between host tensors "
            f"(one direction), not a PCIe rate; AdamW (foreach) on the rank's one thread")
    return {"memory_bytes": median([m["memory_bytes"] for m in measured]),
            "h2d_Bps": median([m["h2d_Bps"] for m in measured]),
            "d2h_Bps": median([m["d2h_Bps"] for m in measured]),
            "adam_s_per_param": median([m["adam_s_per_param"] for m in measured]),
            "source": f"measured by autoconf profile on {when}, every rank at once (median over ranks): {what}; "
                      f"memory_bytes is the node's physical RAM (/proc/meminfo)"}
