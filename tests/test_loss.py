"""The executor's cross entropy (execute/loss.py) against torch's, and what it allocates."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autoconf.cost.memory import logits_temporary_bytes
from autoconf.execute.dtypes import TORCH_DTYPES
from autoconf.execute.loss import IGNORE_INDEX, cross_entropy
from autoconf.spec.frameworks import EXECUTOR_LOSS_CHUNKS
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from tests.rank_helpers import run_ranks


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


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("tp", [1, 4])
def test_estimate_is_the_peak_torch_tracks(dtype, tp):
    """The estimate's loss term (logits of the rank's vocabulary slice and what the loss holds beside them) against
    the peak of the loss's forward and backward that torch's MemTracker records: within 2% and not below it."""
    from torch.distributed._tools.mem_tracker import MemTracker

    spec = dataclasses.replace(PRESETS["gpt3-1.3b"], vocab_size=4000)
    c = ParallelConfig(tp=tp, pp=1, dp=1, micro_batch_size=2, global_batch_size=2, seq_len=128, dtype=dtype)
    rows, width = 2 * 128, 4000 // tp
    logits = torch.randn(rows, width, dtype=TORCH_DTYPES[dtype]).requires_grad_(True) * 1
    target = torch.randint(0, width, (rows,))
    tracker = MemTracker()
    with tracker:
        torch.autograd.grad(cross_entropy(logits, target), logits)
    # The tracker counts the inputs it sees: the logits (the estimate's too) and the targets (the data's).
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - target.nbytes
    estimate = logits_temporary_bytes(spec, c, "torch")
    assert peak <= estimate <= 1.02 * peak


def test_torchs_loss_compiled_keeps_the_logits_and_per_row_statistics_only():
    """torch's F.cross_entropy on an fp32 copy (torchtitan's loss) keeps fp32 copies of the logits for its backward;
    compiled with inductor (torchtitan compiles its loss with its model) the graph keeps the bf16 logits and per-row
    statistics only, and its backward writes the logits' gradient at their dtype in one kernel: the estimate's loss
    term is 12 bytes per logit eager and the logits plus their gradient (2 x 2 bytes) compiled on a GPU, the eager
    count wherever the plan or the framework does not compile the loss."""
    from autoconf.spec.frameworks import execution

    def loss_fn(pred, labels):
        return F.cross_entropy(pred.flatten(0, 1).float(), labels.flatten(0, 1))

    pred = torch.randn(2, 16, 300, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 300, (2, 16))
    kept = {}
    for name, fn in (("eager", loss_fn), ("compiled", torch.compile(loss_fn, backend="inductor"))):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
            loss = fn(pred, labels)
        (grad,) = torch.autograd.grad(loss, pred)
        assert grad.dtype == torch.bfloat16
        kept[name] = sum(x.nbytes for x in saved if x.data_ptr() != pred.data_ptr()) / pred.numel()
    assert kept["eager"] >= 8 and kept["compiled"] < 0.1  # per logit beyond the logits: fp32 copies, or per-row

    spec = dataclasses.replace(PRESETS["gpt3-1.3b"], vocab_size=4000)
    titan = execution("torchtitan")  # compile_loss: compiles its loss with the model
    c = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=2, global_batch_size=2, seq_len=128, dtype="bf16",
                       compile=True)
    logits = 2 * 128 * 4000
    assert logits_temporary_bytes(spec, c, "torch", titan, "gpu") == 2 * 2 * logits
    for eager_case in (dict(device_kind="cpu"), dict(execution=titan.replace(compile_loss=False)),
                       dict(config=dataclasses.replace(c, compile=False))):
        args = {"config": c, "execution": titan, "device_kind": "gpu", **eager_case}
        assert logits_temporary_bytes(spec, args["config"], "torch", args["execution"], args["device_kind"]) == (
            12 * logits)


def _vocab_parallel_rank(rank, world, queue):
    """One TP rank: the loss and gradient of its vocabulary slice of the same [3, 9, 37] logits, with `rank_loss`."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from autoconf.execute.loss import rank_loss

    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    full = torch.randn(3, 9, 37)
    target = torch.randint(0, 37, (3, 9))
    target[0, :4] = IGNORE_INDEX
    mine = full.chunk(world, dim=-1)[rank].clone().requires_grad_(True)  # DTensor Shard(-1)'s split
    loss = rank_loss(init_device_mesh("cpu", (world,)), 37)(mine * 1, target)
    (3 * loss).backward()
    queue.put((rank, float(loss), mine.grad))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("tp", [2, 3])
def test_vocab_parallel_equals_the_whole_vocabulary(tp):
    """Each TP rank's loss equals torch's over the whole vocabulary, and its gradient is that gradient's columns of
    its slice (37 columns: uneven slices)."""
    seen = sorted(run_ranks(_vocab_parallel_rank, tp))
    torch.manual_seed(0)
    full = torch.randn(3, 9, 37).requires_grad_(True)
    target = torch.randint(0, 37, (3, 9))
    target[0, :4] = IGNORE_INDEX
    expected = F.cross_entropy(full.flatten(0, 1), target.flatten())
    (3 * expected).backward()
    for (rank, loss, grad), columns in zip(seen, full.grad.chunk(tp, dim=-1)):
        assert loss == pytest.approx(float(expected), rel=1e-6)
        torch.testing.assert_close(grad, columns, rtol=1e-6, atol=1e-6)
