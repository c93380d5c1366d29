"""The advice a layout that does not fit gets (solve/fit.py): every lever that saves memory is weighed, alone then
in pairs, and the change named is one that fits, under the CLI flags that reproduce it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from autoconf.cost.estimate import estimate
from autoconf.solve.fit import smallest_fitting_change
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from test_bad_input import assert_one_clear_error, run_cli

H100 = ["--cluster", "dgx-h100-80g"]


def advice(result) -> list[str]:
    """The flags after 'it fits with' on the CLI's error line."""
    assert_one_clear_error(result, "does not fit", "it fits with")
    return result.output.split("it fits with ")[1].split()


@pytest.mark.parametrize("args, needle", [
    # ZeRO shards over dp x cp: at dp 1 the cp ranks still shard
    (["--model", "llama3.1-70b", "--nodes", "4", "--tp", "8", "--pp", "1", "--dp", "1", "--cp", "4", "--micro-batch",
      "1", "--global-batch", "8", "--seq-len", "65536", "--recompute", "full", "--sequence-parallel"], "--zero"),
    # a framework without ZeRO-2 (Megatron-Core) gets a stage it runs: ZeRO-3 as Megatron-FSDP, with the reduction
    # every micro-batch it needs
    (["--model", "llama3-8b", "--nodes", "1", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1",
      "--global-batch", "64", "--seq-len", "8192", "--framework", "megatron-core"], "--zero 3 --grad-reduce microbatch"),
    # without ZeRO-3 (--framework-flag zero_stages) recompute with the stage it runs
    (["--model", "llama3-8b", "--nodes", "1", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1",
      "--global-batch", "64", "--seq-len", "8192", "--framework", "megatron-core", "--framework-flag",
      "zero_stages=0,1"], "--zero 1"),
    # the gradients reduce-scattered every micro-batch are a lever of their own
    (["--model", "llama3-8b", "--nodes", "1", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "4",
      "--global-batch", "64", "--seq-len", "8192"], "--grad-reduce microbatch"),
])
def test_the_named_change_fits_when_applied(args, needle):
    result = run_cli(["estimate", *H100, *args])
    flags = advice(result)
    assert needle in " ".join(flags), result.output
    fixed = run_cli(["estimate", *H100, *args, *flags])
    assert fixed.exit_code == 0, fixed.output


def test_partial_recompute_is_advised_on_every_layer():
    """A plan recomputing some layers of each stage is told to recompute them all (full recompute of every layer
    saves what the counts leave), not that no change fits."""
    args = ["estimate", *H100, "--model", "llama3-70b", "--nodes", "4", "--tp", "8", "--pp", "4", "--dp", "1",
            "--vpp", "2", "--schedule", "interleaved-1f1b", "--recompute", "full", "--recompute-layers",
            "5,3,2,1,1,1,0,0", "--sequence-parallel", "--micro-batch", "1", "--global-batch", "64", "--seq-len", "8192"]
    result = run_cli(args)
    assert "--recompute full (drop --recompute-layers)" in result.output
    i = args.index("--recompute-layers")
    assert run_cli(args[:i] + args[i + 2:]).exit_code == 0


def test_another_frameworks_precision_recipe_still_gets_advice():
    """fp8-deepseek is not the executor's, so the executor's support is not asked of the change (the layout never
    had it); the change named fits under the framework estimated."""
    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=8192,
                       dtype="fp8-deepseek")
    megatron = execution("megatron")
    assert not estimate(model, cluster, c, execution=megatron, detail=False).prediction["fits"]
    found = smallest_fitting_change(model, cluster, c, megatron)
    assert found is not None and found[2]["fits"]


def test_the_fastest_fitting_change_of_the_fewest_levers_is_named():
    """Among the single-lever changes that fit, the one named has the shortest predicted step."""
    from autoconf.solve.fit import _levers, advisable
    from autoconf.solve.space import with_changes

    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=2, global_batch_size=64, seq_len=4096, zero_stage=1)
    flags, _, named = smallest_fitting_change(model, cluster, c)
    singles = []
    for lever in _levers(c):
        for option, changes in lever:
            changed = with_changes(c, **changes)
            if advisable(model, cluster, changed, execution()):
                p = estimate(model, cluster, changed, detail=False).prediction
                if p["fits"]:
                    singles.append(p["iteration_time_s"])
    assert len(singles) > 1 and named["iteration_time_s"] == min(singles)


def test_the_layout_label_shows_gradients_reduced_every_micro_batch_and_estimate_takes_it():
    """A plan's layout line says "rs-mb" when its sharded gradients are reduce-scattered every micro-batch (the
    search picks it; the memory differs by the whole unsharded gradient), and `estimate --grad-reduce microbatch`
    reproduces it; on an unsharded layout the flag is one line naming what it needs."""
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=8192, zero_stage=3,
                       grad_reduce="microbatch")
    assert "rs-mb" in c.label() and "rs-mb" not in dataclasses.replace(c, grad_reduce="step").label()
    assert "rs-mb" not in dataclasses.replace(c, zero_stage=0).label()  # nothing sharded to reduce
    base = ["estimate", *H100, "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1",
            "--global-batch", "64", "--seq-len", "8192"]
    shown = run_cli(base + ["--zero", "3", "--grad-reduce", "microbatch", "--json"]).output
    assert json.JSONDecoder().raw_decode(shown)[0]["config"]["grad_reduce"] == "microbatch"
    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g")
    held, reduced = (estimate(model, cluster, dataclasses.replace(c, grad_reduce=g), detail=False).prediction
                     for g in ("step", "microbatch"))
    assert reduced["peak_memory_bytes"] < held["peak_memory_bytes"]
    assert_one_clear_error(run_cli(base + ["--grad-reduce", "microbatch"]), "--grad-reduce microbatch", "--zero")


def test_full_recompute_advice_drops_the_selective_policy():
    """A layout under a selective policy told to recompute in full is told to drop the policy too (the CLI refuses
    --selective-recompute without --recompute selective)."""
    args = ["estimate", *H100, "--model", "llama3.1-8b", "--tp", "8", "--pp", "1", "--dp", "1", "--micro-batch", "1",
            "--global-batch", "8", "--seq-len", "262144", "--recompute", "selective", "--selective-recompute",
            "alternate_matmuls", "--sequence-parallel"]
    from autoconf.solve.fit import _levers

    c = ParallelConfig(tp=8, pp=1, dp=1, micro_batch_size=1, global_batch_size=8, seq_len=262144,
                       recompute="selective", selective_recompute="alternate_matmuls", sequence_parallel=True)
    assert ("--recompute full", "(drop --selective-recompute)") in [flags for flags, _ in _levers(c)[0]]
    # (here moving the activations to the host is the faster change: the advice names it)
    assert "it fits with --offload-activations" in run_cli(args).output
    i = args.index("--recompute")
    assert run_cli(args[:i] + ["--recompute", "full"] + args[i + 4:]).exit_code == 0


def test_the_searchs_no_fit_line_weighs_the_same_levers():
    """`plan`'s line when nothing fits names a change from the same levers as `estimate`'s advice (here the
    gradients reduce-scattered every micro-batch, which its own list of five changes tried first), in --fix keys,
    and only changes that no --fix pins otherwise."""
    from autoconf.solve.search import SearchResult, explain_infeasible

    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=8192, zero_stage=3)
    result = SearchResult(plans=[], stats={}, closest=(1.0, c))
    line = explain_infeasible(model, cluster, result, 64, 8192, "bf16", "flash", {})
    assert "it fits with grad_reduce=microbatch" in line
    pinned = explain_infeasible(model, cluster, result, 64, 8192, "bf16", "flash", {"grad_reduce": "step"})
    assert "grad_reduce=microbatch" not in pinned


def test_the_advice_weighs_expert_parallelism_and_offload():
    """Sixth review: Qwen3-30B-A3B at ep 1 on 8 H100s was told `--zero 3 --grad-reduce microbatch` (1.122 s) where
    `--ep 8` alone fits and is faster; the advice now weighs each larger ep the ranks allow and, where the cluster
    plans offload, moving the activations, the optimizer or both to the host. (At seq 3072: since the H100 profile
    states the 79.18 GiB CUDA gives a process, 2026-12-07, `--ep 8` alone needs 75.7 GiB at 4096, over the usable 75.2,
    and the fewest levers that fit are the ZeRO ones.)"""
    from autoconf.solve.fit import _levers

    model, cluster = PRESETS["qwen3-30b-a3b"], load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=16, seq_len=3072, zero_stage=1,
                       recompute="full")
    levers = _levers(c, model, offload=True)
    assert [flags for flags, _ in levers[-2]] == [("--ep 2",), ("--ep 4",), ("--ep 8",)]
    assert [flags for flags, _ in levers[-1]] == [("--offload-activations",), ("--offload-optimizer",),
                                                  ("--offload-activations", "--offload-optimizer")]
    flags, changes, fits = smallest_fitting_change(model, cluster, c)
    zero3 = estimate(model, cluster, dataclasses.replace(c, zero_stage=3, grad_reduce="microbatch"),
                     detail=False).prediction
    assert fits["fits"] and fits["iteration_time_s"] <= zero3["iteration_time_s"] and "ep" in changes
    assert len(_levers(c)) == len(levers) - 2  # (a dense reading without the model: the levers of before)


def test_a_faster_change_of_one_lever_more_is_named_beside_the_fewest():
    """Mixtral 8x7B at ep 2 fits with ZeRO-3 alone (the fewest levers), and much faster with its experts over ep 8
    too: the line names both, the second in parentheses, and each fits when applied, the second faster."""
    args = ["estimate", *H100, "--model", "mixtral-8x7b", "--nodes", "2", "--tp", "2", "--pp", "1", "--dp", "8",
            "--ep", "2", "--micro-batch", "1", "--global-batch", "64", "--seq-len", "4096", "--sequence-parallel"]
    result = run_cli(args)
    first = advice(result)[:advice(result).index("(faster")]
    assert "(faster with one lever more: " in result.output
    second = result.output.split(" with ")[-1].rstrip(")\n").split()
    assert "--ep" in second and len(second) > len(first)
    times = []
    for flags in (first, second):
        fixed = run_cli([*args, *flags, "--json"])
        assert fixed.exit_code == 0, fixed.output
        times.append(json.JSONDecoder().raw_decode(fixed.output)[0]["prediction"]["iteration_time_s"])
    assert times[1] < times[0]
