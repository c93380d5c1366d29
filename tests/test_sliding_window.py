"""Sliding-window attention (Mistral, Qwen's sliding layers, GPT-OSS's alternating ones): the spec, the cost model and
the executor.

Spec: `sliding_window` and `full_attention_layers` checked with one line each, the pair share exact against a count.
Cost: under a kernel that skips what a window leaves out a sliding layer's flash core does its window's share of the
causal pairs (the model's FLOPs too), under the executor's masks the band's blocks (the whole square up to twice the
window), and the standard path the whole square; a window that holds the sequence changes nothing. Executor,
fast: every attention path masks the window as a naive softmax over the window does. Slow (the session's shared torchrun jobs, CPU + gloo): a model
with a window of 6 tokens in three of its four layers trains at cp2 (ring; all-gather under the per-op policy, the
custom op) and under seq1f1b (uneven chunks, pp2) to the single-process losses, which differ from the same model's
without the window; with a window of 3 at cp4 (ring, and the custom op's ring) the ring skips the blocks no query
reaches and still trains to one process's losses.
"""

from __future__ import annotations

import dataclasses

import pytest

from autoconf.cost.compute import model_pieces
from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.model import ModelSpec, executor_window_work, window_pair_share
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
import executor_jobs
from executor_jobs import Layout, assert_matches_reference
from plan_helpers import even_plan

WINDOWED = ModelSpec(name="window", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                     ffn_hidden_size=176, vocab_size=256, max_seq_len=64, sliding_window=6,
                     full_attention_layers=(1,))
FULL = dataclasses.replace(WINDOWED, name="full", sliding_window=None, full_attention_layers=())


# ---- spec ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s, w", [(1, 1), (7, 3), (32, 6), (32, 32), (32, 40), (1000, 128)])
def test_the_pair_share_is_the_count_of_pairs_a_window_leaves(s, w):
    pairs = sum(min(i + 1, w) for i in range(s))
    assert window_pair_share(s, w) == pytest.approx(pairs / (s * (s + 1) / 2), rel=1e-12)


def test_windows_are_per_layer_and_their_mean_is_the_blocks_share():
    assert [WINDOWED.attention_window(i) for i in range(4)] == [6, None, 6, 6]
    assert WINDOWED.sliding_layer_count == 3 and FULL.sliding_layer_count == 0
    assert WINDOWED.attention_work_share(32) == pytest.approx((3 * window_pair_share(32, 6) + 1) / 4)
    assert WINDOWED.attention_work_share(6) == FULL.attention_work_share(4096) == 1.0
    assert WINDOWED.context_problem(64) is None  # a window limits no sequence


@pytest.mark.parametrize("fields, needle", [
    ({"full_attention_layers": (1,), "sliding_window": None}, "full_attention_layers needs a sliding_window"),
    ({"full_attention_layers": (4,)}, "full_attention_layers 4 is no layer of the 4; give indices from 0 to 3"),
    ({"full_attention_layers": (-1, 9)}, "full_attention_layers -1, 9 are no layer of the 4"),
    ({"full_attention_layers": (0, 1, 2, 3)}, "lists every layer, so none slides its window; set sliding_window"),
    ({"full_attention_layers": ("1",)}, "full_attention_layers '1' is not a layer index"),
    ({"full_attention_layers": 1}, "full_attention_layers must be a list of layer indices"),
])
def test_bad_full_attention_layers_are_one_line(fields, needle):
    with pytest.raises(UserError) as err:
        dataclasses.replace(WINDOWED, **fields)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ---- cost ---------------------------------------------------------------------------------------------------------
H100 = load_cluster("dgx-h100-80g", nodes=1)
LLAMA = dataclasses.replace(PRESETS["llama3.1-8b"], name="llama-window")


def _config(seq: int, attention: str = "flash", **changes) -> ParallelConfig:
    return ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=8, seq_len=seq, zero_stage=3,
                          recompute="full", attention=attention, **changes)


SKIPS = execution("megatron-core")  # Transformer Engine's flash with window_size: skips what a window leaves out


def _core(model, config, ex=SKIPS) -> float:
    return model_pieces(model, H100, config, execution=ex).attention_core.total


def test_a_sliding_layer_costs_its_windows_share_and_a_window_that_holds_the_sequence_nothing():
    """Under a kernel that skips the band's outside (megatron-core's), a sliding layer costs its pairs' share, at the
    speed of a causal sequence of twice the window; under the executor's masks (`masked_attention`) the band's
    blocks, or the whole square under twice the window, and a sink key's wider products; the standard path the
    whole square for any model."""
    seq = 32768
    full = _core(LLAMA, _config(seq))
    every = dataclasses.replace(LLAMA, sliding_window=4096)
    alternate = dataclasses.replace(every, full_attention_layers=tuple(range(1, 32, 2)))
    slid, half = _core(every, _config(seq)), _core(alternate, _config(seq))
    share = window_pair_share(seq, 4096)
    # at twice the window the kernel runs at 8192's speed, so a little slower per FLOP than at 32768
    assert share * full < slid < 1.2 * share * full
    assert half == pytest.approx((full + slid) / 2, rel=1e-9)
    wide = dataclasses.replace(LLAMA, sliding_window=seq)
    assert _core(wide, _config(seq)) == _core(LLAMA, _config(seq))
    executor = execution("autoconf")  # the band's blocks beyond twice the window, one mask's square below it
    band, _ = executor_window_work(seq, 4096)
    full_exec = _core(LLAMA, _config(seq), executor)
    assert band * full_exec < _core(every, _config(seq), executor) < 1.2 * band * full_exec
    assert 2 * share < band < 2.2 * share  # 2 w - 1 keys scored per query where at most w are seen
    short = 6000
    assert _core(every, _config(short), executor) == pytest.approx(
        2 * short / (short + 1) * _core(LLAMA, _config(short), executor), rel=1e-9)
    sinks = dataclasses.replace(LLAMA, attention_sinks=True)  # a sink key: Q, K and V 8 columns wider, still causal
    assert _core(sinks, _config(seq), executor) == pytest.approx((256 + 16) / 256 * full_exec, rel=1e-9)
    assert _core(sinks, _config(seq)) == _core(LLAMA, _config(seq))  # a kernel that takes sinks natively
    standard = _config(seq, attention="standard")
    assert _core(every, standard) == _core(LLAMA, standard)


def test_model_flops_count_the_pairs_each_layer_attends_and_the_step_is_faster():
    seq = 32768
    every = dataclasses.replace(LLAMA, sliding_window=4096)
    attention = LLAMA.layer_attention_flops(seq, 1)
    assert every.layer_attention_flops(seq, 1) == pytest.approx(attention * window_pair_share(seq, 4096))
    assert every.layer_attention_flops(seq, 1, windowed=False) == attention
    assert every.model_flops_per_iteration(seq, 8) < LLAMA.model_flops_per_iteration(seq, 8)
    plain, slid = (estimate(m, H100, _config(seq), execution=SKIPS).prediction for m in (LLAMA, every))
    assert slid["iteration_time_s"] < 0.8 * plain["iteration_time_s"]
    assert slid["peak_memory_bytes"] == plain["peak_memory_bytes"]  # flash keeps no scores either way


def test_megatron_gets_the_window_and_its_period_and_torchtitan_a_note():
    """--window-size counts the keys left of the query (TE's window): 6 keys are "5,0". Full layers every N-th
    (1-based) are --window-attn-skip-freq N; any other pattern is a note, as is torchtitan's missing window."""
    from autoconf.report.exporters import megatron_flags, torchtitan_config

    def flags_and_notes(model):
        flags, notes = megatron_flags(even_plan(model, global_batch=4))
        return {k: v for k, v in flags if "window" in k}, [n for n in notes if "window" in n or "full-att" in n]

    alternating = dataclasses.replace(WINDOWED, full_attention_layers=(1, 3))
    assert flags_and_notes(alternating) == ({"--window-size": "5,0", "--window-attn-skip-freq": 2}, [])
    every = dataclasses.replace(WINDOWED, full_attention_layers=())
    assert flags_and_notes(every) == ({"--window-size": "5,0"}, [])
    flags, notes = flags_and_notes(WINDOWED)  # layer 1 only: no period
    assert flags == {"--window-size": "5,0"} and "follow no period" in notes[0]
    assert flags_and_notes(FULL) == ({}, [])
    text = torchtitan_config(even_plan(WINDOWED, global_batch=4))
    assert "no sliding-window attention" in text and "6-token window in 3 of 4" in text


# ---- executor -------------------------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")


def _naive(q, k, v, window):
    """softmax over each query's window of keys, written out."""
    repeat = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
    s = q.shape[2]
    i = torch.arange(s)
    seen = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    return scores.masked_fill(~seen, float("-inf")).softmax(-1) @ v


def _qkv(seq: int = 32):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, WINDOWED.num_heads, seq, WINDOWED.head_dim, generator=gen)
    k, v = (torch.randn(2, WINDOWED.num_kv_heads, seq, WINDOWED.head_dim, generator=gen) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("attention", ["flash", "standard"])
def test_each_layer_attends_within_its_window(attention):
    from autoconf.execute.model import Block

    q, k, v = _qkv()
    sliding, full = (Block(WINDOWED, attention, layer).attention.eval() for layer in (0, 1))
    torch.testing.assert_close(sliding.core(q, k, v), _naive(q, k, v, 6), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full.core(q, k, v), _naive(q, k, v, 32), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(sliding.core(q, k, v), full.core(q, k, v))


@pytest.mark.parametrize("cp", [2, 4])
def test_a_cp_rank_masks_the_window_at_its_real_positions(cp):
    """The all-gather path's mask: a rank's share of the windowed output is the whole sequence's at its positions."""
    from autoconf.execute import context_parallel as cpx
    from autoconf.execute.model import Attention
    from autoconf.execute.window_attention import window_mask

    q, k, v = _qkv()
    layer = Attention(WINDOWED, "flash", 6).eval()
    whole = layer.core(q, k, v)
    for rank in range(cp):
        mine = cpx.positions(32, cp, rank)
        local = layer.attend(cpx.shard(q, cp, rank, dim=2), k, v, window_mask(mine, torch.arange(32), 6), 0.0)
        torch.testing.assert_close(local, cpx.shard(whole, cp, rank, dim=2), rtol=1e-5, atol=1e-6)


def test_a_seq1f1b_chunk_sees_the_earlier_chunks_keys_within_the_window():
    """Chunk j of the uneven split [0, 11, 20, 27, 32] (padded to 11) reads the earlier chunks' real K/V and its
    own; its real queries' outputs are the whole sequence's."""
    from autoconf.execute.model import Attention
    from autoconf.execute.seq_chunks import LayerChunks, SequenceChunks

    q, k, v = _qkv()
    bounds = [0, 11, 20, 27, 32]
    shared = SequenceChunks(bounds, torch.device("cpu"))
    chunks = LayerChunks(shared)
    layer = Attention(WINDOWED, "flash", 6).eval()
    whole = _naive(q, k, v, 6)
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        shared.start(j)  # micro-batch 0, chunk j

        def padded(t):
            return torch.nn.functional.pad(t[:, :, a:b], (0, 0, 0, shared.padded_len - (b - a)))

        with torch.no_grad():
            out = chunks.attention(padded(q), padded(k), padded(v), 0.0, layer.attend, window=6)
        torch.testing.assert_close(out[:, :, :b - a], whole[:, :, a:b], rtol=1e-5, atol=1e-6)
        chunks.kv.setdefault(0, []).append((k[:, :, a:b], v[:, :, a:b]))


# ---- layouts under torchrun ---------------------------------------------------------------------------------------
OPS = {"recompute": "selective", "selective_recompute": "alternate_matmuls"}  # the per-op policy


def _seq1f1b_plan():
    plan = even_plan(WINDOWED, pp=2, schedule="seq1f1b", global_batch=4, micro_batch=2)
    plan.config = dataclasses.replace(plan.config, seq_chunks=4, seq_split="work")
    plan.sequence_split = [0, 11, 20, 27, 32]
    plan.validate()
    return plan


def _cp_plan(cp_comm: str, model=WINDOWED, cp: int = 2, **changes):
    plan = even_plan(model, cp=cp, global_batch=4, micro_batch=2, **changes)
    plan.config = dataclasses.replace(plan.config, cp_comm=cp_comm)
    plan.validate()
    return plan


# A window of 3 over cp4 chunks of 4 tokens: the ring skips the blocks no query reaches (half of them on ranks 0 and 3)
NARROW = dataclasses.replace(WINDOWED, name="narrow", sliding_window=3)
LAYOUTS = {"window": Layout(1, even_plan(WINDOWED, global_batch=4)),
           "full": Layout(1, even_plan(FULL, global_batch=4)),
           "narrow": Layout(1, even_plan(NARROW, global_batch=4)),
           "narrow-cp4-ring": Layout(4, _cp_plan("ring", NARROW, cp=4)),
           "narrow-cp4-ops-ring": Layout(4, _cp_plan("ring", NARROW, cp=4, **OPS)),
           "window-cp2-ring": Layout(2, _cp_plan("ring")),
           "window-cp2-ops-allgather": Layout(2, _cp_plan("allgather", **OPS)),
           "window-pp2-seq1f1b-k4-uneven": Layout(2, _seq1f1b_plan())}
executor_jobs.register("window", LAYOUTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, lay in LAYOUTS.items() if lay.world > 1])
def test_windowed_layouts_train_as_one_process(name, tmp_path_factory):
    """Every step's loss and gradient norm equal the single-process run's within 1e-4 relative (fp32, 3 steps), and
    the window matters: the same model without it trains to other losses."""
    out = executor_jobs.results("window", tmp_path_factory)
    executor_jobs.assert_differs(assert_matches_reference(out, name), out["full"]["records"])


def test_a_ring_block_is_skipped_exactly_when_no_query_sees_any_of_its_keys():
    """`block_in_window` from chunk bounds against the masks themselves, for every rank pair of cp 1-8, two
    sequences and windows from 1 to beyond the sequence."""
    from autoconf.execute.context_parallel import block_in_window, positions
    from autoconf.execute.window_attention import window_mask

    for cp in (1, 2, 4, 8):
        for seq in (8 * cp, 14 * cp):
            for window in (None, 1, 2, 3, 5, 8, 13, 1000):
                for rank in range(cp):
                    for owner in range(cp):
                        seen = window_mask(positions(seq, cp, rank), positions(seq, cp, owner), window)
                        assert block_in_window(seq, cp, rank, owner, window) == bool(seen.any())
    assert not block_in_window(32, 4, 0, 2, 3)  # (the narrow layouts above skip such blocks)
