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

Each block runs torch's fused kernels that return their log-sum-exp (`_fused`: the CPU flash kernel, on CUDA the
memory-efficient one, as torch's own ring does), in the pieces the head-tail chunks make mask-free (`_pieces`:
causal or whole; under a sliding window each chunk's own keys in the band's blocks and an earlier chunk's only in
the corner its last keys reach, `_window_pieces`: O(n w) scores and bias per block), merged in fp32 by their
log-sum-exp; the backward runs each piece's kernel backward with the final
output and log-sum-exp. No block's scores are kept (before 2026-12-05 the math was explicit: fp32 scores of a
[queries, block keys] tile per block, 64 GiB per block for a GPT-OSS layer at 128k tokens over cp 8). torch's
context_parallel (the CUDA path of context_parallel.py) is not used under the policy; on CUDA autoconf's own CP
attention runs as this op under every policy (`ContextParallel.attention`). Without attention dropout
(spec/support.py refuses the policy with CP and attention dropout). The CUDA kernels' calls have not run on a GPU
here; the CPU kernels' are tested (tests/test_context_parallel.py, tests/test_sliding_window.py,
tests/test_gpt_oss.py).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.distributed_c10d import _resolve_process_group

from autoconf.execute.context_parallel import block_in_window, chunks_of, positions
from autoconf.execute.window_attention import Band, window_mask
from autoconf.spec.model import window_band

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


def _skipped(owner, seq_len: int, cp: int, rank: int, window: int) -> bool:
    """Whether the ring's block of `owner` is left out under a sliding window: no query of this rank sees any of
    its keys (`context_parallel.block_in_window`). The all-gather's one block (owner None) never is."""
    return owner is not None and window > 0 and not block_in_window(seq_len, cp, rank, owner, window)


class Piece(NamedTuple):
    """One fused-kernel call of a block: the rank's query rows and the block's key columns it covers (slices), and
    which of their pairs it computes: all, causally (`causal`), those of a bias (`seen`, bool), or a sliding window
    over rows and columns of the same positions in blocks of the band (`band`: the window; `_band_fused`)."""

    rows: slice
    cols: slice
    seen: Optional[Tensor] = None
    causal: bool = False
    band: int = 0


def _pieces(owner, seq_len: int, cp: int, rank: int, window: int, device) -> list[Piece]:
    """The fused-kernel calls one block takes. Without a window the head-tail chunks make every piece mask-free: the
    rank's own block is causal (its positions ascend, so index order is position order); an earlier rank's block is
    seen whole by both chunks' queries in its first chunk only, a later rank's by the second chunk's queries only
    (both of its chunks); under the all-gather each chunk of the rank sees the keys before it whole and its own
    causally. Under a sliding window, `_window_pieces`."""
    n = seq_len // (2 * cp)
    every = slice(None)
    if window:
        return _window_pieces(owner, seq_len, cp, rank, window, device)
    if owner is None:  # the whole sequence in order: chunk c of the rank is rows [i n, (i + 1) n)
        pieces = []
        for i, c in enumerate(chunks_of(cp, rank)):
            rows = slice(i * n, (i + 1) * n)
            pieces.append(Piece(rows, slice(c * n, (c + 1) * n), causal=True))
            if c:
                pieces.append(Piece(rows, slice(0, c * n)))
        return pieces
    if owner == rank:
        return [Piece(every, every, causal=True)]
    if owner < rank:
        return [Piece(every, slice(0, n))]
    return [Piece(slice(n, 2 * n), every)]


def _window_pieces(owner, seq_len: int, cp: int, rank: int, window: int, device) -> list[Piece]:
    """Under a sliding window, per chunk of the rank's queries and chunk of the block's keys (the ring's block: its
    owner's two; the all-gather's: all 2 cp in order): its own chunk in blocks of the band where the chunk holds
    twice the window (`window_band`), else causal where the window holds the chunk, else under the window's bias;
    an earlier chunk only where its last keys reach the chunk's first queries within the window: the corner of at
    most window - 1 rows and keys that does, under its bias. So a block costs O(n w) scores, not n^2."""
    n = seq_len // (2 * cp)
    key_chunks = list(range(2 * cp)) if owner is None else list(chunks_of(cp, owner))
    pieces = []
    for i, qc in enumerate(chunks_of(cp, rank)):
        for j, kc in enumerate(key_chunks):
            col = (kc if owner is None else j) * n
            if kc == qc:
                rows, cols = slice(i * n, (i + 1) * n), slice(col, col + n)
                if window_band(n, window) is not None:
                    pieces.append(Piece(rows, cols, band=window))
                elif window >= n:
                    pieces.append(Piece(rows, cols, causal=True))
                else:
                    here = torch.arange(qc * n, (qc + 1) * n, device=device)
                    pieces.append(Piece(rows, cols, window_mask(here, here, window)))
            elif kc < qc and (qc - kc - 1) * n + 1 < window:
                reached = min(n, (kc + 1) * n + window - 1 - qc * n)  # the chunk's first rows see some key
                first = max(0, qc * n - window + 1 - kc * n)  # the earlier chunk's keys from here on are seen
                queries = torch.arange(qc * n, qc * n + reached, device=device)
                keys = torch.arange(kc * n + first, (kc + 1) * n, device=device)
                pieces.append(Piece(slice(i * n, i * n + reached), slice(col + first, col + n),
                                    window_mask(queries, keys, window)))
    return pieces


def _fused(q: Tensor, k: Tensor, v: Tensor, piece: Piece) -> tuple[Tensor, Tensor]:
    """(output, fp32 log-sum-exp) of one piece's softmax(q k^T / sqrt(d)) v by torch's fused kernels that return the
    log-sum-exp (`_kernel`); a band piece through `_band_fused`."""
    q, k, v = q[:, :, piece.rows], k[:, :, piece.cols], v[:, :, piece.cols]
    if piece.band:
        return _band_fused(q, k, v, piece.band)
    return _kernel(q, k, v, piece.seen, piece.causal)


def _kernel(q: Tensor, k: Tensor, v: Tensor, seen: Tensor | None, causal: bool) -> tuple[Tensor, Tensor]:
    """(output, fp32 log-sum-exp) by the CPU flash kernel, on CUDA the memory-efficient one (K/V repeated to the
    query heads; its log-sum-exp padded to a multiple of 32 rows, cut back). `seen` (bool [..., queries, keys],
    leading dimensions broadcast over q's batch) becomes a bias of 0 and -inf; a row that sees no key gives a zero
    output and a log-sum-exp of -inf (the CPU kernel says 0)."""
    bias = None if seen is None else _bias(seen, q)
    if q.device.type == "cuda":
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, _expanded(bias, q, k), True, 0.0, causal)
        lse = lse[..., :q.shape[2]]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=bias)
    if seen is not None:
        sees = seen.any(-1)
        out, lse = out * sees[..., None], lse.masked_fill(~sees, float("-inf"))
    return out, lse


def _fused_grads(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                 piece: Piece) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of one piece (over its rows and columns) from the op's final output and log-sum-exp (each block's
    probabilities are then the final ones, exp(S - lse)), by the backward of the kernel `_fused` ran."""
    grad, q, out, lse = (t[:, :, piece.rows] for t in (grad, q, out, lse))
    k, v = k[:, :, piece.cols], v[:, :, piece.cols]
    if piece.band:
        return _band_grads(grad, q, k, v, out, lse, piece.band)
    return _kernel_grads(grad, q, k, v, out, lse, piece.seen, piece.causal)


def _kernel_grads(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, seen: Tensor | None,
                  causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The backward of `_kernel`'s kernel; dk and dv summed onto the K/V heads."""
    bias = None if seen is None else _bias(seen, q)
    if q.device.type == "cuda":
        repeat = q.shape[1] // k.shape[1]
        kr, vr = (t.repeat_interleave(repeat, dim=1) for t in (k, v))
        padded = F.pad(lse, (0, -q.shape[2] % 32))
        empty = torch.zeros((), dtype=torch.int64, device=q.device)
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            grad, q, kr, vr, _expanded(bias, q, kr), out, padded, empty, empty, 0.0, [True, True, True, False],
            causal)
        dk, dv = (t.unflatten(1, (k.shape[1], repeat)).sum(2) for t in (dk, dv))
        return dq, dk, dv
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad, q, k, v, out, lse, 0.0, causal, attn_mask=bias)


def _band_fused(q: Tensor, k: Tensor, v: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """`_kernel` of n queries over the same n positions' keys within the window, all blocks of the band one batched
    call (execute/window_attention.py's `Band`, as `banded_attention` lays it out, with the log-sum-exp)."""
    b, n = q.shape[0], q.shape[2]
    band = Band.of(n, n, window)
    out, lse = _kernel(band.queries(q), band.keys(k), band.keys(v), band.seen(q.device).repeat(b, 1, 1, 1), False)
    return band.rows(out, b, n), band.rows(lse, b, n)


def _band_grads(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                window: int) -> tuple[Tensor, Tensor, Tensor]:
    """The backward of `_band_fused`: each block's kernel backward, the keys' and values' gradients of the
    overlapping blocks summed back onto their positions."""
    b, n = q.shape[0], q.shape[2]
    band = Band.of(n, n, window)
    dq, dkb, dvb = _kernel_grads(*(band.queries(t) for t in (grad, q)), band.keys(k), band.keys(v),
                                 band.queries(out), band.queries(lse), band.seen(q.device).repeat(b, 1, 1, 1), False)
    index = band.key_rows(q.device)
    unpadded = []
    for grads, like in ((dkb, k), (dvb, v)):
        rows = grads.unflatten(0, (b, band.blocks)).transpose(2, 3).flatten(1, 2)  # [b, blocks x width, kv_heads, d]
        total = rows.new_zeros(b, band.lead + n + band.tail, *rows.shape[2:]).index_add_(1, index, rows)
        unpadded.append(total[:, band.lead:band.lead + n].transpose(1, 2).to(like.dtype))
    return band.rows(dq, b, n), *unpadded


def _bias(seen: Tensor, q: Tensor) -> Tensor:
    return torch.zeros(seen.shape, dtype=q.dtype, device=q.device).masked_fill(~seen, float("-inf"))


def _expanded(bias: Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    """The memory-efficient kernel's bias: [b, heads, queries, keys], its rows 16-element aligned (as SDPA pads)."""
    if bias is None:
        return None
    keys = k.shape[2]
    aligned = torch.zeros((*bias.shape[:-1], keys + (-keys % 16)), dtype=bias.dtype, device=bias.device)
    aligned[..., :keys] = bias
    return aligned[..., :keys].expand(q.shape[0], q.shape[1], q.shape[2], keys)


def _widened(v: Tensor, width: int) -> Tensor:
    """v padded with zero columns to the query-key width (the CPU flash kernel takes one head width)."""
    return v if v.shape[-1] == width else F.pad(v, (0, width - v.shape[-1]))


def _context(group_name: str) -> tuple:
    """(the CP group, its size, this rank's place in it)."""
    group = _resolve_process_group(group_name)
    return group, dist.get_world_size(group), dist.get_rank(group)


@torch.library.custom_op("autoconf::cp_attention", mutates_args=())
def cp_attention(q: Tensor, k: Tensor, v: Tensor, group_name: str, algorithm: str,
                 seq_len: int, window: int, sinks: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Causal attention (within a sliding `window` of keys where positive; 0: none) of this rank's queries
    q [b, heads, s/cp, d] over the whole sequence's K/V (k, v: this
    rank's [b, kv_heads, s/cp, d] and [b, kv_heads, s/cp, d_v], d_v possibly not d; exchanged over the CP group
    `group_name` by `algorithm`, concatenated along the width): the output [b, heads, s/cp, d_v] in q's dtype and the
    fp32 log-sum-exp [b, heads, s/cp] of each query row's scores (an output to save, not to differentiate).
    Each block's pieces (`_pieces`) run fused kernels that return their log-sum-exp (`_fused`), merged in fp32."""
    group, cp, rank = _context(group_name)
    width = v.shape[-1]
    out = q.new_zeros((*q.shape[:-1], q.shape[-1]), dtype=torch.float32)
    lse = q.new_full(q.shape[:-1], float("-inf"), dtype=torch.float32)
    for owner, kb, vb in _kv_blocks(k, v, group, algorithm, cp, rank):
        if _skipped(owner, seq_len, cp, rank, window):
            continue
        vb = _widened(vb, q.shape[-1])
        for piece in _pieces(owner, seq_len, cp, rank, window, q.device):
            rows = piece.rows
            part, part_lse = _fused(q, kb, vb, piece)
            new = torch.logaddexp(lse[:, :, rows], part_lse)
            keep = (lse[:, :, rows] - new).exp().nan_to_num(0.0)[..., None]  # -inf - -inf: nothing yet, nothing now
            add = (part_lse - new).exp().nan_to_num(0.0)[..., None]
            out[:, :, rows] = out[:, :, rows] * keep + part.float() * add
            lse[:, :, rows] = new
    if sinks is not None:  # the sink logit joins each row's denominator: lse' = logaddexp(lse, sink), out rescaled
        new = torch.logaddexp(lse, sinks.float().view(1, -1, 1))
        out, lse = out * (lse - new).exp()[..., None], new
    return out[..., :width].to(q.dtype), lse


@cp_attention.register_fake
def _(q, k, v, group_name, algorithm, seq_len, window, sinks):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _backward_blocks(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, group_name: str,
                     algorithm: str, seq_len: int, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of `cp_attention` from the gradient of its output: each piece's kernel backward with the final
    output and log-sum-exp; each block's dK/dV returned to the block's owner (the ring passes them on with the
    blocks, the all-gather reduce-scatters them)."""
    group, cp, rank = _context(group_name)
    width, d = v.shape[-1], q.shape[-1]
    grad, out = _widened(grad, d).to(q.dtype), _widened(out, d)
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    travelling = None  # ring: the accumulated dK/dV of the block this rank holds
    for owner, kb, vb in _kv_blocks(k, v, group, algorithm, cp, rank):
        if _skipped(owner, seq_len, cp, rank, window):  # (never the own block, the first): its gradients are
            travelling = _rotate(travelling, group, cp, rank)  # zeros, the ring passes on what it holds
            continue
        vb = _widened(vb, d)
        dk, dv = torch.zeros(kb.shape, dtype=torch.float32, device=q.device), torch.zeros(
            vb.shape, dtype=torch.float32, device=q.device)
        for piece in _pieces(owner, seq_len, cp, rank, window, q.device):
            pq, pk, pv = _fused_grads(grad, q, kb, vb, out, lse, piece)
            dq[:, :, piece.rows] += pq.float()
            dk[:, :, piece.cols] += pk.float()
            dv[:, :, piece.cols] += pv.float()
        dkv = torch.cat([dk, dv[..., :width]], dim=-1)
        if algorithm == "allgather":
            return dq.to(q.dtype), *_reduce_scatter(dkv, group, cp, k.shape[-1])
        travelling = dkv if travelling is None else _rotate(travelling, group, cp, rank) + dkv
    mine_dkv = _rotate(travelling, group, cp, rank)  # the last block held is the next rank's
    dk, dv = mine_dkv.split([k.shape[-1], width], dim=-1)
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
    ctx.mark_non_differentiable(output[1])
    ctx.exchange = group_name, algorithm, seq_len, window


def _backward(ctx, grad_out, _grad_lse):
    """The blocks' gradients (the log-sum-exp already holds the sinks, so each block's probabilities are the
    final ones) and the sinks': d lse' / d sink is the sink's probability p_s and d out / d sink is -p_s out, so
    d sink = -sum over the head's rows of p_s rowsum(dO O)."""
    q, k, v, out, lse, sinks = ctx.saved_tensors
    dq, dk, dv = _backward_blocks(grad_out, q, k, v, out, lse, *ctx.exchange)
    dsinks = None
    if sinks is not None:
        row = (grad_out.float() * out.float()).sum(-1)
        dsinks = -((sinks.float().view(1, -1, 1) - lse).exp() * row).sum((0, 2)).to(sinks.dtype)
    return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, dsinks


cp_attention.register_autograd(_backward, setup_context=_setup_context)

# The op as the dispatcher names it (what a selective-checkpoint policy compares `func` with).
CP_ATTENTION_OP = torch.ops.autoconf.cp_attention.default
