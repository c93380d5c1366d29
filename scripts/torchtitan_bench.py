"""torchtitan's own Llama 3 (model, FSDP2 + mixed precision, selective activation checkpointing, torch.compile per
block, AdamW) trained on synthetic tokens, one process: tokens/s and peak memory, for the executor comparison in
scripts/gpu_check.sh. Its trainer needs a tokenizer and a Hugging Face dataset that an offline GPU machine lacks,
so this follows the trainer's build order (meta-device build, parallelize_fn, to_empty, init_weights) and its loss
(ChunkedLossWrapper) and loop with random tokens.

    python scripts/torchtitan_bench.py --layers 8 --seq 8192 --batch 2 --steps 10 --out torchtitan.json

Needs torchtitan 0.3.0 importable (gpu_check.sh installs the carried wheels). On a machine without triton (CPU) a
stand-in module lets torchtitan import (its Triton kernels are for expert parallelism and are not used here), and
as FlexAttention has no backward on CPU, a CPU run only checks the build and the forward + loss of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _stub_triton() -> None:
    import importlib.util
    from unittest import mock

    if importlib.util.find_spec("triton") is None:
        import torch._dynamo  # noqa: F401  (torch decides now, before the stand-in exists, that it has no triton)
        import torch._inductor.compile_fx  # noqa: F401  (the same)

        sys.modules["triton"] = mock.MagicMock()
        sys.modules["triton.language"] = mock.MagicMock()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flavor", default="8B", help="torchtitan's llama3 flavor whose shape is used")
    p.add_argument("--layers", type=int, default=8, help="keep the first LAYERS blocks")
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the tokens/s median")
    p.add_argument("--compile", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    _stub_triton()
    import torch
    import torch.distributed as dist

    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.activation_checkpoint import SelectiveAC
    from torchtitan.models.common.config_utils import decoder_vocab_size
    from torchtitan.models.llama3 import model_registry

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    spec = model_registry(args.flavor)  # its default attention (flex)
    config = spec.model
    config.layers = config.layers[: args.layers]
    training = TrainingConfig(local_batch_size=args.batch, seq_len=args.seq, steps=args.steps)
    parallelism = ParallelismConfig()

    class _Job:  # what update_from_config reads (a Trainer.Config has more)
        pass

    job = _Job()
    job.parallelism, job.training = parallelism, training
    if "torchtitan.trainer" not in sys.modules:  # update_from_config imports it only to recognise a Trainer.Config;
        import types  # the trainer module needs torchdata, datasets and a tokenizer, which this run does not use

        stand_in = types.ModuleType("torchtitan.trainer")
        stand_in.Trainer = type("Trainer", (), {"Config": type("Config", (), {})})
        sys.modules["torchtitan.trainer"] = stand_in
    config.update_from_config(config=job)
    with torch.device("meta"):
        model = config.build()
    if not cuda:  # torchtitan assumes "cuda" where it finds no accelerator
        import torchtitan.distributed.parallel_dims as parallel_dims_module

        parallel_dims_module.device_type = "cpu"
    dims = ParallelDims.from_config(parallelism, dist.get_world_size())
    compile_config = CompileConfig(enable=bool(args.compile) and cuda, components=["model"])
    model = spec.parallelize_fn(model, parallel_dims=dims, training=training, parallelism=parallelism,
                                compile_config=compile_config, ac_config=SelectiveAC.Config(),
                                dump_folder="/tmp/torchtitan_bench")
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    loss_fn = ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(
        global_vocab_size=decoder_vocab_size(spec))).build()
    loss_fn.set_lm_head(model.lm_head)
    model._skip_lm_head = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=cuda, foreach=not cuda)
    vocab = config.vocab_size
    gen = torch.Generator().manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(args.steps):
        tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=gen).to(device)
        t0 = time.perf_counter()
        # One document per row: positions 0..seq-1, the causal block mask the trainer builds from them.
        positions = torch.arange(args.seq, device=device).expand(args.batch, -1)
        extra = {"positions": positions, "attention_masks": model.get_attention_masks(positions=positions)}
        with torch.set_grad_enabled(cuda):
            pred = model(tokens[:, :-1], **extra)
            loss, _ = loss_fn(pred, tokens[:, 1:], torch.tensor(tokens[:, 1:].numel(), device=device))
        del pred
        if cuda:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    measured = sorted(times[min(args.warmup, len(times) - 1):])
    median = measured[len(measured) // 2]
    result = {"framework": "torchtitan", "flavor": args.flavor, "layers": args.layers, "seq": args.seq,
              "batch": args.batch, "steps": args.steps, "compile": compile_config.enable, "trained": cuda,
              "tokens_per_s": args.batch * args.seq / median, "median_step_s": median, "losses": losses,
              "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
              "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
