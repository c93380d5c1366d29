"""Writes the specification-based profiles in autoconf/profiles/ (package data) from public data sheets.

Every number is either a data-sheet value (cited in `description`) or a named efficiency assumption with its reason.
Run `python scripts/bundled_profiles.py` after changing an assumption; the JSON files are what autoconf reads, and
`files()` is exactly what is shipped (tests/test_spec.py checks it byte for byte). The measured profiles there
(h100-gpt3-1.3b, h100-llama3-8b: `autoconf profile` output) are not written here, nor is cpu-local's measured `host`
object (carried over from the shipped file).
"""

import json
from pathlib import Path

from autoconf.cost.compute import ADAM_BYTES_PER_PARAM

GiB = 1024**3
OUT = Path(__file__).resolve().parent.parent / "autoconf" / "profiles"
PRICES = Path(__file__).resolve().parent / "data" / "gpu_prices.json"
ATTENTION = Path(__file__).resolve().parent / "data" / "published_attention.json"
ATTENTION_A100 = Path(__file__).resolve().parent / "data" / "published_attention_a100.json"


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


# The share of a GPU that an NCCL collective takes from the compute it overlaps (cost/simulate.py `beside`): Lee et
# al. measured compute overlapped with communication 18.9% slower on average (at most 40%) than alone, on A100, H100,
# MI250 and MI210 running GPT and Llama training steps (arXiv 2507.03114, 2025, abstract); compute C beside a
# collective that covers it lasts C / (1 - f), so f = 0.189 / 1.189. Not measured per part: one value for every GPU.
SLOWDOWN_BESIDE_COLLECTIVES = 0.189
COLLECTIVE_SM_SHARE = eff(round(SLOWDOWN_BESIDE_COLLECTIVES / (1 + SLOWDOWN_BESIDE_COLLECTIVES), 4),
                          "compute overlapped with NCCL collectives runs 18.9% slower on average (at most 40%) than "
                          "alone, measured on A100, H100, MI250 and MI210 over GPT and Llama training (Lee et al., "
                          "'Characterizing Compute-Communication Overlap in GPU-Accelerated Distributed Deep "
                          "Learning', arXiv 2507.03114, 2025): a collective holds 0.189 / 1.189 of the device while "
                          "it runs; one H100 all-gather of an FSDP prefetch occupies 24 of the 132 SMs (0.18, NVIDIA "
                          "developer forum thread 337991, 2025). The same average for every GPU part, not measured "
                          "per part")


# GEMM efficiency against size (FLOPs of one GEMM), as a fraction of the large-GEMM plateau efficiency["matmul"].
# Calculon's A100 and H100 system files (github.com/calculon-ai/calculon, systems/a100_80g.json and
# systems/h100_80g_nvl8.json, matrix.gflops_efficiency.float16, read 2026-12-02) give 0.95 of peak from 128 GFLOP,
# 0.9 from 16, 0.6 from 1 and 0.1 towards zero; their steps become points here, divided by the 0.95 plateau, read
# piecewise-linearly between them (cost/compute.py `matmul_size_factor`). Megatron-LM's README states the same trend
# for its H100 weak-scaling runs ("MFU increases from 41% for the smallest model ... larger GEMMs have higher
# arithmetic intensity and are consequently more efficient to execute").
GEMM_SIZE_CURVE = {
    "points": [[0, round(0.1 / 0.95, 4)], [1, round(0.6 / 0.95, 4)], [16, round(0.9 / 0.95, 4)], [128, 1.0]],
    "source": "Calculon (calculon-ai/calculon systems/a100_80g.json, systems/h100_80g_nvl8.json: "
              "matrix.gflops_efficiency.float16 [[128, 0.95], [16, 0.9], [1, 0.6], [0, 0.1]]), divided by its 0.95 "
              "plateau: GFLOP of one GEMM -> fraction of efficiency.matmul, linear between the points, held beyond",
}


def peak_fractions(lengths, tflops, peak):
    """A curve of `attention_curves`: [sequence length, published TFLOP/s / `peak`] at each length."""
    return [[n, round(v / peak, 4)] for n, v in zip(lengths, tflops)]


def hopper_attention_curves():
    """The profile's `attention_curves` from scripts/data/published_attention.json (FlashAttention-3 paper, H100
    SXM5): each kernel's causal forward and backward TFLOP/s over sequence length per head dim, as fractions of the
    989 TFLOP/s peak, scaled from the paper's fixed clock to the clock the processor sustains in training
    (H100_SUSTAINED_CLOCK_MHZ), as the sustained GEMM rate is. The causal backward is not published: the non-causal
    backward times the causal forward's fraction of the non-causal forward at the same length and head dim (the data
    file's rule)."""
    data = json.loads(ATTENTION.read_text())
    peak, lengths = data["peak_tflops"], data["seq_lens"]
    clock = H100_SUSTAINED_CLOCK_MHZ / data["clock_mhz"]

    def curve(values):
        return peak_fractions(lengths, values, peak / clock)

    kernels = {}
    for kernel, k in data["kernels"].items():
        backward = {dim: [b * fc / f for b, fc, f in
                          zip(k["backward"][dim], k["forward_causal"][dim], k["forward"][dim])]
                    for dim in k["backward"]}
        kernels[kernel] = {"forward": {dim: curve(v) for dim, v in k["forward_causal"].items()},
                           "backward": {dim: curve(v) for dim, v in backward.items()}}
    return {"kernels": kernels,
            "source": f"{data['source']} {data['figures']['forward_causal']}; {data['figures']['backward']}. "
                      f"Causal backward: {data['causal_backward']} Fractions of {peak} TFLOP/s, the peak at the "
                      f"paper's fixed clock of {data['clock_mhz']} MHz, times {H100_SUSTAINED_CLOCK_MHZ} / "
                      f"{data['clock_mhz']}: the SM clock sustained at the 700 W limit under a training block's "
                      f"load (1410-1500 MHz, scripts/gemm_sustained.py on an H200, docs/gpu.md) over the paper's; "
                      f"seq_len read piecewise-linearly between the points and held beyond them, then head dim the "
                      f"same way (scripts/data/published_attention.json)"}


def a100_attention_curves():
    """The A100 profile's `attention_curves` from scripts/data/published_attention_a100.json (FlashAttention-2's
    release figure, A100 SXM4): the causal forward + backward TFLOP/s over sequence length per head dim, as
    fractions of the 312 TFLOP/s peak, for both passes (only their combined rate is published: the sum of the two
    passes' times is then the published one)."""
    data = json.loads(ATTENTION_A100.read_text())
    peak, lengths = data["peak_tflops"], data["seq_lens"]
    kernels = {}
    for kernel, k in data["kernels"].items():
        curves = {dim: peak_fractions(lengths, values, peak) for dim, values in k["forward_backward_causal"].items()}
        kernels[kernel] = {"forward": curves, "backward": curves}
    return {"kernels": kernels,
            "source": f"{data['source']} {data['passes']} Fractions of {peak} TFLOP/s; seq_len read "
                      f"piecewise-linearly between the points and held beyond them, then head dim the same way "
                      f"(scripts/data/published_attention_a100.json)"}


def data_sheet_host(memory_bytes, link_Bps, node_dram_Bps, source, ranks=8):
    """The profile's `host` object from data sheets: the node's RAM, the GPU's host link per direction for both
    copy directions, and AdamW's time per parameter derived (not measured) as ADAM_BYTES_PER_PARAM moved at the
    node's DRAM bandwidth shared by its `ranks` ranks, a lower bound on the step time."""
    return {"memory_bytes": memory_bytes, "h2d_Bps": link_Bps, "d2h_Bps": link_Bps,
            "adam_s_per_param": ADAM_BYTES_PER_PARAM / (node_dram_Bps / ranks), "source": source}


def gpu_profile(name, description, device, intra, inter, efficiency, attention_curves=None, host=None,
                nodes=1, gpus_per_node=8, scale_up_domain=None):
    return {"version": 1, "kind": "cluster", "name": name, "description": description, "source": "specification",
            "backend": "nccl", "nodes": nodes, "gpus_per_node": gpus_per_node, "device": device, "intra_node": intra,
            "inter_node": inter, "intra_node_matrix": None, "inter_node_matrix": None, "efficiency": efficiency,
            "collectives": {}, "compute": None, "hostnames": None, "matmul_size_curve": GEMM_SIZE_CURVE,
            **({"attention_curves": attention_curves} if attention_curves else {}),
            **({"price": published_price(device["name"])} if published_price(device["name"]) else {}),
            **({"host": host} if host else {}),
            **({"scale_up_domain": scale_up_domain} if scale_up_domain else {})}


# H100 SXM5 peaks (dense, FLOP/s) at 700 W, and H100 NVL's (NVIDIA H100 data sheet) at its 400 W maximum. FP8
# (`fp8`, read by `--dtype fp8`'s GEMMs): the data sheet's "FP8 Tensor Core" row, 3,958 TFLOP/s for SXM and 3,341 for
# NVL "with sparsity", halved to the dense rate (the sheet's footnote: "Shown with sparsity. Specifications are one-half
# lower without sparsity"): 1,979 and 1,670.5 (nvidia.com/en-us/data-center/h100, datasheet read 2026-12-02). A100
# has no FP8 tensor cores (its data sheet lists TF32, BF16/FP16, INT8, INT4): no `fp8` entry, so `--dtype fp8` is
# refused there.
# The sustained bf16 GEMM rate of the H100 SXM5's processor at its 700 W limit, as a fraction of the 989 TFLOP/s
# peak: 660 TFLOP/s measured on an H200 (the same processor and limit) over 20 s of a Llama 3 8B block's GEMMs.
H100_SUSTAINED_MATMUL = 0.667
# The SM clock that processor sustains at its 700 W limit under a training block's load: the middle of the
# 1410-1500 MHz nvidia-smi read through the same 20-s run (scripts/gemm_sustained.py, docs/gpu.md). A tensor-core
# kernel's work per clock does not depend on the clock, so a rate published at a fixed clock runs at this clock's
# share of it in a training step (`hopper_attention_curves`).
H100_SUSTAINED_CLOCK_MHZ = 1455
H100_SXM_PEAK = {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "tf32": 494e12, "fp8": 1979e12}
H100_NVL_PEAK = {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12, "tf32": 418e12, "fp8": 1670.5e12}
# torchtitan's benchmark hosts run their H100s at 500 W; their note says the real peak lies between SXM's and NVL's
# without a number: interpolated linearly in board power between NVL (400 W) and SXM (700 W).
POWER_CAP_W = 500
CAPPED_PEAK = {k: H100_NVL_PEAK[k] + (H100_SXM_PEAK[k] - H100_NVL_PEAK[k]) * (POWER_CAP_W - 400) / (700 - 400)
               for k in H100_SXM_PEAK}

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
                               "utilisation than large GEMMs on A100; FlashAttention-2 runs at its published speed "
                               "over sequence length (attention_curves)"),
        "memory": eff(0.80, "element-wise and normalisation kernels reach about 80% of HBM bandwidth"),
        "comm_intra": eff(0.78, "NCCL ring bus bandwidth over NVLink 3 is about 235 of 300 GB/s per direction"),
        "comm_inter": eff(0.90, "NCCL over HDR InfiniBand reaches about 22.5 of 25 GB/s per GPU"),
        "collective_sm_share": COLLECTIVE_SM_SHARE,
    },
    attention_curves=a100_attention_curves(),
    host=data_sheet_host(
        2e12, 32e9, 2 * 8 * 25.6e9,
        "NVIDIA DGX A100 data sheet (https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/nvidia-dgx-a100-"
        "datasheet.pdf, 2020): DGX A100 640GB (8x A100 80GB) has 2 TB system memory, dual AMD Rome 7742; NVIDIA A100 "
        "data sheet: A100 SXM host interface PCIe Gen4 64 GB/s, taken as 32 GB/s per direction per GPU (the link's "
        "peak; shared PCIe switches not modelled); adam_s_per_param derived, not measured: AdamW moves "
        f"{ADAM_BYTES_PER_PARAM} bytes per parameter (cost/compute.py ADAM_BYTES_PER_PARAM) at the node's DDR4 "
        "bandwidth shared by its 8 ranks, 2 sockets x 8 channels DDR4-3200 = 409.6 GB/s (AMD EPYC 7742 product page: "
        "8 channels, 204.8 GB/s per socket), a lower bound on the step time"))

# What CUDA gives a process of an H100 SXM5 80GB (torch's total_memory, measured: autoconf/profiles/h100-*.json), not
# the data sheet's 80 GB read as 80 GiB: a plan is checked against what it can allocate.
H100_CUDA_MEMORY_BYTES = 85_017_493_504

H100 = gpu_profile(
    "dgx-h100-80g",
    "DGX H100 nodes: 8x H100-SXM5-80GB (989 TFLOP/s dense bf16/fp16, 1979 dense fp8, 67 fp32; 3.35 TB/s HBM3; 80 "
    "GB, of which CUDA gives a process 85,017,493,504 bytes = 79.18 GiB: torch.cuda.get_device_properties's "
    "total_memory on the NVIDIA H100 80GB HBM3 of the measured profiles h100-llama3-8b and h100-gpt3-1.3b; PyTorch's "
    "out-of-memory message on that part in vllm-project/vllm#27508 reads 79.11 GiB total capacity), "
    "NVLink 4 through NVSwitch (900 GB/s bidirectional = 450 GB/s per direction per GPU), one 400 Gb/s NDR "
    "InfiniBand port per GPU (50 GB/s per direction), as in NVIDIA's DGX H100 data sheet.",
    {"name": "H100-SXM5-80GB", "kind": "gpu", "memory_bytes": H100_CUDA_MEMORY_BYTES, "memory_bandwidth_Bps": 3.35e12,
     "peak_flops": H100_SXM_PEAK,
     "memory_overhead_bytes": 1.5 * GiB},
    link(5e-6, 450e9), link(8e-6, 50e9),
    {
        "matmul": eff(H100_SUSTAINED_MATMUL, "large bf16 GEMMs sustained at the 700 W limit: 660 of 989 TFLOP/s, "
                                             "measured on an H200 (the H100 SXM5's processor) running a Llama 3 8B "
                                             "block's four GEMMs back to back for 20 s, SM clock 1410-1500 MHz "
                                             "(scripts/gemm_sustained.py, docs/gpu.md, 2026-12-04); one call alone "
                                             "reaches 0.69-0.78"),
        "attention": eff(0.50, "the standard (unfused) attention path's score and value products on H100; flash "
                               "kernels run at their published speed over sequence length (attention_curves)"),
        "memory": eff(0.80, "element-wise and normalisation kernels reach about 80% of HBM bandwidth"),
        "comm_intra": eff(0.80, "NCCL ring bus bandwidth over NVLink 4 is about 360 of 450 GB/s per direction"),
        "comm_inter": eff(0.90, "NCCL over NDR InfiniBand reaches about 45 of 50 GB/s per GPU"),
        "collective_sm_share": COLLECTIVE_SM_SHARE,
    }, hopper_attention_curves(),
    data_sheet_host(
        2e12, 64e9, 2 * 8 * 38.4e9,
        "NVIDIA DGX H100 data sheet (https://resources.nvidia.com/en-us-dgx-systems/ai-enterprise-dgx, 2023): 2 TB "
        "system memory, dual Intel Xeon Platinum 8480C; NVIDIA H100 Tensor Core GPU data sheet "
        "(https://www.nvidia.com/en-us/data-center/h100/): H100 SXM host interface PCIe Gen5 128 GB/s, taken as 64 "
        "GB/s per direction per GPU (the link's peak; PCIe switches shared by two GPUs and a NIC would lower it when "
        "all copy at once, not modelled); adam_s_per_param derived, not measured: AdamW moves "
        f"{ADAM_BYTES_PER_PARAM} bytes per parameter (cost/compute.py ADAM_BYTES_PER_PARAM) at the node's DDR5 "
        "bandwidth shared by its 8 ranks, 2 sockets x 8 channels DDR5-4800 x 38.4 GB/s = 614.4 GB/s (Intel ark, Xeon "
        "Platinum 8480+: 8 channels DDR5-4800), a lower bound on the step time"))

# DeepSeek-V3's H800 nodes: the H100 SXM5 part with NVLink cut to 200 GB/s per direction; every other fact (compute,
# memory, efficiencies, attention curves, host) is the DGX H100 profile's.
H800 = gpu_profile(
    "dgx-h800-80g",
    "H800 nodes as DeepSeek trained V3 on: 8x H800-SXM5-80GB per node, the export variant of the H100 SXM5 with the "
    "same compute and memory (989 TFLOP/s dense bf16, 1979 dense fp8; 3.35 TB/s HBM3; 80 GB, 79.18 GiB to CUDA as the "
    "H100's) and NVLink cut to 400 "
    "GB/s bidirectional = 200 GB/s per direction per GPU through NVSwitch; one 400 Gb/s InfiniBand NIC per GPU (50 "
    "GB/s per direction). DeepSeek-V3 technical report (arXiv 2412.19437 v1) Sec. 3.1 (8 GPUs per node, NVLink and "
    "NVSwitch within nodes, InfiniBand across) and Sec. 3.2.2 (NVLink about 160 GB/s, IB 50 GB/s as achieved: 0.8 of "
    "200 GB/s is the 160, the same NCCL efficiency the H100 profile states). Everything else is the dgx-h100-80g "
    "profile's, unmeasured.",
    {**H100["device"], "name": "H800-SXM5-80GB"},
    link(5e-6, 200e9), H100["inter_node"],
    {
        **H100["efficiency"],
        "comm_intra": eff(0.80, "as on H100 (NCCL over NVLink at 0.8 of the per-direction bandwidth): 160 of 200 "
                                "GB/s, the NVLink figure of the DeepSeek-V3 report, Sec. 3.2.2"),
    }, H100["attention_curves"], H100["host"])

# The H200 SXM: the H100 SXM5's processor (the same peak rates, efficiencies and attention curves) with 141 GB of
# HBM3e at 4.8 TB/s; a DGX H200 node has the DGX H100's NVLink 4, NICs and host.
H200 = gpu_profile(
    "dgx-h200-141g",
    "DGX H200 nodes: 8x H200-SXM-141GB, the H100 SXM5's processor (989 TFLOP/s dense bf16/fp16, 1979 dense fp8, 67 "
    "fp32) with 141 GB HBM3e at 4.8 TB/s (NVIDIA H200 Tensor Core GPU data sheet, https://www.nvidia.com/en-us/"
    "data-center/h200/); memory_bytes is the 143,771 MiB nvidia-smi reports for the part (the data sheet's 141 GB "
    "rounds it). NVLink 4 through NVSwitch (450 GB/s per direction per GPU), one 400 Gb/s NDR port per GPU, 2 TB "
    "host memory and dual Xeon 8480C as in the DGX H200 data sheet, the same as DGX H100. Every efficiency, the "
    "attention curves and the host are the dgx-h100-80g profile's (the same processor); element-wise kernels read "
    "this part's own HBM bandwidth.",
    {**H100["device"], "name": "H200-SXM-141GB", "memory_bytes": 143771 * 1024 ** 2,
     "memory_bandwidth_Bps": 4.8e12},
    H100["intra_node"], H100["inter_node"], H100["efficiency"], H100["attention_curves"], H100["host"])

H100_96G_500W = gpu_profile(
    "grand-teton-h100-96g-500w",
    "The H100s of torchtitan's published benchmarks (benchmarks/llama3_h100_202412_torchtitan.md, Dec 2024): Grand "
    "Teton hosts of 8 H100 SXM with 96 GB HBM2e at 2.4 TB/s, fully connected with NVLink (taken as NVLink 4 through "
    "NVSwitch, 450 GB/s per direction), a 400 Gb/s RDMA port per GPU (50 GB/s per direction), at the default 500 W "
    "power limit rather than the 700 W TDP. Why a profile of its own: the memory (96 GiB, HBM2e at 2.4 instead of "
    "3.35 TB/s) and the power cap both differ from dgx-h100-80g. torchtitan states that the capped part's peak lies "
    "between H100 SXM (989 TFLOP/s bf16 at 700 W) and H100 NVL (835 at 400 W) without a number; peak_flops here "
    "interpolates the two data sheets linearly in board power at 500 W (bf16 %.0f TFLOP/s, fp8 %.0f); every "
    "efficiency is the SXM profile's fraction of this part's own peak." % (CAPPED_PEAK["bf16"] / 1e12,
                                                                            CAPPED_PEAK["fp8"] / 1e12),
    {"name": "H100-SXM5-96GB-HBM2e-500W", "kind": "gpu", "memory_bytes": 96 * GiB, "memory_bandwidth_Bps": 2.4e12,
     "peak_flops": CAPPED_PEAK, "memory_overhead_bytes": 1.5 * GiB},
    link(5e-6, 450e9), link(8e-6, 50e9),
    {
        **H100["efficiency"],
        "matmul": eff(H100_SUSTAINED_MATMUL, "the SXM profile's sustained large-GEMM fraction, applied to the "
                                             "power-capped peak above"),
    }, H100["attention_curves"])

# DGX B200: the first Blackwell profile, from data sheets only. Dense peaks of the HGX/DGX B200 at its 1000 W limit
# (NVIDIA's Blackwell figures are printed with sparsity; the dense ones are half): 2250 TFLOP/s bf16/fp16, 4500 fp8,
# 1100 tf32, 80 fp32 (NVIDIA Blackwell architecture technical brief's HGX B200 table, as collected at
# glennklockwood.com/garden/processors/B200, read 2026-12-05). Nothing of its efficiency is measured: every fraction,
# the GEMM size curve and the attention curves are the Hopper profiles' (a fraction of this part's own peak), an
# assumption that the truth rows test (scripts/truth_nemo.py, its DGX-B200 table). One published observation bears
# on it: a B200's SM clock fell from 1965 to about 1580 MHz under back-to-back FlashAttention-4 (flashinfer-ai/
# flashinfer PR #2899, docs/gpu.md), a power-limited clock like the H100's under load.
B200_DENSE_PEAK = {"bf16": 2250e12, "fp16": 2250e12, "fp32": 80e12, "tf32": 1100e12, "fp8": 4500e12}
B200 = gpu_profile(
    "dgx-b200-180g",
    "DGX B200 nodes: 8x B200 (Blackwell; dense 2250 TFLOP/s bf16/fp16, 4500 fp8, 1100 tf32, 80 fp32 at the 1000 W "
    "limit; 180 GB HBM3e at 8 TB/s), NVLink 5 through NVSwitch (1.8 TB/s bidirectional = 900 GB/s per direction per "
    "GPU), eight single-port ConnectX-7 400 Gb/s NICs (50 GB/s per direction per GPU), 2 TB host memory and dual Intel "
    "Xeon Platinum 8570 (NVIDIA DGX B200 data sheet, https://www.nvidia.com/en-us/data-center/dgx-b200/: 1,440 GB "
    "total GPU memory, 64 TB/s HBM3e bandwidth, 14.4 TB/s aggregate NVLink); memory_bytes is the 183,359 MiB "
    "nvidia-smi reports for the part (NVIDIA/TensorRT-LLM issue #10278, driver 580.95.05: the data sheet's 180 GB "
    "counts about GiB, as the H200's 141 GB does). Every efficiency, the GEMM size curve and the attention curves are "
    "the dgx-h100-80g profile's fractions applied to this part's peaks: assumed, not measured on Blackwell.",
    {"name": "B200-SXM-180GB", "kind": "gpu", "memory_bytes": 183359 * 1024 ** 2, "memory_bandwidth_Bps": 8e12,
     "peak_flops": B200_DENSE_PEAK, "memory_overhead_bytes": 1.5 * GiB},
    link(5e-6, 900e9), link(8e-6, 50e9),
    {
        **H100["efficiency"],
        "matmul": eff(H100_SUSTAINED_MATMUL, "the H100 SXM5's sustained large-GEMM fraction at its power limit "
                                             "(measured on an H200, docs/gpu.md), assumed for this part's peak; "
                                             "not measured on Blackwell"),
        "comm_intra": eff(0.80, "as on H100 (NCCL over NVLink at 0.8 of the per-direction bandwidth), assumed for "
                                "NVLink 5: 720 of 900 GB/s"),
    }, H100["attention_curves"],
    data_sheet_host(
        2e12, 64e9, 2 * 8 * 44.8e9,
        "NVIDIA DGX B200 data sheet (https://www.nvidia.com/en-us/data-center/dgx-b200/): 2 TB system memory, dual "
        "Intel Xeon Platinum 8570; the GPUs' host links taken as PCIe Gen5 x16, 64 GB/s per direction (the CPUs' "
        "PCIe generation); adam_s_per_param derived, not measured: AdamW moves "
        f"{ADAM_BYTES_PER_PARAM} bytes per parameter (cost/compute.py ADAM_BYTES_PER_PARAM) at the node's DDR5 "
        "bandwidth shared by its 8 ranks, 2 sockets x 8 channels DDR5-5600 x 44.8 GB/s = 716.8 GB/s (Intel ark, Xeon "
        "Platinum 8570: 8 channels DDR5-5600), a lower bound on the step time"))

# GB200 NVL72 and GB300 NVL72: one rack is 18 compute trays (nodes: one host each, 4 GPUs and 2 Grace CPUs) whose 72
# GPUs share one NVLink 5 switch fabric (the rack's 9 switch trays): a scale-up domain of 18 nodes, every GPU pair of a
# rack at NVLink speed, racks joined by one scale-out NIC per GPU. Data sheets, as collected by third parties (NVIDIA's
# product pages themselves were not read): the rack table of GB200 NVL72 prints 360 PFLOP/s FP16/BF16, 720 FP8 and 180
# TF32 for 72 GPUs with sparsity (halved: 2.5, 5 and 1.25 PFLOP/s dense per GPU;
# glennklockwood.com/garden/processors/B200, read 2026-12-05, 1200 W); Blackwell Ultra (GB300) keeps those dense
# BF16/FP8/TF32 rates at 1400 W and raises FP4 (NVIDIA technical blog "Inside NVIDIA Blackwell Ultra",
# developer.nvidia.com/blog/inside-nvidia-blackwell-ultra-the-chip-powering-the-ai-factory-era: 288 GB HBM3e at 8 TB/s,
# NVLink 5 at 1.8 TB/s bidirectional; pytorch/pytorch PR #196944 lists 2500 TFLOP/s BF16 dense and measured 1665-1845
# TFLOP/s on BF16 GEMMs, 0.67-0.74 of it, beside the profiles' sustained 0.667). FP32: 80 TFLOP/s, the HGX B200's (not a
# GEMM rate any bf16 plan reads). memory_bytes is what PyTorch reports for the part: "a total capacity of 184.31 GiB"
# (GB200, the 186-192 GB of the data sheets less what the driver reserves) and 276.62 GiB (GB300; torchtitan PR #4016 "a
# 276.62 GiB GB300"), each in several public out-of-memory messages. Every efficiency, the GEMM size curve and the
# attention curves are the dgx-b200-180g profile's (the H100's fractions): assumed, not measured on these parts.
GB_DENSE_PEAK = {"bf16": 2500e12, "fp16": 2500e12, "fp32": 80e12, "tf32": 1250e12, "fp8": 5000e12}
NVL72_DOMAIN = {"nodes": 18, "why": "an NVL72 rack: 18 compute trays of 4 GPUs on one NVLink 5 switch fabric (72 GPUs "
                                    "at 900 GB/s per direction each); racks talk over the scale-out NICs"}
GRACE_HOST_SOURCE = (
    "a compute tray's 2 Grace CPUs with up to 480 GB LPDDR5X each (960 GB per tray) and up to 512 GB/s of LPDDR5X "
    "bandwidth each (NVIDIA Grace data: GB200 superchip, 480 GB LPDDR5X); each Grace joins its 2 GPUs over NVLink-C2C, "
    "900 GB/s bidirectional, taken as 450 GB/s per direction shared by the two GPUs (225 GB/s per GPU); "
    f"adam_s_per_param derived, not measured: AdamW moves {ADAM_BYTES_PER_PARAM} bytes per parameter (cost/compute.py "
    "ADAM_BYTES_PER_PARAM) at the tray's 1,024 GB/s of LPDDR5X shared by its 4 ranks, a lower bound on the step time")


def nvl72_profile(name, part, memory_gib, nic_gbit, watts):
    return gpu_profile(
        name,
        f"{name.upper()} racks: 18 compute trays (nodes) of 4 {part} GPUs and 2 Grace CPUs; dense 2500 TFLOP/s "
        f"bf16/fp16, 5000 fp8, 1250 tf32 per GPU at {watts} W; {memory_gib} GiB of HBM3e as PyTorch reports it, 8 "
        "TB/s; the rack's 72 GPUs on one NVLink 5 fabric (1.8 TB/s bidirectional = 900 GB/s per direction per GPU: "
        f"scale_up_domain), one {nic_gbit} Gb/s scale-out NIC per GPU ({nic_gbit / 8:g} GB/s per direction) between "
        "racks. Sources in scripts/bundled_profiles.py (NVL72 comment). Every efficiency, the GEMM size curve and the "
        "attention curves are the dgx-b200-180g profile's (the H100's fractions of this part's peaks): assumed, not "
        "measured on this part.",
        {"name": f"{part}-{round(memory_gib)}GiB", "kind": "gpu", "memory_bytes": memory_gib * GiB,
         "memory_bandwidth_Bps": 8e12, "peak_flops": GB_DENSE_PEAK, "memory_overhead_bytes": 1.5 * GiB},
        link(5e-6, 900e9), link(8e-6, nic_gbit / 8 * 1e9),
        {
            **B200["efficiency"],
            "comm_inter": eff(0.90, f"NCCL over {nic_gbit} Gb/s scale-out NICs at the H100 profile's 0.9 of the "
                                    f"line rate, assumed"),
        }, B200["attention_curves"],
        data_sheet_host(960e9, 225e9, 2 * 512e9, GRACE_HOST_SOURCE, ranks=4),
        nodes=18, gpus_per_node=4, scale_up_domain=NVL72_DOMAIN)


GB200 = nvl72_profile("gb200-nvl72", "B200-GB200", 184.31, 400, 1200)
GB300 = nvl72_profile("gb300-nvl72", "B300-GB300", 276.62, 800, 1400)

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
    # Measured, not a data sheet: `python -m autoconf.profile.host autoconf/profiles/cpu-local.json` rewrites only
    # this object on this machine; it is carried over from the shipped file as it is.
    "host": json.loads((OUT / "cpu-local.json").read_text())["host"],
}



def files() -> dict[str, str]:
    """File name -> text of every profile this script owns in autoconf/profiles/."""
    return {f"{p['name']}.json": json.dumps(p, indent=2) + "\n" for p in (A100, H100, H200, H100_96G_500W, H800, B200,
                                                                          GB200, GB300, CPU)}


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # (--help: nothing written)
    OUT.mkdir(exist_ok=True)
    for name, text in files().items():
        (OUT / name).write_text(text)
        print("wrote", OUT / name)
