"""Activation bytes per layer: what the executor's block saves for its backward (counted with autograd's
saved-tensor hooks on this machine's device) against the memory estimator's torch-layout accounting.

    python scripts/saved_activations.py [--models gpt3-1.3b llama3-8b] [--tokens 3 1000] [--recompute none selective]
                                        [--compile]

"selective-op" is selective recompute by torchtitan's per-op policy (selective_recompute "alternate_matmuls",
execute/checkpoint_policy.py; the fused attention kernel only).

The block and its input are in bf16 (as the executor's FSDP2 mixed precision runs it: bf16 compute copies of the
parameters, a bf16 residual stream) and in fp32, on CUDA when available, else on CPU. Dropout is the preset's (CPU
attention falls back to the unfused kernel under dropout: expect more there). `--compile` (CUDA only) also counts
each bf16 block without dropout compiled as the executor compiles it (torch.compile, inductor), whose saved tensors
the compiled function hands to autograd through the same hooks, against the estimate's compiled count
(cost/memory.py `compiled_block_delta_bytes`, `compiled_op_policy_delta_bytes`; traced on CPU with inductor's
partitioner and eager kernels by tests/test_memory_compiled.py).
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
    parser.add_argument("--compile", action="store_true",
                        help="also count bf16 blocks without dropout compiled by inductor (CUDA only)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = "gpu" if device.type == "cuda" else "cpu"
    if args.compile and kind != "gpu":
        parser.error("--compile counts inductor-compiled blocks on CUDA; this machine has no CUDA device "
                     "(tests/test_memory_compiled.py checks the compiled counts on CPU)")
    mb, seq = args.tokens
    print(f"{'model':<12} {'dtype':<5} {'recompute':<12} {'dropout':>7} {'compiled':>8} {'saved MiB':>10} "
          f"{'estimated MiB':>14} {'ratio':>6}  ({device})")
    for name in args.models:
        spec = load_model(name)
        for dtype, low in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            for recompute in args.recompute:
                for dropout in sorted({0.0, spec.dropout}):
                    for compiled in (False, True) if args.compile and dtype == "bf16" and not dropout else (False,):
                        model = dataclasses.replace(spec, dropout=dropout)
                        measured, estimated = _count(model, dtype, low, recompute, compiled, mb, seq, device, kind)
                        print(f"{name:<12} {dtype:<5} {recompute:<12} {dropout:>7.2f} {str(compiled):>8} "
                              f"{measured / 2 ** 20:>10.2f} {estimated / 2 ** 20:>14.2f} {measured / estimated:>6.3f}")


def _count(model, dtype: str, low: torch.dtype, recompute: str, compiled: bool, mb: int, seq: int, device,
           kind: str) -> tuple[int, float]:
    """(bytes the block saves, bytes the estimate counts) for one block of `model` under `recompute`."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    block = Block(model, "flash").to(device=device, dtype=low).train()
    mode, _, op = recompute.partition("-")
    policy = "alternate_matmuls" if op else "attention_core"
    apply_recompute(OneBlock(block), mode, None, policy)
    x = torch.randn(mb, seq, model.hidden_size, device=device, dtype=low, requires_grad=True)
    if compiled:
        block = torch.compile(block)
        block(x)  # compiled before the count
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=mb, global_batch_size=mb, seq_len=seq, dtype=dtype,
                            recompute=mode, selective_recompute=policy if op else None, compile=compiled)
    return saved_bytes(block, x), layer_activation_bytes(model, config, "torch", kind, selective=policy)


if __name__ == "__main__":
    main()
