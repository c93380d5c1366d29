"""Offload to host memory (spec/plan.py OFFLOADS, cost/offload.py): the plan fields and the profile's host object
load and default off; what leaves the device is what the host holds; the copies and the CPU optimizer cost what
the host rates say; the executor's hook moves what the cost model counts; the search weighs offload only where a
layout does not fit without it; the profiler measures the host; the exports carry it. The executor's losses with
offload at tp 1, pp 1 are checked in tests/test_execute.py's world-2 job; with tp 2 x pp 2 here, in the shared
world-8 job, with cp 2 alone in the world-2 job, and in fp8 at pp 2 x dp 2 in the world-4 job, with what each rank
holds on the host against the estimate."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch

from autoconf.cost.estimate import estimate
from autoconf.cost.memory import executor_layer_activation_bytes
from autoconf.cost.offload import plans_offload
from autoconf.errors import UserError
from autoconf.report.exporters import megatron_flags, torchtitan_config
from autoconf.solve.search import search
from autoconf.spec.cluster import ClusterProfile, load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, Plan
from autoconf.spec.presets import PRESETS
from tests.test_bad_input import assert_one_clear_error, run_cli

import executor_jobs
from executor_jobs import Layout, assert_matches_reference
from plan_helpers import even_plan

GiB = 1024 ** 3


# The test GPT of tests/test_execute.py with 2 layers (a TP layout's time on CPU grows with its layers; tied
# embeddings: under pp 2 the last stage holds the head's copy).
GPT2 = ModelSpec(name="test-gpt2", arch="gpt", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4,
                 ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True)
HOST_PROBE = {"probe": "tests/offload_probe.py"}


def _offload_plan(dp: int = 2, **layout) -> Plan:
    plan = even_plan(GPT2, dp=dp, zero=3, **layout)
    plan.config = dataclasses.replace(plan.config, offload_optimizer=True)
    plan.validate()
    return plan


# FSDP2's CPUOffloadPolicy over the DTensor TP mesh of every pipeline stage, in the session's shared 8-rank job
# (tests/executor_jobs.py; it covers the tp2 x dp2 and pp2 x dp2 layouts run here before, each 2026-12-02 to
# within 2e-8), "gpt2" its single-process reference; with torchao's fp8 linears (CPU emulation) at pp 2 x dp 2 in
# the 4-rank job, against the fp8 plan at dp 2 without offload or pipeline (test_fp8.py's, trained once in the
# 2-rank job): fp8 rounding makes a different data-parallel reduction order a different run (tests/test_fp8.py), a
# pipeline does not (measured 2026-12-02: bit for bit, and the same with ZeRO-3).
LAYOUTS = {"gpt2": Layout(1, even_plan(GPT2)),
           "gpt2-tp2-pp2-dp2-1f1b-zero3-offload-optimizer": Layout(8, _offload_plan(tp=2, pp=2, schedule="1f1b"),
                                                                   HOST_PROBE),
           # context parallelism alone: FSDP shards over dp x cp, so the host holds 16 / (dp x cp) bytes per parameter
           "gpt2-cp2-zero3-offload-optimizer": Layout(2, _offload_plan(dp=1, cp=2), HOST_PROBE)}
if importlib.util.find_spec("torchao") is not None:
    from test_fp8 import _layout_plan

    FP8 = _layout_plan("fp8", pp=2, dp=2, zero=1)
    LAYOUTS["fp8"] = Layout(2, _layout_plan("fp8", dp=2, zero=1))
    LAYOUTS["fp8-pp2-dp2-zero1-offload-optimizer"] = Layout(
        4, dataclasses.replace(FP8, config=dataclasses.replace(FP8.config, offload_optimizer=True)), HOST_PROBE)
executor_jobs.register("offload", LAYOUTS)


def _config(**kw) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=32, seq_len=4096, zero_stage=3)
    return ParallelConfig(**{**base, **kw})


def test_offload_is_off_by_default_and_old_plans_and_profiles_load():
    """A plan saved before the offload fields loads with both off; a profile without "host" loads and plans no
    offload; the bundled data-sheet profiles state a cited host."""
    plan = estimate(PRESETS["tiny-llama"], load_cluster("cpu-local", gpus_per_node=2),
                    ParallelConfig(tp=1, pp=1, dp=2, micro_batch_size=1, global_batch_size=4, seq_len=32))
    data = plan.to_dict()
    for name in ("offload_activations", "offload_optimizer"):
        assert data["config"].pop(name) is False
    assert not Plan.from_dict(data).config.offloads
    teton = load_cluster("grand-teton-h100-96g-500w")
    assert teton.host is None and not plans_offload(teton)
    assert ClusterProfile.from_dict(teton.to_dict()).host is None
    for name in ("dgx-h100-80g", "dgx-a100-80g"):
        host = load_cluster(name).host
        assert host["memory_bytes"] == 2e12 and "data sheet" in host["source"] and "https://" in host["source"]
    bad = {**load_cluster("dgx-h100-80g").to_dict(), "host": {"memory_bytes": -1, "source": "x"}}
    with pytest.raises(UserError, match="host.memory_bytes"):
        ClusterProfile.from_dict(bad)


def test_bad_offload_input_is_one_clear_line(tmp_path):
    """Offload on a profile without host facts, optimizer offload without FSDP, and offload beyond the host memory
    of a node: one line each."""
    args = ["estimate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1",
            "--global-batch", "32", "--seq-len", "4096", "--zero", "3"]
    assert_one_clear_error(run_cli([*args, "--cluster", "grand-teton-h100-96g-500w", "--offload-activations"]),
                           "states no host memory")
    assert_one_clear_error(run_cli([*args[:-2], "--cluster", "dgx-h100-80g", "--offload-optimizer"]),
                           "offload_optimizer", "zero_stage >= 1 and dp x cp > 1")
    small = load_cluster("dgx-h100-80g").to_dict()
    small["host"] = {**small["host"], "memory_bytes": 64 * GiB}
    path = tmp_path / "small-host.json"
    path.write_text(json.dumps(small))
    assert_one_clear_error(run_cli([*args, "--cluster", str(path), "--offload-activations", "--offload-optimizer"]),
                           "offload beyond host memory", "64.0 GiB")


def test_what_leaves_the_device_is_what_the_host_holds_and_the_copies_cost_bytes_over_bandwidth():
    """Activation offload: the device keeps none of the blocks' activations (one block's as a temporary), the host
    the rest; the step gains each block's activation bytes over d2h in every forward and over h2d in every
    backward, not overlapped. Optimizer offload: the sharded fp32 weights, gradients and AdamW states (16/dp bytes
    per parameter) leave the device, the optimizer step runs at the host's AdamW rate, and the what-it-bought
    summary is the difference to the same layout without offload. The executor compiles no block under activation
    offload (`ParallelConfig.compiles_blocks`), so the plan's `compile` changes nothing there (the copies are
    compared without compile on either side)."""
    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g")
    host = cluster.host
    eager_plain = estimate(model, cluster, _config(grad_reduce="microbatch", compile=False)).prediction
    plain = estimate(model, cluster, _config(grad_reduce="microbatch")).prediction
    acts = estimate(model, cluster, _config(grad_reduce="microbatch", offload_activations=True)).prediction
    eager = estimate(model, cluster, _config(grad_reduce="microbatch", offload_activations=True,
                                             compile=False)).prediction
    assert acts["iteration_time_s"] == eager["iteration_time_s"]
    assert acts["peak_memory_bytes"] == eager["peak_memory_bytes"]
    layer = executor_layer_activation_bytes(model, _config(), "none")
    m, layers = 4, model.num_layers
    assert acts["time_breakdown"]["offload"] == pytest.approx(
        m * layers * layer * (1 / host["d2h_Bps"] + 1 / host["h2d_Bps"]))
    assert acts["iteration_time_s"] - eager_plain["iteration_time_s"] == pytest.approx(
        acts["time_breakdown"]["offload"], rel=1e-6)
    before, after = plain["memory_per_stage"][0], acts["memory_per_stage"][0]
    assert after["activations"] < 0.01 * before["activations"]
    assert after["host"] == pytest.approx(layers * layer)  # one micro-batch in flight without a pipeline
    assert acts["host_memory_per_node_bytes"] == pytest.approx(8 * after["host"])
    assert acts["offload_effect"]["memory_saved_bytes"] == pytest.approx(plain["peak_memory_bytes"]
                                                                        - acts["peak_memory_bytes"])
    assert acts["offload_effect"]["time_cost_s"] == pytest.approx(acts["iteration_time_s"]
                                                                  - plain["iteration_time_s"])

    opt = estimate(model, cluster, _config(grad_reduce="microbatch", offload_optimizer=True)).prediction
    params = model.total_params()
    mine, theirs = opt["memory_per_stage"][0], plain["memory_per_stage"][0]
    assert mine["optimizer"] == 0 and theirs["optimizer"] == pytest.approx(8 * params / 8)
    assert mine["host"] == pytest.approx(16 * params / 8)
    assert opt["time_breakdown"]["optimizer"] == pytest.approx(params / 8 * host["adam_s_per_param"])
    assert opt["time_breakdown"]["dp_comm"] > plain["time_breakdown"]["dp_comm"]  # the shard copies
    assert opt["offload_effect"]["time_cost_s"] == pytest.approx(opt["iteration_time_s"] - plain["iteration_time_s"])


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_the_executors_hook_moves_what_the_cost_model_counts(recompute, arch="tiny-llama"):
    """The saved-tensor hook of offload_activations moves the bytes cost/memory.py counts for a Llama block (within
    the norm statistics and rotary tables, 3%), leaves the weights, and the gradients are the hook-less run's."""
    from autoconf.execute.model import Block, OneBlock
    from autoconf.execute.offload import apply_activation_offload
    from autoconf.execute.parallelize import apply_recompute

    spec = dataclasses.replace(PRESETS[arch], dropout=0.0)

    torch.manual_seed(0)
    block = Block(spec, "flash").train()
    apply_recompute(OneBlock(block), recompute)
    x = torch.randn(3, 40, spec.hidden_size, requires_grad=True)  # as every block's input in the executor
    block(x).square().sum().backward()
    reference = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    hook = apply_activation_offload(OneBlock(block), torch.device("cpu"))[0]
    block(x).square().sum().backward()
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=3, global_batch_size=3, seq_len=40, dtype="fp32",
                            recompute=recompute)
    estimated = executor_layer_activation_bytes(spec, config, recompute, "cpu")
    assert estimated <= hook.moved_bytes <= 1.03 * estimated
    assert all(torch.equal(p.grad, r) for p, r in zip(block.parameters(), reference))


def _shrunk(gib: float, host: bool = True) -> ClusterProfile:
    cluster = load_cluster("dgx-h100-80g", nodes=1, gpus_per_node=2)
    cluster = dataclasses.replace(cluster, device=dataclasses.replace(cluster.device, memory_bytes=gib * GiB))
    return cluster if host else dataclasses.replace(cluster, host=None)


def test_search_weighs_offload_where_a_layout_does_not_fit_without_it():
    """Llama-3 8B on two devices: with 80 GiB the best plan does not offload; with 48 GiB nothing fits without
    offload and every plan found offloads, says it does not fit without it, and fits its host; without host
    facts nothing is found. (Layouts that fit by recomputing have their offloading twins weighed too:
    tests/test_search.py.)"""
    model = PRESETS["llama3-8b"]
    roomy = search(model, _shrunk(80), 8, 4096, "bf16", refine=False, top_k=3)
    assert not roomy.plans[0].config.offloads
    tight = search(model, _shrunk(48), 8, 4096, "bf16", refine=False, top_k=3)
    assert tight.plans and all(p.config.offloads and p.prediction["fits"] for p in tight.plans)
    assert all(not p.prediction["offload_effect"]["without_fits"] for p in tight.plans)
    assert tight.stats["offload_candidates"] >= len(tight.plans)
    assert not search(model, _shrunk(48, host=False), 8, 4096, "bf16", refine=False, top_k=3).plans


@pytest.mark.parametrize("lever", ["offload_activations", "offload_optimizer"])
def test_a_pinned_lever_finds_what_the_open_search_finds_with_it(lever):
    """--fix LEVER=true is searched as an open lever is (layouts standing for their offloading twins): every plan
    has the lever, and the first is at least as fast as the open search's fastest plan with it, the other lever and
    the twins' refitted recompute weighed as they are there (a layout born with the lever on weighed neither)."""
    model, cluster = PRESETS["llama3-8b"], _shrunk(48)
    with_it = [p for p in search(model, cluster, 8, 4096, "bf16", refine=False, top_k=40).plans
               if getattr(p.config, lever)]
    pinned = search(model, cluster, 8, 4096, "bf16", fixed={lever: True}, refine=False, top_k=3)
    assert with_it and pinned.plans and all(getattr(p.config, lever) for p in pinned.plans)
    assert pinned.plans[0].prediction["iteration_time_s"] <= with_it[0].prediction["iteration_time_s"] * (1 + 1e-9)


@pytest.mark.parametrize("schedule, pp, vpp", [("1f1b", 2, 1), ("interleaved-1f1b", 2, 2), ("gpipe", 2, 1)])
def test_the_walks_host_bytes_are_the_estimates_own(schedule, pp, vpp):
    """`BoundCache.layout_host`, which the search's advice and its fitting twins read instead of simulating, is the
    estimate's `host_memory_per_node_bytes` of the same layout (0 without offload)."""
    from autoconf.cost.estimate import predict
    from autoconf.solve.bounds import BoundCache

    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g", nodes=1)
    cache = BoundCache(model, cluster, execution("autoconf"))
    for activations, optimizer in ((False, True), (True, False), (True, True), (False, False)):
        c = ParallelConfig(tp=2, pp=pp, dp=8 // (2 * pp), vpp=vpp, micro_batch_size=1, global_batch_size=16,
                           seq_len=4096, schedule=schedule, zero_stage=1, offload_activations=activations,
                           offload_optimizer=optimizer)
        p = predict(model, cluster, c, execution=cache.execution, detail=False)[3]
        assert cache.layout_host(c) == pytest.approx(p.get("host_memory_per_node_bytes", 0.0), rel=1e-9)
        assert (cache.layout_host(c) > 0) == c.offloads


def test_the_profiler_measures_the_host(monkeypatch):
    """On CPU the host facts are measured (positive copy and AdamW rates, the node's RAM) and their source says the
    copies are a memcpy, not PCIe; the AdamW rate times the executor's own host step (execute/optimizer.py: torch's
    fused kernel, decay on the matrices only) over a million parameters or more."""
    from autoconf.execute import optimizer
    from autoconf.profile.host import combine_host, measure_host

    built, original = [], optimizer.adamw

    def recorded(groups, lr):
        built.append(original(groups, lr))
        return built[-1]

    monkeypatch.setattr(optimizer, "adamw", recorded)
    measured = measure_host(torch.device("cpu"), quick=True, tiny=True)
    [opt] = built
    groups = opt.param_groups
    assert all(g["fused"] for g in groups) and sum(p.numel() for g in groups for p in g["params"]) >= 1 << 20
    assert all((g["weight_decay"] > 0) == (g["params"][0].ndim == 2) for g in groups) and len(groups) == 2
    host = combine_host([measured, measured], on_gpu=False, when="today")
    assert all(host[k] > 0 for k in ("memory_bytes", "h2d_Bps", "d2h_Bps", "adam_s_per_param"))
    assert "memcpy" in host["source"] and "not a PCIe" in host["source"] and "execute/optimizer.py" in host["source"]
    profile = {**load_cluster("cpu-local").to_dict(), "host": host}
    assert ClusterProfile.from_dict(profile).host == host


def test_exports_carry_offload():
    """Megatron-LM: --cpu-offloading-num-layers (at most layers - 1) and the optimizer offload flags; torchtitan:
    training.enable_cpu_offload, and a note that it has no activation offload."""
    cluster = load_cluster("dgx-h100-80g")
    model = PRESETS["llama3-8b"]
    plan = estimate(model, cluster, _config(offload_activations=True, offload_optimizer=True))
    flags, notes = megatron_flags(plan)
    given = dict(flags)
    assert given["--cpu-offloading-num-layers"] == str(model.num_layers - 1)
    assert "--optimizer-cpu-offload" in given and given["--optimizer-offload-fraction"] == "1.0"
    assert any("num_layers - 1" in n for n in notes)
    text = torchtitan_config(plan)
    assert "training.enable_cpu_offload = True" in text and "no activation offload setting" in text
    plain = estimate(model, cluster, _config())
    assert "--cpu-offloading-num-layers" not in dict(megatron_flags(plain)[0])
    assert "enable_cpu_offload" not in torchtitan_config(plain)
    # megatron-core refuses the flag beside a pipeline or recompute: there it is left out, with a note
    for changes in ({"recompute": "full"}, {"pp": 2, "dp": 4}):
        refused = estimate(model, cluster, _config(offload_activations=True, **changes))
        flags, notes = megatron_flags(refused)
        assert "--cpu-offloading-num-layers" not in dict(flags)
        assert any("--cpu-offloading-num-layers is left out" in n for n in notes)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in LAYOUTS if n.endswith("offload-optimizer")])
def test_optimizer_offload_with_tp_pp_and_fp8_trains_as_without_it_and_holds_the_estimated_host_bytes(
        name, tmp_path_factory):
    """offload_optimizer at tp 2 x pp 2 x dp 2 (1F1B, ZeRO-3), at cp 2 without dp (ZeRO-3 over the cp ranks) and in
    fp8 at pp 2 x dp 2 (ZeRO-1, fp8 all-gather):
    every step's loss and gradient norm are those of the single-process run (fp8: of the fp8 plan at dp 2)
    within 1e-4, and each rank's parameter shards, gradient shards and AdamW moments (counted on the executor's
    tensors, tests/offload_probe.py) are what the estimate puts on that pipeline rank's host, with nothing left for
    the device's optimizer; within 1%: the norms and row-parallel biases are whole on every TP rank, the estimate
    divides them by tp."""
    out = executor_jobs.results("offload", tmp_path_factory)
    assert_matches_reference(out, name)
    plan = LAYOUTS[name].plan
    cluster = load_cluster("dgx-h100-80g", nodes=1, gpus_per_node=plan.config.world_size)
    memory = estimate(plan.model, cluster, plan.config, plan.partition).prediction["memory_per_stage"]
    assert sorted({rank["pp"] for rank in out[name]["probe"]}) == list(range(plan.config.pp))
    for rank in out[name]["probe"]:
        held = rank["params"] + rank["grads"] + rank["moments"]
        assert rank["devices"] == ["cpu"] and rank["grads"] == rank["params"] and rank["moments"] == 2 * rank["params"]
        entry = memory[rank["pp"]]
        assert entry["optimizer"] == 0
        assert entry["host"] == pytest.approx(held, rel=0.01)


def test_the_executor_runs_optimizer_offload_wherever_it_runs_the_layout_without_it():
    """offload_optimizer runs at dp alone, with tp, pp and both, and in fp8 with and without a pipeline (above); fp8
    with tp stays refused for fp8's own reason, not offload's."""
    from autoconf.spec.support import unsupported_reason

    def reason(**kw):
        return unsupported_reason(_config(offload_optimizer=True, global_batch_size=64, **kw))

    assert all(reason(**kw) is None for kw in ({}, {"tp": 2, "dp": 4}, {"pp": 2, "dp": 4},
                                              {"tp": 2, "pp": 2, "dp": 2}, {"dtype": "fp8"},
                                              {"dtype": "fp8", "pp": 2, "dp": 4}))
    refused = reason(dtype="fp8", tp=2, dp=4)
    assert "tp 2" in refused and "offload" not in refused


def test_offloaded_expert_state_is_on_the_host_only_even_where_edp_is_1():
    """At dp 2 x ep 2 the routed experts have no expert-data-parallel ranks (edp 1), yet the executor offloads their
    unit with the rest: their fp32 weights and AdamW moments are on the host (16 bytes per parameter there), none
    on the device (the device counted them too, 12 bytes per expert parameter twice over)."""
    from autoconf.cost.memory import state_bytes_per_param
    from autoconf.cost.offload import host_state_bytes_per_param

    c = ParallelConfig(tp=1, pp=1, dp=2, ep=2, micro_batch_size=1, global_batch_size=8, seq_len=64, zero_stage=3,
                       offload_optimizer=True)
    assert c.edp == 1
    weights, _, optimizer, _ = state_bytes_per_param(c, "torch", experts=True)
    assert weights == optimizer == 0.0
    assert host_state_bytes_per_param(c, "torch", experts=True) == 16.0
    plain = dataclasses.replace(c, offload_optimizer=False)
    assert state_bytes_per_param(plain, "torch", experts=True)[2] == 8.0  # on the device without offload


def test_offloaded_expert_state_at_edp_1_pays_its_host_copies():
    """Routed experts without expert-data-parallel ranks (edp 1) have no collective, but their offloaded fp32
    state still crosses to the device before each gather and back after each reduction: the copies of the whole
    (unsharded) state are charged, where they cost nothing before."""
    from autoconf.cost.estimate import dp_collectives

    cluster = load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=1, dp=8, ep=8, micro_batch_size=1, global_batch_size=64, seq_len=4096,
                       zero_stage=3, offload_optimizer=True, grad_reduce="microbatch")
    per_pass, once, reduce = dp_collectives(cluster, c, 1e9, [0])
    assert per_pass == pytest.approx(4e9 / cluster.host["h2d_Bps"]) and once == 0.0
    assert reduce == pytest.approx(4e9 / cluster.host["d2h_Bps"])
    assert dp_collectives(cluster, dataclasses.replace(c, offload_optimizer=False), 1e9, [0]) == (0.0, 0.0, 0.0)
    assert dp_collectives(cluster, c, 1e9, [0, 1])[2] > reduce / 2  # two ranks: half the copy, plus the collective


def test_each_framework_offloads_what_it_runs_and_the_search_weighs_only_that():
    """Sixth review: planning for Megatron-Core proposed activation offload beside a pipeline and recompute, which
    its TransformerConfig refuses (the export then left the flag out and the run would not fit). The framework's
    rule (`Execution.offload_problem`) is what the search weighs, the estimate refuses and the export notes:
    Megatron-Core offloads activations without pipeline and recompute only, torchtitan has no activation offload,
    Megatron-LM of 2022 neither lever."""
    def layout(**changes):
        return ParallelConfig(**{"tp": 1, "pp": 1, "dp": 8, "micro_batch_size": 1, "global_batch_size": 8,
                                 "seq_len": 4096, "zero_stage": 1, **changes})

    core, titan, old, own = (execution(n) for n in ("megatron-core", "torchtitan", "megatron", "autoconf"))
    assert core.offload_problem(layout(offload_activations=True)) is None
    assert "pp 2, recompute full" in core.offload_problem(layout(pp=2, dp=4, recompute="full",
                                                                 offload_activations=True))
    assert core.offload_problem(layout(pp=2, dp=4, offload_optimizer=True)) is None
    assert "no offload activations" in titan.offload_problem(layout(offload_activations=True))
    assert titan.offload_problem(layout(offload_optimizer=True)) is None
    assert "no offload optimizer" in old.offload_problem(layout(offload_optimizer=True))
    assert own.offload_problem(layout(pp=2, dp=4, recompute="full", offload_activations=True)) is None
    model, cluster = PRESETS["llama3-8b"], _shrunk(48)
    for framework in (core, titan):
        plans = search(model, cluster, 8, 4096, "bf16", refine=False, top_k=5, execution=framework).plans
        assert plans and not any(framework.offload_problem(p.config) for p in plans)
    assert any(p.config.offload_activations for p in search(model, cluster, 8, 4096, "bf16", refine=False, top_k=40,
                                                            execution=core).plans)
    with pytest.raises(UserError, match="framework 'torchtitan' has no offload activations; drop it"):
        search(model, cluster, 8, 4096, "bf16", fixed={"offload_activations": True}, refine=False, execution=titan)
