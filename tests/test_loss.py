"""The executor's cross entropy (execute/loss.py) against torch's, and what it allocates."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autoconf.cost.memory import logits_temporary_bytes
from autoconf.execute.loss import IGNORE_INDEX, cross_entropy
from autoconf.spec.frameworks import EXECUTOR_LOSS_CHUNKS
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,ignored", [((2, 37, 101), 0), ((3, 16, 50), 5), ((1, 5, 7), 0), ((1, 3, 11), 2)])
def test_equals_torch_cross_entropy(dtype, shape, ignored):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=dtype)
    target = torch.randint(0, shape[-1], shape[:-1])
    target[0, :ignored] = IGNORE_INDEX
    ref = x.clone().requires_grad_(True)
    expected = F.cross_entropy(ref.flatten(0, 1).float(), target.flatten())
    (2 * expected).backward()
    leaf = x.clone().requires_grad_(True)
    logits = leaf * 1  # a non-leaf, as the head's output is
    loss = cross_entropy(logits, target)
    (2 * loss).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(leaf.grad, ref.grad, rtol=tol, atol=tol)


def test_every_target_ignored_is_zero():
    logits = torch.randn(1, 4, 9, requires_grad=True)
    loss = cross_entropy(logits * 1, torch.full((1, 4), IGNORE_INDEX))
    loss.backward()
    assert float(loss) == 0.0 and not logits.grad.any()


class _Allocations(TorchDispatchMode):
    """The element counts of the tensors each op returns that are not views of its inputs."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(t.numel())
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_temporaries_are_one_row_chunk(dtype):
    """No tensor the loss's forward or backward allocates is larger than one chunk of rows: the whole-batch fp32
    copy, log-softmax and gradients of torch's loss never exist (the logits receive their own gradient)."""
    rows, vocab, hidden = 64, 300, 16
    h = torch.randn(rows, hidden, dtype=dtype, requires_grad=True)
    w = torch.randn(vocab, hidden, dtype=dtype, requires_grad=True)
    target = torch.randint(0, vocab, (rows,))
    sizes = {}
    for name, loss in (("executor", cross_entropy), ("torch", lambda x, t: F.cross_entropy(x.float(), t))):
        logits = h @ w.t()  # the head's output, made before the count starts
        with _Allocations() as seen:
            loss(logits, target).backward()
        sizes[name] = max(seen.sizes)
    assert sizes["executor"] <= max(math.ceil(rows / EXECUTOR_LOSS_CHUNKS) * vocab, vocab * hidden)
    assert sizes["torch"] == rows * vocab


def test_estimate_counts_the_logits_and_one_chunk():
    spec = PRESETS["llama3-8b"]
    for dtype, extra in (("bf16", 8), ("fp32", 4)):
        c = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=2, global_batch_size=2, seq_len=8192, dtype=dtype)
        rows, e = 2 * 8192, 2 if dtype == "bf16" else 4
        chunk = rows // EXECUTOR_LOSS_CHUNKS
        assert logits_temporary_bytes(spec, c, "torch") == (rows * e + chunk * extra) * spec.vocab_size + 4 * rows
