"""Context parallelism (CP) in the executor: every sequence split over the ranks of a CP group.

Layout (load-balanced causal chunks, Llama 3's and torch's head-tail order): a sequence of s tokens is cut into
2 * cp chunks of s / (2 cp); CP rank r holds chunk r followed by chunk 2cp-1-r, so under the causal mask every rank
attends to the same number of (query, key) pairs. A rank's tokens keep their real positions (`positions`): RoPE
angles, learned position embeddings and the causal mask all read them, never 0..s/cp. `shard` gives a rank its share
of a [batch, seq] tensor (tokens, labels), `unshard` puts the cp shares back in sequence order.

Attention over the group (`ContextParallel.keys_values`, "allgather", Llama 3's): each rank computes Q, K and V of
its own tokens, all-gathers K and V over the group with torch's autograd-aware functional collective
(`all_gather_single_autograd`: on CPU with gloo too; its backward reduce-scatters, i.e. sums, the K/V gradients
onto the ranks that own the tokens), reorders them to sequence order and attends with the mask query position >= key
position. The ring variant (K/V blocks passed around by P2P, log-sum-exp merging) is not built.

On CUDA, with SDPA ("flash") and no attention dropout, torch's `context_parallel` runs the attention instead: its
ring attention over the flash / memory-efficient kernels, whose head-tail order is this one (`torch_attention`
wraps the training step; it also shards a position buffer with torch's load balancer and checks it equals
`positions`). That path is UNTESTED here (no GPU in the session that wrote it); everything else runs `keys_values`.

The weights are the same on every CP rank: the training loop reduces gradients over dp x cp (each rank's loss is the
mean over its own tokens; the average over the dp x cp ranks of those gradients is the single-process gradient).
"""

from __future__ import annotations

import contextlib

import torch


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


def causal_mask(seq_len: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """Boolean [seq/cp, seq]: CP rank `rank`'s token i may attend to sequence position j when j <= its real
    position."""
    return positions(seq_len, cp, rank, device)[:, None] >= torch.arange(seq_len, device=device)[None, :]


def attach(model, context: "ContextParallel") -> None:
    """Makes a model chunk's embedding and attention layers read `context` (positions and K/V exchange)."""
    if model.embed is not None:
        model.embed.context = context
    for block in model.layers.values():
        block.attention.context = context


class ContextParallel:
    """One rank's view of its CP group: its token positions and the K/V exchange its attention layers call.

    `uses_torch`: the CUDA path (torch's ring attention patches SDPA inside `torch_attention`); then `keys_values`
    hands back the local K and V and no mask, and the attention runs SDPA with is_causal on the local shards.
    """

    def __init__(self, mesh, seq_len: int, device: torch.device, uses_torch: bool = False):
        self.mesh, self.group = mesh, mesh.get_group()
        self.cp, self.rank, self.seq_len = mesh.size(), mesh.get_local_rank(), seq_len
        self.uses_torch = uses_torch
        self.positions = positions(seq_len, self.cp, self.rank, device)
        self.order = gather_order(seq_len, self.cp, device)
        self.mask = causal_mask(seq_len, self.cp, self.rank, device)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """[batch, heads, seq/cp, dim] local shares -> [batch, heads, seq, dim] in sequence order, with autograd
        (the backward sums every rank's gradient of a K/V share onto its owner)."""
        from torch.distributed._functional_collectives import all_gather_single_autograd

        local = t.movedim(2, 0).contiguous()  # the functional collective gathers along dim 0 only
        everyone = all_gather_single_autograd(local, 0, self.group)
        return everyone.index_select(0, self.order).movedim(0, 2)

    def keys_values(self, k: torch.Tensor, v: torch.Tensor, q_heads: int):
        """(K, V, mask) for this rank's queries: every rank's keys and values in sequence order and the boolean
        causal mask [seq/cp, seq] from the real positions; or, on the torch path, the local K and V with their
        heads repeated to the `q_heads` query heads (torch's ring kernels are not given grouped K/V) and None."""
        if self.uses_torch:
            repeat = q_heads // k.shape[1]
            return k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1), None
        k, v = self.gather(torch.cat([k, v], dim=1)).chunk(2, dim=1)  # one collective for both
        return k, v, self.mask

    def torch_attention(self):
        """The context the training step runs in: torch's `context_parallel` on the CUDA path (UNTESTED here),
        else nothing."""
        if not self.uses_torch:
            return contextlib.nullcontext()
        return _torch_context(self)


@contextlib.contextmanager
def _torch_context(ctx: ContextParallel):
    from torch.distributed.tensor.experimental import context_parallel

    probe = torch.arange(ctx.seq_len, device=ctx.positions.device).unsqueeze(0)
    with context_parallel(ctx.mesh, buffers=[probe], buffer_seq_dims=[1], no_restore_buffers={probe}):
        if not torch.equal(probe[0], ctx.positions):
            raise RuntimeError(f"torch's context_parallel gives CP rank {ctx.rank} positions "
                               f"{probe[0].tolist()[:8]}..., autoconf's layout {ctx.positions.tolist()[:8]}...")
        yield


def uses_torch_attention(config, device_type: str, dropout: float) -> bool:
    """Whether torch's context_parallel runs the attention: CUDA, SDPA ("flash"), no attention dropout."""
    return device_type == "cuda" and config.attention == "flash" and dropout == 0.0
