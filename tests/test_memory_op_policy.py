"""The per-op selective policy (selective_recompute "alternate_matmuls", torchtitan's selective "op" option) as the
executor runs it (execute/checkpoint_policy.py): what a block keeps for its backward, counted on CPU from autograd's
saved-tensor hooks plus the checkpoint's own cache of saved op outputs (profile/activations.py `saved_bytes`), is the
memory estimate's per-layer activation term for that policy; and the block's gradients are those of the block
without recompute. With FP8 linears (torchao, emulated on CPU) the block keeps the same bytes; under
offload_activations the hooks move exactly those bytes; both train in the executor to the losses of the same layout
without recompute (the shared torchrun jobs, tests/executor_jobs.py). Under context parallelism the attention is
one custom op the policy saves (execute/cp_attention.py); in MoE layers the router and the routed experts are
recomputed outside the matmul count; both train to the single-process losses (MoE at tp and etp > 1:
tests/test_moe_policy.py; spec/support.py `op_policy_unsupported` names what stays refused)."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from autoconf.cost.memory import executor_layer_activation_bytes, layer_activation_bytes, stage_layer_activation_bytes
from autoconf.execute.model import Block, OneBlock, build_model
from autoconf.execute.parallelize import apply_recompute
from autoconf.profile.activations import saved_bytes
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, recomputed_layer_indices
from autoconf.spec.presets import PRESETS
from autoconf.spec.support import op_policy_unsupported

import executor_jobs
from executor_jobs import Layout, assert_matches_reference, assert_same_records
from plan_helpers import even_plan

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None

# Tokens per micro-batch (3 x 40) differ from every weight dimension, so activations and weights never share a shape.
MB, SEQ = 3, 40
OP = "alternate_matmuls"




def _config(dtype: str, **changes) -> ParallelConfig:
    return ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=MB, global_batch_size=MB, seq_len=SEQ, dtype=dtype,
                          attention="flash", recompute="selective", selective_recompute=OP, **changes)


@pytest.mark.parametrize("arch,dtype", [("tiny-gpt", "fp32"), ("tiny-llama", "bf16")])
def test_the_block_keeps_what_the_estimate_counts_under_the_op_policy(arch, dtype):
    """Exactly the estimate's bytes (block input, every other weight matmul's output, the attention kernel's output
    and log-sum-exp), less than the attention-core policy keeps; and the same gradients as without recompute."""
    spec = dataclasses.replace(PRESETS[arch], dropout=0.0)
    low = torch.bfloat16 if dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    block = Block(spec, "flash").train().to(low)
    x = torch.randn(MB, SEQ, spec.hidden_size, dtype=low, requires_grad=True)
    block(x).square().sum().backward()
    plain = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad(set_to_none=True)

    apply_recompute(OneBlock(block), "selective", None, OP)
    assert block.recompute_ops and not block.attention.recompute_core
    measured = saved_bytes(block, x)
    config = _config(dtype)
    estimated = layer_activation_bytes(spec, config, "torch", "cpu", selective=OP)
    assert measured == estimated
    assert estimated < executor_layer_activation_bytes(spec, config, "selective", "cpu")
    block(x).square().sum().backward()
    again = [x.grad] + [p.grad for p in block.parameters()]
    tolerance = 1e-2 if dtype == "bf16" else 1e-6
    for a, b in zip(plain, again):
        assert torch.allclose(a.float(), b.float(), rtol=tolerance, atol=tolerance * a.float().abs().max().item())


def test_a_stage_that_recomputes_its_first_layers_by_the_op_policy_saves_what_the_estimate_counts():
    """A stage of 3 Llama blocks recomputing its first (`recompute_layers`) by the per-op policy keeps one
    policy block's and two plain blocks' tensors, as `stage_layer_activation_bytes` counts with the policy."""
    spec = dataclasses.replace(PRESETS["tiny-llama"], dropout=0.0)
    config = dataclasses.replace(_config("fp32"), pp=2, global_batch_size=2 * MB, recompute_layers=(1, 0))
    partition = [[2, 5], [5, spec.num_layers]]
    layers = recomputed_layer_indices(config, partition)
    torch.manual_seed(0)
    stage = build_model(spec, 2, 5, embed=False, head=False, device="cpu").train()
    x = torch.randn(MB, SEQ, spec.hidden_size, requires_grad=True)
    plain = saved_bytes(stage, x)
    apply_recompute(stage, "selective", layers, OP)
    assert [b.recompute_ops for b in stage.layers.values()] == [True, False, False]
    measured = saved_bytes(stage, x)
    estimated = stage_layer_activation_bytes(spec, config, 3, 1, "torch", "cpu", OP)
    assert measured < plain
    # What is left over in the plain blocks: norm statistics and rotary tables (tests/test_memory_saved.py).
    assert estimated <= measured <= 1.03 * estimated


def test_the_policy_is_a_plan_field_that_old_plans_lack_and_bad_values_are_one_line():
    """`selective_recompute` is saved only when set (an older plan reads as before, its framework's policy), loads
    back, is dropped with another recompute mode (the search's `replace(recompute=...)` stays legal), and a value
    that no policy names, that needs the fused attention kernel, or that the plan's framework does not run is one
    line."""
    from autoconf.cost.estimate import estimate
    from autoconf.errors import UserError
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.frameworks import execution, selective_policy
    from autoconf.spec.plan import Plan

    spec, cluster = PRESETS["tiny-llama"], load_cluster("cpu-local", nodes=1, gpus_per_node=1)
    old = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=1, seq_len=SEQ, dtype="fp32",
                         recompute="selective")
    assert "selective_recompute" not in old.to_dict() and selective_policy(old) == "attention_core"
    assert selective_policy(old, execution("torchtitan")) == OP
    plan = estimate(spec, cluster, dataclasses.replace(old, selective_recompute=OP))
    again = Plan.from_dict(plan.to_dict())
    assert again.config.selective_recompute == OP and selective_policy(again.config, execution("megatron")) == OP
    for changes, words in (({"selective_recompute": "every_op"}, "is not one of"),
                           ({"selective_recompute": OP, "attention": "standard"}, "needs attention flash")):
        with pytest.raises(UserError, match=words) as err:
            ParallelConfig.from_dict({**old.to_dict(), **changes}).check(spec, 1)
        assert "\n" not in str(err.value)
    assert dataclasses.replace(again.config, recompute="full").selective_recompute is None
    with pytest.raises(UserError, match="runs selective recompute as attention_core, not alternate_matmuls"):
        estimate(spec, cluster, dataclasses.replace(old, selective_recompute=OP), execution=execution("megatron"))


def test_the_estimate_charges_the_policy_by_the_torchtitan_presets_functions_and_the_search_weighs_both():
    """An autoconf plan naming the per-op policy keeps the policy's activation bytes per layer, and recomputes the
    share of the block that the torchtitan preset charges; for Llama 3 8B at tp2 SP, micro-batch 2, seq 8192 the
    policy keeps less and recomputes more than the attention core, and the search offers both."""
    from autoconf.cost.estimate import estimate, selective_matmul_share
    from autoconf.report.tables import layout_label
    from autoconf.solve.search import search
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.frameworks import execution

    spec, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g", nodes=1, gpus_per_node=8)
    core = ParallelConfig(tp=2, pp=1, dp=4, micro_batch_size=2, global_batch_size=64, seq_len=8192, zero_stage=3,
                          recompute="selective", sequence_parallel=True)
    op = dataclasses.replace(core, selective_recompute=OP)
    assert (selective_matmul_share(spec, op, execution("autoconf"))
            == selective_matmul_share(spec, core, execution("torchtitan")) > 0)
    assert selective_matmul_share(spec, core, execution("autoconf")) is None
    p_core, p_op = (estimate(spec, cluster, c).prediction for c in (core, op))
    layers = spec.num_layers
    kept = layer_activation_bytes(spec, op, "torch", "gpu", selective=OP)
    assert kept < layer_activation_bytes(spec, core, "torch", "gpu")
    # one micro-batch in flight without a pipeline: the activations are the layers' plus the head's inputs
    assert p_op["memory_per_stage"][0]["activations"] - p_core["memory_per_stage"][0]["activations"] == pytest.approx(
        layers * (kept - layer_activation_bytes(spec, core, "torch", "gpu")))
    assert p_op["time_breakdown"]["recompute"] > p_core["time_breakdown"]["recompute"] > 0
    fixed = {"tp": 2, "dp": 4, "micro_batch_size": 2, "zero_stage": 3, "sequence_parallel": True,
             "recompute": "selective"}
    plans = search(spec, cluster, 64, 8192, "bf16", fixed=fixed, top_k=4, refine=False).plans
    assert {p.config.selective_recompute for p in plans} == {None, OP}
    for plan in plans:
        assert ("rc-selective/op" in layout_label(plan)) == (plan.config.selective_recompute == OP)


def _policy_block(arch: str, low: torch.dtype, fp8: bool = False):
    """A seeded block of `arch` in dtype `low` (its linears torchao Float8Linear with `fp8`), an input, and the
    gradients (input first) of the block without recompute."""
    spec = dataclasses.replace(PRESETS[arch], dropout=0.0)
    torch.manual_seed(0)
    block = Block(spec, "flash").train().to(low)
    if fp8:
        from autoconf.execute.fp8 import apply_float8

        apply_float8(OneBlock(block), False, torch.device("cpu"))
    x = torch.randn(MB, SEQ, spec.hidden_size, dtype=low, requires_grad=True)
    block(x).float().square().sum().backward()
    plain = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad(set_to_none=True)
    apply_recompute(OneBlock(block), "selective", None, OP)
    return spec, block, x, plain


def _same_gradients(block, x, plain) -> bool:
    block(x).float().square().sum().backward()
    return all(torch.equal(a, b) for a, b in zip(plain, [x.grad] + [p.grad for p in block.parameters()]))


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao not installed")
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt"])
def test_fp8_linears_keep_what_bf16_keeps_under_the_op_policy(arch):
    """FP8 linears (torchao, the GEMM emulated on CPU): the policy saves each GEMM's output in the compute dtype as in
    bf16 and recomputes the casts, so the block keeps exactly the estimate's bytes for dtype fp8, those of bf16; the
    gradients are bit for bit those without recompute."""
    spec, block, x, plain = _policy_block(arch, torch.bfloat16, fp8=True)
    assert type(block.attention.wq).__name__ == "Float8Linear"
    measured = saved_bytes(block, x)
    estimated = layer_activation_bytes(spec, _config("fp8"), "torch", "cpu", selective=OP)
    assert measured == estimated == layer_activation_bytes(spec, _config("bf16"), "torch", "cpu", selective=OP)
    assert _same_gradients(block, x, plain)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt"])
def test_offload_hooks_move_what_the_op_policy_keeps(arch):
    """offload_activations with the per-op policy: the hooks move the block input and every output the policy
    cached, exactly the bytes the estimate puts on the host per block and micro-batch; the gradients are bit for bit
    those without recompute and offload."""
    from autoconf.cost.offload import activation_copy_bytes
    from autoconf.execute.offload import apply_activation_offload

    spec, block, x, plain = _policy_block(arch, torch.float32)
    hook = apply_activation_offload(OneBlock(block), torch.device("cpu"))[0]
    block(x).float().square().sum().backward()
    x.grad = None
    block.zero_grad(set_to_none=True)
    config = _config("fp32", offload_activations=True)
    estimated = layer_activation_bytes(spec, config, "torch", "cpu", selective=OP)
    assert hook.moved_bytes == activation_copy_bytes(config, estimated) == estimated
    hook.reset()
    assert _same_gradients(block, x, plain) and hook.moved_bytes == estimated


# The executor tests' 4-layer Llama (tests/test_execute.py) and tests/test_fp8.py's 4-layer one: their reference
# layouts are those modules' own, trained once in a full run (tests/executor_jobs.py).
LLAMA = ModelSpec(name="test-llama", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=176, vocab_size=256, max_seq_len=64)
FP8_LLAMA = ModelSpec(name="t", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                      ffn_hidden_size=128, vocab_size=128, max_seq_len=64)


def _plan(spec: ModelSpec, dtype: str = "fp32", **layout):
    changes = {k: layout.pop(k) for k in ("offload_activations",) if k in layout}
    plan = even_plan(spec, **layout)
    plan.config = dataclasses.replace(plan.config, dtype=dtype, **changes)
    plan.validate()
    return plan


POLICY = dict(recompute="selective", selective_recompute=OP)


def _moe_plan(**layout):
    """tests/test_moe_execute.py's plan of tiny-moe (the same "moe" reference run) with expert parallelism 2 over
    dp 2 when `layout` has dp 2."""
    plan = _plan(PRESETS["tiny-moe"], **layout)
    if plan.config.dp > 1:
        plan.config = dataclasses.replace(plan.config, ep=plan.config.dp)
        plan.validate()
    return plan


# The policy with the levers it now runs beside, in the shared jobs; each against its layout without recompute (fp8
# layouts differ from a single process by whole fp8 steps, tests/test_fp8.py) or the single-process run ("llama",
# "moe": tests/test_moe_execute.py's). CP and MoE in one micro-batch per rank (the same global batch) and two steps:
# on CPU a layout's cost is per micro-batch and step.
SHORT = {"steps": 2}
LAYOUTS = {"llama": Layout(1, _plan(LLAMA)),
           "llama-dp2-zero3-offload-activations-selective-op": Layout(2, _plan(
               LLAMA, dp=2, zero=3, offload_activations=True, **POLICY)),
           "llama-cp2-ring-selective-op": Layout(2, _plan(LLAMA, cp=2, micro_batch=8, **POLICY), SHORT),
           "moe": Layout(1, _moe_plan()),
           "moe-ep2-selective-op": Layout(2, _moe_plan(dp=2, micro_batch=4, **POLICY), SHORT)}
FP8_LAYOUTS = {"fp8-dp2-zero1": Layout(2, _plan(FP8_LLAMA, "fp8", dp=2, zero=1)),
               "fp8-dp2-zero1-selective-op": Layout(2, _plan(FP8_LLAMA, "fp8", dp=2, zero=1, **POLICY))}
executor_jobs.register("op_policy", {**LAYOUTS, **(FP8_LAYOUTS if HAS_TORCHAO else {})})


@pytest.mark.slow
def test_the_policy_trains_with_offload_fp8_context_parallelism_and_moe_as_without_it(tmp_path_factory):
    """Llama dp2 ZeRO-3 with offload_activations, Llama cp2 (ring, the CP attention op) and tiny-moe at ep2 with
    the policy: the single-process losses and gradient norms within 1e-4; fp8 dp2 ZeRO-1 (fp8 all-gather) with the
    policy: those of the same fp8 layout without recompute."""
    out = executor_jobs.results("op_policy", tmp_path_factory)
    assert_matches_reference(out, "llama-dp2-zero3-offload-activations-selective-op")
    for name, reference in (("llama-cp2-ring-selective-op", "llama"), ("moe-ep2-selective-op", "moe")):
        assert_same_records(out[reference]["records"], out[name]["records"], name, SHORT["steps"])
    if HAS_TORCHAO:
        assert_same_records(out["fp8-dp2-zero1"]["records"], out["fp8-dp2-zero1-selective-op"]["records"], "fp8")


def test_what_the_policy_does_not_run_is_one_line():
    """The policy runs with cp > 1, MoE layers (at tp and etp 1 or 2: tests/test_moe_policy.py trains them), fp8 and
    offload_activations; with CP and attention dropout (the CP op has none) it is one line, saying why and naming
    what does run."""
    base = ParallelConfig(tp=1, pp=1, dp=2, cp=2, micro_batch_size=1, global_batch_size=4, seq_len=64,
                          zero_stage=3, **POLICY)
    assert op_policy_unsupported(base, LLAMA) is None
    assert op_policy_unsupported(dataclasses.replace(base, dtype="fp8", offload_activations=True), LLAMA) is None
    assert op_policy_unsupported(dataclasses.replace(base, cp=1, ep=2), PRESETS["tiny-moe"]) is None
    refused = op_policy_unsupported(base, dataclasses.replace(LLAMA, dropout=0.1))
    assert "cp 2" in refused and "dropout" in refused and "attention_core" in refused and "\n" not in refused
    for changes in ({"tp": 2, "dp": 1, "ep": 2}, {"tp": 2, "dp": 1, "ep": 2, "etp": 2}):
        assert op_policy_unsupported(dataclasses.replace(base, cp=1, **changes), PRESETS["tiny-moe"]) is None


def _one_rank_cp(algorithm: str):
    """A ContextParallel over a one-rank gloo group (the process group torn down by the caller)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from autoconf.execute.context_parallel import ContextParallel

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return ContextParallel(init_device_mesh("cpu", (1,), mesh_dim_names=("cp",))["cp"], SEQ, torch.device("cpu"),
                           algorithm)


def test_under_context_parallelism_the_policy_saves_the_cp_attention_op_as_it_saves_the_fused_kernel():
    """With the CP attention (a one-rank group, all-gather) the block runs it as one op
    (torch.ops.autoconf.cp_attention), the policy caches its output and fp32 log-sum-exp and none of its exchange,
    so the block keeps exactly the estimate's bytes; the gradients are those of the block without recompute and CP.
    (Across ranks, with the ring: the cp2 layout above.)"""
    import torch.distributed as dist

    from autoconf.execute.checkpoint_policy import cached_tensors, recording

    spec, block, x, plain = _policy_block("tiny-llama", torch.float32)
    try:
        block.attention.context = _one_rank_cp("allgather")
        assert block.attention.core_as_op
        measured = saved_bytes(block, x)
        assert measured == layer_activation_bytes(spec, _config("fp32"), "torch", "cpu", selective=OP)
        with recording() as caches:
            block(x)
        lse = [t for c in caches for t in cached_tensors(c) if t.dtype == torch.float32 and t.dim() == 3]
        assert [tuple(t.shape) for t in lse] == [(MB, spec.num_heads, SEQ)]
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).float().square().sum().backward()
        again = [x.grad] + [p.grad for p in block.parameters()]
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6 * a.abs().max().item()) for a, b in zip(plain, again))
    finally:
        dist.destroy_process_group()


def test_an_moe_block_keeps_what_the_estimate_counts_whatever_the_routing():
    """tiny-moe's MoE block under the policy: the router and the routed experts are recomputed outside the matmul
    count, so for two inputs that route differently the block keeps the same bytes, the estimate's for an MoE
    layer (block input, wq, wv, the attention output and log-sum-exp, the shared experts' w1 and w2); the
    gradients are those without recompute."""
    spec = PRESETS["tiny-moe"]
    torch.manual_seed(0)
    block = Block(spec, "flash", spec.moe.first_k_dense).train()
    with torch.no_grad():
        for p in block.feed_forward.experts.parameters():  # stacked 3-D weights: created empty
            p.normal_(0.0, 0.02)
    xs = [torch.randn(MB, SEQ, spec.hidden_size, requires_grad=True) for _ in range(2)]
    routes = []
    for x in xs:
        routes.append(block.feed_forward.route(x.detach().reshape(-1, spec.hidden_size))[0])
    assert not torch.equal(routes[0].sort(-1).values, routes[1].sort(-1).values)
    block(xs[0]).square().sum().backward()
    plain = [xs[0].grad.clone()] + [p.grad.clone() for p in block.parameters()]
    xs[0].grad = None
    block.zero_grad(set_to_none=True)
    apply_recompute(OneBlock(block), "selective", None, OP)
    estimated = layer_activation_bytes(spec, _config("fp32"), "torch", "cpu", selective=OP, moe=True)
    assert [saved_bytes(block, x) for x in xs] == [estimated, estimated]
    block(xs[0]).square().sum().backward()
    again = [xs[0].grad] + [p.grad for p in block.parameters()]
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6 * a.abs().max().item()) for a, b in zip(plain, again))


def test_under_offload_the_recomputed_block_holds_its_copied_back_bytes_and_its_rebuilt_activations():
    """offload_activations with the per-op policy: the block whose backward runs holds what the policy kept (copied
    back) and the activations its recompute rebuilds, as under full recompute (which keeps only the block input):
    on a first pipeline stage (no logits) the temporaries differ by exactly the two modes' kept bytes."""
    from autoconf.cost.estimate import estimate
    from autoconf.spec.cluster import load_cluster

    spec, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g", nodes=1, gpus_per_node=8)
    full = ParallelConfig(tp=1, pp=2, dp=4, micro_batch_size=1, global_batch_size=32, seq_len=4096, zero_stage=1,
                          recompute="full", offload_activations=True)
    op = dataclasses.replace(full, **POLICY)
    other = [estimate(spec, cluster, c).prediction["memory_per_stage"][0]["other"] for c in (full, op)]
    kept = [layer_activation_bytes(spec, c, "torch", "gpu", selective=OP) for c in (full, op)]
    assert other[1] - other[0] == pytest.approx(kept[1] - kept[0])


def test_an_attention_saved_whole_keeps_its_inputs_under_the_op_policy():
    """`Execution.attention_saved_whole` (torchtitan's compiled FlexAttention region, saved whole by its per-op
    policy): an eager block keeps Q and K and the matmul output V views beside what SDPA's saved outputs are,
    unless the policy saves that matmul anyway. DeepSeek-V3 (latent attention, wkv_b the fourth matmul, not saved):
    Q and K of 128 heads x 192 and wkv_b's 128 x (128 + 128), 640 MiB per 4096 tokens in bf16; a GQA Llama (wv
    the third matmul, saved): Q and K only. A compiled dense block (whose partition keeps what its backward reads)
    is left as it is; MoE blocks run eagerly."""
    from autoconf.cost.memory import saved_attention_input_widths
    from autoconf.spec.frameworks import PRESETS as FRAMEWORKS
    from autoconf.spec.presets import load_model

    dsv3, llama = load_model("deepseek-v3"), load_model("llama3-8b")
    assert saved_attention_input_widths(dsv3) * 4096 * 2 == 640 * 2**20
    assert saved_attention_input_widths(llama) == llama.q_dim + llama.kv_dim
    sdpa, whole = FRAMEWORKS["torchtitan"], FRAMEWORKS["torchtitan"].replace(attention_saved_whole=True)
    for model, moe in ((dsv3, True), (llama, False)):
        c = ParallelConfig(tp=2, pp=1, dp=1, micro_batch_size=1, global_batch_size=1, seq_len=4096,
                           recompute="selective", dtype="bf16", compile=False)
        kept = [layer_activation_bytes(model, c, "torch", "gpu", selective=OP, moe=moe, execution=e)
                for e in (sdpa, whole)]
        assert kept[1] - kept[0] == pytest.approx(saved_attention_input_widths(model) / 2 * 4096 * 2)
    compiled = dataclasses.replace(c, compile=True)
    assert (layer_activation_bytes(llama, compiled, "torch", "gpu", selective=OP, execution=whole)
            == layer_activation_bytes(llama, compiled, "torch", "gpu", selective=OP, execution=sdpa))
