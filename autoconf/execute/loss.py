"""The executor's cross entropy: mean token cross entropy over the logits, in fp32, with little beyond the logits.

`cross_entropy(logits, target)` equals `F.cross_entropy(logits.float(), target)` (mean over the targets that are not
`IGNORE_INDEX`; 0 when every target is ignored). It keeps the logits themselves for its backward and writes their
gradient into them, as Transformer Engine's cross entropy does: nothing downstream reads the logits after the loss,
and the head's backward needs only their gradient. The rows run in `EXECUTOR_LOSS_CHUNKS` chunks, so the fp32
temporaries are one chunk's: its fp32 copy (not needed when the logits are fp32) and its shifted exponentials
(cost/memory.py `logits_temporary_bytes` counts exactly these). torch's own loss holds the fp32 log-softmax and, in
its backward, two fp32 gradients of the whole micro-batch: 12 bytes per logit against 2 + 8 / 8 in bf16.
"""

from __future__ import annotations

import torch

from autoconf.spec.frameworks import EXECUTOR_LOSS_CHUNKS

IGNORE_INDEX = -100  # F.cross_entropy's default: padded targets (execute/seq_chunks.py)


def _row_chunks(rows: int):
    step = -(-rows // min(EXECUTOR_LOSS_CHUNKS, max(rows, 1)))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat, labels = logits.view(-1, logits.shape[-1]), target.reshape(-1)
        valid = labels != IGNORE_INDEX
        count = valid.sum().clamp(min=1)
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        total = torch.zeros((), dtype=torch.float32, device=flat.device)
        for rows in _row_chunks(flat.shape[0]):
            x = flat[rows].float()
            top = x.amax(dim=-1, keepdim=True)
            shifted = x - top
            lse[rows] = shifted.exp_().sum(dim=-1).log_() + top.squeeze(-1)
            del shifted
            picked = x.gather(1, labels[rows].clamp(min=0).unsqueeze(1)).squeeze(1)
            total += ((lse[rows] - picked) * valid[rows]).sum()
        ctx.save_for_backward(logits, labels, lse, count)
        return total / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels, lse, count = ctx.saved_tensors
        flat = logits.view(-1, logits.shape[-1])
        scale = (grad / count).float()
        valid = labels != IGNORE_INDEX
        for rows in _row_chunks(flat.shape[0]):
            chunk = flat[rows]
            x = chunk.float()  # the chunk itself when the logits are fp32
            x.sub_(lse[rows].unsqueeze(1)).exp_()
            index = torch.arange(x.shape[0], device=x.device)
            x[index, labels[rows].clamp(min=0)] -= valid[rows].to(x.dtype)
            x.mul_((scale * valid[rows]).unsqueeze(1))
            if x.data_ptr() != chunk.data_ptr():
                chunk.copy_(x)
            del x
        return logits, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean token cross entropy of `logits` [..., vocab] against `target` [...] (fp32 scalar). Its backward
    overwrites `logits` with their gradient: call it on logits nothing else reads afterwards."""
    if not logits.is_contiguous():
        logits = logits.contiguous()
    return _CrossEntropy.apply(logits, target)
