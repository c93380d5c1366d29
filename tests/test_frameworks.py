"""Frameworks as named behaviour flags (autoconf/spec/frameworks.py) and the overlap they model."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from autoconf.cost.estimate import estimate
from autoconf.cost.simulate import StageCosts, simulate
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import PRESETS, Execution, execution
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS as MODELS
from autoconf.spec.schedules import build_schedule

H100 = load_cluster("dgx-h100-80g", nodes=4)
# (untied: torchtitan pipelines no tied embeddings, `Execution.pipelines_tied_embeddings`)
MODEL = dataclasses.replace(MODELS["gpt3-1.3b"], tied_embeddings=False)


def cfg(**kw) -> ParallelConfig:
    base = dict(tp=2, pp=2, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=2048, zero_stage=1,
                sequence_parallel=True, dtype="bf16")
    return ParallelConfig(**{**base, **kw})


def test_presets_are_the_named_frameworks_and_the_cli_choices():
    """The four frameworks of the design and DeepSeek-V3's (docs/moe.md) exist, autoconf's executor is the default
    flags, and both CLI commands offer exactly the presets."""
    from autoconf.cli import estimate as estimate_cmd
    from autoconf.cli import plan as plan_cmd

    assert list(PRESETS) == ["autoconf", "megatron", "megatron-core", "torchtitan", "deepseek"]
    assert PRESETS["autoconf"] == Execution()
    for command in (estimate_cmd, plan_cmd):
        option = next(p for p in command.params if p.name == "framework")
        assert list(option.type.choices) == list(PRESETS)


def test_a_framework_name_is_not_a_positional_flag():
    """Execution takes named flags only, so an old `Execution("megatron")` fails loudly instead of silently meaning
    the executor's flags under another name."""
    with pytest.raises(TypeError):
        Execution("megatron")  # type: ignore[misc]


def test_overlapped_param_gather_without_distributed_optimizer_is_one_line_naming_the_fix():
    with pytest.raises(UserError) as err:
        execution("megatron-core").replace(distributed_optimizer=False)
    message = str(err.value)
    assert "\n" not in message and "--use-distributed-optimizer" in message and "overlap" in message
    with pytest.raises(UserError, match="--overlap-grad-reduce"):
        execution("megatron-core").replace(grad_reduce_start="after_flush")
    # turning both off is a framework Megatron can run
    assert not execution("megatron-core").replace(distributed_optimizer=False, param_gather_overlap=False,
                                                  zero_stages=(0,), zero_searched=(0,)).param_gather_overlap


def test_unknown_framework_and_flag_names_list_the_known_ones():
    with pytest.raises(UserError, match="megatron-core") as err:
        execution("deepspeed")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="grad_reduce_start"):
        execution("autoconf").replace(overlap_everything=True)


def test_a_megatron_only_selective_policy_names_every_policy_the_executor_runs():
    """(An audit: the line named attention_core only, where `plan --fix selective_recompute=` named both.)"""
    with pytest.raises(UserError) as err:
        execution("autoconf").replace(selective_recompute="mla_up_proj_mlp")
    assert "attention_core or alternate_matmuls" in str(err.value) and "\n" not in str(err.value)


def test_a_zero_stage_the_framework_cannot_run_names_those_that_can():
    with pytest.raises(UserError) as err:
        estimate(MODEL, H100, cfg(zero_stage=2, pp=1, dp=16), execution=execution("megatron-core"))
    message = str(err.value)
    assert "0, 1, 3" in message and "autoconf" in message and "torchtitan" in message


def test_cli_refuses_an_unknown_framework_in_one_line():
    from click.testing import CliRunner

    from autoconf.cli import main

    out = CliRunner().invoke(main, ["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1",
                                    "--pp", "1", "--dp", "1", "--micro-batch", "1", "--global-batch", "1",
                                    "--framework", "deepspeed"])
    assert out.exit_code == 2 and "megatron-core" in out.output and "Traceback" not in out.output


def test_gradient_buckets_leave_only_the_last_one_after_the_backward():
    """One rank, one stage, one micro-batch: F=1, B=2, a reduction of 1 s in 4 buckets. Bucket j is ready at
    1 + 2 (j+1)/4 and takes 0.25 s, so the stream ends 0.25 s after the backward; in one bucket it ends 1 s after."""
    schedule = build_schedule("1f1b", 1, 1, 1)
    costs = StageCosts([1.0], [2.0], [0.0])
    assert simulate(schedule, costs, 0.0, [0.0], [1.0], reduce_buckets=[4]).makespan == pytest.approx(3.25)
    assert simulate(schedule, costs, 0.0, [0.0], [1.0], reduce_buckets=[1]).makespan == pytest.approx(4.0)
    # a reduction longer than the backward: the buckets queue, and the stream ends at its own pace
    assert simulate(schedule, costs, 0.0, [0.0], [4.0], reduce_buckets=[4]).makespan == pytest.approx(1.5 + 4.0)


def test_gather_buckets_start_the_forward_after_the_first_and_end_it_after_the_last():
    """A 2 s gather in 4 buckets before a 1 s forward: the forward starts at 0.5 s (the first bucket), and ends no
    earlier than the last bucket (2 s) plus the compute of its share (0.25 s)."""
    schedule = build_schedule("1f1b", 1, 1, 1)
    costs = StageCosts([1.0], [2.0], [0.0])
    timeline = simulate(schedule, costs, 0.0, [2.0], gather_buckets=[4])
    (_, start, end), _ = timeline.events[0]
    assert start == pytest.approx(0.5) and end == pytest.approx(2.25)
    assert simulate(schedule, costs, 0.0, [2.0]).events[0][0][1] == pytest.approx(2.0)  # whole gather first


@pytest.mark.parametrize("name", list(PRESETS))
def test_breakdown_adds_up_for_every_framework(name):
    zero = 1 if 1 in PRESETS[name].zero_stages else 2
    plan = estimate(MODEL, H100, cfg(zero_stage=zero), execution=execution(name))
    p = plan.prediction
    assert p["framework"] == name
    assert sum(p["time_breakdown"].values()) == pytest.approx(p["iteration_time_s"], rel=1e-9)


def test_overlapped_dp_communication_shortens_the_exposed_dp_term():
    """Megatron-Core's per-bucket reduction and prefetched gather expose less DP time than the same flags with
    the reduction after the flush and the gather whole before the first forward."""
    core = execution("megatron-core")
    serial = core.replace(param_gather_overlap=False, grad_reduce_start="after_flush")
    c = cfg(pp=1, dp=16, global_batch_size=64)
    fast = estimate(MODEL, H100, c, execution=core).prediction["time_breakdown"]["dp_comm"]
    slow = estimate(MODEL, H100, c, execution=serial).prediction["time_breakdown"]["dp_comm"]
    assert 0 < fast < slow


def test_tp_comm_overlap_applies_under_sequence_parallelism_only():
    core = execution("megatron-core")
    plain = core.replace(tp_comm_overlap=False)
    for sp, smaller in ((True, True), (False, False)):
        c = cfg(sequence_parallel=sp)
        a = estimate(MODEL, H100, c, execution=core).prediction["time_breakdown"]["tp_comm"]
        b = estimate(MODEL, H100, c, execution=plain).prediction["time_breakdown"]["tp_comm"]
        assert (a < b) if smaller else a == pytest.approx(b)


def test_tp_overlap_pairs_each_collective_with_its_own_gemm():
    """Userbuffers hide a collective behind the GEMM it is paired with only (TP_OVERLAP_PAIRS): the same GEMM time
    moved from the attention's GEMMs to the MLP's exposes more; huge GEMMs leave the pipelined reduce-scatters'
    last chunks (TP_OVERLAP_SPLITS) and nothing else; no GEMM leaves every collective exposed."""
    from autoconf.cost.estimate import overlapped_tp_layer
    from autoconf.spec.frameworks import TP_OVERLAP_PAIRS, TP_OVERLAP_SPLITS

    ag, rs, tp = 1.0, 1.0, 8
    even = overlapped_tp_layer(ag, rs, {"qkv": 1.5, "proj": 1.5, "fc1": 1.5, "fc2": 1.5}, tp)
    gqa = overlapped_tp_layer(ag, rs, {"qkv": 0.5, "proj": 0.5, "fc1": 2.5, "fc2": 2.5}, tp)
    assert gqa.forward > even.forward and gqa.backward_input > even.backward_input
    huge = overlapped_tp_layer(ag, rs, dict.fromkeys(("qkv", "proj", "fc1", "fc2"), 1e3), tp)
    assert huge.forward == pytest.approx(2 * rs / TP_OVERLAP_SPLITS) and huge.backward_input == 0.0
    bare = overlapped_tp_layer(ag, rs, dict.fromkeys(("qkv", "proj", "fc1", "fc2"), 0.0), tp)
    count = {p: sum(1 for pair in TP_OVERLAP_PAIRS if pair[0] == p) for p in ("forward", "backward")}
    assert (bare.forward, bare.backward_input) == (count["forward"] * 1.0, count["backward"] * 1.0)


def test_tp_overlap_split_prices_each_chunk_on_the_size_curve(monkeypatch):
    """Userbuffers cut a ring-exchange GEMM into tp chunks and a pipelined one into TP_OVERLAP_SPLITS
    (`tp_overlap_chunks`); the split costs what the chunks lose on the profile's GEMM size curve: a larger share of
    the paired GEMMs at tp 8 than at tp 2 (smaller chunks), nothing without a curve or once every chunk is past the
    curve's plateau, and the estimate's exposed TP time carries it once per layer and micro-batch."""
    import autoconf.cost.estimate as est
    from autoconf.cost.compute import PassTimes
    from autoconf.spec.frameworks import TP_OVERLAP_SPLITS, tp_overlap_chunks

    assert [tp_overlap_chunks(m, 8) for m in ("ring_exchange", "pipeline", "bulk")] == [8, TP_OVERLAP_SPLITS, 1]
    share = [est.tp_overlap_split_time(MODEL, H100, cfg(tp=tp)).total
             / sum(est.tp_overlap_gemms(MODEL, H100, cfg(tp=tp)).values()) for tp in (2, 8)]
    assert 0 < share[0] < share[1]
    flat = dataclasses.replace(H100, matmul_size_curve=None)
    assert est.tp_overlap_split_time(MODEL, flat, cfg(tp=8)).total == 0.0
    assert est.tp_overlap_split_time(MODEL, H100, cfg(tp=2, micro_batch_size=64, global_batch_size=512)).total == 0.0
    c = cfg(tp=8, pp=1, dp=4)
    core = execution("megatron-core")
    per_step = c.num_microbatches * MODEL.num_layers

    def tp_comm(split: PassTimes) -> float:
        monkeypatch.setattr(est, "tp_overlap_split_time", lambda *args: split)
        return estimate(MODEL, H100, c, execution=core).prediction["time_breakdown"]["tp_comm"]

    ms = 1e-3
    assert tp_comm(PassTimes(ms, 0.0, 0.0)) - tp_comm(PassTimes(0.0, 0.0, 0.0)) == pytest.approx(per_step * ms)


def test_dp_traffic_reads_the_memory_flags():
    """The DP reduction moves the gradient buffer's dtype and the gather bf16 parameters unless fp8_params, as the
    megatron memory holds them; the torch layout reduces fp32 and gathers fp8 under fp8 (torchao)."""
    from autoconf.cost.estimate import dp_buffer_bytes
    from autoconf.cost.memory import state_bytes_per_param

    core = execution("megatron-core")
    for flags, dtype, want in (({}, "bf16", (4, 2)), ({"grad_buffer_dtype": "bf16"}, "fp8", (2, 2)),
                               ({"grad_buffer_dtype": "bf16", "fp8_params": True}, "fp8", (2, 1))):
        ex = core.replace(**flags)
        assert dp_buffer_bytes(cfg(dtype=dtype), 1.0, ex) == want
        assert state_bytes_per_param(cfg(dtype=dtype, zero_stage=0), "megatron", execution=ex)[1] == want[0]
    assert dp_buffer_bytes(cfg(dtype="fp8"), 1.0, execution("torchtitan")) == (4, 1)


def test_exporters_emit_the_flags_of_the_modelled_framework():
    from autoconf.report.exporters import megatron_args, torchtitan_config

    core = megatron_args(estimate(MODEL, H100, cfg(), execution=execution("megatron-core")))
    old = megatron_args(estimate(MODEL, H100, cfg(), execution=execution("megatron")))
    for flag in ("--overlap-grad-reduce", "--overlap-param-gather", "--use-distributed-optimizer",
                 "--tp-comm-overlap"):
        assert core.count(flag + "\n") == 1, flag
    assert "--overlap-grad-reduce" not in old and "--tp-comm-overlap" not in old
    titan = torchtitan_config(estimate(MODEL, H100, cfg(zero_stage=2), execution=execution("torchtitan")))
    compile(titan, "torchtitan_config.py", "exec")
    assert 'training.mixed_precision_reduce = "float32"' in titan


def test_old_plans_without_a_framework_read_as_autoconf():
    from autoconf.spec.frameworks import plan_execution

    assert plan_execution({}) is PRESETS["autoconf"]
    assert plan_execution({"framework": "torchtitan"}) is PRESETS["torchtitan"]


@pytest.mark.parametrize("name", ["megatron-core", "torchtitan"])
def test_search_bounds_stay_below_the_overlapped_estimate(name):
    """Pruning stays safe with the overlap: each bound is at most the estimate's time, over candidates with data
    parallelism (where the overlap acts) of a GPU cluster."""
    from autoconf.solve.bounds import BoundCache
    from autoconf.solve.space import candidates
    from autoconf.spec.support import unsupported_reason

    ex = execution(name)
    cache = BoundCache(MODEL, H100, ex)
    configs = (c for c in candidates(MODEL, H100.world_size, H100.gpus_per_node, 64, 2048, "bf16",
                                     zero_stages=ex.zero_searched, reductions=ex.grad_reductions,
                                     runtime=ex.pipeline_runtime)
               if c.dp > 1 and not unsupported_reason(c))
    checked = 0
    for config in itertools.islice(configs, 0, None, 7):
        p = estimate(MODEL, H100, config, execution=ex, detail=False).prediction
        assert cache.time_bound(config) <= p["iteration_time_s"] * (1 + 1e-9), config
        checked += 1
        if checked == 60:
            break
    assert checked == 60


def test_cli_framework_flags_are_checked_recorded_and_exported():
    """--framework-flag changes a preset's flag: a combination Megatron cannot run is one line naming the fix; a
    runnable change is recorded in the plan, read back by `plan_execution`, and the exported arguments follow it."""
    import json

    from click.testing import CliRunner

    from autoconf.cli import main
    from autoconf.report.exporters import megatron_args
    from autoconf.spec.frameworks import plan_execution
    from autoconf.spec.plan import Plan

    base = ["estimate", "--model", "gpt3-1.3b", "--cluster", "dgx-h100-80g", "--tp", "1", "--pp", "1", "--dp", "8",
            "--micro-batch", "1", "--global-batch", "8", "--zero", "1", "--framework", "megatron-core"]
    bad = CliRunner().invoke(main, base + ["--framework-flag", "distributed_optimizer=false"])
    assert bad.exit_code == 2 and "param_gather_overlap=false" in bad.output and "Traceback" not in bad.output
    unknown = CliRunner().invoke(main, base + ["--framework-flag", "overlap=yes"])
    assert unknown.exit_code == 2 and "grad_reduce_start" in unknown.output
    out = CliRunner().invoke(main, base + ["--framework-flag", "param_gather_overlap=false", "--json"])
    assert out.exit_code == 0, out.output
    plan = Plan.from_dict(json.loads(out.output))
    assert plan.prediction["framework_flags"] == {"param_gather_overlap": False}
    assert plan_execution(plan.prediction) == execution("megatron-core").replace(param_gather_overlap=False)
    args = megatron_args(plan)
    assert "--overlap-grad-reduce" in args and "--overlap-param-gather" not in args


def test_torchtitan_kernels_eager_slower_than_compiled_and_fa2_slower_on_h100_only():
    """torchtitan's eager element-wise kernels cost time that the plan's `compile` field takes back on a GPU (what
    `compiled` leaves), FA2 attention is slower than the profile's fused kernel on H100 (both published curves) and
    faster on A100 at 8k tokens (FA2's published curve, 0.58 of the peak there, against the flat 0.55 the A100
    profile states for the others), and unknown kernel names are one line naming the known ones."""
    from autoconf.cost.compute import eager_elementwise_bytes, loss_bytes_per_logit
    from autoconf.spec.frameworks import compiled, parse_flags

    model = MODELS["llama3-8b"]
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=8, seq_len=8192, zero_stage=3,
                       recompute="selective", dtype="bf16")
    eager = dataclasses.replace(c, compile=False)
    block_ops = ("rmsnorm", "rotary", "swiglu", "repeat_kv")
    titan = execution("torchtitan").replace(eager_ops=block_ops + ("cross_entropy",))  # torchtitan's Dec 2024 runs
    h100 = load_cluster("dgx-h100-80g")
    step = {name: estimate(model, h100, cfg, execution=ex).prediction["iteration_time_s"]
            for name, cfg, ex in (("eager", eager, titan), ("compiled", c, titan),
                                  ("compiled by hand", eager, compiled(titan)),
                                  ("fused attention", c, titan.replace(attention_kernel="fused")))}
    assert step["eager"] > step["compiled"] > step["fused attention"]
    assert step["compiled"] == step["compiled by hand"]
    assert compiled(titan).eager_ops == ("repeat_kv",)
    for op in block_ops:  # each op adds bytes to the forward and the backward
        assert all(x > 0 for x in eager_elementwise_bytes(model, c, (op,)))
    fused = sum(loss_bytes_per_logit((), 2))  # Megatron's and torch's eager losses move more than the fused count
    assert sum(loss_bytes_per_logit(("vocab_parallel_ce",), 2)) > fused
    assert sum(loss_bytes_per_logit(("cross_entropy",), 2)) > fused
    a100 = load_cluster("dgx-a100-80g")
    assert (estimate(model, a100, c, execution=compiled(titan)).prediction["iteration_time_s"]
            < estimate(model, a100, c, execution=compiled(titan).replace(attention_kernel="fused"))
            .prediction["iteration_time_s"])
    with pytest.raises(UserError, match="rmsnorm"):
        titan.replace(eager_ops=("layernorm",))
    assert parse_flags(["eager_ops=rotary,swiglu", "attention_kernel=fused"]) == {
        "eager_ops": ("rotary", "swiglu"), "attention_kernel": "fused"}


def test_fsdp_copies_cost_time_only_where_fsdp_shards():
    """FSDP2's copy-out and copy-in kernels (`fsdp_copies`, on in the torchtitan preset) add time where ZeRO shards
    over dp > 1, more at ZeRO 3 (a gather before every pass) than at ZeRO 2, nothing without sharding; recompute
    repeats none of it."""
    from autoconf.cost.compute import fsdp_copy_bytes

    model = MODELS["llama3-8b"]
    titan = execution("torchtitan")
    plain = titan.replace(fsdp_copies=False)
    h100 = load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=16, seq_len=4096, zero_stage=3,
                       recompute="full", dtype="bf16", grad_reduce="microbatch")  # (torchtitan's accumulation)
    z2 = dataclasses.replace(c, zero_stage=2)
    assert sum(fsdp_copy_bytes(model, c, titan)) > sum(fsdp_copy_bytes(model, z2, titan)) > 0
    assert fsdp_copy_bytes(model, dataclasses.replace(c, zero_stage=0), titan) == (0.0, 0.0)
    assert fsdp_copy_bytes(model, c, plain) == (0.0, 0.0)
    with_copies, without = (estimate(model, h100, c, execution=ex).prediction["time_breakdown"]
                            for ex in (titan, plain))
    assert with_copies["compute"] > without["compute"] and with_copies["recompute"] == without["recompute"]


def test_compile_loss_keeps_torchs_loss_eager_and_is_exported():
    """With `compile_loss` off, torch.compile leaves torch's fp32 loss eager (the published torchtitan runs of
    2024), which costs time, and the torchtitan export compiles the model only."""
    from autoconf.spec.frameworks import compiled

    titan = execution("torchtitan")
    assert "cross_entropy" not in compiled(titan).eager_ops
    assert "cross_entropy" in compiled(titan.replace(compile_loss=False)).eager_ops
    model = MODELS["llama3-8b"]
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=8, seq_len=4096, zero_stage=3,
                       dtype="bf16")
    h100 = load_cluster("dgx-h100-80g")
    step = [estimate(model, h100, c, execution=ex).prediction["iteration_time_s"]
            for ex in (titan, titan.replace(compile_loss=False))]
    assert step[1] > step[0]
    assert 'config.compile.components = ["model"]' in titan.replace(compile_loss=False).export_lines("torchtitan", c)
    assert not any("components" in line for line in titan.export_lines("torchtitan", c))


def test_megatron_p2p_all_gathers_the_scattered_activation_over_the_receiving_tp_group():
    """Megatron 2022's blocking scatter/gather P2P, on a cp-1 plan (pp 2 x dp 2 x tp 8 on 4 A100 nodes): a stage's
    forward carries the send of a 1/tp slice to the next pipeline rank plus the all-gather of the whole activation
    over the receiving rank's 8-device TP group. (With the grid's cp axis the all-gather was once given the (cp, tp)
    block, one row long, and cost nothing: Korthikanti's full-recompute rows ran up to 1.2% fast.)"""
    from autoconf.cost.comm import collective_time, p2p_time
    from autoconf.cost.memory import hidden_state_bytes

    a100 = load_cluster("dgx-a100-80g", nodes=4)
    c = ParallelConfig(tp=8, pp=2, dp=2, micro_batch_size=1, global_batch_size=16, seq_len=2048, recompute="full",
                       dtype="fp16", attention="standard")
    megatron = execution("megatron")
    whole = hidden_state_bytes(MODEL, c)
    expected = (p2p_time(a100, whole / 8, [(d, 16 + d) for d in range(16)])
                + collective_time(a100, "all_gather", whole, list(range(16, 24))))
    assert collective_time(a100, "all_gather", whole, list(range(16, 24))) > 0

    def first_forward(flags) -> float:
        action, start, end = estimate(MODEL, a100, c, execution=flags).timeline.events[0][0]
        assert action.kind == "F" and action.stage == 0
        return end - start

    sent = first_forward(megatron) - first_forward(dataclasses.replace(megatron, blocking_p2p=False))
    assert sent == pytest.approx(expected, rel=1e-12)


def test_megatron_grad_buffer_passes_cost_their_bytes_once_per_step_and_only_in_the_megatron_layout():
    """Megatron-Core zeroes its fp32 main-gradient buffer, scales it by 1/dp and takes each bucket's norm (the NaN
    check) once per step: 1 + 2 + 1 passes over every gradient of the rank at the element-wise rate, in the
    estimate's optimizer term and in the search's time bound (on its own parameter count); Megatron 2022 makes the
    first two; the torch layout has no such buffer, and asking for the passes there is one line naming the fix."""
    from autoconf.cost.compute import rank_optimizer_time
    from autoconf.spec.frameworks import parse_flags

    h100 = load_cluster("dgx-h100-80g", nodes=2)
    c = cfg(tp=2, pp=1, dp=8, global_batch_size=64, zero_stage=1)
    core = execution("megatron-core")
    bare = core.replace(grad_buffer_passes=())

    def optimizer(ex):
        return estimate(MODEL, h100, c, execution=ex).prediction["time_breakdown"]["optimizer"]

    rate = h100.device.memory_bandwidth_Bps * h100.eff("memory")
    from autoconf.cost.memory import rank_params
    from autoconf.cost.moe import local_params

    # fp32 main gradients of the rank's TP share (`local_params`), not sharded by the distributed optimizer
    buffer_bytes = sum(local_params(c, *rank_params(MODEL, [[0, MODEL.num_layers]], [0], "megatron"))) * 4
    assert optimizer(core) - optimizer(bare) == pytest.approx(4 * buffer_bytes / rate)
    assert execution("megatron").grad_buffer_passes == ("zero", "scale")
    assert rank_optimizer_time(h100, c, MODEL.total_params()) < rank_optimizer_time(h100, c, MODEL.total_params(),
                                                                                      execution=core)
    assert parse_flags(["grad_buffer_passes=zero,scale"]) == {"grad_buffer_passes": ("zero", "scale")}
    # the exporter asks Megatron-LM for what was modelled: by default nothing (its defaults), without the NaN check
    # or the scale pass the flags that drop them
    assert not {"--no-check-for-nan-in-loss-and-grad", "--ddp-average-in-collective"} & set(
        core.export_lines("megatron", c))
    assert {"--no-check-for-nan-in-loss-and-grad", "--ddp-average-in-collective"} <= set(
        core.replace(grad_buffer_passes=("zero",)).export_lines("megatron", c))
    with pytest.raises(UserError, match="grad_buffer_passes=none"):
        execution("autoconf").replace(grad_buffer_passes=("zero",))
    with pytest.raises(UserError, match="nan_check"):
        core.replace(grad_buffer_passes=("zero", "memset"))


def test_unfused_gradient_accumulation_adds_one_hook_pass_per_block_and_micro_batch():
    """Without gradient accumulation fusion (Megatron-LM before 2022, `--no-gradient-accumulation-fusion`) every
    micro-batch's backward adds each block gradient into the main-gradient buffer: the gradient read, the buffer read
    and written, at the element-wise rate. With no pipeline and no data parallelism the step is longer by exactly
    micro-batches x layers x those bytes; the fused default and the torch layout move nothing; the flag on the torch
    layout is one line naming the fix, and the Megatron exporters ask for what was modelled."""
    from autoconf.cost.compute import grad_accumulation_bytes
    from autoconf.cost.moe import block_local_params
    from autoconf.spec.frameworks import parse_flags

    gpt, a100 = MODELS["gpt-22b"], load_cluster("dgx-a100-80g")
    c = ParallelConfig(tp=8, pp=1, dp=1, micro_batch_size=1, global_batch_size=4, seq_len=2048, recompute="full",
                       dtype="fp16", attention="standard")
    fused = execution("megatron").replace(grad_buffer_dtype="fp16")
    hooks = fused.replace(grad_accumulation_fusion=False)
    per_block = grad_accumulation_bytes(gpt, c, hooks)
    assert per_block == (2 + 2 * 2) * sum(block_local_params(gpt, c, False))
    assert grad_accumulation_bytes(gpt, c, fused) == 0 == grad_accumulation_bytes(gpt, c, execution("torchtitan"))
    assert grad_accumulation_bytes(gpt, c, hooks.replace(grad_buffer_dtype="fp32")) == (2 + 2 * 4) / 6 * per_block
    with_hooks, without = (estimate(gpt, a100, c, execution=ex).prediction["iteration_time_s"]
                           for ex in (hooks, fused))
    rate = a100.device.memory_bandwidth_Bps * a100.eff("memory")
    assert with_hooks - without == pytest.approx(c.num_microbatches * gpt.num_layers * per_block / rate)
    assert parse_flags(["grad_accumulation_fusion=false"]) == {"grad_accumulation_fusion": False}
    with pytest.raises(UserError, match="grad_accumulation_fusion=true"):
        execution("torchtitan").replace(grad_accumulation_fusion=False)
    for name in ("megatron", "megatron-core"):
        preset = execution(name)
        assert "--no-gradient-accumulation-fusion" not in preset.export_lines("megatron", c)
        assert preset.replace(grad_accumulation_fusion=False).export_lines("megatron", c).count(
            "--no-gradient-accumulation-fusion") == 1


def test_foreach_adamw_moves_80_bytes_per_parameter_where_fused_moves_28():
    """torch's foreach AdamW (`adam_kernels`, the torchtitan of the Dec 2024 benchmarks) runs eight element-wise
    kernels over the rank's sharded fp32 state: with torchtitan's clipping (12 bytes) (80 + 12) / (28 + 12) of the
    fused kernel's time on a specification profile, the search's bound (no execution) reads the fused kernel alone,
    and the torchtitan export names the implementation only when it is not torchtitan's default."""
    from autoconf.cost.compute import rank_optimizer_time
    from autoconf.spec.frameworks import ADAM_KERNELS, parse_flags

    h100 = load_cluster("dgx-h100-80g", nodes=2)
    c = cfg(tp=1, pp=1, dp=16, zero_stage=3, sequence_parallel=False, grad_reduce="microbatch")
    titan = execution("torchtitan")
    fused, foreach, unclipped = (rank_optimizer_time(h100, c, MODEL.total_params(), execution=titan.replace(
        adam_kernels=k, grad_norm_bytes=norm)) for k, norm in (("fused", 12), ("foreach", 12), ("fused", 0)))
    assert foreach / fused == pytest.approx((ADAM_KERNELS["foreach"] + 12) / (ADAM_KERNELS["fused"] + 12))
    assert rank_optimizer_time(h100, c, MODEL.total_params()) == pytest.approx(unclipped)
    step = [estimate(MODEL, h100, c, execution=titan.replace(adam_kernels=k)).prediction["time_breakdown"]
            ["optimizer"] for k in ("fused", "foreach")]
    assert step[1] - step[0] == pytest.approx(foreach - fused)
    line = 'config.optimizer.implementation = "foreach"'
    assert line in titan.replace(adam_kernels="foreach").export_lines("torchtitan", c)
    assert line not in titan.export_lines("torchtitan", c)
    assert parse_flags(["adam_kernels=foreach"]) == {"adam_kernels": "foreach"}
    with pytest.raises(UserError, match="adam_kernels 'loop' is none of fused, foreach"):
        titan.replace(adam_kernels="loop")


def test_each_framework_is_planned_with_the_gradient_reductions_it_runs():
    """FSDP2 (autoconf, torchtitan) reduces once per step or every micro-batch; Megatron's distributed optimizer
    once per step; Megatron-FSDP (megatron-core's ZeRO-3) and the ZeRO paper's stage 2 (the megatron layout's,
    reachable through --framework-flag zero_stages) every micro-batch: a rank holding a gradient shard cannot sum
    whole gradients in it (a memory review found ZeRO-2 counted sharded while reducing once per step). The space offers each sharded layout
    only those, and a plan asking for another is refused in one line naming the fix."""
    from autoconf.solve.space import candidates

    for name, zero, allowed in (("autoconf", 1, {"step", "microbatch"}), ("megatron-core", 1, {"step"}),
                                ("megatron-core", 3, {"microbatch"}), ("megatron", 1, {"step"}),
                                ("megatron", 2, {"microbatch"})):
        ex = execution(name)
        assert set(ex.grad_reductions(zero)) == allowed, name
        offered = {c.grad_reduce for c in candidates(MODEL, 16, 8, 64, 2048, "bf16", fixed={"zero_stage": zero},
                                                     reductions=ex.grad_reductions) if c.dp > 1}
        assert offered == allowed, (name, zero, offered)
    with pytest.raises(UserError, match="drop --grad-reduce microbatch, or use ZeRO-3"):
        estimate(MODEL, H100, cfg(zero_stage=1, pp=1, dp=16, grad_reduce="microbatch"),
                 execution=execution("megatron-core"))


def test_every_behaviour_flag_is_a_user_flag():
    """Every flag of `Execution` but its name, the search's choices among its own (zero_searched,
    selective_policies) and its export data can be changed with --framework-flag and is recorded in a plan
    (`USER_FLAGS`, `changed_flags`): pipeline_buffers and attention_saved_whole were missing from both."""
    from autoconf.spec.frameworks import USER_FLAGS, changed_flags, parse_flags

    assert {f.name for f in dataclasses.fields(Execution)} - set(USER_FLAGS) == {
        "name", "zero_searched", "selective_policies", "megatron_args", "torchtitan_settings"}
    flags = parse_flags(["pipeline_buffers=per_transfer", "attention_saved_whole=true"])
    assert flags == {"pipeline_buffers": "per_transfer", "attention_saved_whole": True}
    assert changed_flags(PRESETS["torchtitan"].replace(**flags)) == flags


def test_1f1b_with_fewer_microbatches_than_stages_is_planned_where_the_runtime_runs_it():
    """Megatron's 1F1B (and nanotron's) run m < pp; torch's Schedule1F1B refuses it. So the megatron presets cost
    it (the uniform pipeline's makespan (m + pp - 1)(F + B) holds there too: tests/test_simulate.py) and their
    search offers it; autoconf's executor and torchtitan refuse it in one line naming what would work, their search
    never offers it, and a torchtitan export of such a plan says why it cannot run."""
    from autoconf.report.exporters import megatron_args, torchtitan_config
    from autoconf.solve.space import candidates
    from autoconf.spec.support import unsupported_reason

    short = cfg(tp=1, pp=4, dp=8, global_batch_size=16, sequence_parallel=False)
    assert short.num_microbatches < short.pp
    for name in ("megatron", "megatron-core"):
        plan = estimate(MODEL, H100, short, execution=execution(name))
        assert plan.prediction["iteration_time_s"] > 0
        assert "--pipeline-model-parallel-size 4" in megatron_args(plan)
    for name in ("autoconf", "torchtitan"):
        with pytest.raises(UserError) as err:
            estimate(MODEL, H100, short, execution=execution(name))
        line = str(err.value)
        assert "1f1b needs num_microbatches (2) >= pp (4)" in line and "gpipe" in line and "\n" not in line
    assert "1f1b needs num_microbatches (2) >= pp (4)" in unsupported_reason(short)
    titan = torchtitan_config(estimate(MODEL, H100, short, execution=execution("megatron-core")))
    assert "# NOTE: torchtitan cannot run this pipeline: 1f1b needs num_microbatches (2)" in titan

    def short_pipelines(name: str) -> set:
        ex = execution(name)
        return {(c.pp, c.num_microbatches) for c in candidates(
            MODEL, 8, 8, 2, 2048, "bf16", fixed={"tp": 1}, reductions=ex.grad_reductions,
            runtime=ex.pipeline_runtime) if c.schedule == "1f1b" and c.num_microbatches < c.pp}
    assert (4, 1) in short_pipelines("megatron") and (8, 2) in short_pipelines("megatron-core")
    assert not short_pipelines("autoconf") and not short_pipelines("torchtitan")


@pytest.mark.parametrize("name", ["megatron", "megatron-core"])
def test_search_bounds_stay_below_the_estimate_with_fewer_microbatches_than_stages(name):
    """The search prunes 1F1B layouts with m < pp as safely as the others: the time and memory bounds of each are at
    most its estimate."""
    from autoconf.solve.bounds import BoundCache
    from autoconf.solve.space import candidates

    ex = execution(name)
    cache = BoundCache(MODEL, H100, ex)
    short = [c for c in candidates(MODEL, H100.world_size, H100.gpus_per_node, 8, 2048, "bf16",
                                   zero_stages=ex.zero_searched, reductions=ex.grad_reductions,
                                   runtime=ex.pipeline_runtime)
             if c.schedule == "1f1b" and c.num_microbatches < c.pp]
    assert len(short) >= 20
    for config in short[::max(1, len(short) // 40)]:
        p = estimate(MODEL, H100, config, execution=ex, detail=False).prediction
        assert cache.time_bound(config) <= p["iteration_time_s"] * (1 + 1e-9), config
        assert cache.memory_bound(config) <= p["peak_memory_bytes"] * (1 + 1e-9), config


def test_another_frameworks_search_weighs_the_layouts_it_runs_not_the_executors():
    """Planning for Megatron-Core, the search weighs what Megatron-Core runs: FP8 with tensor parallelism (which
    autoconf's executor does not run) and only its own schedules, 1F1B and interleaved 1F1B; planning for the
    executor it keeps to what the executor launches. A schedule pinned with --fix is still costed, its export saying
    why Megatron cannot run it."""
    from autoconf.report.exporters import megatron_args
    from autoconf.solve.search import search

    def picks(name: str, fixed: dict | None = None):
        result = search(MODEL, H100, 64, 2048, "fp8", fixed=fixed or {"pp": 2}, top_k=3, execution=execution(name),
                        refine=False)
        return result

    core = picks("megatron-core")
    assert core.stats["unlaunchable"] == 0 and any(p.config.tp > 1 for p in core.plans)
    assert {p.config.schedule for p in core.plans} <= {"1f1b", "interleaved-1f1b"}
    ours = picks("autoconf")
    assert ours.stats["unlaunchable"] > 0 and all(p.config.tp == 1 for p in ours.plans)
    pinned = picks("megatron-core", {"pp": 2, "schedule": "zbv"})
    assert {p.config.schedule for p in pinned.plans} == {"zbv"}
    assert "schedule zbv (V-shaped, two chunks per rank) cannot be expressed in Megatron-LM" in megatron_args(
        pinned.plans[0])
    assert PRESETS["megatron"].schedules == PRESETS["megatron-core"].schedules == ("1f1b", "interleaved-1f1b")


def test_the_schedules_flag_is_read_and_checked():
    """--framework-flag schedules=a,b names the schedules a framework's search weighs ("all": every registered one
    that does not split sequences); an unknown name, or none, is one line listing the known ones."""
    from autoconf.spec.frameworks import parse_flags, with_flags

    assert parse_flags(["schedules=1f1b, zbv"]) == {"schedules": ("1f1b", "zbv")}
    every = parse_flags(["schedules=all"])["schedules"]
    assert "dualpipe" in every and "zbv" in every and "seq1f1b" not in every  # (deepseek's own DualPipe kept)
    with pytest.raises(UserError, match="schedules pipedream: each must be one of gpipe, 1f1b"):
        with_flags(PRESETS["megatron"], parse_flags(["schedules=pipedream"]))
    for empty in ("schedules=", "schedules= , "):  # (was the flag's "every schedule", widening megatron's own)
        with pytest.raises(UserError, match="schedules names no schedule; give one or more of gpipe"):
            parse_flags([empty])


def test_megatrons_interleaved_schedule_needs_whole_groups_of_pp_microbatches():
    """Megatron-LM runs interleaved 1F1B with m a multiple of pp (groups of pp micro-batches per virtual stage;
    `forward_backward_pipelining_with_interleaving` refuses the rest), where torch runs any whole number of rounds:
    the megatron presets refuse the rest in one line and their search never offers it; a plan of the executor's
    with such a count exports to Megatron with a note."""
    from autoconf.report.exporters import megatron_args
    from autoconf.solve.space import candidates

    for m, fits in ((6, "use 4 or 8 micro-batches"), (2, "use 4 micro-batches")):
        layout = cfg(tp=1, pp=4, dp=8, vpp=2, schedule="interleaved-1f1b", global_batch_size=8 * m,
                     sequence_parallel=False)
        for name in ("megatron", "megatron-core"):
            with pytest.raises(UserError) as err:
                estimate(MODEL, H100, layout, execution=execution(name))
            line = str(err.value)
            assert f"interleaved-1f1b needs num_microbatches ({m}) to be a multiple of pp (4) in Megatron-LM" in line
            assert fits in line and "\n" not in line
        ours = estimate(MODEL, H100, layout)
        assert "# NOTE: Megatron-LM cannot run this pipeline: interleaved-1f1b needs" in megatron_args(ours)
    ex = execution("megatron-core")
    offered = {(c.pp, c.num_microbatches) for c in candidates(
        MODEL, 8, 8, 6, 2048, "bf16", reductions=ex.grad_reductions, runtime=ex.pipeline_runtime,
        schedules=ex.schedules) if c.schedule == "interleaved-1f1b"}
    assert offered and all(m % pp == 0 for pp, m in offered)


def test_the_pipeline_runtime_is_its_own_flag_not_read_off_the_buffers():
    """Which runtime's micro-batch rules hold is the framework's `pipeline_runtime`, not its memory flag
    `pipeline_buffers`: torchtitan with Megatron's buffer scheme still runs torch's classes (interleaved at m = 6,
    pp = 4; not 1F1B with m < pp), and the megatron presets run Megatron's."""
    interleaved = cfg(tp=1, pp=4, dp=8, vpp=2, schedule="interleaved-1f1b", global_batch_size=48,
                      sequence_parallel=False, zero_stage=0)
    short = cfg(tp=1, pp=4, dp=8, global_batch_size=16, sequence_parallel=False, zero_stage=0)
    titan = PRESETS["torchtitan"].replace(pipeline_buffers="per_transfer")
    assert titan.pipeline_runtime == "torch" and PRESETS["megatron-core"].pipeline_runtime == "megatron"
    assert titan.problem(interleaved) is None and "in torch's 1F1B" in titan.problem(short)
    core = PRESETS["megatron-core"]
    assert "in Megatron-LM" in core.problem(interleaved) and core.problem(short) is None
    with pytest.raises(UserError, match="pipeline_runtime 'jax' is none of torch, megatron"):
        core.replace(pipeline_runtime="jax")


def test_deepseeks_search_weighs_dualpipe_and_a_sequence_schedule_is_only_pinned():
    """DeepSeek's framework runs DualPipe, so its search weighs it unpinned (the executor's does not); a framework
    listing a schedule that splits sequences is one line (it is weighed only where --fix pins it)."""
    from autoconf.solve.space import candidates

    def weighed(ex) -> set:
        return {c.schedule for c in candidates(MODEL, 8, 8, 32, 2048, "bf16", fixed={"pp": 4},
                                               reductions=ex.grad_reductions, runtime=ex.pipeline_runtime,
                                               schedules=ex.schedules)}
    assert "dualpipe" in weighed(PRESETS["deepseek"]) and "zbv" not in weighed(PRESETS["deepseek"])
    assert "dualpipe" not in weighed(PRESETS["autoconf"]) and "zbv" in weighed(PRESETS["autoconf"])
    assert "dualpipe" not in weighed(PRESETS["torchtitan"]) and "dualpipev" in weighed(PRESETS["torchtitan"])
    with pytest.raises(UserError, match="schedules seq1f1b: a schedule that splits sequences is weighed only"):
        PRESETS["megatron"].replace(schedules=("1f1b", "seq1f1b"))


def test_the_planners_pick_is_at_least_as_fast_as_a_published_layout_it_can_weigh():
    """truth_nemo.py --picks: where NVIDIA's published layout lies in the search's space and fits, the search's pick
    under the same framework flags is predicted at least as fast (the search finds the best of its space; here
    GPT-3 5B and Llama 2 7B on NeMo 24.07's table, whose tp1 pp1 layouts it weighs)."""
    from plan_helpers import script_module

    truth = script_module("truth_nemo")
    data = truth.load()
    table = next(t for t in data["tables"] if t["id"] == "nemo-24.07")
    rows = [r for r in table["rows"] if r["label"] in ("GPT3-5B", "LLAMA2-7B")]
    picks = truth.planner_picks({**data, "tables": [{**table, "rows": rows}]})
    assert [p["label"] for p in picks] == ["GPT3-5B", "LLAMA2-7B"]
    for p in picks:
        assert p["pick_predicted_tps"] >= p["published_predicted_tps"] * (1 - 1e-6), p


def test_megatron_runs_zero_0_and_1_and_its_exports_say_what_stage_2_needs():
    """Megatron-LM's distributed optimizer shards the optimizer state only (every rank keeps the whole gradient
    buffer), so the megatron preset runs ZeRO 0 and 1 and refuses 2 in one line; an executor plan that holds its
    gradients sharded (ZeRO 2, and ZeRO 1, which FSDP2 runs alike, reducing every micro-batch) exports the
    distributed optimizer with a note naming Megatron-FSDP's gradient-sharding strategy (found by an audit of the
    exports: a megatron plan at ZeRO 2 had been predicted to fit on gradients Megatron never shards); one that
    holds them whole through the step (accumulating before one reduction) holds what Megatron's buffer holds, and
    gets no note."""
    from autoconf.report.exporters import megatron_flags

    assert execution("megatron").zero_stages == (0, 1)
    with pytest.raises(UserError, match="runs ZeRO stages 0, 1, not 2"):
        estimate(MODEL, H100, cfg(zero_stage=2, pp=1, dp=16), execution=execution("megatron"))
    beyond = "is beyond Megatron's distributed optimizer"
    for zero in (1, 2):
        flags, notes = megatron_flags(estimate(MODEL, H100, cfg(zero_stage=zero, pp=1, dp=16,
                                                                grad_reduce="microbatch")))
        assert ("--use-distributed-optimizer", None) in flags
        assert any(f"zero {zero} (gradients sharded) {beyond}" in n
                   and n.endswith("--data-parallel-sharding-strategy optim_grads") for n in notes)
    notes = megatron_flags(estimate(MODEL, H100, cfg(zero_stage=3, pp=1, dp=16)))[1]  # (an audit: "per pass sharded")
    assert any(f"zero 3 (gradients and parameters sharded, parameters re-gathered per pass) {beyond}" in n
               and n.endswith("--data-parallel-sharding-strategy optim_grads_params") for n in notes)
    whole = cfg(zero_stage=2, pp=1, dp=16)
    assert whole.num_microbatches > 1 and whole.grad_reduce == "step"
    assert not any(beyond in n for n in megatron_flags(estimate(MODEL, H100, whole))[1])


def test_megatron_core_runs_experts_with_biases_at_expert_tp_1():
    """Megatron-Core asserts 'Bias in Moe is only supported when ETP==1': its presets' search weighs etp 1 only for
    GPT-OSS (whose experts have biases) and `estimate` refuses etp 2 in one line, while the executor's framework
    weighs and runs both."""
    from autoconf.solve.space import candidates

    model = MODELS["gpt-oss-20b"]
    cluster = load_cluster("dgx-h100-80g", nodes=2)
    fixed = {"tp": 2, "pp": 1}
    for name in ("megatron-core", "deepseek"):
        ex = execution(name)
        layouts = list(candidates(model, 16, 8, 64, 4096, "bf16", fixed=fixed, expert_tp_biases=ex.expert_tp_biases))
        assert layouts and {c.etp for c in layouts} == {1}
    assert {c.etp for c in candidates(model, 16, 8, 64, 4096, "bf16", fixed=fixed)} == {1, 2}
    layout = ParallelConfig(tp=2, pp=1, dp=8, ep=4, etp=2, micro_batch_size=1, global_batch_size=64, seq_len=4096,
                            sequence_parallel=True, zero_stage=1, dtype="bf16")
    with pytest.raises(UserError, match="at expert TP 1 only .* not etp 2; use etp 1"):
        estimate(model, cluster, layout, execution=execution("megatron-core"))
    assert estimate(model, cluster, layout).prediction["iteration_time_s"] > 0
    assert execution("megatron-core").expert_tp_problem(dataclasses.replace(layout, etp=1), model) is None


def test_torchtitan_is_planned_only_with_what_it_runs():
    """Sixth review: `--framework torchtitan` ranked ring and allgather K/V exchanges as a tie though torchtitan
    0.3.0 has no ring setting (its export fell back to allgather), and pipelined tied embeddings, which its decoder
    refuses as the config loads. The search leaves both out, estimate refuses them in one line, the other
    frameworks keep them."""
    from autoconf.solve.search import framework_candidates

    titan, own = PRESETS["torchtitan"], PRESETS["autoconf"]
    cluster = load_cluster("dgx-h100-80g", nodes=2)
    long = list(framework_candidates(MODELS["llama3-8b"], cluster, 16, 32768, "bf16", "flash", {}, titan))
    assert long and all(c.cp_comm == "allgather" for c in long if c.cp > 1) and any(c.cp > 1 for c in long)
    tied = MODELS["tiny-gpt"]
    assert tied.tied_embeddings
    assert all(c.pp == 1 for c in framework_candidates(tied, cluster, 64, 128, "bf16", "flash", {}, titan))
    assert any(c.pp > 1 for c in framework_candidates(tied, cluster, 64, 128, "bf16", "flash", {}, own))
    ring = ParallelConfig(tp=1, pp=1, dp=4, cp=2, cp_comm="ring", micro_batch_size=1, global_batch_size=8,
                          seq_len=32768, zero_stage=3, grad_reduce="microbatch")
    with pytest.raises(UserError, match="by allgather only, not ring: use cp_comm allgather"):
        titan.check(ring, MODELS["llama3-8b"])
    own.check(ring, MODELS["llama3-8b"])
    piped = ParallelConfig(tp=1, pp=2, dp=4, micro_batch_size=1, global_batch_size=64, seq_len=128, zero_stage=2)
    assert "tied embeddings under pipeline parallelism (pp 2): use pp 1" in titan.problem(piped, tied)


def test_torchtitan_is_planned_with_the_expert_mesh_and_cp_sharding_it_builds():
    """A review: torchtitan 0.3.0 draws its expert-parallel ranks from dp_shard x cp x tp (dp_shard 1 under ZeRO-0)
    and shards the weights over the CP ranks whenever cp > 1, which its export had only noted: the preset's search
    now leaves out ZeRO-0 layouts whose ep those ranks cannot hold and ZeRO-0 beside cp > 1, estimate refuses them
    in one line, and the executor's framework keeps both."""
    from autoconf.solve.search import framework_candidates

    titan, own = PRESETS["torchtitan"], PRESETS["autoconf"]
    cluster = load_cluster("dgx-h100-80g", nodes=1)
    moe = MODELS["tiny-moe"]
    layouts = list(framework_candidates(moe, cluster, 64, 1024, "bf16", "flash", {}, titan))
    assert layouts and not any(titan.layout_problem(c, moe) for c in layouts)
    assert not any(c.zero_stage == 0 and c.cp > 1 for c in layouts)
    assert not any(c.zero_stage == 0 and c.ep > 1 and (c.cp * c.tp) % c.ep for c in layouts)
    assert any(c.zero_stage == 0 and c.ep > 1 and (c.cp * c.tp) % c.ep
               for c in framework_candidates(moe, cluster, 64, 1024, "bf16", "flash", {}, own))
    expert = ParallelConfig(tp=1, pp=1, dp=8, ep=2, micro_batch_size=1, global_batch_size=8, seq_len=1024,
                            zero_stage=0)
    with pytest.raises(UserError, match="which ep 2 must divide; at ZeRO 0 that is 1 rank"):
        titan.check(expert, moe)
    titan.check(dataclasses.replace(expert, zero_stage=2), moe)
    context = ParallelConfig(tp=1, pp=1, dp=4, cp=2, cp_comm="allgather", micro_batch_size=1, global_batch_size=8,
                             seq_len=1024, zero_stage=0)
    assert "runs no ZeRO-0 with cp 2: use ZeRO 3 or cp 1" in titan.problem(context, MODELS["llama3-8b"])
    assert own.problem(context, MODELS["llama3-8b"]) is None


def test_the_step_pays_the_gradient_norm_and_megatrons_main_parameter_copy():
    """Beside AdamW's kernels the step reads every local fp32 gradient once for the clipping norm (Megatron, 4
    bytes), the executor and torchtitan also scale them every step by the clamped coefficient (12 bytes), and the
    megatron layout copies its fp32 main parameters into the bf16 (fp8 with fp8 parameters) model parameters: 6 (5)
    bytes more; none of it in fp32."""
    from autoconf.cost.compute import grad_buffer_pass_time, main_param_copy_bytes, rank_optimizer_time
    from autoconf.cost.moe import local_params
    from autoconf.spec.frameworks import ADAM_KERNELS

    h100 = load_cluster("dgx-h100-80g", nodes=2)
    c = cfg(tp=1, pp=1, dp=16, zero_stage=1, sequence_parallel=False)
    bare = rank_optimizer_time(h100, c, MODEL.total_params())  # the fused kernel alone: the bound's
    for name, extra in (("autoconf", 12), ("torchtitan", 12), ("megatron-core", 4 + 6)):
        ex = execution(name)
        step = rank_optimizer_time(h100, c, MODEL.total_params(), execution=ex)
        passes = grad_buffer_pass_time(h100, sum(local_params(c, MODEL.total_params(), 0.0, 0.0)), ex)
        assert step - passes == pytest.approx(bare * (ADAM_KERNELS["fused"] + extra) / ADAM_KERNELS["fused"]), name
    core = execution("megatron-core")
    assert main_param_copy_bytes(dataclasses.replace(c, dtype="fp8"), core.replace(fp8_params=True)) == 5
    assert main_param_copy_bytes(dataclasses.replace(c, dtype="fp32"), core) == 0
    assert main_param_copy_bytes(c, core.replace(optimizer="apex")) == 0
    assert main_param_copy_bytes(c, execution("torchtitan")) == 0
