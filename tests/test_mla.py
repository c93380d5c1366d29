"""The executor's multi-head latent attention (execute/mla.py) and qk-norm (execute/model.py `Attention`), on CPU.

Single process: the built modules hold the spec's parameters (latent attention with and without a query bottleneck,
qk-norm); recompute keeps the gradients; what a latent-attention block keeps for its backward (autograd's
saved-tensor hooks) is cost/saved.py's count; with `transformers` installed (the `hf` extra), the attention equals
its `DeepseekV3Attention`, and the qk-norm attention its `Qwen3Attention`, with the same weights (skipped without).
Several ranks (the session's shared torchrun jobs, tests/executor_jobs.py), 3 steps in fp32, per-step loss and
global gradient norm within 1e-4 of one process: a tiny DeepSeek-style model (latent attention, MoE layers with a
shared expert after a leading dense layer) under tp2 with sequence parallelism, ep2 x pp2 and dp2 ZeRO-3; with
values narrower than a query head under context parallelism (cp2 by both K/V exchanges, cp2 x ep2, cp2 x tp2 with
sequence parallelism and the per-op policy, cp2 with the per-op policy) and, dense, under seq1f1b; a qk-norm model
under tp2 with sequence parallelism and cp2. (tp2 without sequence parallelism and tp2 x dp2 with it under ZeRO-3
passed too when this was written, and were left out to keep the suite's time.) Single process also: the K/V bytes
a CP layer exchanges are the estimate's unit, and under the per-op policy a block keeps what the estimate counts.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autoconf.spec.model import MLASpec
from autoconf.spec.plan import ParallelConfig, Plan
from autoconf.spec.presets import PRESETS
import executor_jobs
from executor_jobs import STEPS, Layout, assert_matches_reference
from plan_helpers import PARAM_COUNT, assert_ranks_hold_the_estimated_params, even_plan

# DeepSeek-V3's shape in miniature: a query bottleneck, a latent of 16, 16 + 8 query/key widths per head (8 rotary)
# and values as wide as a query head (CPU's fused attention kernel needs equal widths; HF_MLA below has unequal
# ones); tiny-moe's MoE layers (8 experts, top-2, a shared expert) after one dense layer.
MOE = PRESETS["tiny-moe"]
MLA = dataclasses.replace(MOE, name="tiny-mla", num_kv_heads=MOE.num_heads, head_dim=24, mla=MLASpec(
    q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24))
QK = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-qk-norm", num_layers=4, hidden_size=64, head_dim=None,
                         ffn_hidden_size=176, qk_norm=True)
# 2 layers (mla2: the dense one, then one latent-attention MoE layer) for the layouts without a pipeline: a layout's
# cost on CPU grows with its layers, tensor-parallel ones most. narrow2: values narrower than a query head (16
# against 16 + 8, as DeepSeek-V3's 128 against 192), so context parallelism's K/V exchange carries unequal widths.
MODELS = {"mla": MLA, "mla2": dataclasses.replace(MLA, name="tiny-mla2", num_layers=2),
          "narrow2": dataclasses.replace(MLA, name="tiny-mla-narrow2", num_layers=2, head_dim=16,
                                         mla=dataclasses.replace(MLA.mla, v_head_dim=16)),
          "qk2": dataclasses.replace(QK, name="tiny-qk-norm2", num_layers=2)}
MODELS["dense2"] = dataclasses.replace(MODELS["narrow2"], name="tiny-mla-dense2", moe=None)  # (seq1f1b: dense only)


def mla_plan(model: str = "mla", ep: int = 1, cp_comm: str = "ring", seq_chunks: int = 1, **layout) -> Plan:
    """`even_plan` of a test model with an expert-parallel degree, a K/V exchange and sequence chunks, 4 sequences
    a step in micro-batches of 2 (of 1 with a pipeline, which needs as many micro-batches as stages)."""
    plan = even_plan(MODELS[model], **{"global_batch": 4, "micro_batch": 1 if layout.get("pp", 1) > 1 else 2,
                                       **layout})
    config = dataclasses.replace(plan.config, ep=ep, cp_comm=cp_comm, seq_chunks=seq_chunks)
    plan = Plan(model=plan.model, cluster=plan.cluster, config=config,
                partition=plan.partition, placement=plan.placement)
    plan.validate()
    return plan


OPS = {"recompute": "selective", "selective_recompute": "alternate_matmuls"}  # the per-op policy
# name -> Layout(world, plan); the name's first word is the reference run's (world 1).
LAYOUTS: dict[str, Layout] = {
    "mla": Layout(1, mla_plan()),
    "mla2": Layout(1, mla_plan("mla2")),
    "qk2": Layout(1, mla_plan("qk2")),
    "narrow2": Layout(1, mla_plan("narrow2")),
    "dense2": Layout(1, mla_plan("dense2")),
    "mla2-tp2-sp": Layout(2, mla_plan("mla2", tp=2, sp=True), PARAM_COUNT),
    "mla2-dp2-zero3": Layout(2, mla_plan("mla2", dp=2, zero=3)),
    "qk2-tp2-sp": Layout(2, mla_plan("qk2", tp=2, sp=True), PARAM_COUNT),
    "qk2-cp2": Layout(2, mla_plan("qk2", cp=2)),
    "mla-ep2-pp2": Layout(4, mla_plan(ep=2, pp=2, dp=2)),
    "narrow2-cp2-allgather": Layout(2, mla_plan("narrow2", cp=2, cp_comm="allgather")),
    "narrow2-cp2-ring": Layout(2, mla_plan("narrow2", cp=2)),
    "narrow2-cp2-ep2-ring": Layout(2, mla_plan("narrow2", cp=2, ep=2)),
    "narrow2-cp2-tp2-sp-ops-allgather": Layout(4, mla_plan("narrow2", cp=2, tp=2, sp=True, cp_comm="allgather",
                                                           **OPS)),
    "narrow2-cp2-ops-ring": Layout(2, mla_plan("narrow2", cp=2, **OPS)),
    "dense2-pp2-seq1f1b-k2": Layout(2, mla_plan("dense2", pp=2, schedule="seq1f1b", seq_chunks=2)),
}
executor_jobs.register("mla", LAYOUTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, layout in LAYOUTS.items() if layout.world > 1])
def test_layout_matches_single_process(name, tmp_path_factory):
    """Every step's loss and global gradient norm equal the single-process run's within 1e-4 relative."""
    assert_matches_reference(executor_jobs.results("mla", tmp_path_factory), name)


@pytest.mark.slow
def test_reference_runs_train(tmp_path_factory):
    """The reference runs move step to step (so equal numbers are a real check)."""
    out = executor_jobs.results("mla", tmp_path_factory)
    for name in ("mla", "mla2", "qk2"):
        assert len({round(r["loss"], 6) for r in out[name]["records"]}) == STEPS


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mla2-tp2-sp", "qk2-tp2-sp"])
def test_each_rank_holds_the_parameters_the_memory_estimate_counts(name, tmp_path_factory):
    """Under tp2: latent attention's down-projections and their norms, the router and every norm (qk-norm's too)
    whole on each rank, the split weights at 1/tp (tests/param_count_probe.py); before the op table's
    `tp_replicated_params` the estimate divided them all by tp."""
    found = executor_jobs.results("mla", tmp_path_factory)[name]["probe"]
    assert_ranks_hold_the_estimated_params(LAYOUTS[name].plan, found)


# ---- pieces that need no process group ----------------------------------------------------------------------------
def _model(spec):
    from autoconf.execute.model import build_model, init_weights

    model = build_model(spec, device="cpu")
    init_weights(model, 0)
    return model


@pytest.mark.parametrize("spec", [MLA, dataclasses.replace(MLA, mla=dataclasses.replace(MLA.mla, q_lora_rank=None)),
                                  QK], ids=["mla", "mla-full-rank-query", "qk-norm"])
def test_built_model_has_the_spec_parameters(spec):
    """The executor's model holds exactly the parameters the spec's op table counts."""
    assert sum(p.numel() for p in _model(spec).parameters()) == spec.total_params()


def test_qk_norm_normalises_each_head():
    """With unit norm weights every query and key head reaching the attention has RMS 1 before RoPE (RoPE keeps
    the norm): scaling a head's projection changes nothing downstream."""
    attention = _model(QK).layers["0"].attention
    x = torch.randn(2, 8, QK.hidden_size)
    out = attention(x)
    with torch.no_grad():
        attention.wq.weight[: QK.head_dim] *= 7.0  # head 0 of the queries
        attention.wk.weight[QK.head_dim:] *= 3.0  # key head 1
    assert torch.allclose(attention(x), out, rtol=1e-3, atol=1e-5)
    attention.q_norm = None  # without the norm the scaled head changes the output
    assert not torch.allclose(attention(x), out, rtol=1e-3, atol=1e-5)


def test_recompute_gives_the_gradients_of_no_recompute():
    """Selective (the attention core) and full recompute of a latent-attention MoE block and of a qk-norm block
    give the gradients the block gives without recompute."""
    from autoconf.execute.parallelize import apply_recompute

    for spec, layer in ((MLA, "1"), (QK, "0")):
        model = _model(spec)
        block = model.layers[layer]
        x = torch.randn(2, 16, spec.hidden_size)
        grads = []
        for mode in ("none", "selective", "full"):
            apply_recompute(model, mode)
            block.zero_grad(set_to_none=True)
            block(x).square().sum().backward()
            grads.append([p.grad.clone() for p in block.parameters()])
        assert block.recompute_full and len(grads[0]) == len(list(block.parameters()))
        for other in grads[1:]:
            assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads[0], other))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_latent_attention_saves_what_cost_saved_counts(dtype):
    """What a latent-attention block's attention half (norm and attention, no recompute, flash) keeps for its
    backward, counted with autograd's saved-tensor hooks, is cost/saved.py's rows for it (norm input, latents,
    Q, K, V, output projection input, log-sum-exp), plus what CPU's composite RMSNorm keeps beyond its input
    (cost/memory.py `norm_saved_bytes`) for each of its three norms; left over: the norms' fp32 statistics (one per
    token and norm) and the rotary tables (cos and sin for the queries and the shared key)."""
    from autoconf.cost.memory import norm_saved_bytes
    from autoconf.cost.saved import saved_tensors
    from autoconf.execute.model import Block
    from autoconf.profile.activations import saved_bytes
    from autoconf.spec.dtypes import STORAGE_BYTES, precision

    mb, seq, spec = 3, 40, MLA
    low = torch.bfloat16 if dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    block = Block(spec, "flash").train().to(low)
    x = torch.randn(mb, seq, spec.hidden_size, dtype=low, requires_grad=True)
    measured = saved_bytes(torch.nn.Sequential(block.attention_norm, block.attention), x)
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=mb, global_batch_size=mb, seq_len=seq, dtype=dtype,
                            attention="flash", recompute="none")
    rows = saved_tensors(spec, config, "none", "attention_core", moe=False)
    counted = sum(nbytes for name, nbytes in rows if not name.startswith("MLP"))
    assert len(rows) - sum(name.startswith("MLP") for name, _ in rows) == 9  # the rows of latent attention
    e = STORAGE_BYTES[precision(dtype).element]
    norm_widths = spec.hidden_size + spec.mla.q_lora_rank + spec.mla.kv_lora_rank
    cpu_norms = (norm_saved_bytes(spec, config, "cpu") - e) * mb * seq * norm_widths
    left_over = 3 * 4 * mb * seq + 4 * e * seq * spec.mla.qk_rope_head_dim
    assert counted + cpu_norms <= measured <= counted + cpu_norms + left_over, (measured, counted, cpu_norms)




@pytest.mark.parametrize("spec", [MLA, dataclasses.replace(MLA, mla=dataclasses.replace(MLA.mla, q_lora_rank=None)),
                                  QK], ids=["mla", "mla-full-rank-query", "qk-norm"])
def test_memory_estimate_counts_what_the_block_saves(spec):
    """The memory estimate of the executor's block (cost/memory.py `executor_layer_activation_bytes`: latent
    attention's own count, qk-norm's norm inputs) is what a dense block of the model keeps for its backward, in fp32
    and bf16, with both attention kernels and every recompute mode; left over (under 3%): norm statistics and rotary
    tables, as for grouped-query blocks (tests/test_memory_saved.py)."""
    from autoconf.cost.memory import executor_layer_activation_bytes
    from autoconf.execute.model import Block, OneBlock
    from autoconf.execute.parallelize import apply_recompute
    from autoconf.profile.activations import saved_bytes

    mb, seq = 3, 40
    torch.manual_seed(0)
    for dtype in ("fp32", "bf16"):
        low = torch.bfloat16 if dtype == "bf16" else torch.float32
        for attention in ("flash", "standard"):
            for recompute in ("none", "selective", "full"):
                block = Block(spec, attention, 0).train().to(low)
                apply_recompute(OneBlock(block), recompute)
                x = torch.randn(mb, seq, spec.hidden_size, dtype=low, requires_grad=True)
                measured = saved_bytes(block, x)
                config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=mb, global_batch_size=mb, seq_len=seq,
                                        dtype=dtype, attention=attention, recompute=recompute)
                estimated = executor_layer_activation_bytes(spec, config, recompute, "cpu")
                assert estimated <= measured <= 1.03 * estimated, (dtype, attention, recompute, measured, estimated)


@pytest.mark.parametrize("spec", [MLA, dataclasses.replace(MLA, mla=dataclasses.replace(MLA.mla, q_lora_rank=None))],
                         ids=["mla", "mla-full-rank-query"])
@pytest.mark.parametrize("layer", ["0", "1"], ids=["dense", "moe"])
def test_the_per_op_policy_keeps_what_the_estimate_counts(spec, layer):
    """Under the per-op policy (alternate_matmuls) a latent-attention block, dense or MoE, keeps exactly the
    estimate's bytes (block input; the 1st, 3rd, ... weight matmul's output of wq_a wq_b wkv_a wkv_b wo (or wq wkv_a
    wkv_b wo), the MLP or shared experts continuing the count; the attention kernel's output and log-sum-exp) and
    gives the gradients of no recompute. Values as wide as a query head: CPU's fused kernel, the one the policy
    saves, takes equal widths only (narrower values run CPU's math kernel, which the policy recomputes; CUDA's
    memory-efficient kernel takes them)."""
    from autoconf.cost.memory import layer_activation_bytes
    from autoconf.execute.model import OneBlock
    from autoconf.execute.parallelize import apply_recompute
    from autoconf.profile.activations import saved_bytes

    mb, seq, op = 3, 40, "alternate_matmuls"
    torch.manual_seed(0)
    block = _model(spec).layers[layer].train()
    x = torch.randn(mb, seq, spec.hidden_size, requires_grad=True)
    block(x).square().sum().backward()
    plain = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad(set_to_none=True)
    apply_recompute(OneBlock(block), "selective", None, op)
    assert block.recompute_ops
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=mb, global_batch_size=mb, seq_len=seq, dtype="fp32",
                            attention="flash", recompute="selective", selective_recompute=op)
    estimated = layer_activation_bytes(spec, config, "torch", "cpu", selective=op, moe=spec.is_moe_layer(int(layer)))
    assert saved_bytes(block, x) == estimated
    block(x).square().sum().backward()
    for a, b in zip(plain, [x.grad] + [p.grad for p in block.parameters()]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * a.abs().max().item())


def _hf_config(spec):
    from transformers import DeepseekV3Config

    m = spec.mla
    return DeepseekV3Config(hidden_size=spec.hidden_size, num_attention_heads=spec.num_heads,
                            num_key_value_heads=spec.num_heads, q_lora_rank=m.q_lora_rank,
                            kv_lora_rank=m.kv_lora_rank, qk_nope_head_dim=m.qk_nope_head_dim,
                            qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim,
                            rope_theta=spec.rope_theta, rms_norm_eps=spec.norm_eps, attention_bias=False,
                            rope_interleave=False, rope_scaling=None, max_position_embeddings=spec.max_seq_len,
                            attention_dropout=0.0)


# Values narrower than a query head (DeepSeek-V3: 192 vs 128), so the check covers unequal widths too.
HF_MLA = dataclasses.replace(MLA, head_dim=16, mla=dataclasses.replace(MLA.mla, v_head_dim=16))


@pytest.mark.parametrize("spec", [HF_MLA, dataclasses.replace(HF_MLA, mla=dataclasses.replace(HF_MLA.mla,
                                                                                                q_lora_rank=None))],
                         ids=["query-bottleneck", "full-rank-query"])
@pytest.mark.parametrize("attention", ["flash", "standard"])
def test_latent_attention_equals_transformers_deepseek_v3(spec, attention):
    """With the same weights, the executor's latent attention and transformers' `DeepseekV3Attention` (eager, no
    interleaved RoPE, no YaRN scaling) give the same output and input gradient."""
    pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (DeepseekV3Attention,
                                                                        DeepseekV3RotaryEmbedding)

    config = _hf_config(spec)
    config._attn_implementation = "eager"
    ours = _model(spec).layers["0"].attention.train()
    theirs = DeepseekV3Attention(config, layer_idx=0).train()
    names = {"q_proj": "wq", "q_a_proj": "wq_a", "q_a_layernorm": "q_a_norm", "q_b_proj": "wq_b",
             "kv_a_proj_with_mqa": "wkv_a", "kv_a_layernorm": "kv_a_norm", "kv_b_proj": "wkv_b", "o_proj": "wo"}
    _share_random_weights(ours, theirs, names)
    ours.attention = attention
    _assert_same_function(ours, theirs, DeepseekV3RotaryEmbedding(config), spec.hidden_size)


def _share_random_weights(ours, theirs, names: dict) -> None:
    """Random weights in `ours` (the norms' too, so that a swapped norm would show), copied into `theirs` through
    `names` (their module name -> ours); every parameter of ours is copied exactly once."""
    mine = dict(ours.named_parameters())
    with torch.no_grad():
        for name, p in mine.items():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("norm.weight") else 0.0))
        copied = []
        for name, p in theirs.named_parameters():
            module, leaf = name.split(".", 1)
            copied.append(f"{names[module]}.{leaf}")
            p.copy_(mine[copied[-1]])
    assert sorted(copied) == sorted(mine)


def _assert_same_function(ours, theirs, rotary, hidden: int) -> None:
    """`ours(x)` and transformers' `theirs(x, cos_sin, causal mask)[0]` agree in output and input gradient."""
    torch.manual_seed(0)
    b, s = 2, 12
    x = torch.randn(b, s, hidden)
    cos_sin = rotary(x, torch.arange(s).unsqueeze(0))
    mask = torch.full((s, s), float("-inf")).triu(1)[None, None]
    outs = []
    for run in (lambda t: ours(t), lambda t: theirs(t, cos_sin, mask)[0]):
        leaf = x.clone().requires_grad_()
        out = run(leaf)
        out.square().sum().backward()
        outs.append((out.detach(), leaf.grad))
    for mine, hf in zip(outs[0], outs[1]):  # output, input gradient: equal to fp32 rounding
        assert (mine - hf).norm() <= 1e-5 * hf.norm(), ((mine - hf).norm(), hf.norm())


def test_qk_norm_attention_equals_transformers_qwen3():
    """With the same weights (norms random), the executor's qk-norm attention and transformers' `Qwen3Attention`
    (eager) give the same output and input gradient."""
    pytest.importorskip("transformers")
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RotaryEmbedding

    spec = QK
    config = Qwen3Config(hidden_size=spec.hidden_size, num_attention_heads=spec.num_heads,
                         num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, rope_theta=spec.rope_theta,
                         rms_norm_eps=spec.norm_eps, attention_bias=False, attention_dropout=0.0,
                         max_position_embeddings=spec.max_seq_len, rope_scaling=None)
    config._attn_implementation = "eager"
    ours = _model(spec).layers["0"].attention.train()
    theirs = Qwen3Attention(config, layer_idx=0).train()
    names = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo", "q_norm": "q_norm", "k_norm": "k_norm"}
    _share_random_weights(ours, theirs, names)
    _assert_same_function(ours, theirs, Qwen3RotaryEmbedding(config), spec.hidden_size)


def test_launch_runs_latent_attention_with_context_parallelism(tmp_path):
    """launch --dry-run takes latent-attention plans at tp2 and at cp2 (refused before CP carried K and V of
    different widths); the executor's rule takes DeepSeek-V3 (without MTP) at tp2 and at cp2 under either K/V
    exchange."""
    from click.testing import CliRunner

    from autoconf.cli import main
    from autoconf.spec.support import unsupported_reason

    v3 = dataclasses.replace(PRESETS["deepseek-v3"], mtp_num_layers=0)  # (its MTP module: tests/test_mtp.py)
    for name, plan in (("tp", mla_plan(tp=2)), ("cp", mla_plan("narrow2", cp=2)),
                       ("cp-allgather", mla_plan("narrow2", cp=2, cp_comm="allgather"))):
        plan.save(tmp_path / f"{name}.json")
        result = CliRunner().invoke(main, ["launch", str(tmp_path / f"{name}.json"), "--dry-run"])
        assert result.exit_code == 0, result.output
        assert unsupported_reason(plan.config, v3) is None


@pytest.mark.parametrize("algorithm", ["allgather", "ring"])
def test_context_parallelism_exchanges_the_k_and_v_widths_the_estimate_counts(algorithm):
    """What a latent-attention layer with narrower values hands its CP exchange per transfer (its K of nope + rope
    and V of v_head_dim per head, one tensor) is cost/memory.py `cp_kv_bytes`, the unit cp_attention_comm and the
    CP buffers count; the ring sends it cp - 1 times, the all-gather once; a grouped-query layer likewise."""
    from autoconf.cost.memory import cp_kv_bytes
    from autoconf.execute import context_parallel as cpx
    from autoconf.execute.model import make_attention

    class Exchange(cpx.ContextParallel):
        """CP rank 0's context without a process group: its exchange records the bytes it sends and hands back
        its own block in place of the others'."""

        def __init__(self, seq: int, cp: int):
            self.algorithm, self.cp, self.rank, self.seq_len, self.uses_torch = algorithm, cp, 0, seq, False
            self.lay_out(None)
            self.sent: list[int] = []

        def gather(self, t):
            self.sent.append(t.nbytes)
            return torch.cat([t] * self.cp, dim=2)

        def rotate(self, t):
            self.sent.append(t.nbytes)
            return t.clone()

    mb, seq, cp = 2, 32, 4
    for spec in (MODELS["narrow2"], MODELS["qk2"]):
        attention = make_attention(spec, "flash")
        attention.context = exchange = Exchange(seq, cp)
        out = attention(torch.randn(mb, seq // cp, spec.hidden_size))
        assert out.shape == (mb, seq // cp, spec.hidden_size)
        config = ParallelConfig(tp=1, pp=1, dp=1, cp=cp, cp_comm=algorithm, micro_batch_size=mb,
                                global_batch_size=mb, seq_len=seq, dtype="fp32")
        assert exchange.sent == [cp_kv_bytes(spec, config)] * (1 if algorithm == "allgather" else cp - 1), spec.name
    m = MODELS["narrow2"].mla
    assert MODELS["narrow2"].attention_kv_dim == MODELS["narrow2"].num_heads * (
        m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) != 2 * MODELS["narrow2"].kv_dim


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_the_compute_model_splits_over_tp_exactly_the_linears_the_executor_splits(tp):
    """Latent attention's GEMMs on one TP rank: the ones the executor's TP plan splits (`parallelize.attention_tp_plan`)
    at 1/tp of their FLOPs, the replicated down-projections whole (`Op.tp_replicated`), for DeepSeek-V3's shapes."""
    from autoconf.cost.compute import attention_gemms
    from autoconf.execute.model import build_model
    from autoconf.execute.parallelize import attention_tp_plan
    from autoconf.spec.layers import attention_ops

    model = PRESETS["deepseek-v3"]
    linears = [op for op in attention_ops(model) if op.kind == "linear"]
    block = build_model(MLA).layers["0"]
    split_names = {name.rsplit(".", 1)[-1] for name in attention_tp_plan(block.attention, None, None)}
    names = {"q_a_proj": "wq_a", "q_b_proj": "wq_b", "q_proj": "wq", "kv_a_proj": "wkv_a", "kv_b_proj": "wkv_b",
             "out_proj": "wo"}
    assert [not op.tp_replicated for op in linears] == [names[op.name] in split_names for op in linears]
    expected = [1000 * op.flops / (1 if op.tp_replicated else tp) for op in linears]
    assert attention_gemms(model, 1000, 1, tp) == pytest.approx(expected)
