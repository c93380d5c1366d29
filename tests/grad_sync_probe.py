"""Probe for tests/test_execute.py::test_zero0_reduces_buckets_during_the_last_backward (scripts/executor_layouts.py
option "probe"): while its plan trains, records on this rank each backward call (torch.autograd.backward: the
training loop's and the pipeline stages' full backward) and each `dist.all_reduce` issued over this rank's
data-parallel group: the step, the index of the backward call within the step and whether that call was still
running. `finish()` restores torch and returns the events.
"""

import torch
import torch.distributed as dist

from autoconf.execute import train as train_module
from autoconf.spec.grid import RankGrid


class Probe:
    def __init__(self, plan):
        self.state = {"step": -1, "backward": 0, "inside": False}
        self.events: list[dict] = []
        self.dp_ranks = RankGrid.logical(plan.config.dims).group_of("dp", dist.get_rank())
        self.saved = (torch.autograd.backward, dist.all_reduce, train_module.Trainer.train_step)
        backward, all_reduce, train_step = self.saved
        state, events = self.state, self.events

        def recorded_backward(*args, **kwargs):
            state["inside"] = True
            try:
                return backward(*args, **kwargs)
            finally:
                state["inside"] = False
                events.append({"kind": "backward", "step": state["step"], "index": state["backward"]})
                state["backward"] += 1

        def recorded_all_reduce(tensor, *args, group=None, **kwargs):
            if group is not None and dist.get_process_group_ranks(group) == self.dp_ranks:
                events.append({"kind": "all_reduce", "step": state["step"], "index": state["backward"],
                               "inside_backward": state["inside"], "numel": tensor.numel()})
            return all_reduce(tensor, *args, group=group, **kwargs)

        def counted_train_step(trainer, step):
            state["step"], state["backward"] = step, 0
            return train_step(trainer, step)

        torch.autograd.backward = recorded_backward
        dist.all_reduce = recorded_all_reduce
        train_module.Trainer.train_step = counted_train_step

    def finish(self) -> list[dict]:
        torch.autograd.backward, dist.all_reduce, train_module.Trainer.train_step = self.saved
        return self.events
