"""Context-parallel attention as one custom op (`torch.ops.autoconf.cp_attention`), for the per-op selective policy.

Under selective_recompute "alternate_matmuls" (execute/checkpoint_policy.py) the policy decides op by op what a
block keeps; the composed CP attention of context_parallel.py (a K/V all-gather or ring of functional collectives,
then masked or blockwise softmax math) shows it no kernel whose output it could save. This op is that kernel: one
dispatcher op, registered with `torch.library.custom_op` and its own autograd, that exchanges K/V over the CP group
inside (the policy sees neither the collectives nor the math) and returns the attention output with its fp32
log-sum-exp per query row, as the fused attention kernels do. The policy saves both, so the recompute in the
backward does not run it (no second K/V exchange there); its backward, flash-style, reads q, k, v, the output and
the log-sum-exp, exchanges the K/V again and sends their gradients back to the ranks that own them, which is what
cost/estimate.py `cp_attention_comm` charges a backward of either algorithm.

- "allgather": one all-gather of every rank's K/V (reordered to sequence order), the causal mask of real positions
  (within the layer's sliding window where it has one, as on every path: `window_mask`);
  the backward gathers again and reduce-scatters (sums) dK/dV onto their owners.
- "ring": cp - 1 steps pass the K/V blocks to the next rank; each block's scores merge into the running
  log-sum-exp. The backward passes the blocks again, each with the accumulated gradient of its K/V, which after a
  last step reaches the block's owner.

The math is explicit (fp32 scores, one [queries, block keys] tile per block), on every device: torch's
context_parallel (the CUDA path of context_parallel.py) is not used under the policy. Without attention dropout
(spec/support.py refuses the policy with CP and dropout > 0).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import _resolve_process_group

from autoconf.execute.context_parallel import block_in_window, positions
from autoconf.execute.window_attention import window_mask

Tensor = torch.Tensor
# torch 2.13's names, and the older ones
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _kv_blocks(k: Tensor, v: Tensor, group, algorithm: str, cp: int, rank: int):
    """Yields (owner, k block, v block) of every CP rank, by the algorithm's exchange (own block first for the
    ring) of K and V concatenated along the width. The all-gather yields one block: the whole sequence, owner
    None."""
    if algorithm == "allgather":
        kv = torch.cat([k, v], dim=-1).movedim(2, 0).contiguous()
        everyone = torch.empty((cp * kv.shape[0], *kv.shape[1:]), dtype=kv.dtype, device=kv.device)
        _ALL_GATHER(everyone, kv, group=group)
        order = torch.cat([positions(cp * kv.shape[0], cp, r, kv.device) for r in range(cp)]).argsort()
        full = everyone.index_select(0, order).movedim(0, 2)
        yield None, *full.split([k.shape[-1], v.shape[-1]], dim=-1)
        return
    kv, owner = torch.cat([k, v], dim=-1).contiguous(), rank
    for step in range(cp):
        if step:
            kv, owner = _rotate(kv, group, cp, rank), (owner - 1) % cp
        yield owner, *kv.split([k.shape[-1], v.shape[-1]], dim=-1)


def _rotate(t: Tensor, group, cp: int, rank: int) -> Tensor:
    """Sends `t` to the next CP rank, returns the previous rank's (one all-to-all moving data to one peer)."""
    local = t.movedim(2, 0).contiguous()
    n, to, since = local.shape[0], (rank + 1) % cp, (rank - 1) % cp
    out = torch.empty_like(local)
    dist.all_to_all_single(out, local, [n if r == since else 0 for r in range(cp)],
                           [n if r == to else 0 for r in range(cp)], group=group)
    return out.movedim(0, 2)


def _key_positions(owner, seq_len: int, cp: int, device) -> Tensor:
    return torch.arange(seq_len, device=device) if owner is None else positions(seq_len, cp, owner, device)


def _seen(mine: Tensor, owner, seq_len: int, cp: int, window: int) -> Tensor:
    """Which keys of `owner`'s block (None: the whole sequence) the rank's queries at positions `mine` see: the
    causal past, within `window` keys where positive (0: no window)."""
    return window_mask(mine, _key_positions(owner, seq_len, cp, mine.device), window or None)


def _skipped(owner, seq_len: int, cp: int, rank: int, window: int) -> bool:
    """Whether the ring's block of `owner` is left out under a sliding window: no query of this rank sees any of
    its keys (`context_parallel.block_in_window`). The all-gather's one block (owner None) never is."""
    return owner is not None and window > 0 and not block_in_window(seq_len, cp, rank, owner, window)


def _scores(q: Tensor, kb: Tensor, seen: Tensor) -> Tensor:
    """fp32 q kb^T / sqrt(d), -inf where a query may not see a key; kb's heads repeated to q's."""
    kb = kb.repeat_interleave(q.shape[1] // kb.shape[1], dim=1)
    scores = (q.float() @ kb.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~seen, float("-inf"))


def _context(group_name: str, seq_len: int, device):
    group = _resolve_process_group(group_name)
    cp, rank = dist.get_world_size(group), dist.get_rank(group)
    return group, cp, rank, positions(seq_len, cp, rank, device)


@torch.library.custom_op("autoconf::cp_attention", mutates_args=())
def cp_attention(q: Tensor, k: Tensor, v: Tensor, group_name: str, algorithm: str,
                 seq_len: int, window: int, sinks: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Causal attention (within a sliding `window` of keys where positive; 0: none) of this rank's queries
    q [b, heads, s/cp, d] over the whole sequence's K/V (k, v: this
    rank's [b, kv_heads, s/cp, d] and [b, kv_heads, s/cp, d_v], d_v possibly not d; exchanged over the CP group
    `group_name` by `algorithm`, concatenated along the width): the output [b, heads, s/cp, d_v] in q's dtype and the
    fp32 log-sum-exp [b, heads, s/cp] of each query row's scores."""
    group, cp, rank, mine = _context(group_name, seq_len, q.device)
    out = lse = None
    for owner, kb, vb in _kv_blocks(k, v, group, algorithm, cp, rank):
        if _skipped(owner, seq_len, cp, rank, window):
            continue
        scores = _scores(q, kb, _seen(mine, owner, seq_len, cp, window))
        block_lse = scores.logsumexp(dim=-1)
        safe = torch.where(torch.isfinite(block_lse), block_lse, torch.zeros_like(block_lse))
        part = (scores - safe[..., None]).exp() @ vb.repeat_interleave(q.shape[1] // vb.shape[1], dim=1).float()
        if out is None:  # the rank's own block (or the whole sequence): every query sees at least itself
            out, lse = part, block_lse
            continue
        new = torch.logaddexp(lse, block_lse)
        out, lse = out * (lse - new).exp()[..., None] + part * (block_lse - new).exp()[..., None], new
    if sinks is not None:  # the sink logit joins each row's denominator: lse' = logaddexp(lse, sink), out rescaled
        new = torch.logaddexp(lse, sinks.float().view(1, -1, 1))
        out, lse = out * (lse - new).exp()[..., None], new
    return out.to(q.dtype), lse


@cp_attention.register_fake
def _(q, k, v, group_name, algorithm, seq_len, window, sinks):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _backward_blocks(grad: Tensor, grad_lse: Tensor | None, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                     lse: Tensor, group_name: str, algorithm: str, seq_len: int,
                     window: int) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of `cp_attention` from the gradients of its output and log-sum-exp: P = exp(S - lse) of each
    block, dV = P^T dO, dS = P (dO V^T - rowsum(dO O) + dlse), dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d); each
    block's dK/dV summed over the query heads that share a K/V head and returned to the block's owner."""
    group, cp, rank, mine = _context(group_name, seq_len, q.device)
    scale, repeat = q.shape[-1] ** -0.5, q.shape[1] // k.shape[1]
    g, qf = grad.float(), q.float()
    row = (g * out.float()).sum(-1, keepdim=True)
    if grad_lse is not None:
        row = row - grad_lse.float()[..., None]
    dq = torch.zeros_like(qf)
    travelling = None  # ring: the accumulated dK/dV of the block this rank holds
    for owner, kb, vb in _kv_blocks(k, v, group, algorithm, cp, rank):
        if _skipped(owner, seq_len, cp, rank, window):  # (never the own block, the first): its gradients are
            travelling = _rotate(travelling, group, cp, rank)  # zeros, the ring passes on what it holds
            continue
        probs = (_scores(q, kb, _seen(mine, owner, seq_len, cp, window)) - lse[..., None]).exp()
        vr = vb.repeat_interleave(repeat, dim=1).float()
        dv = probs.transpose(-2, -1) @ g
        ds = probs * (g @ vr.transpose(-2, -1) - row)
        dq += ds @ kb.repeat_interleave(repeat, dim=1).float() * scale
        dk = ds.transpose(-2, -1) @ qf * scale
        dkv = torch.cat([t.unflatten(1, (kb.shape[1], repeat)).sum(2) for t in (dk, dv)], dim=-1)
        if algorithm == "allgather":
            return dq.to(q.dtype), *_reduce_scatter(dkv, group, cp, k.shape[-1])
        travelling = dkv if travelling is None else _rotate(travelling, group, cp, rank) + dkv
    mine_dkv = _rotate(travelling, group, cp, rank)  # the last block held is the next rank's
    dk, dv = mine_dkv.split([k.shape[-1], v.shape[-1]], dim=-1)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _reduce_scatter(dkv: Tensor, group, cp: int, k_width: int) -> tuple[Tensor, Tensor]:
    """The whole sequence's dK/dV [b, kv_heads, s, d_k + d_v] summed over the CP group onto the ranks owning the
    tokens, split into dK and dV."""
    seq = dkv.shape[2]
    order = torch.cat([positions(seq, cp, r, dkv.device) for r in range(cp)])
    rows = dkv.movedim(2, 0).index_select(0, order).contiguous()  # rank r's tokens at rows [r s/cp, (r+1) s/cp)
    local = torch.empty((seq // cp, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    _REDUCE_SCATTER(local, rows, group=group)
    dk, dv = local.movedim(0, 2).split([k_width, dkv.shape[-1] - k_width], dim=-1)
    return dk, dv


def _setup_context(ctx, inputs, output):
    q, k, v, group_name, algorithm, seq_len, window, sinks = inputs
    ctx.save_for_backward(q, k, v, *output, sinks)
    ctx.exchange = group_name, algorithm, seq_len, window


def _backward(ctx, grad_out, grad_lse):
    """The blocks' gradients (the log-sum-exp already holds the sinks, so each block's probabilities are the
    final ones) and the sinks': d lse' / d sink is the sink's probability p_s and d out / d sink is -p_s out, so
    d sink = -sum over the head's rows of p_s (rowsum(dO O) - d lse')."""
    q, k, v, out, lse, sinks = ctx.saved_tensors
    dq, dk, dv = _backward_blocks(grad_out, grad_lse, q, k, v, out, lse, *ctx.exchange)
    dsinks = None
    if sinks is not None:
        row = (grad_out.float() * out.float()).sum(-1)
        if grad_lse is not None:
            row = row - grad_lse.float()
        dsinks = -((sinks.float().view(1, -1, 1) - lse).exp() * row).sum((0, 2)).to(sinks.dtype)
    return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, dsinks


cp_attention.register_autograd(_backward, setup_context=_setup_context)

# The op as the dispatcher names it (what a selective-checkpoint policy compares `func` with).
CP_ATTENTION_OP = torch.ops.autoconf.cp_attention.default
