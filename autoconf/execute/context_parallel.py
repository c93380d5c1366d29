"""Context parallelism (CP) in the executor: every sequence split over the ranks of a CP group.

Layout (load-balanced causal chunks, Llama 3's and torch's head-tail order): a sequence of s tokens is cut into
2 * cp chunks of s / (2 cp); CP rank r holds chunk r followed by chunk 2cp-1-r, so under the causal mask every rank
attends to the same number of (query, key) pairs. A rank's tokens keep their real positions (`positions`): RoPE
angles, learned position embeddings and the causal mask all read them, never 0..s/cp. `shard` gives a rank its share
of a [batch, seq] tensor (tokens, labels), `unshard` puts the cp shares back in sequence order.

Attention over the group (`ContextParallel.attention`), the plan's `cp_comm` (spec/plan.py CP_COMM):
- "allgather" (Llama 3's): each rank computes Q, K and V of its own tokens, all-gathers K and V over the group with
  torch's autograd-aware functional collective (`all_gather_single_autograd`, on CPU with gloo too: its backward
  reduce-scatters, i.e. sums, the K/V gradients onto the ranks that own the tokens), reorders them to sequence
  order and runs the model's attention for each of its chunks over the keys up to the chunk's end;
- "ring": the K/V block of each rank travels around the ring (cp - 1 steps of a one-peer all-to-all, autograd-aware:
  the backward sends the gradients back the other way) while each rank attends to the block it holds; the blockwise
  results merge by their log-sum-exp (`ring_attention`, explicit softmax in fp32). Blocks are not overlapped with
  their transfer here (the functional collective is waited on at once); the backward is autograd's, which keeps
  every visiting block's probabilities (no recomputation).

On CUDA, with SDPA ("flash"), no attention dropout and not under the per-op selective policy
(spec/frameworks.py `executor_torch_cp`, which the estimate reads too), torch's `context_parallel` runs the attention
instead: its ring attention over the flash / memory-efficient / cuDNN kernels, whose head-tail order is this one
(torch's _HeadTailLoadBalancer, on whenever seq_len divides by 2 cp), its K/V exchange by the plan's algorithm
(torch's rotate method "allgather", or "alltoall" for "ring"), partial outputs merged and gradients accumulated in
fp32 (torch's default convert_to_f32), grouped K/V as they are where the flash kernel takes them (`torch_ring_kv`).
What that costs:
autoconf/cost/cp_ring.py. `torch_attention` wraps the training step; it also shards a position buffer with torch's
load balancer and checks it equals `positions`. That path is UNTESTED here (no GPU in the sessions that wrote it);
on CPU both algorithms are this file's own.

K and V travel as one tensor concatenated along the head width (split back by width), so their widths may differ:
latent attention (execute/mla.py) exchanges each head's K of qk_nope + qk_rope and V of v_head_dim. torch's ring
on the CUDA path sends K and V flattened into one buffer, and SDPA there picks the memory-efficient or cuDNN kernel
for unequal widths (flash needs equal ones), both of which it wraps (read in torch 2.13's source, not run).

The weights are the same on every CP rank: the training loop reduces gradients over dp x cp (each rank's loss is the
mean over its own tokens; the average over the dp x cp ranks of those gradients is the single-process gradient).
"""

from __future__ import annotations

import contextlib

import torch

from autoconf.execute.window_attention import attend_within, lower_right, window_mask
from autoconf.spec.frameworks import executor_torch_cp
from autoconf.spec.plan import CP_COMM


def chunks_of(cp: int, rank: int) -> tuple[int, int]:
    """The two chunks (of 2 * cp) that CP rank `rank` holds, in the order it holds them."""
    return rank, 2 * cp - 1 - rank


def _chunk_len(seq_len: int, cp: int) -> int:
    if seq_len % (2 * cp):
        raise ValueError(f"context parallelism over {cp} ranks needs a sequence divisible by 2 x cp = {2 * cp} "
                         f"(got {seq_len})")
    return seq_len // (2 * cp)


def positions(seq_len: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """The real positions (int64, ascending) of the seq_len / cp tokens CP rank `rank` holds."""
    n = _chunk_len(seq_len, cp)
    return torch.cat([torch.arange(c * n, (c + 1) * n, device=device) for c in chunks_of(cp, rank)])


def block_in_window(seq_len: int, cp: int, rank: int, owner: int, window: int | None) -> bool:
    """Whether any of CP rank `rank`'s queries sees any key of CP rank `owner`'s block (their chunks' positions) in
    causal attention within `window` keys (None: the whole past): key chunk a reaches query chunk c (each n tokens)
    when a <= c and the nearest pair, max(0, (c - a - 1) n + 1) apart, lies within the window. The ring skips the others'
    math (their K/V still travel on), computed from the chunk bounds alone, no device tensor read."""
    n = _chunk_len(seq_len, cp)
    return any(a <= c and (window is None or max(0, (c - a - 1) * n + 1) < window)
               for c in chunks_of(cp, rank) for a in chunks_of(cp, owner))


def shard(x: torch.Tensor, cp: int, rank: int, dim: int = 1) -> torch.Tensor:
    """CP rank `rank`'s share of `x` along `dim` (the sequence): its two chunks, concatenated."""
    n = _chunk_len(x.shape[dim], cp)
    return torch.cat([x.narrow(dim, c * n, n) for c in chunks_of(cp, rank)], dim=dim)


def unshard(shares: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The inverse of `shard`: the shares of ranks 0..cp-1 put back in sequence order."""
    cp = len(shares)
    pieces: list = [None] * (2 * cp)
    for rank, share in enumerate(shares):
        for c, piece in zip(chunks_of(cp, rank), share.chunk(2, dim=dim)):
            pieces[c] = piece
    return torch.cat(pieces, dim=dim)


def gather_order(seq_len: int, cp: int, device=None) -> torch.Tensor:
    """For the cp shares concatenated in rank order: the index of each sequence position (an index_select of the
    concatenation by it equals `unshard`)."""
    return torch.cat([positions(seq_len, cp, r, device) for r in range(cp)]).argsort()


def attach(model, context: "ContextParallel") -> None:
    """Makes a model chunk's embeddings (its MTP modules' copy too) and attention layers (its MTP modules' blocks
    too) read `context` (positions and K/V exchange), and its MoE layers take their load-balancing statistics over
    the CP group (`MoE.aux_loss`)."""
    for embedding in (model.embed, model.mtp_embed):
        if embedding is not None:
            embedding.context = context
    for _, block in model.blocks():
        block.attention.context = context
        if hasattr(block.feed_forward, "sequence_group"):
            block.feed_forward.sequence_group = context.group


class ContextParallel:
    """One rank's view of its CP group: its token positions and the attention over the group its layers call, by
    `algorithm` (the plan's cp_comm, one of spec/plan.py CP_COMM). `uses_torch`: the CUDA path (torch's ring
    attention patches SDPA inside `torch_attention`), its rotate method by the algorithm."""

    def __init__(self, mesh, seq_len: int, device: torch.device, algorithm: str = "allgather",
                 uses_torch: bool = False):
        if algorithm not in CP_COMM:
            raise ValueError(f"context-parallel attention {algorithm!r} is not one of {', '.join(CP_COMM)}")
        self.algorithm = algorithm
        self.mesh, self.group = mesh, mesh.get_group()
        self.cp, self.rank, self.seq_len = mesh.size(), mesh.get_local_rank(), seq_len
        self.uses_torch = uses_torch
        self.lay_out(device)

    def lay_out(self, device) -> None:
        """The rank's positions, the all-gather's order, and for the all-gather's attention, a chunk at a time, the
        end of each chunk (its queries are the last of the keys up to it) and that chunk's causal bias."""
        self.positions = positions(self.seq_len, self.cp, self.rank, device)
        self.order = gather_order(self.seq_len, self.cp, device)
        chunk = _chunk_len(self.seq_len, self.cp)
        self.chunk_ends = [(c + 1) * chunk for c in chunks_of(self.cp, self.rank)]
        self.chunk_causal = [lower_right(chunk, end) for end in self.chunk_ends]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """[batch, heads, seq/cp, dim] local shares -> [batch, heads, seq, dim] in sequence order, with autograd
        (the backward sums every rank's gradient of a K/V share onto its owner)."""
        from torch.distributed._functional_collectives import all_gather_single_autograd

        local = t.movedim(2, 0).contiguous()  # the functional collective gathers along dim 0 only
        everyone = all_gather_single_autograd(local, 0, self.group)
        return everyone.index_select(0, self.order).movedim(0, 2)

    def rotate(self, t: torch.Tensor) -> torch.Tensor:
        """The ring step: sends `t` [batch, heads, n, dim] to the next CP rank and returns the previous rank's, with
        autograd (the gradient goes back the other way). One all-to-all that moves data to one peer only."""
        from torch.distributed._functional_collectives import all_to_all_single_autograd

        local = t.movedim(2, 0).contiguous()
        n, to, since = local.shape[0], (self.rank + 1) % self.cp, (self.rank - 1) % self.cp
        sizes = [n if r == to else 0 for r in range(self.cp)], [n if r == since else 0 for r in range(self.cp)]
        return all_to_all_single_autograd(local, sizes[1], sizes[0], self.group).movedim(0, 2)

    def ring_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                       window: int | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(QK^T / sqrt(d)) V of this rank's queries over the whole sequence (within a sliding `window`
        where given), K/V visiting in cp - 1 ring steps (own block first). Each block's partial result is merged by
        the running log-sum-exp: with m the running row maximum (a constant of the math, so detached),
        O = sum_b exp(m_b - m) P_b V_b and l = sum_b exp(m_b - m) rowsum(P_b), the output O / l; the `sinks` add
        exp(sink - m) to l. A query row that no key of a block may see adds nothing; a block no query sees within
        the window is not computed (`block_in_window`). Autograd differentiates through the merge and the
        rotations."""
        scale = q.shape[-1] ** -0.5
        repeat = q.shape[1] // k.shape[1]
        kv, owner, widths = torch.cat([k, v], dim=-1), self.rank, [k.shape[-1], v.shape[-1]]
        out = total = peak = None
        for step in range(self.cp):
            if step:
                kv, owner = self.rotate(kv), (owner - 1) % self.cp
            used = block_in_window(self.seq_len, self.cp, self.rank, owner, window)
            if not used:  # no query of this rank sees a key of the block (its K/V still travel on)
                continue
            kb, vb = (t.repeat_interleave(repeat, dim=1) for t in kv.split(widths, dim=-1))
            seen = window_mask(self.positions, positions(self.seq_len, self.cp, owner, q.device), window)
            scores = ((q @ kb.transpose(-2, -1)) * scale).float().masked_fill(~seen, float("-inf"))
            block_peak = scores.amax(dim=-1, keepdim=True).detach()
            block_peak = torch.where(torch.isfinite(block_peak), block_peak, torch.zeros_like(block_peak))
            probs = (scores - block_peak).exp()
            part, part_total = torch.nn.functional.dropout(probs, dropout_p).to(q.dtype) @ vb, probs.sum(-1, True)
            if out is None:
                out, total, peak = part.float(), part_total, block_peak
                continue
            new_peak = torch.maximum(peak, block_peak)
            old_w, new_w = (peak - new_peak).exp(), (block_peak - new_peak).exp()
            out, total, peak = out * old_w + part.float() * new_w, total * old_w + part_total * new_w, new_peak
        if not used:  # every rank's backward must run every rotation's collective: tie the last one to the output
            out = out + 0.0 * kv.float().sum()
        if sinks is not None:  # the sink adds exp(its logit) to each row's denominator, nothing to the output
            sink = sinks.float().view(1, -1, 1, 1)
            new_peak = torch.maximum(peak, sink).detach()
            old_w = (peak - new_peak).exp()
            out, total = out * old_w, total * old_w + (sink - new_peak).exp()
        return (out / total).to(q.dtype)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, attend,
                  as_op: bool = False, window: int | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's queries attending to the whole sequence, or under a sliding `window` to the window's keys
        before each (every path masks real positions with `window_mask`). `attend(q, k, v, mask, dropout_p)` is the
        model's attention math (mask: True where a query may see a key; None: causal over equal positions; it adds
        the layer's attention sinks itself); the ring and the op add this rank's heads' `sinks`.
        - "allgather": every rank's K and V (one collective for both) in sequence order; each of the rank's two
          chunks attends to the keys up to its end, its queries the last of them (`attend_within`: the causal
          bias, or the window's band or mask), so no [seq/cp, seq] mask is built;
        - "ring": `ring_attention`;
        - the torch path: the local K and V as `torch_ring_kv` gives them, under is_causal; torch's patched SDPA
          exchanges them;
        - `as_op` (a block under the per-op selective policy): the exchange and the attention as one custom op by
          the plan's algorithm on every device (execute/cp_attention.py), whose output the policy saves. On CUDA
          autoconf's own CP attention always runs as that op where there is no attention dropout: its fused kernels
          keep no scores, where the ring's and the all-gather's autograd math below keeps every block's (the CPU
          paths, and CUDA's with dropout)."""
        if self.uses_torch:
            assert window is None and sinks is None, "frameworks.executor_torch_cp keeps these off torch's ring"
            return attend(q, *torch_ring_kv(q, k, v, dropout_p), None, dropout_p)
        if as_op or (q.device.type == "cuda" and dropout_p == 0.0):
            from autoconf.execute.cp_attention import cp_attention

            assert dropout_p == 0.0, "spec/support.py refuses the per-op policy with CP and attention dropout"
            return cp_attention(q, k, v, self.group.group_name, self.algorithm, self.seq_len, window or 0, sinks)[0]
        if self.algorithm == "ring":
            return self.ring_attention(q, k, v, dropout_p, window, sinks)
        k, v = self.gather(torch.cat([k, v], dim=-1)).split([k.shape[-1], v.shape[-1]], dim=-1)
        outs = []
        for queries, end, causal in zip(q.chunk(2, dim=2), self.chunk_ends, self.chunk_causal):
            outs.append(attend_within(attend, queries, k[:, :, :end], v[:, :, :end], window, dropout_p, causal))
        return torch.cat(outs, dim=2)

    def torch_attention(self):
        """The context the training step runs in: torch's `context_parallel` on the CUDA path (UNTESTED here),
        else nothing."""
        if not self.uses_torch:
            return contextlib.nullcontext()
        return _torch_context(self)


def torch_ring_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float):
    """K and V as torch's ring attention is handed them: grouped, where SDPA's flash kernel takes them so (its GQA;
    the ring then exchanges and accumulates them at the grouped width, as torchtitan's enable_gqa does), else
    repeated to the query heads (the memory-efficient and cuDNN kernels, the ring's others, take no groups).
    torch's ring is shape-agnostic in the heads: tests/test_cp_ring_probe.py runs it on gloo with the CPU flash
    kernel on grouped and on repeated K/V and finds the same outputs and gradients."""
    repeat = q.shape[1] // k.shape[1]
    if repeat == 1:
        return k, v
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    if can_use_flash_attention(SDPAParams(q, k, v, None, dropout_p, True, True)):
        return k, v
    return k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)


@contextlib.contextmanager
def _torch_context(ctx: ContextParallel):
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    set_rotate_method({"allgather": "allgather", "ring": "alltoall"}[ctx.algorithm])
    probe = torch.arange(ctx.seq_len, device=ctx.positions.device).unsqueeze(0)
    with context_parallel(ctx.mesh, buffers=[probe], buffer_seq_dims=[1], no_restore_buffers={probe}):
        if not torch.equal(probe[0], ctx.positions):
            raise RuntimeError(f"torch's context_parallel gives CP rank {ctx.rank} positions "
                               f"{probe[0].tolist()[:8]}..., autoconf's layout {ctx.positions.tolist()[:8]}...")
        yield


def uses_torch_attention(config, device_type: str, model) -> bool:
    """Whether torch's context_parallel runs the attention: CUDA and spec/frameworks.py `executor_torch_cp` (SDPA,
    no attention dropout, no sliding window, not the per-op selective policy), the rule the estimate reads too."""
    return device_type == "cuda" and executor_torch_cp(config, model)
