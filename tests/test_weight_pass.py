"""The weight pass of a split-backward schedule: one recompute of a checkpointed stage, the gradients unchanged."""

import copy
import dataclasses

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from autoconf.execute.pipeline import merged_param_groups


class _Checkpointed(torch.nn.Module):
    """Three linears under one non-reentrant checkpoint, the first's output used twice (a residual), counting its
    forwards."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(8, 8) for _ in range(3))
        self.calls = 0

    def _body(self, x):
        self.calls += 1
        h = torch.tanh(self.a(x))
        return self.c(torch.tanh(self.b(h)) + h)

    def forward(self, x):
        return checkpoint(self._body, x, use_reentrant=False)


def test_merged_groups_recompute_once_and_give_the_whole_backwards_gradients():
    from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

    torch.manual_seed(0)
    split = _Checkpointed()
    whole = copy.deepcopy(split)
    x = torch.randn(4, 8, requires_grad=True)
    whole(x).pow(2).sum().backward()
    y = split(x)
    _, groups = stage_backward_input([y], [2 * y.detach()], [x], split.parameters())
    assert len(groups) > 1 and split.calls == 2  # the forward, the input pass's recompute
    stage_backward_weight(split.parameters(), [merged_param_groups(groups)])
    assert split.calls == 3  # one more, not one per group
    for mine, ref in zip(split.parameters(), whole.parameters()):
        assert torch.allclose(mine.grad, ref.grad, atol=1e-6)


def test_split_backward_charges_the_weight_pass_its_recompute_on_torchs_runtime():
    """zb-h1 with full recompute: on torch's runtime each weight pass (W) costs the recompute again; Megatron's
    runtime is charged once."""
    from autoconf.cost.estimate import estimate
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.frameworks import PRESETS as FRAMEWORKS
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import PRESETS

    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=4, dp=2, micro_batch_size=1, global_batch_size=16, seq_len=4096, schedule="zb-h1",
                       recompute="full")
    torch_runtime = FRAMEWORKS["autoconf"]
    plan = estimate(model, cluster, c, execution=torch_runtime)
    none = estimate(model, cluster, dataclasses.replace(c, recompute="none"), execution=torch_runtime)
    busy_gain = plan.timeline.compute_time_per_rank[1] - none.timeline.compute_time_per_rank[1]
    recompute = plan.prediction["time_breakdown"]["recompute"]
    assert busy_gain == pytest.approx(2 * recompute, rel=1e-6)
    megatron = torch_runtime.replace(pipeline_runtime="megatron")
    plan_m = estimate(model, cluster, c, execution=megatron)
    none_m = estimate(model, cluster, dataclasses.replace(c, recompute="none"), execution=megatron)
    assert (plan_m.timeline.compute_time_per_rank[1] - none_m.timeline.compute_time_per_rank[1]
            == pytest.approx(plan_m.prediction["time_breakdown"]["recompute"], rel=1e-6))
