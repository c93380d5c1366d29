"""Writes the specification-based profiles in autoconf/profiles/ (package data) from public data sheets.

Every number is either a data-sheet value (cited in `description`) or a named efficiency assumption with its reason.
Run `python scripts/bundled_profiles.py` after changing an assumption; the JSON files are what autoconf reads.
"""

import json
from pathlib import Path

GiB = 1024**3
OUT = Path(__file__).resolve().parent.parent / "autoconf" / "profiles"
PRICES = Path(__file__).resolve().parent / "data" / "gpu_prices.json"


def published_price(device_name):
    """The profile's `price` field from scripts/data/gpu_prices.json, or None when no price is on file."""
    entry = json.loads(PRICES.read_text())["prices"].get(device_name)
    if entry is None:
        return None
    return {"usd_per_gpu_hour": entry["usd_per_gpu_hour"],
            "source": f"{entry['kind']}, {entry['seller']}, {entry['url']}, as of 2024-12"}


def eff(value, why):
    return {"value": value, "why": why}


def link(latency_s, bandwidth_Bps):
    return {"latency_s": latency_s, "bandwidth_Bps": bandwidth_Bps}


def gpu_profile(name, description, device, intra, inter, efficiency):
    return {"version": 1, "kind": "cluster", "name": name, "description": description, "source": "specification",
            "backend": "nccl", "nodes": 1, "gpus_per_node": 8, "device": device, "intra_node": intra,
            "inter_node": inter, "intra_node_matrix": None, "inter_node_matrix": None, "efficiency": efficiency,
            "collectives": {}, "compute": None, "hostnames": None,
            **({"price": published_price(device["name"])} if published_price(device["name"]) else {})}


A100 = gpu_profile(
    "dgx-a100-80g",
    "DGX A100 nodes: 8x A100-SXM4-80GB (312 TFLOP/s dense bf16/fp16, 156 TF32, 19.5 fp32; 2039 GB/s HBM2e; 80 GiB), "
    "NVLink 3 through NVSwitch (600 GB/s bidirectional = 300 GB/s per direction per GPU), one 200 Gb/s HDR "
    "InfiniBand HCA per GPU (25 GB/s per direction), as in NVIDIA's DGX A100 data sheet and the Selene cluster.",
    {"name": "A100-SXM4-80GB", "kind": "gpu", "memory_bytes": 80 * GiB, "memory_bandwidth_Bps": 2039e9,
     "peak_flops": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "tf32": 156e12},
     "memory_overhead_bytes": 1.5 * GiB},
    link(5e-6, 300e9), link(8e-6, 25e9),
    {
        "matmul": eff(0.80, "large bf16 GEMMs on A100 reach about 250 of 312 TFLOP/s with cuBLAS"),
        "attention": eff(0.55, "attention-core kernels (batched QK^T / AV or fused attention) reach lower "
                               "utilisation than large GEMMs on A100"),
        "memory": eff(0.80, "element-wise and normalisation kernels reach about 80% of HBM bandwidth"),
        "comm_intra": eff(0.78, "NCCL ring bus bandwidth over NVLink 3 is about 235 of 300 GB/s per direction"),
        "comm_inter": eff(0.90, "NCCL over HDR InfiniBand reaches about 22.5 of 25 GB/s per GPU"),
    })

H100 = gpu_profile(
    "dgx-h100-80g",
    "DGX H100 nodes: 8x H100-SXM5-80GB (989 TFLOP/s dense bf16/fp16, 67 fp32; 3.35 TB/s HBM3; 80 GiB), "
    "NVLink 4 through NVSwitch (900 GB/s bidirectional = 450 GB/s per direction per GPU), one 400 Gb/s NDR "
    "InfiniBand port per GPU (50 GB/s per direction), as in NVIDIA's DGX H100 data sheet.",
    {"name": "H100-SXM5-80GB", "kind": "gpu", "memory_bytes": 80 * GiB, "memory_bandwidth_Bps": 3.35e12,
     "peak_flops": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "tf32": 494e12},
     "memory_overhead_bytes": 1.5 * GiB},
    link(5e-6, 450e9), link(8e-6, 50e9),
    {
        "matmul": eff(0.70, "large bf16 GEMMs on H100 SXM reach about 700 of 989 TFLOP/s with cuBLAS "
                            "(power and clock limits keep it below A100's fraction)"),
        "attention": eff(0.50, "fused attention kernels reach about half of the dense peak on H100"),
        "memory": eff(0.80, "element-wise and normalisation kernels reach about 80% of HBM bandwidth"),
        "comm_intra": eff(0.80, "NCCL ring bus bandwidth over NVLink 4 is about 360 of 450 GB/s per direction"),
        "comm_inter": eff(0.90, "NCCL over NDR InfiniBand reaches about 45 of 50 GB/s per GPU"),
    })

CPU = {
    "version": 1, "kind": "cluster", "name": "cpu-local", "source": "specification", "backend": "gloo",
    "description": "This machine as a small cluster: one node of CPU ranks, one thread each, talking gloo over "
                   "loopback. The numbers are conservative guesses for one core of a current x86 server; run "
                   "`autoconf profile` to replace them with measurements.",
    "nodes": 1, "gpus_per_node": 4,
    "device": {"name": "cpu-core", "kind": "cpu", "memory_bytes": 4 * GiB, "memory_bandwidth_Bps": 10e9,
               "peak_flops": {"fp32": 50e9, "bf16": 10e9, "fp16": 5e9}, "memory_overhead_bytes": 0.25 * GiB},
    "intra_node": link(50e-6, 2e9), "inter_node": link(100e-6, 1e9),
    "intra_node_matrix": None, "inter_node_matrix": None,
    "efficiency": {
        "matmul": eff(0.6, "one AVX2/AVX-512 core reaches about 60% of its FMA peak in oneDNN/MKL sgemm"),
        "attention": eff(0.4, "scaled-dot-product attention on CPU is slower than plain GEMMs"),
        "memory": eff(0.7, "element-wise kernels on one core"),
        "comm_intra": eff(1.0, "gloo loopback bandwidth above is already an achieved figure"),
        "comm_inter": eff(1.0, "gloo TCP bandwidth above is already an achieved figure"),
    },
    "collectives": {}, "compute": None, "hostnames": None,
}

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for profile in (A100, H100, CPU):
        (OUT / f"{profile['name']}.json").write_text(json.dumps(profile, indent=2) + "\n")
        print("wrote", OUT / f"{profile['name']}.json")
