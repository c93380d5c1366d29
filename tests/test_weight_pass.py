"""The weight pass of a split-backward schedule: one recompute of a checkpointed stage, the gradients unchanged."""

import copy

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
