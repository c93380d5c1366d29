"""torchtitan's own Llama 3 (model, parallelize_fn, selective activation checkpointing, torch.compile per block,
AdamW) trained on synthetic tokens, one process: tokens/s and peak memory, for the executor comparison in
scripts/gpu_check.sh. Its trainer needs a tokenizer and a Hugging Face dataset that an offline GPU machine lacks,
so this follows the trainer's build order (meta-device build, parallelize_fn, to_empty, init_weights), its loss and
its loop with random tokens.

    python scripts/torchtitan_bench.py --layers 8 --seq 8192 --batch 2 --steps 10 --out torchtitan.json

Two releases, each run as its trainer builds it (the installed one is used):
- 0.3.0 (the exporters' target; needs a torch with `torch.distributed.fsdp.DataParallelMeshDims`, newer than 2.11):
  FlexAttention, the chunked loss (ChunkedLossWrapper), FSDP2 mixed precision also on one rank.
- 0.2.x (runs on torch 2.11): SDPA, the eager fp32 cross entropy; on one GPU its trainer applies no FSDP and trains
  fp32 parameters under bf16 autocast (`maybe_enable_amp`), as this does. The dataset and checkpoint packages it
  imports but this run never uses are stand-ins.
On a machine without triton (CPU) a stand-in module lets torchtitan import (its Triton kernels are for expert
parallelism and are not used here), and a CPU run only checks the build and the forward + loss of each step.
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
    p.add_argument("--ac", default="op", help="0.2.x: selective_ac_option ('op': the per-op policy, or a layer period)")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    _stub_triton()
    from importlib.metadata import version

    if version("torchtitan").startswith("0.2"):
        result = _run_v02(args)
    else:
        result = _run_v03(args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}))


def _stand_in_modules(*names: str) -> None:
    """Modules torchtitan imports at package load but this run never calls (datasets, torchdata): every attribute
    is a new empty class, so its subclasses and imports resolve."""
    import types

    def stand_in(module_name):
        def attribute(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return type(attr, (), {"__module__": module_name})
        return attribute

    for name in names:
        module = types.ModuleType(name)
        module.__getattr__ = stand_in(name)
        sys.modules[name] = module


def _start():
    """(device, whether it is a GPU) of this one-rank run, with its process group started (nccl or gloo)."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return device, cuda


def _loop(args, model, forward_loss, device, cuda: bool) -> tuple[list[float], list[float]]:
    """Synthetic-token steps: forward + loss (forward_loss(tokens) -> scalar), backward, clipping, AdamW."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=cuda, foreach=not cuda)
    gen = torch.Generator().manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(args.steps):
        tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen).to(device)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(cuda):
            loss = forward_loss(tokens)
        if cuda:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    return times, losses


def _result(args, times, losses, device, cuda: bool, release: str, **extra) -> dict:
    import torch

    measured = sorted(times[min(args.warmup, len(times) - 1):])
    median = measured[len(measured) // 2]
    return {"framework": "torchtitan", "release": release, "flavor": args.flavor, "layers": args.layers,
            "seq": args.seq, "batch": args.batch, "steps": args.steps, "trained": cuda,
            "tokens_per_s": args.batch * args.seq / median, "median_step_s": median, "losses": losses,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None, **extra}


def _run_v02(args) -> dict:
    _stand_in_modules("datasets", "datasets.distributed", "torchdata", "torchdata.stateful_dataloader")
    import torch
    import torch.distributed as dist

    from torchtitan.components.loss import build_cross_entropy_loss
    from torchtitan.config import JobConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed import utils as dist_utils
    from torchtitan.models.llama3 import Transformer, llama3_args, parallelize_llama

    device, cuda = _start()
    job = JobConfig()
    job.model.flavor = args.flavor
    job.training.local_batch_size, job.training.seq_len, job.training.steps = args.batch, args.seq, args.steps
    job.activation_checkpoint.mode, job.activation_checkpoint.selective_ac_option = "selective", args.ac
    job.compile.enable, job.compile.components = bool(args.compile) and cuda, ["model"]
    model_args = llama3_args[args.flavor]
    model_args.n_layers = args.layers
    model_args.update_from_config(job)
    args.vocab = model_args.vocab_size
    with torch.device("meta"):
        model = Transformer(model_args)
    p = job.parallelism
    dims = ParallelDims(dp_shard=p.data_parallel_shard_degree, dp_replicate=p.data_parallel_replicate_degree,
                        cp=p.context_parallel_degree, tp=p.tensor_parallel_degree, pp=p.pipeline_parallel_degree,
                        ep=p.expert_parallel_degree, etp=p.expert_tensor_parallel_degree,
                        world_size=dist.get_world_size())
    model = parallelize_llama(model, dims, job)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    loss_fn = build_cross_entropy_loss(job)
    amp = dist_utils.maybe_enable_amp(dims, job.training.mixed_precision_param, device.type)

    def forward_loss(tokens):
        with amp:
            pred = model(tokens[:, :-1])
            loss = loss_fn(pred, tokens[:, 1:]) / tokens[:, 1:].numel()
        del pred  # as its trainer does, before the backward
        return loss

    times, losses = _loop(args, model, forward_loss, device, cuda)
    dist.destroy_process_group()
    return _result(args, times, losses, device, cuda, "0.2", compile=job.compile.enable,
                   fsdp=dims.fsdp_enabled, selective_ac_option=args.ac)


def _run_v03(args) -> dict:
    import torch
    import torch.distributed as dist

    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.activation_checkpoint import SelectiveAC
    from torchtitan.models.common.config_utils import decoder_vocab_size
    from torchtitan.models.llama3 import model_registry

    device, cuda = _start()
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
    args.vocab = config.vocab_size

    def forward_loss(tokens):
        # One document per row: positions 0..seq-1, the causal block mask the trainer builds from them.
        positions = torch.arange(args.seq, device=device).expand(args.batch, -1)
        extra = {"positions": positions, "attention_masks": model.get_attention_masks(positions=positions)}
        pred = model(tokens[:, :-1], **extra)
        loss, _ = loss_fn(pred, tokens[:, 1:], torch.tensor(tokens[:, 1:].numel(), device=device))
        return loss

    times, losses = _loop(args, model, forward_loss, device, cuda)
    dist.destroy_process_group()
    return _result(args, times, losses, device, cuda, "0.3", compile=compile_config.enable)


if __name__ == "__main__":
    main()
