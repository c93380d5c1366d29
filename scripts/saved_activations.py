"""Activation bytes per layer: what the executor's block saves for its backward (counted with autograd's
saved-tensor hooks on this machine's device) against the memory estimator's torch-layout accounting.

    python scripts/saved_activations.py [--models gpt3-1.3b llama3-8b] [--tokens 3 1000]

On CUDA the block trains in bf16 under autocast (unsharded ranks) and in fp32; on CPU in fp32 and CPU bf16 autocast.
Dropout is the preset's (CPU attention falls back to the unfused kernel under dropout: expect more there).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from autoconf.cost.memory import executor_layer_activation_bytes
from autoconf.execute.model import Block
from autoconf.profile.activations import saved_bytes
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt3-1.3b", "llama3-8b"])
    parser.add_argument("--tokens", nargs=2, type=int, default=[3, 1000], metavar=("MB", "SEQ"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mb, seq = args.tokens
    print(f"{'model':<12} {'dtype':<5} {'dropout':>7} {'saved MiB':>10} {'estimated MiB':>14} {'ratio':>6}  ({device})")
    for name in args.models:
        spec = load_model(name)
        for dtype in ("bf16", "fp32"):
            for dropout in sorted({0.0, spec.dropout}):
                model = dataclasses.replace(spec, dropout=dropout)
                torch.manual_seed(0)
                block = Block(model, "flash").to(device).train()
                x = torch.randn(mb, seq, model.hidden_size, device=device, requires_grad=True)
                measured = saved_bytes(block, x, torch.bfloat16 if dtype == "bf16" else None)
                config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=mb, global_batch_size=mb, seq_len=seq,
                                        dtype=dtype)
                kind = "gpu" if device.type == "cuda" else "cpu"
                estimated = executor_layer_activation_bytes(model, config, "none", kind)
                print(f"{name:<12} {dtype:<5} {dropout:>7.2f} {measured / 2 ** 20:>10.2f} {estimated / 2 ** 20:>14.2f} "
                      f"{measured / estimated:>6.3f}")
                del block, x


if __name__ == "__main__":
    main()
