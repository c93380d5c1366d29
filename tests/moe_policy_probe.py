"""Probe for tests/test_moe_policy.py (scripts/executor_layouts.py option "probe"): what each block of this rank keeps
for its backward, in the executor's own run, with or without the per-op selective policy.

The probe wraps `Block.forward` on the step's first micro-batch and counts, by distinct storage (DTensors by their
local shard), what autograd's saved-tensor hooks see (without recompute: everything the block saves; under the
policy: the block input, which the checkpoint saves outside its own hooks) and the op outputs the policy caches
(which bypass those hooks), as profile/activations.py `saved_bytes` does for one block. Parameters are left out,
taken when each tensor is saved: FSDP's gathered copies, TP and EP shards, and the routed experts' own FSDP unit,
whose compute copies are gathered inside the block's forward. The outputs the policy caches of the all-to-alls (the
token exchange) are counted apart, as they depend on the routing. `finish()` restores the executor and returns
[{"layer", "bytes", "exchange"}, ...] in forward order.
"""

from types import SimpleNamespace

import torch

from autoconf.execute import checkpoint_policy
from autoconf.execute.model import Block


def _local(t):
    """The plain tensor holding t's data: a DTensor's local shard, an async collective's output."""
    t = t.to_local() if hasattr(t, "to_local") else t
    return getattr(t, "elem", t)  # AsyncCollectiveTensor (a sequence-parallel block input)


class Probe:
    def __init__(self, plan):
        self.found: list = []
        self.saved = Block.forward
        inner, found = self.saved, self.found
        layers = plan.partition[0][1] - plan.partition[0][0]  # one stage (pp 1): one forward per block and batch
        all_to_all = torch.ops._c10d_functional.all_to_all_single.default

        def counted(block, x):
            if len(found) >= layers or not torch.is_grad_enabled():
                return inner(block, x)
            storages: dict = {}
            exchange: set = set()

            def pack(t, exchanged=False):
                storage = _local(t).untyped_storage()
                if storage.data_ptr() not in {_local(p).untyped_storage().data_ptr() for p in block.parameters()}:
                    storages[storage.data_ptr()] = storage.nbytes()
                    if exchanged:
                        exchange.add(storage.data_ptr())
                return t

            with checkpoint_policy.recording() as caches, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = inner(block, x)
            for context in caches:
                for key, entries in context.storage.items():
                    for entry in checkpoint_policy.cached_entries(SimpleNamespace(storage=entries)):
                        pack(entry.val, key is all_to_all)
            found.append({"layer": len(found), "bytes": sum(storages.values()),
                          "exchange": sum(storages[p] for p in exchange)})
            return out

        Block.forward = counted

    def finish(self) -> list:
        Block.forward = self.saved
        return self.found
