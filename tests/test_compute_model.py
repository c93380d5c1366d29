"""Compute side of the cost model: GEMM efficiency against size, attention over sequence length in measured tables and
as published kernel curves, Megatron's sequence-parallel re-gather, and the power-capped bundled profile."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from autoconf.cost.compute import (PassTimes, attention_efficiency, gemms_time, layer_gemms, matmul_size_factor,
                                   model_pieces)
from autoconf.cost.estimate import estimate, sp_regather_time
from autoconf.errors import UserError
from autoconf.spec.cluster import ClusterProfile, load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from tests.plan_helpers import script_module
from tests.profile_helpers import SEQ, TINY, measured_cpu_profile


def _config(**kw) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=1, seq_len=2048, dtype="bf16")
    return ParallelConfig(**{**base, **kw})


def test_gemm_size_curve_is_monotone_held_at_its_ends_and_one_without_a_curve():
    """Bigger GEMMs never run at a lower fraction of the plateau; beyond the largest point the plateau itself; a
    profile without a curve runs every GEMM at efficiency["matmul"]."""
    h100 = load_cluster("dgx-h100-80g")
    sizes = [1e6, 1e8, 1e9, 4e9, 16e9, 64e9, 128e9, 1e12, 1e14]
    factors = [matmul_size_factor(h100, f) for f in sizes]
    assert all(a <= b for a, b in zip(factors, factors[1:]))
    assert factors[-1] == factors[-2] == 1.0 and 0 < factors[0] < 0.2
    flat = dataclasses.replace(h100, matmul_size_curve=None)
    assert all(matmul_size_factor(flat, f) == 1.0 for f in sizes)


def test_small_gemms_slow_a_small_model_and_leave_a_large_one_alone():
    """On a data-sheet profile a 125M-parameter block (GEMMs of a few GFLOP) takes longer than at the flat plateau,
    while a 1T block (every GEMM above the curve's last point) takes exactly as long."""
    h100 = load_cluster("dgx-h100-80g")
    flat = dataclasses.replace(h100, matmul_size_curve=None)
    small, large = PRESETS["gpt3-125m"], PRESETS["gpt-1t"]
    c = _config(tp=1)
    assert max(layer_gemms(small, 2048, 1, 1)) < 16e9
    assert model_pieces(small, h100, c).block.total > 1.05 * model_pieces(small, flat, c).block.total
    c8 = _config(tp=8)
    assert min(layer_gemms(large, 2048, 1, 8)) > 128e9
    assert model_pieces(large, h100, c8).block.total == pytest.approx(model_pieces(large, flat, c8).block.total)


def test_gemms_time_is_each_gemm_at_its_own_rate():
    h100 = load_cluster("dgx-h100-80g")
    peak = h100.device.peak("bf16") * h100.eff("matmul")
    one = gemms_time(h100, "bf16", [2e9])
    assert one == pytest.approx(2e9 / (peak * matmul_size_factor(h100, 2e9)))
    assert gemms_time(h100, "bf16", [2e9, 200e9]) == pytest.approx(one + 200e9 / peak)


def _one_length_profile() -> ClusterProfile:
    """measured_cpu_profile's tables: every block timed at seq SEQ only, micro-batches 1, 2, 4."""
    return measured_cpu_profile(tp_layers=False)


def test_measured_attention_grows_with_the_square_of_the_sequence_beyond_the_timed_length():
    """A table timed at one length: at 4x that length and one sequence, the attention core takes as long as at the
    timed length with 16 sequences' worth of b x s^2, i.e. more than the same tokens at the timed length (4
    sequences), while the MLP (linear in tokens) takes the same."""
    cpu = _one_length_profile()
    long = model_pieces(TINY, cpu, _config(seq_len=4 * SEQ, micro_batch_size=1, global_batch_size=1, dtype="fp32"))
    same_tokens = model_pieces(TINY, cpu, _config(seq_len=SEQ, micro_batch_size=4, global_batch_size=4,
                                                  dtype="fp32"))
    assert long.source == same_tokens.source == "measured"
    assert long.attention_core.forward > 1.5 * same_tokens.attention_core.forward
    assert long.block.total > same_tokens.block.total
    assert long.embedding.total == pytest.approx(same_tokens.embedding.total)


def test_measured_attention_at_a_timed_length_is_the_plain_interpolation_in_tokens():
    """At a timed length splitting the attention block into core and projections changes nothing: core + rest is
    the measured attention + 2 norms + MLP read in tokens."""
    cpu = _one_length_profile()
    entries = cpu.compute["entries"]
    share = cpu.efficiency["cpu_share"]["value"]
    pieces = model_pieces(TINY, cpu, _config(seq_len=SEQ, micro_batch_size=2, global_batch_size=2, dtype="fp32"))

    def timed(block):
        e = next(e for e in entries if e["block"] == block and e["tp"] == 1 and e["micro_batch"] == 2)
        return PassTimes(e["forward_s"], e["backward_input_s"], e["backward_weight_s"]).scaled(1 / share)

    expected = timed("attention") + timed("mlp") + timed("norm").scaled(2)
    assert pieces.block.forward == pytest.approx(expected.forward)
    assert pieces.block.backward_input == pytest.approx(expected.backward_input)
    assert pieces.block.backward_weight == pytest.approx(expected.backward_weight)


def test_megatron_sequence_parallel_pays_two_all_gathers_per_layer_in_the_backward():
    """Korthikanti Sec. 4.2.2: Megatron's SP keeps only the 1/tp slice of each column-parallel input and gathers it
    again in the backward. Under that layout the backward grows by exactly those gathers; without SP, or in the
    torch executor's layout (which keeps the gathered input), nothing is added."""
    model, a100 = PRESETS["gpt-22b"], load_cluster("dgx-a100-80g")
    c = _config(tp=8, micro_batch_size=4, global_batch_size=4, recompute="selective", sequence_parallel=True,
                dtype="fp16", attention="standard")
    megatron, ours = execution("megatron"), execution("autoconf")
    extra = sp_regather_time(model, a100, c, list(range(8)), megatron)
    assert extra > 0
    assert sp_regather_time(model, a100, c, list(range(8)), ours) == 0.0
    assert sp_regather_time(model, a100, dataclasses.replace(c, sequence_parallel=False), list(range(8)),
                            megatron) == 0.0
    with_sp = estimate(model, a100, c, execution=megatron).prediction["time_breakdown"]["tp_comm"]
    no_sp = estimate(model, a100, dataclasses.replace(c, sequence_parallel=False),
                     execution=megatron).prediction["time_breakdown"]["tp_comm"]
    assert with_sp == pytest.approx(no_sp + model.num_layers * extra, rel=0.02)


def test_power_capped_h100_profile_states_its_part():
    """torchtitan's H100s: 96 GiB of HBM2e at 2.4 TB/s, a bf16 peak between H100 NVL's and SXM's data sheets, the
    reason in the description, and the same GEMM size curve as the other data-sheet GPUs."""
    capped, sxm = load_cluster("grand-teton-h100-96g-500w"), load_cluster("dgx-h100-80g")
    assert capped.device.memory_bytes == 96 * 2**30 and capped.device.memory_bandwidth_Bps == 2.4e12
    assert 835e12 < capped.device.peak("bf16") < sxm.device.peak("bf16")
    assert "500 W" in capped.description and "HBM2e" in capped.description
    assert capped.matmul_size_curve == sxm.matmul_size_curve
    assert ClusterProfile.from_dict(capped.to_dict()).to_dict() == capped.to_dict()


@pytest.mark.parametrize("curve, field", [
    ({"points": [[0, 0.5], [10, 1.5]]}, "matmul_size_curve.points[1][1]"),
    ({"points": [[4, 0.5], [4, 0.9]]}, "distinct sizes"),
    ({"points": []}, "matmul_size_curve.points"),
    ({"points": [[1, 0.5, 3]]}, "matmul_size_curve.points[0]"),
    ([1, 2], "matmul_size_curve"),
])
def test_bad_gemm_size_curve_is_refused_with_the_field_named(curve, field):
    data = {**load_cluster("dgx-h100-80g").to_dict(), "matmul_size_curve": curve}
    with pytest.raises(UserError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ClusterProfile.from_dict(data)


def test_profiler_grid_times_attention_at_the_asked_lengths(tmp_path):
    """`--seq-len` adds attention-only entries at each asked length not already in the grid; every block keeps its
    default lengths; the table then predicts that length from a timed entry."""
    import torch.distributed as dist

    from autoconf.profile.compute import default_grid, measure_compute

    grid = default_grid(TINY, 2, quick=False, tiny=True, seq_lens=(32, 96))
    assert grid.seq_lens == (32,) and grid.attention_seq_lens == (96,)
    with pytest.raises(UserError, match="--seq-len"):
        default_grid(TINY, 2, quick=True, seq_lens=(0,))
    import torch

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        table = measure_compute(TINY, grid, torch.device("cpu"), "fp32", "cpu", lambda _: None, 1 << 10)
    finally:
        dist.destroy_process_group()
    at_96 = {(e["block"], e["tp"]) for e in table["entries"] if e["seq_len"] == 96}
    assert at_96 == {("attention", tp) for tp in grid.tps}
    assert {e["block"] for e in table["entries"] if e["seq_len"] == 32} == {"attention", "mlp", "norm",
                                                                            "embedding", "head"}


def test_layer_gemms_add_up_to_the_op_tables_matmul_flops_with_a_wide_head_dim():
    """The GEMMs the size curve is read at are the block's own: with head_dim x num_heads wider than hidden_size
    (as Qwen3 sets it) their FLOPs still sum to the op table's `layer_matmul_flops`, for both families."""
    from autoconf.spec.model import ModelSpec

    for arch in ("llama", "gpt"):
        model = ModelSpec(name="wide-heads", arch=arch, num_layers=2, hidden_size=2048, num_heads=32,
                          num_kv_heads=4 if arch == "llama" else 32, ffn_hidden_size=6144, vocab_size=1000,
                          max_seq_len=4096, head_dim=128)
        assert model.q_dim != model.hidden_size
        for tp in (1, 4):
            assert sum(layer_gemms(model, 1024, 2, tp)) == pytest.approx(model.layer_matmul_flops(1024, 2) / tp)


PUBLISHED_ATTENTION = Path(__file__).resolve().parent.parent / "scripts" / "data" / "published_attention.json"
KERNELS = ("fused", "fa2", "fa3")


def test_attention_curves_read_the_published_speeds_and_rise_with_sequence_length():
    """On H100 each kernel's causal forward is the published TFLOP/s / 989 at every published length (head dim 128),
    at the clock the profile sustains over the paper's fixed clock;
    both passes never slow down as the sequence grows, the backward runs below the forward, the ends hold (below 512
    and beyond 16k), and a head dim between the published ones lies between their readings."""
    h100 = load_cluster("dgx-h100-80g")
    data = json.loads(PUBLISHED_ATTENTION.read_text())
    for kernel in KERNELS:
        ex = execution("autoconf").replace(attention_kernel=kernel)
        published = data["kernels"][kernel]["forward_causal"]["128"]
        readings = [attention_efficiency(h100, ex, s, 128) for s in data["seq_lens"]]
        clock = script_module("bundled_profiles").H100_SUSTAINED_CLOCK_MHZ / data["clock_mhz"]
        assert [f for f, _ in readings] == pytest.approx([clock * v / 989 for v in published], abs=1e-4)
        for (f0, b0), (f1, b1) in zip(readings, readings[1:]):
            assert f1 >= f0 and b1 >= b0
        assert all(b < f for f, b in readings)
        assert attention_efficiency(h100, ex, 256, 128) == readings[0]
        assert attention_efficiency(h100, ex, 1 << 20, 128) == readings[-1]
        at64, at96 = attention_efficiency(h100, ex, 4096, 64), attention_efficiency(h100, ex, 4096, 96)
        for low, mid, high in zip(at64, at96, readings[3]):
            assert min(low, high) <= mid <= max(low, high)
    fused, fa2 = (attention_efficiency(h100, execution("autoconf").replace(attention_kernel=k), 8192, 128)
                  for k in ("fused", "fa2"))
    assert fa2[0] < fused[0] and fa2[1] < fused[1]


def test_a100_reads_flash_attention_2s_published_combined_speed_for_both_passes():
    """On A100 FlashAttention-2 (fa2) runs at the release figure's forward + backward TFLOP/s / 312 at every
    published length and head dim, both passes at that one fraction (only their sum is published: at one fraction
    the two passes' times add up to it); the other kernels keep the flat efficiency["attention"]."""
    a100 = load_cluster("dgx-a100-80g")
    data = json.loads(PUBLISHED_ATTENTION.with_name("published_attention_a100.json").read_text())
    fa2 = execution("autoconf").replace(attention_kernel="fa2")
    for dim, published in data["kernels"]["fa2"]["forward_backward_causal"].items():
        for seq, tflops in zip(data["seq_lens"], published):
            forward, backward = attention_efficiency(a100, fa2, seq, int(dim))
            assert forward == backward == pytest.approx(tflops / 312, abs=1e-4)
    flat = a100.eff("attention")
    assert attention_efficiency(a100, execution("autoconf").replace(attention_kernel="fused"), 8192, 128) == (
        flat, flat)


def test_short_sequences_run_the_flash_core_slower_per_flop_and_old_profiles_stay_flat():
    """The flash core's seconds per causal FLOP on a curve profile are higher at 1k than at 8k tokens per sequence;
    without the curve (an older profile) they are equal, at the flat efficiency["attention"] for both passes, and
    "fa2" reads efficiency["attention_fa2"] where the profile states it."""
    model = PRESETS["llama3-8b"]
    h100 = load_cluster("dgx-h100-80g")
    flat = dataclasses.replace(h100, attention_curves=None)

    def per_flop(cluster, s):
        core = model_pieces(model, cluster, _config(seq_len=s)).attention_core
        return core.total / model.layer_attention_flops(s, 1)

    assert per_flop(h100, 1024) > 1.2 * per_flop(h100, 8192)
    assert per_flop(flat, 1024) == pytest.approx(per_flop(flat, 8192))
    assert attention_efficiency(flat, None, 1024, 128) == (0.5, 0.5)
    stated = dataclasses.replace(flat, efficiency={**flat.efficiency, "attention_fa2": {"value": 0.3, "why": "x"}})
    assert attention_efficiency(stated, execution("torchtitan"), 1024, 128) == (0.3, 0.3)
    assert ClusterProfile.from_dict(h100.to_dict()).attention_curves == h100.attention_curves
    assert "attention_curves" not in flat.to_dict()


@pytest.mark.parametrize("curves, field", [
    ({"kernels": {"fa4": {}}}, "attention_curves.kernels"),
    ({"kernels": {"fused": {"forward": {"128": [[512, 0.3]]}}}}, "attention_curves.kernels.fused.backward"),
    ({"kernels": {"fused": {"forward": {"128": [[512, 0.3]]}, "backward": {"128": [[512, -1]]}}}},
     "attention_curves.kernels.fused.backward.128[0][1]"),
    ({"kernels": {"fa2": {"forward": {"x": [[512, 0.3]]}, "backward": {"64": [[512, 0.3]]}}}},
     "attention_curves.kernels.fa2.forward.x"),
    ({"kernels": {"fa2": {"forward": {"64": [[512, 0.3], [512, 0.4]]}, "backward": {"64": []}}}},
     "distinct sequence lengths"),
    ([0.5], "attention_curves"),
])
def test_bad_attention_curves_are_one_line_naming_the_field(curves, field):
    data = {**load_cluster("dgx-h100-80g").to_dict(), "attention_curves": curves}
    with pytest.raises(UserError, match=field.replace("[", r"\[").replace("]", r"\]")) as err:
        ClusterProfile.from_dict(data)
    assert "\n" not in str(err.value)


def test_megatron_cross_entropy_counts_every_kernel_it_runs_on_the_logits():
    """Megatron-Core r0.8's vocab-parallel cross entropy (`tensor_parallel/cross_entropy.py`) moves, per bf16 logit,
    38 bytes forward (the fp32 copy 2 + 4, max 4, in-place subtract 8, exp 8, sum 4, divide 8) and 14 backward (the
    in-place scale 8, the cast back 4 + 2): the 52 bytes docs/accuracy.md states, one fp32 pass more than the count
    before this test (34 forward)."""
    from autoconf.cost.compute import loss_bytes_per_logit

    assert loss_bytes_per_logit(("vocab_parallel_ce",), 2) == (38.0, 14.0)


def test_embedding_weight_gradient_fills_the_whole_vocabulary_slice_and_megatron_adds_it_to_its_main_grad():
    """torch's dense embedding backward zero-fills the rank's whole vocab / tp x hidden gradient before scattering
    the tokens' rows, so the embedding's weight-gradient pass grows with the vocabulary at fixed tokens and shrinks
    with TP; Megatron's layout then adds it into the fp32 main gradient (a read of the bf16 gradient, a read and a
    write of the buffer), more than the torch layout."""
    h100 = load_cluster("dgx-h100-80g")
    model = PRESETS["llama3-8b"]
    c = _config(seq_len=4096)
    big = dataclasses.replace(model, vocab_size=2 * model.vocab_size)

    def emb_w(m, cfg, framework):
        return model_pieces(m, h100, cfg, execution=execution(framework)).embedding.backward_weight

    assert emb_w(big, c, "autoconf") > emb_w(model, c, "autoconf")
    assert emb_w(model, _config(seq_len=4096, tp=2), "autoconf") < emb_w(model, c, "autoconf")
    table_bytes = model.vocab_size * model.hidden_size * 2
    rate = h100.device.memory_bandwidth_Bps * h100.eff("memory")
    assert emb_w(model, c, "autoconf") > table_bytes / rate
    # the megatron layout's main-gradient add: 2 + 4 + 4 more bytes per weight
    extra = emb_w(model, c, "megatron-core") - emb_w(model, c, "autoconf")
    assert extra == pytest.approx(5 * table_bytes / rate)


def test_h100_size_curve_agrees_with_xlas_measured_gemms_on_the_megatron_core_blocks():
    """The dgx-h100-80g size curve (FLOPs only) prices each Megatron-Core weak-scaling block's GEMMs within 4% of
    OpenXLA's measured H100 table relative to its 4096^3 GEMM (scripts/gemm_shapes.py, its data file cites it), the
    1.7B's h=2048 GEMMs included: GEMM shape is not what the table's small rows miss. The table itself falls with
    size where it must (a 2048^3 GEMM below 4096^3)."""

    shapes = script_module("gemm_shapes")
    table = shapes.read_table()
    assert table[(1, 2048, 2048, 2048)] < table[(1, 4096, 4096, 4096)]
    for row in shapes.compare():
        assert row["curve_block"] == pytest.approx(row["xla_block"], rel=0.04), row["model"]
