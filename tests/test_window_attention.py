"""The executor's attention within a sliding window without an s x s mask (execute/window_attention.py), and attention
sinks that keep the kernel causal.

- `banded_attention` gives the outputs and gradients (q, k, v, sinks) of the same attention under one dense mask of
  the window, for whole sequences and for queries that are the last of the keys (seq1f1b chunks, a CP rank's chunk
  over the all-gathered keys), uneven block counts, grouped K/V, both kernels, with and without sinks;
- the scores it computes are `spec.model.executor_window_work`'s count, which the cost model reads, and its mask is
  O(s w), not s^2;
- a causal layer with sinks under the fused kernel (one leading query more, no mask tensor; for queries that are the
  last of the keys torch's lower-right bias from `lower_right`) equals the sink column of the explicit mask.
"""

from __future__ import annotations

import dataclasses

import pytest

from autoconf.spec.model import ModelSpec, executor_window_work, window_band

torch = pytest.importorskip("torch")
from torch.nn.attention.bias import CausalBias  # noqa: E402

SPEC = ModelSpec(name="band", arch="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                 ffn_hidden_size=176, vocab_size=256, max_seq_len=128, sliding_window=6)
SINKS = dataclasses.replace(SPEC, name="band-sinks", attention_sinks=True)


def _layer(spec: ModelSpec, attention: str):
    from autoconf.execute.model import Attention

    layer = Attention(spec, attention, spec.sliding_window).eval()
    if layer.sinks is not None:
        with torch.no_grad():
            layer.sinks.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    return layer


def _leaves(queries: int, keys: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, SPEC.num_heads, queries, SPEC.head_dim, generator=gen)
    k, v = (torch.randn(2, SPEC.num_kv_heads, keys, SPEC.head_dim, generator=gen) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, v)]


def _outputs_and_grads(layer, run, queries: int, keys: int):
    q, k, v = _leaves(queries, keys)
    out = run(q, k, v)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [q, k, v] + ([layer.sinks] if layer.sinks is not None else [])
    return [out] + list(torch.autograd.grad((out * weights).sum(), params))


@pytest.mark.parametrize("spec", [SPEC, SINKS], ids=["plain", "sinks"])
@pytest.mark.parametrize("attention", ["flash", "standard"])
@pytest.mark.parametrize("queries, keys, window", [(32, 32, 6), (11, 22, 6), (7, 40, 3), (33, 33, 16), (12, 12, 1),
                                                   (9, 64, 20)])
def test_the_band_is_the_dense_mask_of_the_window(spec, attention, queries, keys, window):
    from autoconf.execute.window_attention import banded_attention, last_queries_mask

    assert window_band(keys, window) == window  # the band is what the executor runs here
    layer = _layer(spec, attention)
    dense = _outputs_and_grads(layer, lambda q, k, v: layer.attend(
        q, k, v, last_queries_mask(queries, keys, window, q.device), 0.0), queries, keys)
    band = _outputs_and_grads(layer, lambda q, k, v: banded_attention(layer.attend, q, k, v, window, 0.0),
                              queries, keys)
    for got, want in zip(band, dense):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seq, window", [(32, 6), (33, 16), (100, 7), (24, 12), (23, 12), (12, 12), (5, 40)])
def test_the_scores_computed_are_the_counts_the_cost_model_reads(seq, window):
    """Every score SDPA is handed (queries x keys of each call, the batch of blocks included) against
    `executor_window_work`'s share of the s (s + 1) / 2 causal pairs; the band's mask holds O(s w) entries."""
    from autoconf.execute.window_attention import attend_within

    calls = []

    def attend(q, k, v, mask, p):
        calls.append((q.shape[0] // 2 * q.shape[2] * k.shape[2], mask))
        return q.new_zeros(*q.shape[:-1], v.shape[-1])

    q, k, v = _leaves(seq, seq)
    attend_within(attend, q, k, v, window, 0.0)
    (scores, mask), = calls
    share, _ = executor_window_work(seq, window)
    if mask is None:  # the window holds the sequence: plain causal attention, its kernel skips the upper half
        assert share == 1.0 and seq <= window
        return
    assert scores == pytest.approx(share * seq * (seq + 1) / 2)
    if window_band(seq, window) is not None:
        assert mask.numel() == 2 * scores  # one entry per score of each of the batch's two sequences
        assert scores < 2 * window * (seq + window)


@pytest.mark.parametrize("queries, keys", [(16, 16), (5, 16)])
def test_a_causal_layer_with_sinks_stays_causal_and_equals_the_sink_column(queries, keys):
    from autoconf.execute.model import Attention
    from autoconf.execute.window_attention import last_queries_mask, lower_right

    layer = Attention(SINKS, "flash").eval()
    with torch.no_grad():
        layer.sinks.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    causal = None if queries == keys else lower_right(queries, keys)  # seq1f1b's chunks, the CP all-gather's
    handed = []
    kernel = layer._kernel
    layer._kernel = lambda q, k, v, mask, p, scale: handed.append(mask) or kernel(q, k, v, mask, p, scale)
    fused = _outputs_and_grads(layer, lambda q, k, v: layer.attend(q, k, v, causal, 0.0), queries, keys)
    assert all(mask is None or isinstance(mask, CausalBias) for mask in handed)  # no mask tensor
    explicit = _outputs_and_grads(layer, lambda q, k, v: layer.attend(
        q, k, v, last_queries_mask(queries, keys, None, q.device), 0.0), queries, keys)
    for got, want in zip(fused, explicit):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_bench_refuses_a_sequence_shorter_than_the_band_in_one_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "scripts/window_attention_bench.py", "--seq", "100", "--window", "128"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--window" in proc.stderr
