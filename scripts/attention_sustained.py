"""The causal attention kernels' speed on this GPU, alone and under load, against the curves the data-sheet profiles
read (docs/compute-model.md: FlashAttention-3 paper figures, taken at a fixed 1830 MHz SM clock).

For every SDPA backend torch runs here (flash: FlashAttention-2; cuDNN; memory-efficient) and sequence length, bf16
causal attention of Llama 3 8B's heads (32 query heads of 128) over 16,384 tokens per call (the paper's batch), it
times the forward and the forward + backward: the median of 10 calls back to back after 3 warm-up calls. TFLOP/s in
the paper's and `cost/compute.py`'s convention: forward 4 s^2 d h / 2 per sequence (causal), backward 2.5x that.
Then it runs the default backend's forward + backward at SUSTAINED_SEQ for SECONDS and prints the rate of each
WINDOW, with the SM clock, board power and temperature nvidia-smi reads at the window's end (`gemm_sustained`).
It also names the backend torch picks by default and the cuDNN version (torch prefers cuDNN's attention on Hopper
only with a recent enough cuDNN). Beside the measurements, "profile" holds what the data sheet `dgx-h200-141g`
predicts for the backends it has curves of (flash as "fa2", cuDNN as "fused"), at the sustained clock the profiles
assume (`scripts/bundled_profiles.py` H100_SUSTAINED_CLOCK_MHZ), and "sustained" the median SM clock of its
windows: the two readings that confirm or refute that clock for attention. One JSON object on stdout.

    python scripts/attention_sustained.py [--seconds 20] [--window 2]
    python scripts/attention_sustained.py --tiny     # a dry run of the script itself on CPU (small shapes, fp32)
"""

from __future__ import annotations

import contextlib
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from autoconf.profile.timing import median, time_once, time_repeated
from gemm_sustained import smi_reading, sustained_run_args

SEQS = (2048, 8192, 32768)
SUSTAINED_SEQ = 8192
TOKENS, HEADS, HEAD_DIM = 16384, 32, 128
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}
PROFILE = "dgx-h200-141g"  # the lent machines' part (its attention curves are the H100 family's)
KERNEL_OF = {"flash": "fa2", "cudnn": "fused"}  # the profile's kernel name of each backend it has a curve of


def profile_rates(seqs, head_dim: int) -> dict:
    """What `PROFILE` predicts for each backend of KERNEL_OF: forward and backward TFLOP/s at each sequence length
    (cost/compute.py `attention_efficiency` times the bf16 peak), in the convention of the measurements."""
    from autoconf.cost.compute import attention_efficiency
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.frameworks import execution
    from bundled_profiles import H100_SUSTAINED_CLOCK_MHZ

    cluster = load_cluster(PROFILE)
    peak = cluster.device.peak("bf16") / 1e12
    rows = {}
    for backend, kernel in KERNEL_OF.items():
        ex = execution("autoconf").replace(attention_kernel=kernel)
        rows[backend] = {str(seq): dict(zip(("forward_tflops", "backward_tflops"),
                                            (peak * f for f in attention_efficiency(cluster, ex, seq, head_dim))))
                         for seq in seqs}
    return {"cluster": PROFILE, "assumed_sm_mhz": H100_SUSTAINED_CLOCK_MHZ, "kernels": rows}


def _inputs(seq: int, tokens: int, heads: int, head_dim: int, dtype, device):
    batch = max(1, tokens // seq)
    return [torch.randn(batch, heads, seq, head_dim, device=device, dtype=dtype, requires_grad=True)
            for _ in range(3)]


def forward_flops(q: torch.Tensor) -> float:
    batch, heads, seq, head_dim = q.shape
    return 4.0 * batch * heads * seq * seq * head_dim / 2


def _passes(q, k, v):
    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def both():
        out = forward()
        out.backward(torch.ones_like(out))

    return forward, both


def default_backend(q, k, v) -> str:
    """The backend torch's dispatcher picks for these inputs (torch._fused_sdp_choice, private: "unknown" if absent)."""
    choice = getattr(torch, "_fused_sdp_choice", None)
    if choice is None:
        return "unknown"
    index = choice(q, k, v, is_causal=True)
    return {int(b.value): name for name, b in {**BACKENDS, "math": SDPBackend.MATH}.items()}.get(int(index),
                                                                                                  str(index))


def main() -> None:
    args, device = sustained_run_args(__doc__)
    tiny = args.tiny or device.type == "cpu"
    dtype = torch.float32 if tiny else torch.bfloat16
    seqs, tokens, heads, head_dim = ((64, 256), 512, 4, 32) if tiny else (SEQS, TOKENS, HEADS, HEAD_DIM)
    sustained_seq = seqs[-1] if tiny else SUSTAINED_SEQ
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
              "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "heads": heads,
              "head_dim": head_dim, "tokens_per_call": tokens, "convention": "forward 4 s^2 d h / 2 (causal), "
              "backward 2.5x forward", "kernels": {}}
    q, k, v = _inputs(seqs[0], tokens, heads, head_dim, dtype, device)
    result["default_backend"] = default_backend(q, k, v)
    for name, backend in ({"default": None} if tiny else BACKENDS).items():
        rows = {}
        for seq in seqs:
            q, k, v = _inputs(seq, tokens, heads, head_dim, dtype, device)
            forward, both = _passes(q, k, v)
            flops = forward_flops(q)
            try:
                with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
                    t_forward = median(time_repeated(forward, device, 3, 10))
                    t_both = median(time_repeated(both, device, 3, 10))
            except RuntimeError as err:  # the backend does not run these inputs on this device
                rows[str(seq)] = {"error": str(err).splitlines()[0][:200]}
                continue
            rows[str(seq)] = {"forward_tflops": flops / t_forward / 1e12,
                              "backward_tflops": (2.5 * flops / (t_both - t_forward) / 1e12
                                                  if t_both > t_forward else None),  # None: lost in the noise
                              "forward_backward_tflops": 3.5 * flops / t_both / 1e12}
        result["kernels"][name] = rows
    q, k, v = _inputs(sustained_seq, tokens, heads, head_dim, dtype, device)
    _, both = _passes(q, k, v)
    flops = 3.5 * forward_flops(q)
    windows, t_end = [], time.perf_counter() + args.seconds
    while time.perf_counter() < t_end:
        w_end, done, busy = time.perf_counter() + args.window, 0.0, 0.0
        while time.perf_counter() < w_end:
            busy += time_once(both, device)
            done += flops
        windows.append({"forward_backward_tflops": done / busy / 1e12, **smi_reading()})
    clocks = [w["sm_mhz"] for w in windows if "sm_mhz" in w]
    result["sustained"] = {"seq": sustained_seq, "backend": result["default_backend"], "seconds": args.seconds,
                           "window_s": args.window, "median_sm_mhz": median(clocks) if clocks else None,
                           "windows": windows}
    result["profile"] = profile_rates(seqs, head_dim)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
