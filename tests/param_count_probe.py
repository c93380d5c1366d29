"""Probe for the parameter-count tests (scripts/executor_layouts.py option "probe"): before its plan's first step,
counts on this rank the parameters of every model chunk the trainer built, each as this rank holds it (a DTensor's
local shard, a plain tensor whole; a parameter shared inside a chunk once). `finish()` restores torch and returns
{"params": the count, "pp": this rank's pipeline rank}.
"""

from autoconf.execute import train as train_module
from autoconf.spec.grid import RankGrid

import torch.distributed as dist


def local_numel(p) -> int:
    """Elements of `p` this rank stores."""
    return p.to_local().numel() if hasattr(p, "to_local") else p.numel()


class Probe:
    def __init__(self, plan):
        self.found: dict = {"pp": RankGrid.logical(plan.config.dims).coords(dist.get_rank())["pp"]}
        self.saved = train_module.Trainer.train_step
        train_step, found = self.saved, self.found

        def counted_train_step(trainer, step):
            if "params" not in found:
                found["params"] = sum(local_numel(p) for model in trainer.models for p in model.parameters())
            return train_step(trainer, step)

        train_module.Trainer.train_step = counted_train_step

    def finish(self) -> dict:
        train_module.Trainer.train_step = self.saved
        return self.found
