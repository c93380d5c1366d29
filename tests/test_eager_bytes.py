"""The eager element-wise bytes the specification model charges for autoconf's executor (`Execution.eager_ops`
"rotate_half", "swiglu", "executor_ce": cost/compute.py `eager_elementwise_bytes`, `loss_bytes_per_logit`) equal what
the executor's own code moves, counted kernel by kernel under a dispatch mode on CPU: every aten op one kernel that
reads its inputs and writes its outputs in full. Views move nothing; an in-place op reads and writes its target
(copy_ and fill_ only write it); indexing ops (gather, index, index_put_) touch the rows they address only, which are
negligible here."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autoconf.cost.compute import eager_elementwise_bytes, loss_bytes_per_logit
from autoconf.execute.loss import cross_entropy
from autoconf.execute.model import gated
from autoconf.execute.rope import rotate as _rope
from autoconf.spec.frameworks import EXECUTOR_EAGER_OPS, PRESETS, compiled
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS as MODELS

WRITE_ONLY = {"copy_", "fill_", "zero_"}
ADDRESSED = {"gather", "index", "index_put_", "index_put", "scatter", "scatter_", "index_select"}


class KernelBytes(TorchDispatchMode):
    """Bytes the aten kernels dispatched inside it read and write (the module docstring's rules)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        name = func._schema.name.split("::")[1]
        in_place = name.endswith("_") or func._schema.is_mutable
        storages = {t.untyped_storage().data_ptr() for t in inputs}
        if not in_place and outputs and all(t.untyped_storage().data_ptr() in storages for t in outputs):
            return out  # a view

        def size(tensors):
            return sum(t.numel() * t.element_size() for t in tensors)

        if name in ADDRESSED:
            self.total += size(inputs[2:]) if in_place else size(outputs)
        elif name in WRITE_ONLY:
            self.total += size(inputs[1:]) + size(outputs)
        else:
            self.total += size(inputs) + size(outputs)
        return out


def _counted(forward, inputs) -> tuple[int, int]:
    """Bytes of `forward()` and of its backward to `inputs` (a gradient of ones, made outside the count)."""
    with KernelBytes() as f:
        result = forward()
    ones = torch.ones_like(result)
    with KernelBytes() as b:
        torch.autograd.grad(result, inputs, ones)
    return f.total, b.total


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_executor_loss_moves_what_executor_ce_charges(dtype):
    rows, vocab = 64, 16384
    logits = torch.randn(rows, vocab, dtype=dtype).requires_grad_()
    target = torch.randint(0, vocab, (rows,))
    source = logits * 1  # the loss writes the gradient into its input: not a leaf
    forward, backward = _counted(lambda: cross_entropy(source, target), [source])
    e = logits.element_size()
    per_f, per_b = loss_bytes_per_logit(("executor_ce",), e)
    assert forward / (rows * vocab) == pytest.approx(per_f, rel=0.01)
    assert backward / (rows * vocab) == pytest.approx(per_b, rel=0.01)


def test_the_executor_rotary_and_swiglu_move_what_their_ops_charge():
    """Per element of Q and K and of the gate: the traced bytes beside the fused count (rotary 2e forward, 4e
    backward; SwiGLU 3e and 6e) plus what `eager_elementwise_bytes` adds for them."""
    e = 2
    x = torch.randn(2, 64, 64, 128, dtype=torch.bfloat16).requires_grad_()  # 128 heads x batch: cos/sin negligible
    source = x * 1
    forward, backward = _counted(lambda: _rope(source, 10000.0, None), [source])
    n = x.numel()
    assert forward / n == pytest.approx(2 * e + 8 * e, rel=0.02)
    assert backward / n == pytest.approx(4 * e + 10 * e, rel=0.02)

    gate = torch.randn(4096, 256, dtype=torch.bfloat16).requires_grad_()
    up = torch.randn(4096, 256, dtype=torch.bfloat16).requires_grad_()
    forward, backward = _counted(lambda: gated(gate, up), [gate, up])
    n = gate.numel()
    assert forward / n == pytest.approx(3 * e + 2 * e)
    assert backward / n == pytest.approx(6 * e + 3 * e)

    # The estimate's per-block count is those per-element extras over the block's Q, K and gate elements.
    model = MODELS["llama3-8b"]
    c = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=1, seq_len=1024, dtype="bf16",
                       attention="flash")
    f, b = eager_elementwise_bytes(model, c, ("rotate_half", "swiglu"))
    qk, ffn = 1024 * (model.q_dim + model.kv_dim), 1024 * model.ffn_hidden_size
    assert (f, b) == (pytest.approx(8 * e * qk + 2 * e * ffn), pytest.approx(10 * e * qk + 3 * e * ffn))


def test_the_executor_compiles_its_dense_blocks_but_not_its_loss_or_moe_blocks():
    ex = PRESETS["autoconf"]
    assert ex.eager_ops == EXECUTOR_EAGER_OPS
    assert compiled(ex).eager_ops == ("executor_ce",)
    assert not ex.compiles_moe_blocks and PRESETS["torchtitan"].compiles_moe_blocks
