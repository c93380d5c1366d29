"""Bytes a module keeps for its backward, counted with autograd's saved-tensor hooks: the check that the memory
estimator's activation accounting matches the executor (tests/test_memory_saved.py on CPU, and
scripts/saved_activations.py on whatever device is at hand)."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves during `module(x)`, leaving out the parameters and any tensor
    of a parameter's shape or its transpose (2-D: choose the tokens of `x` unlike every weight dimension), together
    with the op outputs the per-op selective checkpoint caches for the backward (execute/checkpoint_policy.py: they
    bypass the saved-tensor hooks). To count what the executor's FSDP2 mixed precision keeps, pass the module and
    `x` in the compute dtype (the executor runs each block on low-precision compute copies of its parameters).
    Under tensor parallelism (DTensor parameters and activations) it counts this rank's local shards."""
    from autoconf.execute.checkpoint_policy import cached_tensors, recording

    params = {_local(p).untyped_storage().data_ptr() for p in module.parameters()}
    shapes = {tuple(_local(p).shape) for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        mine = _local(t)
        storage = mine.untyped_storage()
        is_weight_cast = mine.dim() == 2 and (tuple(mine.shape) in shapes or tuple(mine.shape)[::-1] in shapes)
        if storage.data_ptr() not in params and not is_weight_cast:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with recording() as caches, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    for context in caches:
        for t in cached_tensors(context):
            pack(t)
    return sum(storages.values())


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (its storage is what the rank holds), the tensor a functional collective's
    pending result wraps; any other tensor itself."""
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

    if isinstance(t, DTensor):
        with torch.no_grad():
            t = t.to_local()
    return t.elem if isinstance(t, AsyncCollectiveTensor) else t
