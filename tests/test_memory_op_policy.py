"""The memory estimator's layout for torchtitan's selective "op" recompute policy (`Execution.selective_recompute`
"alternate_matmuls") is what torch's selective checkpointing really keeps under that rule: a Llama block (the
executor's, whose matmuls run in torchtitan's order wq wk wv wo w1 w3 w2) wrapped in a non-reentrant checkpoint
whose policy saves the outputs of the 1st, 3rd, ... matmul and of the attention kernel and recomputes the rest,
counted on CPU in bf16 from the checkpoint's own cache of saved outputs plus the block input it keeps."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from autoconf.cost.memory import executor_layer_activation_bytes, layer_activation_bytes
from autoconf.execute.model import Block
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS

MB, SEQ = 3, 40
# The attention kernel's op: CUDA's flash kernel in torchtitan's list; SDPA's CPU flash kernel stands in for it here.
ATTENTION_OPS = {torch.ops.aten._scaled_dot_product_flash_attention.default,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}


def _op_policy_context(caches: list):
    """A selective-checkpoint context under the op policy's rule; appends its cache of saved outputs to `caches`."""
    counts = {False: 0, True: 0}

    def policy(ctx, func, *args, **kwargs):
        if func == torch.ops.aten.mm.default:
            counts[ctx.is_recompute] += 1
            keep = counts[ctx.is_recompute] % 2 == 1
        else:
            keep = func in ATTENTION_OPS
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    forward, recompute = create_selective_checkpoint_contexts(policy)
    caches.append(forward.storage)
    return forward, recompute


def _tensors(entry):
    entry = getattr(entry, "val", entry)
    if isinstance(entry, torch.Tensor):
        yield entry
    elif isinstance(entry, (tuple, list)):
        for item in entry:
            yield from _tensors(item)


def test_op_policy_layout_is_what_selective_checkpointing_keeps():
    spec = dataclasses.replace(PRESETS["tiny-llama"], dropout=0.0)
    torch.manual_seed(0)
    block = Block(spec, "flash").train().to(torch.bfloat16)
    x = torch.randn(MB, SEQ, spec.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    caches: list = []
    out = checkpoint(block, x, use_reentrant=False, context_fn=lambda: _op_policy_context(caches))
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for cache in caches for outputs in cache.values() for entry in outputs.values()
                for t in _tensors(entry)}
    measured = sum(storages.values()) + x.untyped_storage().nbytes()
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=MB, global_batch_size=MB, seq_len=SEQ, dtype="bf16",
                            attention="flash", recompute="selective")
    estimated = layer_activation_bytes(spec, config, "torch", "cpu", selective="alternate_matmuls")
    assert estimated == measured
    # The policy keeps less than the executor's own selective layout, and the backward still runs.
    assert estimated < executor_layer_activation_bytes(spec, config, "selective", "cpu")
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()
