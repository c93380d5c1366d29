"""torchtitan's per-op selective checkpointing (selective_recompute "alternate_matmuls") for one transformer block.

The block runs inside a non-reentrant `torch.utils.checkpoint` whose dispatch mode
(`create_selective_checkpoint_contexts`) decides op by op what the backward keeps: the outputs of the weight matmuls
in forward order except every second one (aten.mm, and aten.addmm for the linears with a bias), of the fused
attention kernel (SDPA, whichever backend runs it) and of the TP reduce-scatters (sequence parallelism) are saved;
everything else (norms, rotary, activations, the other matmuls, the SP all-gathers, the all-reduces without SP) is
recomputed in the backward. In an MoE layer the router and the routed experts are recomputed and left out of the
count (`uncounted_matmuls`), and the all-to-alls of the token exchange are saved (expert TP's gather and
reduce-scatter of the routed rows included: they run as all-to-alls); the shared experts' linears continue the
count. At tp > 1 each TP rank routes only its share of the tokens, taken as a view and given back by a c10d
all-gather, recomputed (the recompute gathers the routed outputs again), as are the all-reduce of the
load-balancing loss's statistics over the TP ranks and the sequence-parallel gather of the layer's input. Under
context parallelism the attention is autoconf's custom op (execute/cp_attention.py), saved like the fused kernels.
As torchtitan does (torchtitan/distributed/activation_checkpoint.py `SelectiveAC`), the recompute runs the whole
block (no early stop), so the forward and the recompute count the same matmuls.

Under dtype fp8 (torchao Float8Linear, execute/fp8.py) a block linear's GEMM is `aten._scaled_mm` on the GPU and
`aten.mm` of the fp8-rounded operands under CPU emulation, its output in the compute dtype either way: both count
as weight matmuls, so the block keeps what it keeps in bf16. (torchtitan's list names aten.mm only, so it would
recompute every FP8 GEMM; it also saves `aten.max`, the amax scalars of the casts: the executor recomputes them
with the casts, which keeps one saved-bytes rule for every dtype.)
cost/memory.py `op_policy_layer_activation_bytes` is what it keeps, cost/estimate.py `recompute_time` what it redoes.
"""

from __future__ import annotations

import contextlib
import inspect
import threading

import torch
from torch.utils.checkpoint import (CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts,
                                    set_checkpoint_early_stop)

from autoconf.execute.cp_attention import CP_ATTENTION_OP

aten = torch.ops.aten
WEIGHT_MATMULS = frozenset({aten.mm.default, aten.addmm.default, aten.linear.default, aten._scaled_mm.default})
# The fused attention kernels SDPA dispatches to (CUDA's flash, memory-efficient and cuDNN kernels, CPU's flash),
# and under context parallelism autoconf's own (execute/cp_attention.py: the K/V exchange and the attention as one op).
ATTENTION_KERNELS = frozenset({aten._scaled_dot_product_flash_attention.default,
                               aten._scaled_dot_product_efficient_attention.default,
                               aten._scaled_dot_product_cudnn_attention.default,
                               aten._scaled_dot_product_flash_attention_for_cpu.default,
                               CP_ATTENTION_OP})
# The TP reduce-scatters (sequence parallelism) and, as torchtitan saves them, the all-to-alls: an MoE layer's token
# dispatch and combine (and its per-expert counts), so the recompute does not exchange the tokens again.
SAVED_COLLECTIVES = frozenset({torch.ops._c10d_functional.reduce_scatter_tensor.default,
                               torch.ops._c10d_functional.all_to_all_single.default})

# torch 2.13's selective checkpoint replays the forward's ops in order and fails on any op the recompute runs a
# different number of times. FSDP2's hooks of a unit inside the block (an MoE layer's routed experts, their own unit
# on the expert mesh) open profiler ranges in the forward and the recompute by its state (gathering or not), so the
# profiler's range markers, which carry no data, join the ops torch's checkpoint leaves out of that replay.
torch.utils.checkpoint.SAC_IGNORED_OPS.update({torch.ops.profiler._record_function_enter.default,
                                               torch.ops.profiler._record_function_enter_new.default,
                                               torch.ops.profiler._record_function_exit.default,
                                               torch.ops.profiler._record_function_exit._RecordFunction})

# Depth of `uncounted_matmuls` regions per thread (the forward and the recompute each run in one thread).
_uncounted = threading.local()


@contextlib.contextmanager
def uncounted_matmuls():
    """Inside, the policy recomputes the weight matmuls and leaves them out of its every-second count: an MoE
    layer's router (torchtitan force-recomputes its gate the same way) and routed experts (torchtitan's grouped GEMM
    is not in its save list; on CPU the executor's experts are one matmul per expert holding tokens, a number the
    routing decides). The count then runs over the block's dense linears only."""
    depth = getattr(_uncounted, "depth", 0)
    _uncounted.depth = depth + 1
    try:
        yield
    finally:
        _uncounted.depth = depth

# Lists that collect each new checkpoint's cache of saved outputs while `recording()` is active.
_recorders: list[list] = []


def op_policy():
    """A fresh policy function (one per checkpointed forward): it counts the weight matmuls of the forward and of
    the recompute separately, so both save the same ones."""
    counts = {False: 0, True: 0}

    def policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
        if func in WEIGHT_MATMULS:
            if getattr(_uncounted, "depth", 0):
                return CheckpointPolicy.PREFER_RECOMPUTE
            counts[ctx.is_recompute] += 1
            keep = counts[ctx.is_recompute] % 2 == 1
        else:
            keep = func in ATTENTION_KERNELS or func in SAVED_COLLECTIVES
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def op_policy_contexts():
    """The (forward, recompute) context pair of one checkpointed call under the per-op policy."""
    forward, recompute = create_selective_checkpoint_contexts(op_policy())
    for caches in _recorders:
        caches.append(forward)
    return forward, recompute


def checkpoint_ops(function, *args):
    """`function(*args)` checkpointed under the per-op policy, the whole block recomputed (no early stop). The early
    stop is checkpoint's argument, not `set_checkpoint_early_stop`: torch.compile cannot trace that context manager,
    and a block calling it ran uncompiled (on an H200 the per-op policy's step was 15% slower than torchtitan's)."""
    if _EARLY_STOP_ARGUMENT:
        return checkpoint(function, *args, use_reentrant=False, context_fn=op_policy_contexts, early_stop=False)
    with set_checkpoint_early_stop(False):  # a torch without the argument
        return checkpoint(function, *args, use_reentrant=False, context_fn=op_policy_contexts)


_EARLY_STOP_ARGUMENT = "early_stop" in inspect.signature(checkpoint).parameters


@contextlib.contextmanager
def recording():
    """Yields a list that receives the forward context of every per-op checkpoint started inside (its `storage`:
    the outputs the policy saved), for counting what the backward keeps (profile/activations.py)."""
    caches: list = []
    _recorders.append(caches)
    try:
        yield caches
    finally:
        _recorders.remove(caches)


def cached_entries(context):
    """The entries of a forward context's cache that hold tensors (torch's `_VersionWrapper`: the tensor in `val`,
    its version counter at caching in `version`, which the recompute checks)."""
    def walk(entry):
        if isinstance(getattr(entry, "val", None), torch.Tensor):
            yield entry
        elif isinstance(entry, dict):
            for item in entry.values():
                yield from walk(item)
        elif isinstance(entry, (tuple, list)):
            for item in entry:
                yield from walk(item)

    yield from walk(context.storage)


def cached_tensors(context):
    """The tensors a forward context's cache holds."""
    for entry in cached_entries(context):
        yield entry.val
