"""Bytes a module keeps for its backward, counted with autograd's saved-tensor hooks: the check that the memory
estimator's activation accounting matches the executor (tests/test_memory_saved.py on CPU, and
scripts/saved_activations.py on whatever device is at hand)."""

from __future__ import annotations

import torch


def saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves during `module(x)`, leaving out the parameters and any tensor
    of a parameter's shape or its transpose (2-D: choose the tokens of `x` unlike every weight dimension), together
    with the op outputs the per-op selective checkpoint caches for the backward (execute/checkpoint_policy.py: they
    bypass the saved-tensor hooks). To count what the executor's FSDP2 mixed precision keeps, pass the module and
    `x` in the compute dtype (the executor runs each block on low-precision compute copies of its parameters)."""
    from autoconf.execute.checkpoint_policy import cached_tensors, recording

    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    shapes = {tuple(p.shape) for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        is_weight_cast = t.dim() == 2 and (tuple(t.shape) in shapes or tuple(t.shape)[::-1] in shapes)
        if storage.data_ptr() not in params and not is_weight_cast:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with recording() as caches, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    for context in caches:
        for t in cached_tensors(context):
            pack(t)
    return sum(storages.values())
