"""DeepSeek-V3 as DeepSeek states it (the `deepseek` framework preset): no expert outputs kept, so the published
layout fits; node-limited, node-deduplicated dispatch on the link model against hand-computed volumes; and
Megatron-Core's refusal of its paired all-to-all overlap under full recompute, read once for the estimate and the
export."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from autoconf.cost.estimate import estimate, predict
from autoconf.cost.moe import dispatch_nodes_bound, dispatch_shares, ep_comm_passes
from autoconf.cost.saved import saved_tensors
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import PRESETS as FRAMEWORKS
from autoconf.spec.model import MoESpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS

RUNS = Path(__file__).resolve().parents[1] / "scripts" / "data" / "published_moe_runs.json"
V3 = PRESETS["deepseek-v3"]
DEEPSEEK = FRAMEWORKS["deepseek"]


def _published() -> tuple[ParallelConfig, dict]:
    run = next(r for r in json.loads(RUNS.read_text())["runs"] if r["model"] == "deepseek-v3")
    c = ParallelConfig(tp=run["tp"], pp=run["pp"], dp=run["gpus"] // (run["tp"] * run["pp"]), vpp=run["vpp"],
                       micro_batch_size=run["micro_batch"], global_batch_size=run["global_batch"],
                       seq_len=run["seq_len"], schedule=run["schedule"], zero_stage=run["zero_stage"],
                       recompute=run["recompute"], sequence_parallel=run["sequence_parallel"], dtype=run["dtype"],
                       ep=run["ep"], etp=run["etp"])
    return c, run


def test_deepseek_keeps_no_expert_outputs_and_its_published_layout_fits():
    """The preset keeps no T x 8 expert outputs (the trace's weighted SwiGLU): one MoE block keeps exactly
    4096 x 8 x 7168 bf16 bytes less than with them; with them the published layout does not fit, without it does."""
    c, run = _published()
    assert run["framework"] == "deepseek" and not DEEPSEEK.moe_combine_keeps_outputs
    kept = dict(saved_tensors(V3, c, c.recompute, DEEPSEEK.selective_recompute, True, True))
    ours = dict(saved_tensors(V3, c, c.recompute, DEEPSEEK.selective_recompute, True, False))
    assert sum(kept.values()) - sum(ours.values()) == 4096 * 8 * 7168 * 2
    cluster = load_cluster(run["cluster"], nodes=run["gpus"] // 8)
    fits = estimate(V3, cluster, c, execution=DEEPSEEK).prediction
    keeping = estimate(V3, cluster, c, execution=DEEPSEEK.replace(moe_combine_keeps_outputs=True)).prediction
    assert fits["fits"] and not keeping["fits"]
    assert fits["peak_memory_bytes"] < keeping["peak_memory_bytes"]


def test_node_limited_routing_bounds_the_nodes_a_token_reaches():
    """DeepSeek-V3's 8 groups of 32 experts (topk_group 4): at ep 64 on 8 nodes a group is a node, so 4 nodes (the
    report's M); at ep 256 on 32 nodes a group spans 4 nodes, so 16; an EP group that does not fill its nodes in
    order, or a router without groups, bounds nothing."""
    cluster = load_cluster("dgx-h800-80g", nodes=32)
    assert dispatch_nodes_bound(V3, cluster, np.arange(64)) == 4
    assert dispatch_nodes_bound(V3, cluster, np.arange(256)) == 16
    assert dispatch_nodes_bound(V3, cluster, np.arange(64)[::-1].reshape(8, 8).T.reshape(-1)) is None
    assert dispatch_nodes_bound(PRESETS["mixtral-8x7b"], cluster, np.arange(16)) is None


def test_node_deduplicated_dispatch_moves_the_hand_computed_bytes():
    """One MoE layer's forward exchange of DeepSeek-V3 at ep 64 on 8 H800 nodes, against bytes counted by hand:
    per rank 4096 tokens of 7168 values, top-8; the dispatch in fp8 (1 byte), the combine in bf16 (2). NCCL's
    all-to-all (megatron-core): 8 x 7/64 copies per token inside the node, 8 x 7/8 across. DeepEP's (deepseek): at
    most 4 nodes, each the token's own with chance 1/8, so 4 x 7/8 copies across, and 8 x 7/8 forwarded over
    NVLink."""
    cluster = load_cluster("dgx-h800-80g", nodes=8)
    c = ParallelConfig(tp=1, pp=1, dp=64, ep=64, micro_batch_size=1, global_batch_size=64, seq_len=4096,
                       zero_stage=1, dtype="fp8-deepseek")
    group, intra, inter = np.arange(64), cluster.intra_node, cluster.inter_node
    bw_intra = intra.bandwidth_Bps * cluster.eff("comm_intra")
    bw_inter = inter.bandwidth_Bps * cluster.eff("comm_inter")
    sync = cluster.overhead("collective_sync_s")

    def seconds(inside: float, across: float) -> float:  # copies per token, over both exchanges of the pass
        return sum(intra.latency_s + inter.latency_s + sync + 4096 * 7168 * nbytes * (inside / bw_intra
                                                                                      + across / bw_inter)
                   for nbytes in (1, 2))

    assert dispatch_shares(V3, cluster, group, FRAMEWORKS["megatron-core"]) == (1.0, 1.0)
    assert dispatch_shares(V3, cluster, group, DEEPSEEK) == (8.0, 0.5)
    plain = ep_comm_passes(V3, cluster, c, group, group[:1], FRAMEWORKS["megatron-core"])[0]
    per_node = ep_comm_passes(V3, cluster, c, group, group[:1], DEEPSEEK)[0]
    assert plain == pytest.approx(seconds(8 * 7 / 64, 8 * 7 / 8), rel=1e-9)
    assert per_node == pytest.approx(seconds(8 * 7 / 8, 4 * 7 / 8), rel=1e-9)
    assert per_node < plain


def test_megatron_core_pairs_nothing_under_full_recompute():
    """Megatron-Core refuses --overlap-moe-expert-parallel-comm with full recompute: under the megatron-core preset
    with overlap_paired_chunks a full-recompute plan costs exactly as without pairs and its export lacks the flag;
    under selective recompute the pairs shorten the step and the flag is exported."""
    tiny = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-moe", moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64))
    cluster = load_cluster("dgx-h100-80g", 4, 8)
    plain = FRAMEWORKS["megatron-core"]
    paired = plain.replace(overlap_paired_chunks=True)
    base = ParallelConfig(tp=1, pp=2, vpp=2, dp=16, ep=4, micro_batch_size=1, global_batch_size=128, seq_len=4096,
                          zero_stage=1, schedule="interleaved-1f1b")
    full = dataclasses.replace(base, recompute="full")
    assert not paired.runs_pairs(full) and paired.runs_pairs(base)
    assert (predict(tiny, cluster, full, execution=paired)[3]["iteration_time_s"]
            == predict(tiny, cluster, full, execution=plain)[3]["iteration_time_s"])
    assert "--overlap-moe-expert-parallel-comm" not in paired.export_lines("megatron", full)
    selective = dataclasses.replace(base, recompute="selective")
    assert (predict(tiny, cluster, selective, execution=paired)[3]["iteration_time_s"]
            < predict(tiny, cluster, selective, execution=plain)[3]["iteration_time_s"])
    assert "--overlap-moe-expert-parallel-comm" in paired.export_lines("megatron", selective)


def test_deepseeks_policy_is_counted_on_a_dense_llama_too():
    """Under the deepseek preset a grouped-query Llama block (bf16, no latent attention) is counted tensor by tensor
    with DeepSeek's policy: the two norm outputs (QKV and MLP inputs, s x h bf16 each) fewer than Megatron's
    selective count; the dense MLP's SwiGLU is kept whole (the report recomputes the MoE SwiGLU only)."""
    from autoconf.cost.memory import layer_activation_bytes

    model = PRESETS["llama3-8b"]
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=8, seq_len=4096, recompute="selective")
    ours = layer_activation_bytes(model, c, "megatron", "gpu", selective=DEEPSEEK.selective_recompute)
    megatron = layer_activation_bytes(model, c, "megatron", "gpu", selective="attention_core")
    assert megatron - ours == 2 * 4096 * model.hidden_size * 2


def test_a_per_node_dispatch_exports_megatrons_deepep_dispatcher():
    """A plan whose framework dispatches per node exports Megatron-Core's flex dispatcher on DeepEP, one under
    NCCL's all-to-all the alltoall dispatcher; every flag is one Megatron-LM declares at the exports' tag."""
    from autoconf.report.exporters import megatron_flags

    tiny = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-moe", moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64))
    cluster = load_cluster("dgx-h100-80g", 1, 8)
    c = ParallelConfig(tp=1, pp=1, dp=8, ep=4, micro_batch_size=1, global_batch_size=8, seq_len=512, zero_stage=1)
    declared = json.loads((RUNS.parent / "megatron_lm_core_v0.16.1_flags.json").read_text())["flags"]
    flags = dict(megatron_flags(estimate(tiny, cluster, c, execution=DEEPSEEK))[0])
    assert flags["--moe-token-dispatcher-type"] == "flex" and flags["--moe-flex-dispatcher-backend"] == "deepep"
    assert set(flags) <= set(declared)
    core = dict(megatron_flags(estimate(tiny, cluster, c, execution=FRAMEWORKS["megatron-core"]))[0])
    assert core["--moe-token-dispatcher-type"] == "alltoall" and "--moe-flex-dispatcher-backend" not in core
