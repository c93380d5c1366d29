"""A block traces as one torch.compile graph under every recompute mode.

On CUDA the executor compiles each block (parallelize.apply_compile). A graph break inside the block leaves all or
part of it eager: the per-op policy once opened `set_checkpoint_early_stop`, which dynamo does not trace, and its
blocks ran uncompiled (docs/gpu.md, the H200 run). Dynamo's tracing needs no GPU or C++ toolchain: the `aot_eager`
backend runs the traced graphs, forward and backward, with eager kernels.
"""

import pytest
import torch

from autoconf.execute.model import build_model
from autoconf.execute.parallelize import apply_recompute
from autoconf.spec.presets import load_model

MODES = [("none", "attention_core"), ("selective", "attention_core"), ("selective", "alternate_matmuls"),
         ("full", "attention_core")]


def _block(mode: str, policy: str, seed: int = 0):
    torch.manual_seed(seed)
    spec = load_model("tiny-llama")
    model = build_model(spec, device="cpu")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    if mode != "none":
        apply_recompute(model, mode, None, policy)
    return spec, model.layers["0"]


@pytest.mark.parametrize("mode,policy", MODES)
def test_block_traces_as_one_graph(mode, policy):
    spec, block = _block(mode, policy)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(torch.randn(2, 32, spec.hidden_size, requires_grad=True))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("mode,policy", MODES)
def test_compiled_block_matches_eager(mode, policy):
    spec, block = _block(mode, policy)
    x = torch.randn(2, 32, spec.hidden_size)
    grads = []
    for run in (block, torch.compile(block, backend="aot_eager", fullgraph=True)):
        torch._dynamo.reset()
        xi = x.clone().requires_grad_(True)
        out = run(xi)
        (out.float() ** 2).sum().backward()
        grads.append((out.detach(), xi.grad, [p.grad.clone() for p in block.parameters()]))
        block.zero_grad(set_to_none=True)
    (out_e, gx_e, gp_e), (out_c, gx_c, gp_c) = grads
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_c, gx_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(gp_c, gp_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
