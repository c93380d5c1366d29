"""The sustained bf16 GEMM rate of this GPU against one isolated call, for the data-sheet profiles' matmul efficiency
(dgx-h100-80g states 0.7 of the 989 TFLOP/s peak; docs/accuracy.md asks whether that holds under training load).

For each shape (an 8192^3 square and the four weight GEMMs of a Llama 3 8B block at 16,384 tokens: QKV, output
projection, the fused gate and up projections, the down projection) it times one call after an idle second (CUDA
events) and the median of 20 calls back to back. Then it runs the block's four GEMMs in a loop for SECONDS and prints
the rate of each window of WINDOW seconds, with the SM clock, board power and temperature nvidia-smi reads at the
window's end. One JSON object on stdout.

    python scripts/gemm_sustained.py [--seconds 20] [--window 2]
    python scripts/gemm_sustained.py --tiny     # a dry run of the script itself on CPU (small shapes, fp32)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import torch

from autoconf.profile.timing import median, time_once, time_repeated

LLAMA3_8B_BLOCK = {"qkv": (16384, 4096, 6144), "out": (16384, 4096, 4096), "gate_up": (16384, 4096, 28672),
                   "down": (16384, 14336, 4096)}


def smi_reading() -> dict:
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5).stdout
        sm, power, temp = (v.strip() for v in line.splitlines()[0].split(","))
        return {"sm_mhz": float(sm), "power_w": float(power), "temp_c": float(temp)}
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return {}


def _operands(shape, dtype, device):
    m, k, n = shape
    return torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)


def sustained_run_args(doc: str) -> tuple[argparse.Namespace, torch.device]:
    """The command line of a sustained-rate script (--seconds, --window, --tiny; `doc`'s first line its description)
    and the device it times: the GPU when there is one, else the CPU."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--tiny", action="store_true")
    return p.parse_args(), torch.device("cuda" if torch.cuda.is_available() else "cpu")


def main() -> None:
    args, device = sustained_run_args(__doc__)
    dtype = torch.float32 if args.tiny or device.type == "cpu" else torch.bfloat16
    scale = 32 if args.tiny else 1
    shapes = {"square_8192": (8192, 8192, 8192), **LLAMA3_8B_BLOCK}
    shapes = {name: tuple(max(16, d // scale) for d in s) for name, s in shapes.items()}
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
              "torch": torch.__version__, "shapes": {}}
    operands = {name: _operands(s, dtype, device) for name, s in shapes.items()}
    for name, (a, b) in operands.items():
        flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
        time_repeated(lambda: a @ b, device, 3, 0)
        time.sleep(1.0)
        isolated = time_once(lambda: a @ b, device)
        repeated = median(time_repeated(lambda: a @ b, device, 0, 20))
        result["shapes"][name] = {"mkn": list(shapes[name]), "isolated_tflops": flops / isolated / 1e12,
                                  "back_to_back_tflops": flops / repeated / 1e12}
    block = [operands[name] for name in LLAMA3_8B_BLOCK]
    block_flops = sum(2.0 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in block)
    windows, t_end = [], time.perf_counter() + args.seconds
    while time.perf_counter() < t_end:
        w_end, flops, busy = time.perf_counter() + args.window, 0.0, 0.0
        while time.perf_counter() < w_end:
            busy += time_once(lambda: [a @ b for _ in range(4) for a, b in block], device)
            flops += 4 * block_flops
        windows.append({"tflops": flops / busy / 1e12, **smi_reading()})
    result["sustained_block"] = {"seconds": args.seconds, "window_s": args.window, "windows": windows}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
