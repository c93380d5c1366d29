"""Probe for tests/test_moe_policy.py (scripts/executor_layouts.py option "probe"): what each block of this rank keeps
for its backward under the per-op selective policy, in the executor's own run.

Every block forward under the policy goes through `checkpoint_policy.checkpoint_ops`; the probe wraps it on the
step's first micro-batch and counts, by distinct storage (DTensors by their local shard), what the checkpoint keeps:
the block input (saved by the checkpoint outside its own hooks, so autograd's saved-tensor hooks see it) and the op
outputs the policy caches (which bypass those hooks), as profile/activations.py `saved_bytes` does for one block;
parameters (FSDP's gathered copies, TP and EP shards) left out. The all-to-all outputs (the token exchange) are
counted apart, as they depend on the routing. `finish()` restores the executor and returns [{"layer", "bytes",
"exchange"}, ...] in forward order.
"""

from types import SimpleNamespace

import torch

from autoconf.execute import checkpoint_policy


def _local(t):
    """The plain tensor holding t's data: a DTensor's local shard, an async collective's output."""
    t = t.to_local() if hasattr(t, "to_local") else t
    return getattr(t, "elem", t)  # AsyncCollectiveTensor (a sequence-parallel block input)


class Probe:
    def __init__(self, plan):
        self.found: list = []
        self.saved = checkpoint_policy.checkpoint_ops
        inner, found = self.saved, self.found
        layers = plan.partition[0][1] - plan.partition[0][0]  # one stage (pp 1): one forward per block and batch
        all_to_all = torch.ops._c10d_functional.all_to_all_single.default

        def counted(function, *args):
            if len(found) >= layers:
                return inner(function, *args)
            block = function.__self__
            params = {_local(p).untyped_storage().data_ptr() for p in block.parameters()}
            storages: dict = {}
            exchange: set = set()

            def pack(t, exchanged=False):
                storage = _local(t).untyped_storage()
                if storage.data_ptr() not in params:
                    storages[storage.data_ptr()] = storage.nbytes()
                    if exchanged:
                        exchange.add(storage.data_ptr())
                return t

            with checkpoint_policy.recording() as caches, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = inner(function, *args)
            for context in caches:
                for key, entries in context.storage.items():
                    for entry in checkpoint_policy.cached_entries(SimpleNamespace(storage=entries)):
                        pack(entry.val, key is all_to_all)
            found.append({"layer": len(found), "bytes": sum(storages.values()),
                          "exchange": sum(storages[p] for p in exchange)})
            return out

        checkpoint_policy.checkpoint_ops = counted

    def finish(self) -> list:
        checkpoint_policy.checkpoint_ops = self.saved
        return self.found
