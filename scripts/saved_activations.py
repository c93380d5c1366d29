"""Activation bytes per layer: what the executor's block saves for its backward (counted with autograd's
saved-tensor hooks on this machine's device) against the memory estimator's torch-layout accounting.

    python scripts/saved_activations.py [--models gpt3-1.3b llama3-8b] [--tokens 3 1000] [--recompute none selective]

"selective-op" is selective recompute by torchtitan's per-op policy (selective_recompute "alternate_matmuls",
execute/checkpoint_policy.py; the fused attention kernel only).

The block and its input are in bf16 (as the executor's FSDP2 mixed precision runs it: bf16 compute copies of the
parameters, a bf16 residual stream) and in fp32, on CUDA when available, else on CPU. Dropout is the preset's (CPU
attention falls back to the unfused kernel under dropout: expect more there). Compiled blocks are not counted (the
hooks see eager autograd only).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from autoconf.cost.memory import layer_activation_bytes
from autoconf.execute.model import Block, OneBlock
from autoconf.execute.parallelize import apply_recompute
from autoconf.profile.activations import saved_bytes
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt3-1.3b", "llama3-8b"])
    parser.add_argument("--tokens", nargs=2, type=int, default=[3, 1000], metavar=("MB", "SEQ"))
    parser.add_argument("--recompute", nargs="+", default=["none", "selective"],
                        choices=["none", "selective", "selective-op", "full"])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = "gpu" if device.type == "cuda" else "cpu"
    mb, seq = args.tokens
    print(f"{'model':<12} {'dtype':<5} {'recompute':<12} {'dropout':>7} {'saved MiB':>10} {'estimated MiB':>14} "
          f"{'ratio':>6}  ({device})")
    for name in args.models:
        spec = load_model(name)
        for dtype, low in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            for recompute in args.recompute:
                for dropout in sorted({0.0, spec.dropout}):
                    model = dataclasses.replace(spec, dropout=dropout)
                    torch.manual_seed(0)
                    block = Block(model, "flash").to(device=device, dtype=low).train()
                    mode, _, op = recompute.partition("-")
                    policy = "alternate_matmuls" if op else "attention_core"
                    apply_recompute(OneBlock(block), mode, None, policy)
                    x = torch.randn(mb, seq, model.hidden_size, device=device, dtype=low, requires_grad=True)
                    measured = saved_bytes(block, x)
                    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=mb, global_batch_size=mb,
                                            seq_len=seq, dtype=dtype, recompute=mode,
                                            selective_recompute=policy if op else None)
                    estimated = layer_activation_bytes(model, config, "torch", kind, selective=policy)
                    print(f"{name:<12} {dtype:<5} {recompute:<12} {dropout:>7.2f} {measured / 2 ** 20:>10.2f} "
                          f"{estimated / 2 ** 20:>14.2f} {measured / estimated:>6.3f}")
                    del block, x


if __name__ == "__main__":
    main()
