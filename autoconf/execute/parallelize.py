"""Applies a plan's intra-stage parallelism to one model chunk, in one fixed order:

1. tensor parallelism (DTensor `parallelize_module`: Colwise/Rowwise, plus SequenceParallel norms when planned), on
   the meta device;
2. materialisation and the seeded initialisation (`model.init_weights`), so every layout starts from the same
   weights: each parameter's full value is generated on CPU and this rank keeps its TP shard;
3. activation recompute: "selective" checkpoints the attention core (softmax(QK^T)V), "full" each whole block,
   both with non-reentrant `torch.utils.checkpoint` inside the module's forward (parameter names do not change);
4. data parallelism by ZeRO stage over the "dp" mesh dimension:
   - 0: replicated parameters, gradients all-reduced (averaged) over dp after the last micro-batch
     (`allreduce_gradients`, one flat bucket per dtype; run by the training loop, so it works the same with and
     without pipelining);
   - 1 and 2: FSDP2 `fully_shard(reshard_after_forward=False)`: parameters stay gathered from forward to backward,
     gradients are reduce-scattered and optimizer state is sharded. This is ZeRO-2. FSDP2 has no mode that shards
     the optimizer state alone, so ZeRO-1 runs as ZeRO-2 (it uses less gradient memory than true ZeRO-1 would);
   - 3: FSDP2 `fully_shard(reshard_after_forward=True)`: parameters re-gathered for backward.
   Each block is its own FSDP unit; the chunk itself is the root unit (embedding, final norm, head).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from autoconf.execute.model import Transformer, init_weights


def apply_tp(model: Transformer, tp_mesh, sequence_parallel: bool) -> None:
    """Megatron-style TP: QKV and the first MLP matrices column-parallel, the output projections row-parallel, the
    vocabulary split for the embedding and head. With sequence parallelism the residual stream between the TP
    regions (norms, dropout, residual adds, and the tensors sent between pipeline stages) is split along the
    sequence."""
    sp = sequence_parallel
    residual = Shard(1) if sp else Replicate()
    top: dict = {}
    if model.embed is not None:
        top["embed.tok"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=residual)
        if model.embed.pos is not None:
            top["embed.pos"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=residual)
    if model.output is not None:
        if sp:
            top["norm"] = SequenceParallel()
        top["output"] = ColwiseParallel(input_layouts=residual, output_layouts=Replicate(), use_local_output=True)
    if top:
        parallelize_module(model, tp_mesh, top)
    gpt = model.spec.arch == "gpt"
    for block in model.layers.values():
        plan = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=residual),
        }
        if gpt:
            plan.update({"feed_forward.fc1": ColwiseParallel(),
                         "feed_forward.fc2": RowwiseParallel(output_layouts=residual)})
        else:
            plan.update({"feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
                         "feed_forward.w2": RowwiseParallel(output_layouts=residual)})
        if sp:
            gather = dict(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
            plan.update({"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
                         "attention": PrepareModuleInput(**gather), "feed_forward": PrepareModuleInput(**gather)})
        parallelize_module(block, tp_mesh, plan)
    model.tie_weights()  # TP replaced the embedding's parameter; the head shares it again (both Shard(0)).


def materialize(model: Transformer, device: torch.device, seed: int) -> None:
    model.to_empty(device=device)
    model.tie_weights()
    init_weights(model, seed)


def apply_recompute(model: Transformer, mode: str) -> None:
    for block in model.layers.values():
        block.recompute_full = mode == "full"
        block.attention.recompute_core = mode == "selective"


def apply_fsdp(model: Transformer, dp_mesh, zero_stage: int, mp_policy=None) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = dict(mesh=dp_mesh, reshard_after_forward=zero_stage == 3,
                  mp_policy=mp_policy or MixedPrecisionPolicy())
    for block in model.layers.values():
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def parallelize_chunk(model: Transformer, mesh, config, device: torch.device, seed: int,
                      mp_policy=None) -> Transformer:
    """TP, materialise + init, recompute, then FSDP (ZeRO 1-3) on one model chunk built on the meta device."""
    if config.tp > 1:
        apply_tp(model, mesh["tp"], config.sequence_parallel)
    materialize(model, device, seed)
    apply_recompute(model, config.recompute)
    if config.zero_sharded:
        apply_fsdp(model, mesh["dp"], config.zero_stage, mp_policy)
    return model


@torch.no_grad()
def allreduce_gradients(modules: list[nn.Module], dp_group, dp: int) -> None:
    """ZeRO-0 data parallelism: average every gradient over the dp group (flat buckets per dtype)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
    from torch.distributed.tensor import DTensor

    grads: dict[torch.dtype, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for module in modules:
        for p in module.parameters():
            if p.grad is None or id(p) in seen:
                continue
            seen.add(id(p))
            g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            grads.setdefault(g.dtype, []).append(g)
    for tensors in grads.values():
        flat = _flatten_dense_tensors(tensors)
        dist.all_reduce(flat, group=dp_group)
        flat.div_(dp)
        for g, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
            g.copy_(synced)
