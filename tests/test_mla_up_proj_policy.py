"""Megatron-Core's --recompute-modules mla_up_proj mlp as the selective policy "mla_up_proj_mlp" (cost/saved.py,
cost/estimate.py), the framework's Adam-moment dtype (`Execution.optimizer_moments`), and truth_moe's reading of a
published --pipeline-model-parallel-layout (NeMo 25.09's DeepSeek-V3 H100 row runs all three)."""

import dataclasses
import sys
from pathlib import Path

import pytest

from autoconf.cost.compute import model_pieces
from autoconf.cost.estimate import (estimate, predict, recompute_time, selective_matmul_share,
                                    selective_matmuls_only)
from autoconf.cost.memory import state_bytes_per_param
from autoconf.cost.saved import saved_tensors
from autoconf.errors import UserError
from autoconf.report.exporters import megatron_args
from autoconf.solve.bounds import BoundCache
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import PRESETS as FRAMEWORKS
from autoconf.spec.model import MLASpec, MoESpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from truth_moe import layout_partition  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_exports_upstream import parse_megatron  # noqa: E402

V3 = PRESETS["deepseek-v3"]
CORE = FRAMEWORKS["megatron-core"]
POLICY = CORE.replace(selective_recompute="mla_up_proj_mlp")


def config(**changes) -> ParallelConfig:
    base = dict(tp=2, pp=8, vpp=4, dp=64, ep=64, micro_batch_size=1, global_batch_size=8192, seq_len=4096,
                schedule="interleaved-1f1b", zero_stage=1, recompute="selective", sequence_parallel=True,
                dtype="fp8")
    return ParallelConfig(**{**base, **changes})


def test_the_policy_drops_the_up_projection_outputs_and_the_dense_mlp_only():
    """Against Megatron's attention-core policy (flash attention: it redoes nothing a block keeps) a Megatron-Core MoE
    block (fused SwiGLU) keeps exactly MLA's Q, K, V less (heads x (q_head + k_head + v_head) per token over TP,
    bf16), the norm outputs and the latents stay; a dense block also drops its MLP's gate/up, silu and product and
    keeps the MLP input."""
    c = config()
    core = dict(saved_tensors(V3, c, "selective", "attention_core", True, False, fused_swiglu=True))
    ours = dict(saved_tensors(V3, c, "selective", "mla_up_proj_mlp", True, False, fused_swiglu=True))
    a = V3.mla
    qkv = 4096 / c.tp * V3.num_heads * (2 * (a.qk_nope_head_dim + a.qk_rope_head_dim) + a.v_head_dim) * 2
    assert core["Q, K, V"] - ours["Q, K, V"] == qkv and ours["Q, K, V"] == 0
    assert {k: v for k, v in core.items() if k != "Q, K, V"} == {k: v for k, v in ours.items() if k != "Q, K, V"}
    assert "down-projection input (norm output)" in ours and "expert silu" not in ours
    dense = dict(saved_tensors(V3, c, "selective", "mla_up_proj_mlp", False))
    assert "MLP input (norm output)" in dense and not any(k.startswith("MLP gate") for k in dense)
    assert sum(core.values()) > sum(ours.values())


def test_its_recompute_is_the_up_projections_matmul_time_alone():
    """The MoE block redoes q_b_proj and kv_b_proj, the dense block also gate_up_proj and down_proj, each as that
    share of the weight-gradient pass's matmul time and nothing else; the norms_mla_swiglu policy adds the
    element-wise time to the same share."""
    c = config()
    cluster = load_cluster("dgx-h100-80g", 128, 8)
    assert selective_matmuls_only(c, POLICY) and not selective_matmuls_only(c, CORE)
    moe_share = selective_matmul_share(V3, c, POLICY, moe=True)
    dense_share = selective_matmul_share(V3, c, POLICY)
    assert moe_share == selective_matmul_share(V3, c, CORE.replace(selective_recompute="norms_mla_swiglu"), moe=True)
    assert 0 < moe_share < dense_share < 1
    pieces = model_pieces(V3, cluster, c, execution=POLICY).kind(True)
    ours = recompute_time(pieces, c, 1e-3, moe_share, True)
    assert ours == pytest.approx(moe_share * pieces.block_rest.backward_weight)
    assert ours < recompute_time(pieces, c, 1e-3, moe_share)


def test_bounds_stay_at_or_below_the_estimate_under_the_policy():
    """The search's bounds read the same policy: at or below the estimate on a tiny latent-attention MoE model."""
    tiny = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-mla", num_kv_heads=4, moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, num_shared_experts=1,
        shared_expert_intermediate_size=96, first_k_dense=1),
        mla=MLASpec(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16))
    cluster = load_cluster("dgx-h100-80g", 2, 8)
    cache = BoundCache(tiny, cluster, POLICY)
    for changes in ({"ep": 4}, {"ep": 2, "pp": 2}, {"ep": 4, "pp": 2, "dtype": "fp8"}):
        c = ParallelConfig(**{**dict(tp=1, pp=1, dp=16 // changes.get("pp", 1), micro_batch_size=1,
                                     global_batch_size=64, seq_len=1024, zero_stage=1, recompute="selective"),
                              **changes})
        p = predict(tiny, cluster, c, execution=POLICY, detail=False)[3]
        assert cache.time_bound(c) <= p["iteration_time_s"] * (1 + 1e-9), c
        assert cache.memory_bound(c) <= p["peak_memory_bytes"] * (1 + 1e-9), c


def test_bf16_moments_take_four_bytes_a_parameter_off_the_optimizer():
    """Megatron's precision-aware optimizer with bf16 moments: 4 + 2 x 2 bytes of optimizer state per parameter
    (fp32 master weights) against 4 + 2 x 4, over the same ZeRO shards; an unknown dtype is one line."""
    c = config()
    fp32 = state_bytes_per_param(c, "megatron", execution=CORE)[2]
    bf16 = state_bytes_per_param(c, "megatron", execution=CORE.replace(optimizer_moments="bf16"))[2]
    assert fp32 == pytest.approx(12 / c.dp) and bf16 == pytest.approx(8 / c.dp)
    assert state_bytes_per_param(c, "megatron", execution=CORE.replace(optimizer_moments="fp32"))[2] == fp32
    with pytest.raises(UserError, match="optimizer_moments 'fp16' is none of"):
        CORE.replace(optimizer_moments="fp16")


def test_a_published_pipeline_layout_reads_as_its_partition():
    """'Et|(tt|)*30mL' (NeMo's DeepSeek-V3 H100 recipe, pp 8 x vpp 4): layer 0 with the embedding, two layers on
    each of the next 30 stages, the MTP module and the loss alone on the last ('t*N' repeats a layer); a layout
    that miscounts the stages, the layers or the MTP modules is one line."""
    partition = layout_partition("Et|(tt|)*30mL", V3, 32)
    assert partition[0] == [0, 1] and partition[1] == [1, 3] and partition[-2] == [59, 61]
    assert partition[-1] == [61, 61] and len(partition) == 32
    assert layout_partition("Et*15|t*15|t*15|t*16|mL", V3, 5) == [[0, 15], [15, 30], [30, 45], [45, 61], [61, 61]]
    for bad, stages in (("Et|(tt|)*29mL", 32), ("Et|(tt|)*30L", 32), ("Et|(tt|*30mL", 32), ("Et|(tt|)*30mL", 16)):
        with pytest.raises(UserError, match="pipeline_layout"):
            layout_partition(bad, V3, stages)


def test_the_policy_exports_megatron_cores_recompute_modules():
    """A plan under the policy exports --recompute-granularity selective --recompute-modules mla_up_proj mlp, which
    parses with the flags of the Megatron-LM tag the exports target (nargs '+'); Megatron's own selective exports
    no module list (its default, the attention core)."""
    tiny = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-mla", num_kv_heads=4, moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, first_k_dense=1),
        mla=MLASpec(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16))
    c = ParallelConfig(tp=1, pp=2, dp=4, ep=4, micro_batch_size=1, global_batch_size=16, seq_len=256, zero_stage=1,
                       recompute="selective")
    cluster = load_cluster("dgx-h100-80g", 1, 8)
    args, given = parse_megatron(megatron_args(estimate(tiny, cluster, c, execution=POLICY)))
    assert args.recompute_granularity == "selective" and args.recompute_modules == ["mla_up_proj", "mlp"]
    args, given = parse_megatron(megatron_args(estimate(tiny, cluster, c, execution=CORE)))
    assert args.recompute_granularity == "selective" and "recompute_modules" not in given
    # DeepSeek's norms, latent up-projections and experts' SwiGLU: Megatron-Core's layernorm, mla_up_proj, moe_act
    # (the export said selective alone, which Megatron reads as the attention core)
    deepseek = CORE.replace(selective_recompute="norms_mla_swiglu")
    args, given = parse_megatron(megatron_args(estimate(tiny, cluster, c, execution=deepseek)))
    assert args.recompute_modules == ["layernorm", "mla_up_proj", "moe_act"]
