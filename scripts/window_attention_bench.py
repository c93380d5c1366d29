"""Sliding-window attention in autoconf's executor, measured on this machine's CPU: the band
(execute/window_attention.py, blocks of w queries against their 2w - 1 keys) against one dense mask of the window
(what every sliding layer ran before 2026-12-05) and causal attention without a window, for one GPT-OSS-shaped
attention core (16 query heads, 2 K/V heads, head 64; GPT-OSS has 64 and 8) at a sequence and window you choose.

Each way runs in its own process: forward and backward, the median of --repeats timed runs after a warm-up, and
the bytes autograd keeps for the backward (distinct storages of the saved tensors: Q, K, V or the band's copies,
outputs, log-sum-exp and the mask SDPA converts). Prints a Markdown table; on a CPU the kernels are torch's CPU
ones, so the ratios, not the times, are what carries to the estimate's `executor_window_work` (whose scores count
is printed beside them)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _one(way: str, seq: int, window: int, repeats: int) -> dict:
    import torch

    from autoconf.execute.model import Attention
    from autoconf.execute.window_attention import last_queries_mask
    from autoconf.spec.model import ModelSpec

    spec = ModelSpec(name="window-bench", arch="llama", num_layers=2, hidden_size=1024, num_heads=16, num_kv_heads=2,
                     head_dim=64, ffn_hidden_size=1024, vocab_size=256, max_seq_len=seq, sliding_window=window)
    layer = Attention(spec, "flash", None if way == "causal" else window)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 16, seq, 64, generator=generator)
    k, v = (torch.randn(1, 2, seq, 64, generator=generator) for _ in range(2))
    mask = last_queries_mask(seq, seq, window, q.device) if way == "dense mask" else None

    kept: dict[int, int] = {}

    def keep(t):
        kept.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    def step() -> None:
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            out = layer.attend(*leaves, mask, 0.0) if way == "dense mask" else layer.core(*leaves)
        out.sum().backward()

    step()
    saved, times = sum(kept.values()), []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ms": 1000 * statistics.median(times), "kept_MiB": saved / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096, help="tokens (default 4096)")
    parser.add_argument("--window", type=int, default=128, help="the sliding window (default 128, GPT-OSS's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per way (default 3)")
    parser.add_argument("--way", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seq < 2 * args.window or args.window < 1 or args.repeats < 1:
        print(f"window_attention_bench: --seq {args.seq} must be at least twice --window {args.window} (the band "
              f"runs from there), both positive, --repeats at least 1", file=sys.stderr)
        return 2
    if args.way:
        print(json.dumps(_one(args.way, args.seq, args.window, args.repeats)))
        return 0
    from autoconf.spec.model import executor_window_work, window_pair_share

    rows = {}
    for way in ("causal", "dense mask", "band"):
        proc = subprocess.run([sys.executable, __file__, "--seq", str(args.seq), "--window", str(args.window),
                               "--repeats", str(args.repeats), "--way", way], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)
            return 1
        rows[way] = json.loads(proc.stdout)
    s, w = args.seq, args.window
    scores = {"causal": 1.0, "dense mask": s * s / (s * (s + 1) / 2), "band": executor_window_work(s, w)[0]}
    print(f"seq {s}, window {w}, 16 heads / 2 K/V heads / head 64, forward + backward on CPU "
          f"(the window's own pairs: {window_pair_share(s, w):.3f} of causal)")
    print("| way | ms | x causal | kept for backward, MiB | scores / causal's (executor_window_work) |")
    print("|---|---:|---:|---:|---:|")
    for way, r in rows.items():
        print(f"| {way} | {r['ms']:.1f} | {r['ms'] / rows['causal']['ms']:.2f} | {r['kept_MiB']:.1f} | "
              f"{scores[way]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
