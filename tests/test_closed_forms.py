"""Closed forms the cost model states, checked against formulas written out here rather than read from the code: the
hardware FLOPs of full recompute (Narayanan et al. 2021, Eq. 3), the flash attention core's causal half and 2.5x
backward, the zero-bubble schedules' textbook bubbles where they are exact, and the round trip of every layout the
search can write. Each was found unguarded by a mutation review (a changed constant survived the suite)."""

import dataclasses

import pytest

from autoconf.cost.compute import attention_efficiency, flash_core_seconds
from autoconf.cost.estimate import estimate
from autoconf.cost.simulate import StageCosts, simulate
from autoconf.solve.space import candidates
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import PRESETS as FRAMEWORKS
from autoconf.spec.model import MoESpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from autoconf.spec.schedules import build_schedule, schedule_spec


@pytest.mark.parametrize("name, seq, batch", [("gpt3-175b", 2048, 1536), ("gpt3-1.3b", 1024, 64)])
def test_full_recompute_hardware_flops_are_narayanans_equation_3(name, seq, batch):
    """Model FLOPs 72 B s l h^2 (1 + s/6h + V/12lh); with every layer's forward recomputed, Eq. 3's
    96 B s l h^2 (1 + s/6h + V/16lh); recomputing half the layers adds half the extra."""
    m = PRESETS[name]
    l, h, v = m.num_layers, m.hidden_size, m.vocab_size
    model_flops = 72 * batch * seq * l * h * h * (1 + seq / (6 * h) + v / (12 * l * h))
    hardware = 96 * batch * seq * l * h * h * (1 + seq / (6 * h) + v / (16 * l * h))
    assert m.model_flops_per_iteration(seq, batch) == pytest.approx(model_flops, rel=1e-12)
    assert m.hardware_flops_per_iteration(seq, batch, "full") == pytest.approx(hardware, rel=1e-12)
    half = m.hardware_flops_per_iteration(seq, batch, "full", recomputed_layers=l // 2)
    assert half - model_flops == pytest.approx((hardware - model_flops) * (l // 2) / l, rel=1e-12)


@pytest.mark.parametrize("tp", [1, 4])
def test_the_flash_core_is_half_the_square_forward_and_two_and_a_half_times_that_backward(tp):
    """One layer's causal attention core: half of QK^T and PV over the s x s square (4 b s^2 heads x head_dim
    FLOPs) on 1/tp of the heads, at the kernel's forward efficiency; the backward 2.5 times those FLOPs (5 matmuls to
    the forward's 2) at its backward efficiency."""
    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g")
    seq, batch, peak = 8192, 2, 1e15
    eff_f, eff_b = attention_efficiency(cluster, None, seq, model.head_dim)
    flops = 0.5 * 4 * batch * seq * seq * model.num_heads * model.head_dim / tp
    forward, backward = flash_core_seconds(model, cluster, None, seq, batch, tp, peak)
    assert forward == pytest.approx(flops / peak / eff_f, rel=1e-12)
    assert backward == pytest.approx(2.5 * flops / peak / eff_b, rel=1e-12)


def _idle(name: str, p: int, m: int, v: int, f: float, i: float, w: float) -> float:
    """The busiest rank's idle seconds in the simulated step of uniform chunks (forward f, input gradient i, weight
    gradient w), communication free."""
    timeline = simulate(build_schedule(name, p, m, v, 1, False), StageCosts([f] * p * v, [i] * p * v, [w] * p * v), 0.0)
    return timeline.makespan - max(timeline.compute_time_per_rank)


@pytest.mark.parametrize("p, m", [(2, 6), (4, 8), (4, 12)])
@pytest.mark.parametrize("f, i, w", [(1.0, 1.0, 1.0), (1.0, 2.0, 0.5), (1.0, 3.0, 1.0), (1.0, 1.0, 0.25)])
def test_zb_h1s_bubble_is_its_textbook_form_where_the_weight_pass_is_no_longer_than_the_forward(p, m, f, i, w):
    """ZB-H1 (Qi et al. 2023): (p - 1)(F + B - W) of idle per rank, exactly, wherever W <= F; never more."""
    assert _idle("zb-h1", p, m, 1, f, i, w) == pytest.approx(schedule_spec("zb-h1").bubble(p, f, i, w), abs=1e-9)
    assert schedule_spec("zb-h1").bubble(p, f, i, w) == pytest.approx((p - 1) * (f + i - w))
    assert schedule_spec("zb-h1").bubble(p, 0.5, 1.0, 1.0) <= _idle("zb-h1", p, m, 1, 0.5, 1.0, 1.0) + 1e-9


@pytest.mark.parametrize("p, m", [(2, 6), (4, 8), (4, 12)])
@pytest.mark.parametrize("cell", [1.0, 2.5])
def test_zbvs_bubble_is_p_minus_1_forwards_at_equal_passes(p, m, cell):
    """ZB-V at F = B = W: (p - 1) F of idle per rank, exactly; with unequal passes never less."""
    assert _idle("zbv", p, m, 2, cell, cell, cell) == pytest.approx((p - 1) * cell, abs=1e-9)
    assert schedule_spec("zbv").bubble(p, cell, cell, cell) == pytest.approx((p - 1) * cell)
    assert schedule_spec("zbv").bubble(p, 1.0, 2.0, 0.5) <= _idle("zbv", p, m, 2, 1.0, 2.0, 0.5) + 1e-9


def test_every_layout_the_search_can_write_reads_back_equal():
    """`ParallelConfig.from_dict(c.to_dict()) == c` for every candidate of a dense and an MoE model (every
    schedule, ZeRO stage, recompute mode, cp, ep), each selective policy, per-stage recompute counts, offload levers
    and sequence-chunked pipelines of 2 and 4 chunks, evenly and by work: a field the file drops, or writes only
    sometimes, fails."""
    moe = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-moe", moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64))
    configs = [*candidates(PRESETS["tiny-llama"], 8, 8, 16, 256, "bf16",
                           selective_policies=("attention_core", "alternate_matmuls")),
               *candidates(moe, 8, 8, 16, 256, "bf16")]
    assert {c.schedule for c in configs} >= {"1f1b", "zbv", "interleaved-1f1b"} and {c.ep for c in configs} > {1}
    base = ParallelConfig(tp=1, pp=2, dp=4, micro_batch_size=1, global_batch_size=8, seq_len=4096, zero_stage=3,
                          recompute="full")
    configs += [dataclasses.replace(base, recompute_layers=(3, 0)), dataclasses.replace(base, offload_optimizer=True),
                dataclasses.replace(base, offload_activations=True, grad_reduce="microbatch")]
    configs += [dataclasses.replace(base, schedule="seq1f1b", seq_chunks=k, seq_split=split)
                for k in (2, 4) for split in ("even", "work")]
    for c in configs:
        assert ParallelConfig.from_dict(c.to_dict()) == c, c


def test_offload_copies_read_the_direction_they_move():
    """Activations leave in the forward (device to host) and return in the input backward (host to device); an
    offloaded optimizer's parameter shards come to the device before the gather and its gradient shards go to the
    host after the reduce-scatter. On a profile whose two directions differ, each copy is its bytes over its own
    direction's bandwidth."""
    from autoconf.cost.offload import activation_copy_times, gather_copy_time, reduce_copy_time

    base = load_cluster("dgx-h100-80g")
    cluster = dataclasses.replace(base, host={**base.host, "d2h_Bps": 20e9, "h2d_Bps": 50e9})
    assert activation_copy_times(cluster, 1e9) == pytest.approx((1e9 / 20e9, 1e9 / 50e9))
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=8, seq_len=4096, zero_stage=3,
                       offload_optimizer=True)
    params, group = 8e9, 8
    assert gather_copy_time(cluster, c, params, group) == pytest.approx(params * 4 / group / 50e9)
    assert reduce_copy_time(cluster, c, params, group) == pytest.approx(params * 4 / group / 20e9)


@pytest.mark.parametrize("tp, cp", [(1, 2), (2, 4), (8, 2)])
def test_a_cp_ranks_kv_block_is_its_sequence_share_of_the_kv_heads_on_its_tp_rank(tp, cp):
    """The unit of context-parallel traffic: seq / cp tokens x micro-batch x 2 (K and V) x kv heads x head_dim / tp
    elements of the compute dtype (llama3-70b: 8 KV heads of 128)."""
    from autoconf.cost.memory import cp_kv_bytes

    model = PRESETS["llama3-70b"]
    c = ParallelConfig(tp=tp, pp=1, dp=1, cp=cp, micro_batch_size=2, global_batch_size=2, seq_len=65536)
    assert cp_kv_bytes(model, c) == 65536 / cp * 2 * 2 * 8 * 128 / tp * 2


@pytest.mark.parametrize("ep, etp", [(1, 1), (4, 1), (2, 2), (1, 4)])
def test_a_ranks_routed_experts_are_split_over_ep_times_etp(ep, etp):
    """Of a stage's parameters the routed experts split over ep x etp, the TP-replicated ones stay whole, the rest
    split over tp."""
    from autoconf.cost.moe import local_params

    c = ParallelConfig(tp=2, pp=1, dp=8, micro_batch_size=1, global_batch_size=8, seq_len=4096, ep=ep, etp=etp)
    dense, experts = local_params(c, 100.0, 64.0, 4.0)
    assert experts == 64.0 / (ep * etp) and dense == (100.0 - 64.0 - 4.0) / 2 + 4.0


@pytest.mark.parametrize("framework, per_logit", [("autoconf", 2), ("torchtitan", 6), ("megatron", 4)])
def test_the_last_stage_keeps_every_in_flight_micro_batchs_loss(framework, per_logit):
    """Under gpipe every forward, with its loss, runs before any backward: the last stage keeps each micro-batch's
    loss until its backward (torch's stage keeps the logits as its output; the executor's cross entropy saves them
    with 14 bytes per row; torchtitan's uncompiled one also its fp32 log-softmax; Megatron's its fp32 softmax). The
    one in flight at the loss is the last stage's temporary; the other m - 1 are held beside it (found by a review:
    llama3-8b pp2 gpipe at 8k tokens, 16 micro-batches, was predicted to fit at 56.6 GiB where it needs about 86)."""
    from autoconf.cost.memory import pipeline_buffer_bytes

    model, ex = PRESETS["llama3-8b"], FRAMEWORKS[framework]
    c = ParallelConfig(tp=1, pp=2, dp=4, micro_batch_size=1, global_batch_size=64, seq_len=8192, schedule="gpipe",
                       recompute="full", compile=False)
    rows, vocab = 8192, 128256
    kept = rows * vocab * per_logit + (14 * rows if framework == "autoconf" else 0)
    inflight = (2.0, 1.0)  # (the same for both schedules: only the losses held differ)
    held = (pipeline_buffer_bytes(model, c, ex, (1,), inflight)
            - pipeline_buffer_bytes(model, dataclasses.replace(c, schedule="1f1b"), ex, (1,), inflight))
    assert held == pytest.approx(15 * kept, rel=1e-12)
    assert pipeline_buffer_bytes(model, c, ex, (0,), inflight) == pipeline_buffer_bytes(
        model, dataclasses.replace(c, schedule="1f1b"), ex, (0,), inflight)  # the first stage holds no loss
    plan = estimate(model, load_cluster("dgx-h100-80g", nodes=1), dataclasses.replace(c, zero_stage=2),
                    execution=FRAMEWORKS["autoconf"]).prediction
    assert not plan["fits"] and plan["memory_per_stage"][1]["total"] > 85 * 2**30


def test_hfu_counts_what_the_per_op_policy_redoes():
    """torchtitan's per-op policy recomputes every other weight matmul of a block (Llama's wq wk wv wo w1 w3 w2:
    wk, wo and w3) and keeps the attention output: HFU counts those three GEMMs' forward FLOPs per recomputed layer,
    not the attention core (a review: HFU / MFU read 1.074 on llama3-8b at 8k tokens, 1.088 by hand)."""
    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g", 1)
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=8, seq_len=8192, zero_stage=3,
                       recompute="selective", selective_recompute="alternate_matmuls")
    p = estimate(model, cluster, c, execution=FRAMEWORKS["torchtitan"]).prediction
    h, f, kv, q, layers = model.hidden_size, model.ffn_hidden_size, model.kv_dim, model.q_dim, model.num_layers
    redone = 8 * 8192 * layers * 2 * (h * kv + q * h + h * f)
    assert p["hfu"] / p["mfu"] == pytest.approx(1 + redone / model.model_flops_per_iteration(8192, 8), rel=1e-12)
