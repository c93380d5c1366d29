"""Device properties: memory capacity, peak FLOP/s, memory bandwidth, runtime overhead, and efficiency entries.

On CPU nothing is known in advance, so every rank measures at the same time (so that the ranks' contention for
cores, caches and memory bandwidth counts): a large square matmul per dtype gives the peak FLOP/s, a large tensor
copy the memory bandwidth (bytes read + written per second), a causal scaled-dot-product attention its rate. The
median over ranks is recorded. Capacity is a configured per-rank limit (`--memory-per-rank`), by default the host's
physical RAM divided by its ranks.

On GPU the peak comes from the data sheet (DATA_SHEETS: the number a cost model's efficiencies are fractions of) and
capacity from `torch.cuda.get_device_properties().total_memory`; a `--base-profile` supplies the efficiencies.
"""

from __future__ import annotations

import os
import re

import torch

from autoconf.errors import UserError
from autoconf.execute.dtypes import TORCH_DTYPES
from autoconf.profile.timing import median, time_repeated

# Data-sheet dense peaks (FLOP/s) and HBM bandwidth (bytes/s) by substring of torch's device name, most specific
# first: a bundled data-sheet profile's name where one describes the part (its device is read), else the numbers.
DATA_SHEETS = [
    ("H200", "dgx-h200-141g"),
    # NVIDIA H100 data sheet, PCIe column (the sparse figures halved)
    ("H100 PCIe", ({"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12, "fp8": 1513e12}, 2.0e12)),
    ("H100", "dgx-h100-80g"),  # SXM (HBM3)
    ("A100-SXM4-80GB", "dgx-a100-80g"),
    ("A100", ({"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}, 1.555e12)),  # 40 GB (HBM2)
    # GB200's B200 at 1200 W (NVIDIA's Blackwell technical brief, dense); an HGX / DGX B200 runs at 1000 W
    ("GB200", ({"bf16": 2500e12, "fp16": 2500e12, "tf32": 1250e12, "fp32": 90e12, "fp8": 5000e12}, 8e12)),
    ("B200", "dgx-b200-180g"),
]

# The base profile whose efficiencies a GPU profile starts from, by device-name substring.
BASE_FOR_GPU = [("H100", "dgx-h100-80g"), ("H200", "dgx-h200-141g"), ("A100", "dgx-a100-80g"),
                ("B200", "dgx-b200-180g")]

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "KB": 1000, "KIB": 1 << 10, "M": 1 << 20, "MB": 1000 ** 2,
           "MIB": 1 << 20, "G": 1 << 30, "GB": 1000 ** 3, "GIB": 1 << 30, "T": 1 << 40, "TB": 1000 ** 4,
           "TIB": 1 << 40}


def parse_bytes(text: str, option: str = "--memory-per-rank") -> int:
    """'4GiB', '512M', '2.5GB', '1073741824' -> bytes (K/M/G/T alone are binary); errors name `option`."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _SUFFIX:
        raise UserError(f"{option}: cannot read {text!r} as a size; write a number of bytes with an optional suffix "
                        f"such as 512MiB, 4GiB or 8GB")
    value = int(float(match.group(1)) * _SUFFIX[match.group(2).upper()])
    if value <= 0:
        raise UserError(f"{option}: size {text!r} must be positive, e.g. 4GiB")
    return value


def physical_memory_bytes() -> int:
    """Total RAM of this host, from /proc/meminfo, else sysconf."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory of this process (what the runtime took before any model tensor)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def known_gpu(name: str) -> tuple[dict, float] | None:
    """(dense peak FLOP/s per dtype, memory bandwidth in bytes/s) of the part torch names `name`, from
    DATA_SHEETS; None for a part not listed."""
    for key, sheet in DATA_SHEETS:
        if key in name:
            if isinstance(sheet, str):
                from autoconf.spec.cluster import load_cluster

                device = load_cluster(sheet).device
                return dict(device.peak_flops), device.memory_bandwidth_Bps
            peaks, bandwidth = sheet
            return dict(peaks), bandwidth
    return None


def base_profile_for(name: str) -> str | None:
    for key, profile in BASE_FOR_GPU:
        if key in name:
            return profile
    return None


def matmul_flops(device: torch.device, dtype: str, n: int, warmup: int, repeats: int,
                 min_time_s: float = 0.0) -> float:
    """FLOP/s of an n x n x n matmul (2 n^3 FLOPs), median of the repeats."""
    a = torch.randn(n, n, device=device).to(TORCH_DTYPES[dtype])
    b = torch.randn(n, n, device=device).to(TORCH_DTYPES[dtype])
    times = time_repeated(lambda: torch.mm(a, b), device, warmup, repeats, min_time_s)
    return 2.0 * n ** 3 / median(times)


def copy_bandwidth(device: torch.device, nbytes: int, warmup: int, repeats: int, min_time_s: float = 0.0) -> float:
    """Bytes moved per second by a tensor copy (each byte read once and written once)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = time_repeated(lambda: dst.copy_(src), device, warmup, repeats, min_time_s)
    return 2.0 * src.numel() * 4 / median(times)


def attention_flops(device: torch.device, dtype: str, seq: int, heads: int, warmup: int, repeats: int,
                    min_time_s: float = 0.0) -> float:
    """Causal scaled-dot-product attention forward, in FLOP/s counted as the cost model counts a flash kernel:
    half of Megatron's full-square 4*b*s*s*h (the masked triangle is skipped)."""
    head_dim = 64
    q, k, v = (torch.randn(1, heads, seq, head_dim, device=device).to(TORCH_DTYPES[dtype]) for _ in range(3))
    fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    times = time_repeated(fn, device, warmup, repeats, min_time_s)
    return 0.5 * 4.0 * seq * seq * heads * head_dim / median(times)


def measure_device(device: torch.device, quick: bool, dtypes: list[str], tiny: bool = False) -> dict:
    """This rank's measured rates: {"peak_flops": {dtype: FLOP/s}, "memory_bandwidth_Bps", "attention_flops"}."""
    on_gpu = device.type == "cuda"
    n = (8192 if not quick else 4096) if on_gpu else 1024
    copy_bytes = (1 << 30) if on_gpu else (64 << 20 if not quick else 32 << 20)
    warmup, repeats, least = (2, 5, 0.5) if quick else (3, 10, 1.5)
    if tiny:
        warmup, repeats, least = 1, 3, 0.0
    peaks = {}
    for dtype in dtypes:
        slow = dtype == "fp16" and not on_gpu  # CPU fp16 matmul has no fast kernel on most CPUs: keep it short
        size = n // 2 if slow else n
        peaks[dtype] = matmul_flops(device, dtype, size, warmup, repeats, least / 3 if slow else least)
    main_dtype = dtypes[0]
    return {"peak_flops": peaks,
            "memory_bandwidth_Bps": copy_bandwidth(device, copy_bytes, warmup, repeats, least),
            "attention_flops": attention_flops(device, main_dtype, 2048 if on_gpu else 512,
                                               32 if on_gpu else 4, warmup, repeats, least)}


def cpu_share(seconds: float = 0.5) -> float:
    """Fraction of a core this rank gets while every rank computes at once: its thread CPU time over wall time.

    Kernel timings of a few milliseconds run at full speed whenever the rank is scheduled; a training step that
    computes for longer gets only this share of a core when ranks outnumber cores (or other jobs load the host).
    """
    import time

    import torch

    a = torch.randn(256, 256)
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall0 < seconds:
        a = torch.tanh(a @ a)
    return min(1.0, (time.thread_time() - cpu0) / (time.perf_counter() - wall0))


def combine(measured: list[dict]) -> dict:
    """The median over ranks of each rate."""
    dtypes = measured[0]["peak_flops"]
    return {"peak_flops": {d: median([m["peak_flops"][d] for m in measured]) for d in dtypes},
            "memory_bandwidth_Bps": median([m["memory_bandwidth_Bps"] for m in measured]),
            "attention_flops": median([m["attention_flops"] for m in measured])}


def cpu_efficiency(rates: dict, main_dtype: str, share: float = 1.0, alone: float = 1.0) -> dict:
    peak = rates["peak_flops"][main_dtype]
    attention = min(1.0, rates["attention_flops"] / peak)
    why = "peak measured by the profiler on this machine"
    return {
        "matmul": {"value": 1.0, "why": f"{why} (square {main_dtype} matmul, all ranks at once)"},
        "attention": {"value": round(attention, 4),
                      "why": f"causal scaled-dot-product attention measured at this fraction of the measured "
                             f"{main_dtype} matmul peak"},
        "memory": {"value": 1.0, "why": f"{why} (tensor copy bandwidth, all ranks at once)"},
        "comm_intra": {"value": 1.0, "why": "intra-node links are fitted to measured transfer times"},
        "comm_inter": {"value": 1.0, "why": "inter-node links are fitted to measured transfer times"},
        "cpu_share": {"value": round(share, 4),
                      "why": "fraction of a core each rank got while all ranks computed at once (thread CPU time / "
                             "wall time); the cost model divides the measured kernel times by it"},
        "cpu_share_alone": {"value": round(max(alone, share), 4),
                            "why": "fraction of a core one rank got while the other ranks of its node slept (a CPU "
                                   "quota or other jobs keep it below 1); the most a rank gets when others idle"},
    }


def gpu_efficiency(base: dict | None, rates: dict, peak: float, main_dtype: str) -> dict:
    efficiency = {k: dict(v) for k, v in (base or {}).items()}
    if "matmul" not in efficiency:
        efficiency["matmul"] = {"value": min(1.0, rates["peak_flops"][main_dtype] / peak),
                                "why": "large square matmul measured by the profiler, as a fraction of the data-sheet "
                                       "peak"}
    if "attention" not in efficiency:
        efficiency["attention"] = {"value": min(1.0, rates["attention_flops"] / peak),
                                   "why": "causal SDPA measured by the profiler, as a fraction of the peak"}
    if "memory" not in efficiency:
        efficiency["memory"] = {"value": 1.0, "why": "memory bandwidth measured by the profiler (copy)"}
    efficiency["comm_intra"] = {"value": 1.0, "why": "intra-node links are fitted to measured transfer times"}
    efficiency["comm_inter"] = {"value": 1.0, "why": "inter-node links are fitted to measured transfer times"}
    return efficiency


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"

