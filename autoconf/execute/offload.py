"""offload_activations in the executor: each transformer block's saved activations go to host memory.

Autograd's saved-tensor hooks around each block's forward, as `torch.autograd.graph.save_on_cpu` sets them up
(copy into host memory, pinned on CUDA, when autograd saves a tensor; copy back, `non_blocking` when pinned, when the
backward unpacks it), with two differences that cost/offload.py counts on: a tensor sharing storage with one of the
block's parameters stays on the device (FSDP keeps or re-gathers the parameters anyway; save_on_cpu would copy every
weight out and back per micro-batch), and a storage saved twice in one forward is copied once. The copies run on
the current stream, not overlapped with compute. On CPU the device is host memory: nothing moves.

Under the per-op selective policy (execute/checkpoint_policy.py) the op outputs the policy saves are not saved
tensors: the checkpoint's dispatch mode caches them, beside autograd. The hooks record the caches of the
checkpoints started in the block's forward and, when the forward ends, copy every cached tensor to the host (the
block input, saved by the checkpoint itself, goes through the saved-tensor hooks as before); the backward's first
unpack of that forward's tensors (the checkpoint's inputs, read before it recomputes the block) copies them back
to where they were. So the block moves what `op_policy_layer_activation_bytes` counts, one forward's worth per
micro-batch in flight.

The parameter/optimizer offload (FSDP2 `CPUOffloadPolicy`) is applied with FSDP in parallelize.py.
"""

from __future__ import annotations

import torch
from torch import nn

from autoconf.execute.checkpoint_policy import cached_entries, recording


class CachedOutputs:
    """The per-op policy's cached outputs of one forward of a block, sent to the host at its end (`send`) and
    brought back once, before the recompute reads them (`restore`)."""

    def __init__(self, pin_memory: bool):
        self.pin_memory = pin_memory
        self.away: list = []  # (cache entry, the device its tensor came from)

    def send(self, contexts) -> int:
        """Moves every tensor the forward contexts cached to the host; returns their bytes."""
        moved = 0
        for context in contexts:
            for entry in cached_entries(context):
                t = entry.val
                if t.device.type != "cpu":
                    host = torch.empty(t.size(), dtype=t.dtype, pin_memory=self.pin_memory)
                    host.copy_(t, non_blocking=self.pin_memory)
                    entry.val, entry.version = host, host._version
                self.away.append((entry, t.device))
                moved += t.numel() * t.element_size()
        return moved

    def restore(self) -> None:
        for entry, device in self.away:
            if entry.val.device != device:
                entry.val = entry.val.to(device, non_blocking=self.pin_memory)
                entry.version = entry.val._version
        self.away = []


class BlockOffload:
    """The hooks of one block: `enter` before its forward, `exit` after it; `moved_bytes` counts what was sent to
    the host since the last `reset`."""

    def __init__(self, block: nn.Module, pin_memory: bool):
        self.block, self.pin_memory = block, pin_memory
        self.contexts: list = []
        self.moved_bytes = 0
        self._params: set[int] | None = None
        self._copies: dict = {}
        self._forwards: list = []  # per running forward: (recording context, its caches, CachedOutputs)

    def reset(self) -> None:
        self.moved_bytes = 0

    def _parameter_storages(self) -> set[int]:
        out = set()
        for p in self.block.parameters():
            local = p._local_tensor if hasattr(p, "_local_tensor") else p  # DTensor (TP / FSDP) or plain
            out.add(local.untyped_storage().data_ptr())
        return out

    def pack(self, t: torch.Tensor):
        if self._params is None:  # the parameters the block computes with now (FSDP's unsharded copies)
            self._params = self._parameter_storages()
        storage = t.untyped_storage().data_ptr()
        if storage in self._params:
            return t
        # A tensor that densely covers a storage range (contiguous, or a permuted layout such as attention's
        # output) is copied as that range; views of the same range (a reshape, a transpose) share the copy.
        span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0
        dense = span == t.numel() and all(st >= 0 for st in t.stride())
        key = (storage, t.storage_offset(), span, t.dtype) if dense else \
            (storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key not in self._copies:
            source = t.as_strided((span,), (1,), t.storage_offset()) if dense else t.reshape(-1)
            if t.device.type == "cpu":
                host = source
            else:
                host = torch.empty(source.size(), dtype=t.dtype, pin_memory=self.pin_memory)
                host.copy_(source, non_blocking=self.pin_memory)
            self._copies[key] = host
            self.moved_bytes += t.numel() * t.element_size()
        layout = (tuple(t.shape), t.stride()) if dense else (tuple(t.shape), None)
        return t.device, self._copies[key], layout, self._forwards[-1][2]

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host, (shape, stride), cached = packed
        cached.restore()
        if device.type != "cpu":
            host = host.to(device, non_blocking=self.pin_memory)
        return host.view(shape) if stride is None else host.as_strided(shape, stride, host.storage_offset())

    def enter(self, module, args) -> None:
        self._params, self._copies = None, {}
        record = recording()
        self._forwards.append((record, record.__enter__(), CachedOutputs(self.pin_memory)))
        ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        ctx.__enter__()
        self.contexts.append(ctx)

    def exit(self, module, args, output) -> None:
        self.contexts.pop().__exit__(None, None, None)
        record, caches, cached = self._forwards.pop()
        record.__exit__(None, None, None)
        self.moved_bytes += cached.send(caches)
        self._params, self._copies = None, {}


def apply_activation_offload(model: nn.Module, device: torch.device) -> list[BlockOffload]:
    """Hooks every block of `model` (`Transformer.blocks`: before compile and FSDP wrap it); pinned host memory on
    CUDA only."""
    hooks = []
    for _, block in model.blocks():
        hook = BlockOffload(block, pin_memory=device.type == "cuda")
        block.register_forward_pre_hook(hook.enter)
        block.register_forward_hook(hook.exit, always_call=True)
        hooks.append(hook)
    return hooks
