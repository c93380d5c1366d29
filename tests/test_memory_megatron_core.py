"""Megatron-Core's memory as the megatron-core framework flags state it (spec/frameworks.py, read in
cost/memory.py): Transformer Engine's blocks, the gradient buffer's dtype, the optimizer's state, the loss. The
published layouts these flags describe are compared in scripts/truth_nemo.py."""

from __future__ import annotations

import dataclasses

import pytest

from autoconf.cost.estimate import estimate
from autoconf.cost.memory import (fp8_weight_cache_bytes, layer_activation_bytes, logits_temporary_bytes,
                                  state_bytes_per_param)
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model
from plan_helpers import script_module

GiB = 1024**3
CORE = execution("megatron-core")


def _config(**changes) -> ParallelConfig:
    base = ParallelConfig(tp=4, pp=1, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=8192, zero_stage=1,
                          sequence_parallel=True)
    return dataclasses.replace(base, **changes)


def test_transformer_engine_blocks_keep_less_than_megatrons_accounting():
    """Megatron 2022's preset keeps Megatron-LM's accounting; Megatron-Core's TE block drops SwiGLU's silu output (one
    FFN-wide bf16 tensor) and under fp8 saves the linear inputs in fp8: less again, by at most the bytes of those
    inputs; full recompute keeps the block input either way."""
    model = load_model("llama3-70b")
    c = _config()
    s, f, h, t = c.seq_len, model.ffn_hidden_size, model.hidden_size, c.tp
    megatron = layer_activation_bytes(model, c, "megatron", "gpu", execution=execution("megatron"))
    assert megatron == model.layer_activation_bytes(s, 1, t, True, "none", "flash", 2)
    core = layer_activation_bytes(model, c, "megatron", "gpu", execution=CORE)
    assert megatron - core == pytest.approx(2 * s * f / t)
    fp8 = layer_activation_bytes(model, dataclasses.replace(c, dtype="fp8"), "megatron", "gpu", execution=CORE)
    linear_inputs = s * (2 * h + f) / t  # one byte less each: QKV and first-MLP inputs, second-MLP input
    assert core - fp8 == pytest.approx(linear_inputs - s * model.q_dim / t)  # the projection's fp8 copy beside
    full = dataclasses.replace(c, recompute="full", dtype="fp8")
    assert (layer_activation_bytes(model, full, "megatron", "gpu", execution=CORE)
            == layer_activation_bytes(model, full, "megatron", "gpu"))


@pytest.mark.parametrize("model_name, moe", [("llama3-70b", False), ("mixtral-8x7b", True), ("deepseek-v3", True)])
def test_one_swiglu_flag_decides_the_silu_output_of_dense_mlps_and_experts(model_name, moe):
    """`fused_swiglu` off keeps each SwiGLU's silu output (one tensor of its width: the dense FFN's over TP, an
    expert's per routed row, a shared expert's over TP) in a dense and an MoE block alike, whichever path counts the
    block (the closed formula, the routed rows, DeepSeek's tensor table); Megatron 2022's preset keeps it and its
    export turns Megatron-Core's fusion off, Megatron-Core's fuses both and exports nothing for it."""
    from autoconf.cost.moe import tokens_per_rank
    from autoconf.report.exporters import megatron_args

    model = load_model(model_name)
    c = _config(tp=2, ep=4 if moe else 1, dp=8, global_batch_size=64, seq_len=4096)
    m, e = model.moe, 2
    if moe:
        width = m.num_experts_per_tok * c.etp * tokens_per_rank(c) * m.moe_intermediate_size / c.etp
        width += c.seq_len * m.num_shared_experts * m.shared_expert_intermediate_size / c.tp
    else:
        width = c.seq_len * model.ffn_hidden_size / c.tp
    fused = layer_activation_bytes(model, c, "megatron", "gpu", moe=moe, execution=CORE)
    kept = layer_activation_bytes(model, c, "megatron", "gpu", moe=moe, execution=CORE.replace(fused_swiglu=False))
    assert kept - fused == pytest.approx(e * width, rel=1e-12)
    llama = load_model("llama3-8b")
    cluster = load_cluster("dgx-h100-80g", nodes=1)
    small = _config(tp=2, dp=4, global_batch_size=8)
    assert "--no-bias-swiglu-fusion" in megatron_args(estimate(llama, cluster, small, execution=execution("megatron")))
    assert "--no-bias-swiglu-fusion" not in megatron_args(estimate(llama, cluster, small, execution=CORE))


def test_gradient_buffer_and_optimizer_state_follow_the_recipe():
    """Megatron-LM: 2 + 4 + 12/d bytes; a bf16 gradient buffer 2 + 2 + 12/d; apex's DistributedFusedAdam (bf16
    remainders, fp32 moments, the gradient shard) 2 + g + (10 + g)/d."""
    for dp in (2, 16):
        c = _config(dp=dp, global_batch_size=dp * 8)
        assert sum(state_bytes_per_param(c, "megatron", execution=CORE)) == pytest.approx(6 + 12 / dp)
        bf16 = CORE.replace(grad_buffer_dtype="bf16")
        assert sum(state_bytes_per_param(c, "megatron", execution=bf16)) == pytest.approx(4 + 12 / dp)
        for g, dtype in ((4, "fp32"), (2, "bf16")):
            apex = CORE.replace(optimizer="apex", grad_buffer_dtype=dtype)
            assert sum(state_bytes_per_param(c, "megatron", execution=apex)) == pytest.approx(2 + g + (10 + g) / dp)


@pytest.mark.parametrize("moments, per_param", [("fp32", 16), ("bf16", 12)])
def test_the_offloaded_optimizer_holds_the_moments_dtype_on_the_host(moments, per_param):
    """Megatron's --optimizer-cpu-offload keeps the fp32 master weights, the moments in their dtype and an fp32
    gradient copy on the host: 16 / dp bytes per parameter with fp32 moments, 12 / dp with bf16 (found by a review:
    the host had counted 16 whatever the moments' dtype); the device keeps the weights and the gradient buffer."""
    model = load_model("llama3-8b")
    cluster = load_cluster("dgx-h100-80g")
    flags = CORE.replace(optimizer_moments=moments)
    c = _config(tp=1, dp=8, sequence_parallel=False, offload_optimizer=True)
    entry = estimate(model, cluster, c, execution=flags).prediction["memory_per_stage"][0]
    assert entry["host"] == pytest.approx(model.total_params() * per_param / 8)
    assert entry["optimizer"] == 0


def test_fp8_weight_copies_are_kept_unless_the_weights_are_fp8():
    """TE's cached fp8 weight and transpose: 2 bytes per block parameter under fp8 without fp8 parameters, none in
    bf16, with fp8 parameters, or without TE; the estimate's weights term grows by exactly that."""
    fp8 = _config(dtype="fp8")
    assert fp8_weight_cache_bytes(fp8, CORE) == 2.0
    assert fp8_weight_cache_bytes(_config(), CORE) == 0.0
    assert fp8_weight_cache_bytes(fp8, CORE.replace(fp8_params=True)) == 0.0
    assert fp8_weight_cache_bytes(fp8, execution("megatron")) == 0.0
    model = load_model("llama3-8b")
    cluster = load_cluster("dgx-h100-80g", nodes=4)
    c = _config(tp=1, dp=32, global_batch_size=256, sequence_parallel=False, dtype="fp8")
    cached, fp8_params = (estimate(model, cluster, c, execution=ex, detail=False).prediction["memory_per_stage"][0]
                          for ex in (CORE, CORE.replace(fp8_params=True)))
    blocks = model.num_layers * model.layer_params()
    assert cached["params"] - fp8_params["params"] == pytest.approx(2 * blocks)
    assert cached["activations"] == fp8_params["activations"]


def test_the_loss_holds_what_its_cross_entropy_keeps():
    """Per logit beyond the bf16 logits: Megatron 2022 two fp32 copies, Megatron-Core's vocab-parallel cross
    entropy its fp32 softmax, TE's fused one nothing (the gradient overwrites the logits)."""
    model = load_model("llama3-8b")
    c = _config()
    logits = c.seq_len * model.vocab_size / c.tp
    assert logits_temporary_bytes(model, c, "megatron") == 10 * logits
    assert logits_temporary_bytes(model, c, "megatron", CORE) == 6 * logits
    assert logits_temporary_bytes(model, c, "megatron", CORE.replace(loss_memory="fused")) == 2 * logits


def test_memory_flags_reject_what_no_framework_runs():
    """Unknown values and TE / apex flags on the torch layout are one-line errors naming what would work."""
    with pytest.raises(UserError, match="grad_buffer_dtype 'fp64' is none of fp32, bf16, fp16"):
        CORE.replace(grad_buffer_dtype="fp64")
    with pytest.raises(UserError, match="loss_memory"):
        CORE.replace(loss_memory="chunked")
    with pytest.raises(UserError, match="megatron memory layout"):
        execution("autoconf").replace(transformer_engine=True)


def test_nvidia_published_recipes_state_their_memory_settings_and_the_bridge_70b_row_fits():
    """scripts/data/published_nemo.json states each table's optimizer and cross entropy and each row's gradient
    buffer and fp8 parameters; Megatron-Bridge's Llama 3 70B layout (tp4 pp8 vp5, FP8-CS, 64 H100 80GB), which
    needed 88 GiB under the Megatron-LM defaults, fits."""
    truth = script_module("truth_nemo")
    data = truth.load()
    models = {k: v for k, v in data["models"].items() if k != "source"}
    for table in data["tables"]:
        assert table["optimizer"] in ("megatron", "apex") and table["cross_entropy_fusion_impl"] in ("native", "te")
        for row in table["rows"]:
            assert row["grad_buffer_dtype"] in ("fp32", "bf16") and isinstance(row["fp8_params"], bool), row["label"]
    bridge = next(t for t in data["tables"] if t["id"] == "megatron-bridge-25.11")
    row = next(r for r in bridge["rows"] if r["label"] == "LLAMA3_70B")
    model = truth.model_of(row, models, row["tp"])
    ours = truth.predict(row, bridge, model, "fp8")
    assert ours["fits"] and ours["peak_memory_gib"] < 76


def test_zero3_runs_as_megatron_fsdp_sharding_everything_and_reducing_every_micro_batch():
    """megatron-core's ZeRO-3 is Megatron-FSDP: weights, gradients and optimizer state divided by dp against the
    distributed optimizer's ZeRO-1 (fp8 parameters: the fp8 shard, plus with keep_fp8_transpose the cached
    transpose of every block weight, one byte, unsharded), two units' gathered weights and gradients on top; a plan
    that reduces once per step is refused in one line, and the Megatron export carries the FSDP flags instead of
    the note that ZeRO-3 is beyond the distributed optimizer."""
    from autoconf.cost.memory import megatron_fsdp_buffer_bytes
    from autoconf.report.exporters import megatron_flags

    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100-80g", nodes=1)
    base = _config(tp=1, dp=8, global_batch_size=64, sequence_parallel=False, dtype="fp8")
    fsdp = dataclasses.replace(base, zero_stage=3, grad_reduce="microbatch")
    with pytest.raises(UserError, match="grad-reduce microbatch"):
        estimate(model, cluster, dataclasses.replace(fsdp, grad_reduce="step"), execution=CORE)
    flags = CORE.replace(fp8_params=True, grad_buffer_dtype="bf16")
    one, three = (state_bytes_per_param(c, "megatron", execution=flags) for c in (base, fsdp))
    assert three[:3] == (pytest.approx(1 / 8), pytest.approx(one[1] / 8), pytest.approx(one[2]))  # (ZeRO-1: 12/8)
    assert fp8_weight_cache_bytes(fsdp, flags) == 0 and fp8_weight_cache_bytes(fsdp, flags.replace(
        keep_fp8_transpose=True)) == 1.0
    params, grads = megatron_fsdp_buffer_bytes(model, fsdp, (0.0, 0.0), None, flags)
    block = model.layer_params()
    assert params == pytest.approx(2 * block + block) and grads == pytest.approx(2 * block * 2)  # + the transpose
    assert megatron_fsdp_buffer_bytes(model, base, None, None, flags) == (0.0, 0.0)
    plan = estimate(model, cluster, fsdp, execution=flags)
    args, notes = megatron_flags(plan)
    assert ("--use-megatron-fsdp", None) in args and ("--data-parallel-sharding-strategy", "optim_grads_params") in args
    assert not any("beyond Megatron's distributed optimizer" in n for n in notes)
