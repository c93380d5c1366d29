"""The executor's cross entropy: mean token cross entropy over the logits, in fp32, with little beyond the logits.

`cross_entropy(logits, target)` equals `F.cross_entropy(logits.float(), target)` (mean over the targets that are not
`IGNORE_INDEX`; 0 when every target is ignored). It keeps the logits themselves for its backward and writes their
gradient into them, as Transformer Engine's cross entropy does: nothing downstream reads the logits after the loss,
and the head's backward needs only their gradient. The rows run in `EXECUTOR_LOSS_CHUNKS` chunks, so the fp32
temporary is one chunk's: its fp32 copy, shifted and exponentiated in place (for fp32 logits the shifted chunk;
their backward works in place), beside `EXECUTOR_LOSS_ROW_BYTES` per row (cost/memory.py `logits_temporary_bytes`
counts exactly these). torch's own loss holds the fp32 log-softmax and, in its backward, two fp32 gradients of the
whole micro-batch: 12 bytes per logit against 2 + 4 / 8 in bf16.

Under tensor parallelism (`vocab_parallel_cross_entropy`) each TP rank holds the logits of its slice of the
vocabulary only (the head's column-parallel output, execute/parallelize.py), as in Megatron's and torchtitan's loss
parallel: the forward all-reduces each row's maximum and then, in one call, its sum of exponentials and the target's
logit over the TP group; the backward needs no communication (the gradient of a rank's logits is its slice of
softmax - one-hot). Every TP rank returns the same loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from autoconf.spec.frameworks import EXECUTOR_LOSS_CHUNKS

IGNORE_INDEX = -100  # F.cross_entropy's default: padded targets (execute/seq_chunks.py)


def _row_chunks(rows: int):
    step = -(-rows // min(EXECUTOR_LOSS_CHUNKS, max(rows, 1)))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _local_targets(labels: torch.Tensor, first: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(column of each row's target in this vocabulary slice, clamped into it; whether the slice holds it)."""
    local = labels - first
    held = (labels != IGNORE_INDEX) & (local >= 0) & (local < width)
    return local.clamp(0, max(width - 1, 0)), held


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group, first: int) -> torch.Tensor:
        flat, labels = logits.view(-1, logits.shape[-1]), target.reshape(-1)
        rows, width = flat.shape
        valid = labels != IGNORE_INDEX
        count = valid.sum().clamp(min=1)
        column, held = _local_targets(labels, first, width)
        top = (flat.amax(dim=-1).float() if width else
               torch.full((rows,), float("-inf"), device=flat.device))  # max is exact in the logits' dtype
        if group is not None:
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        sums = torch.zeros(2, rows, dtype=torch.float32, device=flat.device)  # sum of exponentials, target's logit
        for part in _row_chunks(rows) if width else ():
            chunk, shift = flat[part], top[part].unsqueeze(1)
            x = chunk.float()  # a copy unless the logits are fp32: shifted in place, else into a new chunk
            x = x.sub_(shift) if x.data_ptr() != chunk.data_ptr() else x - shift
            sums[0, part] = x.exp_().sum(dim=-1)
            del x
            sums[1, part] = chunk.gather(1, column[part].unsqueeze(1)).squeeze(1).float() * held[part]
        if group is not None:
            dist.all_reduce(sums, group=group)
        lse = sums[0].log_() + top
        total = ((lse - sums[1]) * valid).sum()
        ctx.save_for_backward(logits, column, held, valid, lse, count)
        return total / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, column, held, valid, lse, count = ctx.saved_tensors
        flat = logits.view(-1, logits.shape[-1])
        scale = (grad / count).float()
        for part in _row_chunks(flat.shape[0]) if flat.shape[1] else ():
            chunk = flat[part]
            x = chunk.float()  # the chunk itself when the logits are fp32
            x.sub_(lse[part].unsqueeze(1)).exp_()
            index = torch.arange(x.shape[0], device=x.device)
            x[index, column[part]] -= held[part].to(x.dtype)
            x.mul_((scale * valid[part]).unsqueeze(1))
            if x.data_ptr() != chunk.data_ptr():
                chunk.copy_(x)
            del x
        return logits, None, None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean token cross entropy of `logits` [..., vocab] against `target` [...] (fp32 scalar). Its backward
    overwrites `logits` with their gradient: call it on logits nothing else reads afterwards."""
    return vocab_parallel_cross_entropy(logits, target, None, 0)


def rank_loss(tp_mesh, vocab_size: int):
    """The loss of one micro-batch on this rank: `cross_entropy`, or under TP (`tp_mesh` of more than one rank)
    `vocab_parallel_cross_entropy` over the slice of the vocabulary this rank's head holds: DTensor's Shard(0) of the
    head's [vocab, hidden] weight, torch.chunk's split (slices of ceil(vocab / tp) rows, the last ones shorter)."""
    if tp_mesh is None or tp_mesh.size() == 1:
        return cross_entropy
    group, first = tp_mesh.get_group(), tp_mesh.get_local_rank() * -(-vocab_size // tp_mesh.size())

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_cross_entropy(logits, target, group, first)

    return loss


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group, first: int) -> torch.Tensor:
    """`cross_entropy` over the whole vocabulary when this rank holds its columns [first, first + logits.shape[-1])
    and the other ranks of `group` the rest (None: all of it here). Every rank of the group returns the same loss and
    receives the gradient of its own columns, in place of its logits."""
    if not logits.is_contiguous():
        logits = logits.contiguous()
    return _CrossEntropy.apply(logits, target, group, first)
