"""Context parallelism in the executor (autoconf/execute/context_parallel.py).

Fast: the load-balanced chunking, its positions and its inverse; the sharded attention and RoPE equal the full
sequence's on each rank's share. Slow (torchrun, CPU + gloo): layouts with cp > 1 train to the single-process
losses and gradient norms, and a checkpoint written at cp2 resumes in layouts without CP.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoconf.execute import context_parallel as cpx
from autoconf.execute.model import Attention, _rope
from autoconf.spec.model import ModelSpec

LLAMA = ModelSpec(name="test-llama", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=176, vocab_size=256, max_seq_len=64)


@pytest.mark.parametrize("cp", [1, 2, 4, 8])
def test_shards_partition_the_sequence_and_unshard_inverts(cp):
    """Each rank holds chunks r and 2cp-1-r with their real positions; the shares cover every position once;
    `unshard` and the gather order both restore the sequence; every rank has the same causal work."""
    seq = 32
    x = torch.randint(0, 1000, (3, seq))
    shares = [cpx.shard(x, cp, r) for r in range(cp)]
    assert torch.equal(cpx.unshard(shares), x)
    assert torch.equal(torch.cat(shares, dim=1)[:, cpx.gather_order(seq, cp)], x)
    n = seq // (2 * cp)
    everyone = []
    for r, share in enumerate(shares):
        pos = cpx.positions(seq, cp, r)
        assert share.shape == (3, seq // cp)
        assert torch.equal(share, x[:, pos])  # the tokens a rank holds are those at its positions
        assert pos[:n].tolist() == list(range(r * n, (r + 1) * n))
        assert pos[n:].tolist() == list(range((2 * cp - 1 - r) * n, (2 * cp - r) * n))
        everyone += pos.tolist()
    assert sorted(everyone) == list(range(seq))
    work = {int(cpx.causal_mask(seq, cp, r).sum()) for r in range(cp)}
    assert work == {seq * (seq + 1) // 2 // cp}


def test_a_sequence_no_chunking_splits_is_one_clear_error():
    with pytest.raises(ValueError, match="divisible by 2 x cp = 8"):
        cpx.shard(torch.zeros(1, 36), 4, 0)


class _Gathered:
    """What `ContextParallel` hands rank r's attention: the whole sequence's K and V, r's positions and mask."""

    def __init__(self, k, v, seq, cp, rank):
        self.k, self.v, self.local = k, v, cpx.shard(k, cp, rank, dim=2)
        self.positions, self.mask = cpx.positions(seq, cp, rank), cpx.causal_mask(seq, cp, rank)

    def keys_values(self, k, v, q_heads):
        assert torch.equal(k, self.local)  # the layer hands over its own share
        return self.k, self.v, self.mask


@pytest.mark.parametrize("attention", ["flash", "standard"])
@pytest.mark.parametrize("cp", [2, 4])
def test_a_rank_attends_like_the_full_sequence_on_its_share(attention, cp):
    """With every rank's K/V and the mask of real positions, a rank's attention output (grouped K/V) and its RoPE
    are the full sequence's at its positions."""
    seq, b, d = 32, 2, LLAMA.head_dim
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, LLAMA.num_heads, seq, d, generator=gen)
    k, v = (torch.randn(b, LLAMA.num_kv_heads, seq, d, generator=gen) for _ in range(2))
    layer = Attention(LLAMA, attention).eval()
    full = layer.core(q, k, v)
    rotated = _rope(q, LLAMA.rope_theta, torch.arange(seq))
    for r in range(cp):
        layer.context = _Gathered(k, v, seq, cp, r)
        share = layer.core(cpx.shard(q, cp, r, dim=2), cpx.shard(k, cp, r, dim=2), cpx.shard(v, cp, r, dim=2))
        torch.testing.assert_close(share, cpx.shard(full, cp, r, dim=2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_rope(cpx.shard(q, cp, r, dim=2), LLAMA.rope_theta, layer.context.positions),
                                   cpx.shard(rotated, cp, r, dim=2))
    # the reference is really causal: the first token's output is its own value
    torch.testing.assert_close(full[:, :, 0], v.repeat_interleave(2, dim=1)[:, :, 0])
    assert not torch.allclose(F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)),
                              full)
