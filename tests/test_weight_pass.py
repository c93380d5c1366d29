"""The weight pass of a split-backward schedule: one recompute per whole-recomputing block, torch's own groups
elsewhere, the gradients unchanged."""

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from autoconf.execute.model import build_model
from autoconf.execute.parallelize import apply_recompute, materialize
from autoconf.execute.pipeline import merged_param_groups, weight_pass_groups
from autoconf.spec.presets import PRESETS


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


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_only_whole_recomputing_blocks_merge_their_groups(recompute):
    """The executor's chunk of two blocks: under full recompute each block's groups become one (one recompute of the
    block in the weight pass: its attention runs once more, not once per group); without recompute, or with the
    attention core and SwiGLU's gate checkpointed only, torch's groups stay (a merged group walks the whole backward
    between its intermediates). The gradients equal a whole backward's either way."""
    from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

    torch.manual_seed(0)
    chunk = build_model(PRESETS["tiny-llama"], 0, 2, embed=False, head=False, device="cpu")
    materialize(chunk, torch.device("cpu"), 0)
    if recompute != "none":
        apply_recompute(chunk, recompute)
    whole = copy.deepcopy(chunk)
    x = torch.randn(2, 16, PRESETS["tiny-llama"].hidden_size, requires_grad=True)
    g = torch.randn(2, 16, PRESETS["tiny-llama"].hidden_size)
    torch.autograd.grad(whole(x), list(whole.parameters()), g)  # (warm, then the reference below)
    reference = torch.autograd.grad(whole(x), list(whole.parameters()), g)
    attention_calls = []
    for block in chunk.layers.values():
        block.attention.register_forward_hook(lambda *_: attention_calls.append(1))
    y = chunk(x)
    _, groups = stage_backward_input([y], [g], [x], chunk.parameters())
    before = len(attention_calls)
    chosen = weight_pass_groups(chunk, groups)
    stage_backward_weight(chunk.parameters(), chosen)
    if recompute == "full":
        assert len(chosen) < len(groups) and len(attention_calls) - before == 2  # once per block
    else:
        assert chosen == groups and len(attention_calls) == before
    for param, ref in zip(chunk.parameters(), reference):
        assert torch.allclose(param.grad, ref, atol=1e-5)
