"""The cost model, search and exports of mixture-of-experts models: expert compute read from the op table, memory
that falls with expert parallelism, all-to-all on the link model, bounds at or below the estimate, published
layouts that fit, and one-line refusals."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoconf.cli import main
from autoconf.cost.comm import collective_time
from autoconf.cost.estimate import estimate, predict
from autoconf.cost.memory import stage_expert_params, stage_params
from autoconf.cost.moe import expert_gemms, moe_layers, tokens_per_rank
from autoconf.solve.bounds import BoundCache
from autoconf.solve.search import search
from autoconf.solve.space import candidates
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import PRESETS as FRAMEWORKS
from autoconf.spec.model import MoESpec
from autoconf.spec.plan import ParallelConfig, uniform_partition
from autoconf.spec.presets import PRESETS

# tiny-llama's attention with four experts (two per token), a shared expert and a leading dense layer.
TINY_MOE = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-moe", moe=MoESpec(
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, num_shared_experts=1,
    shared_expert_intermediate_size=96, first_k_dense=1))
H100 = FRAMEWORKS["autoconf"]


def config(**changes) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=4096, zero_stage=1)
    return ParallelConfig(**{**base, **changes})


def test_routed_expert_flops_are_the_op_tables_active_experts():
    """One rank's routed expert GEMMs do the op table's active expert FLOPs for its tokens, whatever ep and etp."""
    model = PRESETS["qwen3-30b-a3b"]
    experts_op = next(op for op in model.layer_ops(0) if op.kind == "experts")
    for ep, etp, tp in ((1, 1, 1), (8, 1, 1), (4, 2, 2), (16, 1, 2)):
        c = config(tp=tp, dp=16 // tp, ep=ep, etp=etp, sequence_parallel=tp > 1)
        _, one_expert, experts = expert_gemms(model, c)
        routed = experts * sum(one_expert)
        assert routed == pytest.approx(tokens_per_rank(c) * experts_op.flops)


def test_stage_parameters_add_up_to_the_model():
    """The stages' parameters add up to the model's with its MTP module and the last stage's embedding copy for it,
    their routed experts to the MoE layers' and the MTP block's experts (DeepSeek-V3: three dense layers first, so
    the stages differ)."""
    model = PRESETS["deepseek-v3"]
    parts = uniform_partition(model.num_layers, 16)
    copy = model.vocab_size * model.hidden_size
    assert sum(stage_params(model, parts, s) for s in range(16)) == model.total_params_with_mtp() + copy
    per_layer = model.moe.num_experts * 3 * model.hidden_size * model.moe.moe_intermediate_size
    assert sum(stage_expert_params(model, parts, s) for s in range(16)) == pytest.approx(59 * per_layer)
    assert moe_layers(model, 0, model.num_layers) == 58 and moe_layers(model, 0, 3) == 0


def test_memory_per_rank_falls_with_ep_and_the_token_exchange_grows():
    """Mixtral on 64 H100s: every step up in ep shards the experts further (less memory per rank); the all-to-all
    shows up as its own time term and grows once the EP group leaves the node."""
    cluster = load_cluster("dgx-h100-80g", 8, 8)
    model = PRESETS["mixtral-8x7b"]
    peaks, exchange = [], []
    for ep in (1, 2, 4, 8):
        p = estimate(model, cluster, config(tp=1, pp=1, dp=64, ep=ep, recompute="full"), execution=H100).prediction
        peaks.append(p["peak_memory_bytes"])
        exchange.append(p["time_breakdown"]["ep_comm"])
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 4
    assert exchange[0] == 0 and exchange[1] > 0
    dense = estimate(PRESETS["llama3-8b"], cluster, config(dp=64), execution=H100).prediction
    assert "ep_comm" not in dense["time_breakdown"]


def test_a_capacity_factor_caps_the_busiest_ranks_tokens():
    """Routing with a capacity factor drops what an expert takes beyond it: the routed GEMMs and the token exchange
    are priced at min(measured imbalance, capacity factor) times the even share, so a factor below the profile's
    imbalance makes the step faster and one above it changes nothing (it was read and ignored)."""
    base = load_cluster("dgx-h100-80g", 2, 8)
    cluster = dataclasses.replace(base, efficiency={**base.efficiency,
                                                    "moe_load_imbalance": {"value": 1.5, "why": "test"}})
    c = config(dp=16, ep=4)

    def step(capacity):
        model = dataclasses.replace(TINY_MOE, moe=dataclasses.replace(TINY_MOE.moe, capacity_factor=capacity))
        p = estimate(model, cluster, c, execution=H100).prediction
        return p["time_breakdown"]["compute"], p["time_breakdown"]["ep_comm"]

    dropless, loose, tight = step(None), step(2.0), step(1.1)
    assert loose == dropless
    assert tight[0] < dropless[0] and tight[1] < dropless[1]


def test_all_to_all_is_dearer_across_nodes():
    """An all-to-all within a node beats the same one across two nodes; a group of one costs nothing."""
    cluster = load_cluster("dgx-h100-80g", 2, 8)
    inside = collective_time(cluster, "all_to_all", 1e8, list(range(8)))
    across = collective_time(cluster, "all_to_all", 1e8, list(range(4)) + list(range(8, 12)))
    assert 0 < inside < across
    assert collective_time(cluster, "all_to_all", 1e8, [3]) == 0


def _cheapest_block(cache: BoundCache, c: ParallelConfig) -> tuple[float, float, float]:
    """(forward, input backward, weight backward) of the cheaper kind of block per layer (`_kind_layers`, the MoE
    token exchange left out)."""
    kinds = cache._kind_layers(c).values()
    return tuple(min(k[i] for k in kinds) for i in range(3))


def test_bounds_stay_at_or_below_the_estimate_for_moe_layouts():
    """The search's time and memory bounds never exceed the estimate over a spread of MoE candidates (dense and MoE
    blocks, ep and etp, every schedule family)."""
    cluster = load_cluster("dgx-h100-80g", 2, 8)
    cache = BoundCache(TINY_MOE, cluster, H100)
    pool = [c for c in candidates(TINY_MOE, 16, 8, 64, 512, "bf16") if c.ep * c.etp > 1]
    assert len({(c.ep, c.etp) for c in pool}) >= 4
    for c in pool[::max(1, len(pool) // 24)]:
        p = predict(TINY_MOE, cluster, c, execution=H100, detail=False, extrapolate=True)[3]
        assert cache.time_bound(c) <= p["iteration_time_s"] * (1 + 1e-9), c
        assert cache.memory_bound(c) <= p["peak_memory_bytes"] * (1 + 1e-9), c
        # the walk's check before simulating is the simulation's own memory, rank by rank
        assert [e["total"] for e in cache.layout_memory(c)] == (
            [e["total"] for e in p["memory_per_stage"]]), c


def test_bounds_of_deepseek_v3_count_its_moe_blocks_and_stay_below_the_estimate():
    """DeepSeek-V3 (3 dense blocks, 58 MoE) under Megatron-Core and autoconf's executor: the time bound (which
    charges the busiest rank's MoE blocks at their own cost and, where no paired chunks hide it, their token
    exchange) and the memory bound stay at or below the estimate, over a spread of layouts of every schedule; and
    the bound of a layout whose exchange is exposed is above the bound that counts every block as its cheaper kind."""
    model, cluster = PRESETS["deepseek-v3"], load_cluster("dgx-h800-80g", 8)
    pool = [c for c in candidates(model, 64, 8, 512, 4096, "bf16") if c.ep * c.etp > 1 and c.pp > 1]
    assert len({c.schedule for c in pool}) >= 4
    for name in ("megatron-core", "autoconf"):
        cache = BoundCache(model, cluster, FRAMEWORKS[name])
        runs = [c for c in pool if FRAMEWORKS[name].problem(c, model) is None]
        for c in runs[::max(1, len(runs) // 12)]:
            p = predict(model, cluster, c, execution=FRAMEWORKS[name], detail=False)[3]
            assert cache.time_bound(c) <= p["iteration_time_s"] * (1 + 1e-9), (name, c)
            assert cache.memory_bound(c) <= p["peak_memory_bytes"] * (1 + 1e-9), (name, c)
    exposed = next(c for c in pool if c.schedule == "1f1b" and c.recompute == "none" and c.ep > 1)
    cache = BoundCache(model, cluster, FRAMEWORKS["megatron-core"])
    (fwd, bwd_in, bwd_w), one = _cheapest_block(cache, exposed), cache._tp_collective(exposed)
    cheapest = exposed.num_microbatches * math.ceil(model.num_layers / exposed.pp) * (fwd + bwd_in + bwd_w + 4 * one)
    assert cache._exposed_exchange(exposed)[0] > 0
    assert cache.time_bound(exposed) > cheapest


def test_bounds_of_an_all_moe_model_count_its_exchange_and_the_head():
    """GPT-OSS-20B (every block MoE, a 201k vocabulary) at 32k tokens on one node: the time bound, which charges
    every block its exposed token exchange and the ranks holding the first and the last stage the embedding and the
    head with its loss, stays at or below the estimate over a spread of layouts (CP, EP, pipelines of every
    family); without a pipeline it is at least every micro-batch's blocks, exchanges, embedding and head."""
    model, cluster = PRESETS["gpt-oss-20b"], load_cluster("dgx-h100-80g", 1)
    cache = BoundCache(model, cluster, H100)
    pool = [c for c in candidates(model, 8, 8, 16, 32768, "bf16") if c.ep > 1 and H100.problem(c) is None]
    assert {c.pp > 1 for c in pool} == {True, False} and {c.cp > 1 for c in pool} == {True, False}
    for c in pool[::max(1, len(pool) // 24)]:
        p = predict(model, cluster, c, execution=H100, detail=False)[3]
        assert cache.time_bound(c) <= p["iteration_time_s"] * (1 + 1e-9), c
    c = next(c for c in pool if c.pp == 1 and c.recompute == "none" and cache._exposed_exchange(c)[0] > 0)
    fwd, bwd_in, bwd_w = _cheapest_block(cache, c)
    exchange, pieces = cache._exposed_exchange(c), cache._layer(c)
    work = (model.num_layers * (fwd + bwd_in + bwd_w + exchange[0] + exchange[1]) + pieces.head.total
            + pieces.embedding.total)
    assert cache.time_bound(c) >= c.num_microbatches * work


def test_published_deepseek_v3_layout_fits():
    """DeepSeek-V3 as its report trained it (2048 H800 80GB: PP16, EP64, ZeRO-1 data parallel, no TP) fits an 80 GB
    device in Megatron-Core's memory layout; without expert parallelism the same layout does not."""
    cluster = load_cluster("dgx-h100-80g", 256, 8)
    model = PRESETS["deepseek-v3"]
    published = config(pp=16, dp=128, ep=64, global_batch_size=15360, recompute="full")
    fits = estimate(model, cluster, published, execution=FRAMEWORKS["megatron-core"]).prediction
    assert fits["fits"], fits["peak_memory_bytes"] / 2**30
    without = estimate(model, cluster, dataclasses.replace(published, ep=1),
                       execution=FRAMEWORKS["megatron-core"]).prediction
    assert not without["fits"]


def test_search_plans_an_moe_model_with_expert_parallelism():
    """plan on an MoE model searches ep: the best plan of a model whose experts do not fit unsharded uses ep > 1."""
    cluster = load_cluster("dgx-h100-80g", 2, 8)
    result = search(PRESETS["qwen3-30b-a3b"], cluster, 64, 4096, "bf16", fixed={"pp": 1, "tp": 1, "zero_stage": 0,
                                                                               "recompute": "full"},
                    top_k=1, refine=False)
    assert result.plans and result.plans[0].config.ep > 1


def run_cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("args, needle", [
    (["estimate", "--model", "mixtral-8x7b", "--cluster", "dgx-h100-80g", "--nodes", "2", "--tp", "1", "--pp", "1",
      "--dp", "16", "--ep", "3", "--micro-batch", "1", "--global-batch", "16"],
     "ep 3 does not divide the 8 experts (use ep in 1, 2, 4, 8)"),
    (["plan", "--model", "mixtral-8x7b", "--cluster", "dgx-h100-80g", "--global-batch", "16", "--fix", "ep=3"],
     "ep 3 does not divide the 8 experts"),
    (["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--tp", "1", "--pp", "1", "--dp", "8",
      "--ep", "2", "--micro-batch", "1", "--global-batch", "16"], "llama3-8b is dense"),
    (["estimate", "--model", "mixtral-8x7b", "--cluster", "dgx-h100-80g", "--nodes", "2", "--tp", "1", "--pp", "2",
      "--vpp", "2", "--dp", "8", "--ep", "8", "--micro-batch", "1", "--global-batch", "64", "--schedule", "dualpipev",
      "--framework-flag", "overlap_paired_chunks=true"], "without an OVERLAP_F_B function"),
])
def test_bad_expert_layouts_are_one_line(args, needle):
    result = run_cli(args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoconf: error:") and needle in lines[0], result.output


def test_top_k_above_the_experts_is_one_line(tmp_path):
    model = TINY_MOE.to_dict()
    model["moe"]["num_experts_per_tok"] = 5
    del model["parameters"], model["active_parameters"]
    path = tmp_path / "model.json"
    path.write_text(__import__("json").dumps(model))
    result = run_cli(["estimate", "--model", path, "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "1",
                      "--micro-batch", "1", "--global-batch", "1", "--seq-len", "64"])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "num_experts_per_tok 5 exceeds the 4 experts" in lines[0]


def test_dualpipe_pairs_hide_part_of_the_token_exchange_where_the_framework_overlaps_them():
    """dualpipev under a framework that overlaps its paired chunks (DeepSeek's DualPipe code): the step is shorter
    and the breakdown's ep_comm is only what the pairs left exposed (its terms still add up to the step); the search's
    bounds stay at or below it. The flag changes nothing on a schedule without pairs or on a dense model."""
    cluster = load_cluster("dgx-h100-80g", 4, 8)
    plain = FRAMEWORKS["megatron-core"]
    paired = plain.replace(overlap_paired_chunks=True, overlap_comm_sm_share=20 / 132)
    c = config(pp=2, vpp=2, dp=16, ep=4, schedule="dualpipev", global_batch_size=128)
    before = predict(TINY_MOE, cluster, c, execution=plain)[3]
    after = predict(TINY_MOE, cluster, c, execution=paired)[3]
    assert after["iteration_time_s"] < before["iteration_time_s"]
    assert 0.0 <= after["time_breakdown"]["ep_comm"] < before["time_breakdown"]["ep_comm"]
    assert sum(after["time_breakdown"].values()) == pytest.approx(after["iteration_time_s"], rel=1e-9)
    cache = BoundCache(TINY_MOE, cluster, paired)
    for layout in (c, dataclasses.replace(c, ep=2), dataclasses.replace(c, pp=4, dp=8, global_batch_size=64)):
        p = predict(TINY_MOE, cluster, layout, execution=paired, detail=False)[3]
        assert cache.time_bound(layout) <= p["iteration_time_s"] * (1 + 1e-9), layout
    one_f_one_b = dataclasses.replace(c, vpp=1, schedule="1f1b")
    assert (predict(TINY_MOE, cluster, one_f_one_b, execution=paired)[3]["iteration_time_s"]
            == predict(TINY_MOE, cluster, one_f_one_b, execution=plain)[3]["iteration_time_s"])
    dense = dataclasses.replace(c, ep=1)
    assert (predict(PRESETS["tiny-llama"], cluster, dense, execution=paired)[3]["iteration_time_s"]
            == predict(PRESETS["tiny-llama"], cluster, dense, execution=plain)[3]["iteration_time_s"])


def test_megatron_combined_1f1b_hides_the_exchange_of_interleaved_1f1b_and_holds_one_more_forward():
    """megatron-core with overlap_paired_chunks (Megatron's --overlap-moe-expert-parallel-comm) on interleaved-1f1b
    and on 1f1b without a pipeline:
    a shorter step with less of the token exchange exposed, and at least the plain order's peak memory (one more
    warmup forward in flight); the search's bounds stay at or below it."""
    cluster = load_cluster("dgx-h100-80g", 4, 8)
    plain = FRAMEWORKS["megatron-core"]
    paired = plain.replace(overlap_paired_chunks=True)
    c = config(pp=2, vpp=2, dp=16, ep=4, schedule="interleaved-1f1b", global_batch_size=128)
    before = predict(TINY_MOE, cluster, c, execution=plain)[3]
    after = predict(TINY_MOE, cluster, c, execution=paired)[3]
    assert after["iteration_time_s"] < before["iteration_time_s"]
    assert 0.0 <= after["time_breakdown"]["ep_comm"] < before["time_breakdown"]["ep_comm"]
    assert after["peak_memory_bytes"] >= before["peak_memory_bytes"]
    cache = BoundCache(TINY_MOE, cluster, paired)
    assert cache.time_bound(c) <= after["iteration_time_s"] * (1 + 1e-9)
    # Without a pipeline (Megatron's combined_1f1b_schedule_for_no_pipelining) likewise; 1f1b with pp > 1 never pairs.
    flat = config(dp=32, ep=4, schedule="1f1b", global_batch_size=128)
    one, two = (predict(TINY_MOE, cluster, flat, execution=e)[3] for e in (plain, paired))
    assert two["iteration_time_s"] < one["iteration_time_s"] and two["peak_memory_bytes"] >= one["peak_memory_bytes"]
    # Megatron runs it as modelled with both flags (declared at the exports' Megatron-LM tag), and only with EP.
    declared = json.loads((Path(__file__).resolve().parents[1] / "scripts" / "data"
                           / "megatron_lm_core_v0.16.1_flags.json").read_text())["flags"]
    lines = paired.export_lines("megatron", c)
    assert {"--overlap-moe-expert-parallel-comm", "--delay-wgrad-compute"} <= set(lines) <= set(declared)
    assert not set(plain.export_lines("megatron", c)) & {"--overlap-moe-expert-parallel-comm"}
    assert "--overlap-moe-expert-parallel-comm" not in paired.export_lines("megatron", dataclasses.replace(c, ep=1))


@pytest.mark.parametrize("vpp", [2, 4])
def test_combined_1f1b_without_a_steady_phase_pairs_nothing(vpp):
    """With as many micro-batches as pipeline ranks the interleaved warmup takes every forward: Megatron runs no
    steady (combined) step, so no forward is paired with the backward after it; pairing the last warmup forward with
    the first cooldown backward made the simulation deadlock (an AssertionError out of `plan`)."""
    from autoconf.spec.schedule_orders import interleaved_combined_pairs

    assert interleaved_combined_pairs(0, 2, vpp, 2) == ()
    cluster = load_cluster("dgx-h100-80g", 4, 8)
    paired = FRAMEWORKS["megatron-core"].replace(overlap_paired_chunks=True)
    c = config(pp=2, vpp=vpp, dp=16, ep=4, schedule="interleaved-1f1b", global_batch_size=32)
    assert c.num_microbatches == 2
    assert math.isfinite(predict(TINY_MOE, cluster, c, execution=paired)[3]["iteration_time_s"])


@pytest.mark.parametrize("framework", ["autoconf", "torchtitan", "megatron-core"])
@pytest.mark.parametrize("cluster,nodes,fields", [
    ("gb200-nvl72", 8, dict(tp=1, pp=16, dp=2, ep=2, micro_batch_size=2, global_batch_size=1024, seq_len=4096,
                            offload_optimizer=True)),
    ("dgx-a100-80g", 1, dict(tp=8, pp=1, dp=1, micro_batch_size=1, global_batch_size=32, seq_len=8192,
                             dtype="fp16"))])
def test_the_time_bound_hides_the_fsdp_gather_behind_the_embedding_and_head_as_the_estimate_does(framework, cluster,
                                                                                                 nodes, fields):
    """Under ZeRO-3 a pass's FSDP gather may outlast its blocks; the estimate hides it behind the blocks and the
    embedding or head pieces together (`beside`), so the bound's end ranks count those pieces inside the same
    maximum: adding them after it put GPT-OSS-20B's bound 7.2% and 3% above the estimate (found by an audit of the
    bounds; the search could prune the best layout)."""
    model = PRESETS["gpt-oss-20b"]
    ex = FRAMEWORKS[framework]
    c = ParallelConfig(zero_stage=3, grad_reduce="microbatch" if framework == "megatron-core" else "step", **fields)
    if framework == "megatron-core":  # (Megatron runs MoE under TP with sequence parallelism only)
        c = dataclasses.replace(c, offload_optimizer=False, sequence_parallel=c.tp > 1)
    cl = load_cluster(cluster, nodes=nodes)
    step = predict(model, cl, c, execution=ex, detail=False)[3]["iteration_time_s"]
    cache = BoundCache(model, cl, ex)
    assert cache.busy_bound(c) <= cache.time_bound(c) <= step * (1 + 1e-9)


def test_a_zero_twins_resident_bytes_are_no_floor_under_fp8_where_the_sharding_moves_them():
    """`known_floor` reuses rank 0's activations and other bytes across layouts that differ only in the ZeRO stage;
    under a dynamic-scaling fp8 dtype those bytes depend on the sharding (an audit found a ZeRO-1 entry's 70 MB
    above its ZeRO-0 twin's under seq1f1b, so the twin's floor exceeded its own memory): there the stage is part of
    the key, and every floor stays at or below the entry it bounds."""
    model, cl = PRESETS["mixtral-8x7b"], load_cluster("dgx-h200-141g", nodes=1)
    c = ParallelConfig(tp=1, pp=2, dp=4, micro_batch_size=2, global_batch_size=8, seq_len=32768, schedule="seq1f1b",
                       seq_chunks=8, seq_split="work", zero_stage=0, recompute="full", dtype="fp8-deepseek", ep=4,
                       offload_activations=True)
    cache = BoundCache(model, cl, FRAMEWORKS["megatron"])
    for zero in (1, 0):
        cache.rank0_memory(dataclasses.replace(c, zero_stage=zero))
        floor = cache.known_floor(c)
        assert floor is None or floor <= cache.rank0_memory(c)["total"] * (1 + 1e-12)
    assert cache.offload_floor(c, False, False) <= cache.rank0_memory(c)["total"] * (1 + 1e-12)


@pytest.mark.parametrize("framework", ["autoconf", "megatron-core"])
def test_the_host_floor_is_the_host_bound_less_the_offloaded_activations(framework):
    """`BoundCache.host_floor` (which the search asks before `host_bound`, without a `stage_memory` call) counts the
    same host state bytes of rank 0's dense and routed-expert parameters: equal to the bound when only the optimizer
    is offloaded, below it by the offloaded activations when they go too."""
    model, cl = PRESETS["mixtral-8x7b"], load_cluster("dgx-h100-80g", nodes=4)
    cache, checked = BoundCache(model, cl, FRAMEWORKS[framework]), 0
    for tp, pp, ep, zero in [(1, 4, 8, 1), (2, 2, 4, 1), (2, 1, 8, 1), (2, 2, 4, 3), (4, 1, 2, 2), (1, 2, 1, 3)]:
        c = ParallelConfig(tp=tp, pp=pp, dp=32 // (tp * pp), micro_batch_size=1, global_batch_size=64, seq_len=4096,
                           zero_stage=zero, recompute="full", ep=ep, offload_optimizer=True, sequence_parallel=tp > 1)
        if c.problems(model, cl.world_size) or FRAMEWORKS[framework].problem(c, model):
            continue
        assert cache.host_floor(c) == pytest.approx(cache.host_bound(c), rel=1e-12)
        moved = dataclasses.replace(c, offload_activations=True)
        assert 0 < cache.host_floor(moved) < cache.host_bound(moved)
        checked += 1
    assert checked >= 3
    assert cache.host_floor(dataclasses.replace(c, offload_optimizer=False)) == 0


@pytest.mark.parametrize("counts", [(9, 5, 3, 7), (0, 0, 0, 0), None])
@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_the_time_bound_copies_no_more_activations_than_the_estimate_offloads(counts, dtype):
    """Offloaded activations: the bound charges each layer's copies at the fewer of its bytes under the recompute
    mode and without recompute. torchtitan's per-op policy keeps more than no recompute here (108.6 against 97.8
    MiB per MoE block), so with per-stage counts, whose other layers keep the plain activations, the bound read
    1-7.5% above the estimate (found by an audit of the bounds)."""
    model, cl = PRESETS["qwen3-30b-a3b"], load_cluster("dgx-b200-180g", nodes=1)
    ex = FRAMEWORKS["torchtitan"].replace(activation_offload="any")  # (torchtitan's policy; it has no such offload)
    c = ParallelConfig(tp=2, pp=2, dp=2, micro_batch_size=2, global_batch_size=64, seq_len=512, vpp=2,
                       schedule="looped-bfs", recompute="selective", sequence_parallel=True, dtype=dtype, ep=2, etp=2,
                       offload_activations=True, recompute_layers=counts)
    step = predict(model, cl, c, execution=ex, detail=False)[3]["iteration_time_s"]
    assert BoundCache(model, cl, ex).time_bound(c) <= step * (1 + 1e-9)


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("shared", [1, 0])
def test_token_shares_collectives_are_charged_per_moe_layer_for_the_executor_only(sp, shared):
    """At tp > 1 the executor's MoE layers route shares of the tokens: each MoE layer's TP time differs from a dense
    layer's by `moe_tp_change` (the token share's own collectives, less what the MLP's collective the layer does not
    run), in both passes; frameworks without the token share, and tp 1, charge the dense layer's."""
    from autoconf.cost.compute import PassTimes
    from autoconf.cost.estimate import moe_tp_change, sp_regather_time, tp_collective
    from autoconf.cost.moe import token_share_tp_comm

    model = dataclasses.replace(TINY_MOE, moe=dataclasses.replace(
        TINY_MOE.moe, num_shared_experts=shared, shared_expert_intermediate_size=96 * shared))
    cluster = load_cluster("dgx-h100-80g")
    c = config(tp=2, dp=4, sequence_parallel=sp)
    plain = H100.replace(moe_tp_token_share=False)
    dense, moe = (estimate(model, cluster, c, execution=e).prediction["time_breakdown"]["tp_comm"]
                  for e in (plain, H100))
    extra = token_share_tp_comm(model, cluster, c, [0, 1], H100)
    assert extra[0] > 0 and extra[1] > extra[0]  # the backward adds the router's gradient (and under SP a gather)
    one = tp_collective(model, cluster, c, [0, 1])
    layers, regather = model.num_layers, sp_regather_time(model, cluster, c, [0, 1], H100) * model.num_layers
    change = moe_tp_change(model, c, PassTimes(2 * one * layers, 2 * one * layers + regather, 0.0), layers,
                           regather, extra)
    n_moe = moe_layers(model, 0, layers)
    assert moe - dense == pytest.approx(c.num_microbatches * n_moe * (change.forward + change.backward_input))
    assert token_share_tp_comm(model, cluster, config(tp=1), [0], H100) == (0.0, 0.0)
    assert token_share_tp_comm(model, cluster, c, [0, 1], plain) == (0.0, 0.0)
    kept = (1.0 if shared else (0.5 if sp else 0.0), (1.5 if sp else 1.0) if shared else 0.0)
    tp = PassTimes(2.0, 4.0, 0.0)  # two layers: one collective 0.5 s forward, 1 s backward
    change = moe_tp_change(model, c, tp, 2, 0.0, (0.25, 0.75))
    assert change.forward == pytest.approx(0.25 - (1 - kept[0]) * 0.5)
    assert change.backward_input == pytest.approx(0.75 - (1 - kept[1]) * 1.0)
    assert moe_tp_change(model, c, tp, 2, 0.0, (0.0, 0.0)) == PassTimes(0.0, 0.0, 0.0)
