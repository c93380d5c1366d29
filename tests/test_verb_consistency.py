"""What two verbs say of the same question agrees (found by an audit of the verbs against each other, 2026-12-06):
`estimate` of the layout a plan holds predicts the plan's time and memory, and `plan`'s no-fit advice weighs the
offloading layouts its own search and `--nodes` would find."""

import json

from click.testing import CliRunner

from autoconf.cli import main


def run_cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _estimate_of(plan: dict, cluster: str, *extra) -> dict:
    """`estimate --json` of the layout a plan file holds, every field of it given as a flag."""
    c = plan["config"]
    layers = [end - first for first, end in plan["partition"]]
    args = ["estimate", "--model", plan["model"]["name"], "--cluster", cluster, "--tp", c["tp"], "--pp", c["pp"],
            "--dp", c["dp"], "--cp", c["cp"], *(["--cp-comm", c["cp_comm"]] if c["cp"] > 1 else []), "--vpp", c["vpp"],
            "--micro-batch", c["micro_batch_size"], "--global-batch", c["global_batch_size"], "--seq-len",
            c["seq_len"], "--schedule", c["schedule"], "--zero", c["zero_stage"], "--recompute", c["recompute"],
            "--stage-layers", ",".join(map(str, layers)), "--dtype", c["dtype"], "--grad-reduce", c["grad_reduce"],
            *extra]
    for flag in ("sequence_parallel", "offload_activations", "offload_optimizer"):
        if c.get(flag):
            args.append("--" + flag.replace("_", "-"))
    if c.get("selective_recompute"):
        args += ["--selective-recompute", c["selective_recompute"]]
    if c.get("recompute_layers") is not None:
        args += ["--recompute-layers", ",".join(map(str, c["recompute_layers"]))]
    result = run_cli([*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["prediction"]


def test_estimate_of_a_plans_layout_predicts_the_plans_time_and_memory(tmp_path):
    """A pipelined plan's partition is not the even split (--stage-layers gives it to `estimate`), and a plan may
    exchange K/V by one all-gather (--cp-comm): with both, `estimate` of the layout `plan` wrote predicts its step
    and peak (before, the even split read 4% slower and 80.7 GiB, "does not fit", against the plan's 75.7 GiB)."""
    for name, args in (("zbv", ["--model", "llama3-8b", "--global-batch", 64, "--framework", "torchtitan", "--fix",
                                "pp=2", "--fix", "schedule=zbv"]),
                       ("allgather", ["--model", "llama3.1-8b", "--global-batch", 8, "--seq-len", 131072, "--fix",
                                      "cp=8", "--fix", "cp_comm=allgather"])):
        path = tmp_path / f"{name}.json"
        result = run_cli(["plan", *args, "--cluster", "dgx-h100-80g", "--out", path])
        assert result.exit_code == 0, result.output
        plan = json.loads(path.read_text())
        assert len({end - first for first, end in plan["partition"]}) > 1 or name == "allgather"
        framework = ["--framework", plan["prediction"]["framework"]]
        p = _estimate_of(plan, "dgx-h100-80g", *framework)
        for key in ("iteration_time_s", "peak_memory_bytes"):
            assert abs(p[key] - plan["prediction"][key]) <= 1e-9 * plan["prediction"][key], (name, key)


def test_stage_layers_that_are_no_partition_are_one_line_each():
    """Stage counts that do not add up to the layers, or give another stage count, are one line each; a layout that
    does not fit under the given stages gets advice worked out on those stages (it had advised on the default
    split a change that does not fit the given one)."""
    base = ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--tp", 1, "--pp", 2, "--dp", 4,
            "--micro-batch", 1, "--global-batch", 64, "--seq-len", 2048, "--stage-layers"]
    for layers, says in (("16,15", "ends at layer 31, model has 32"), ("16,8,8", "has 3 stages, config needs"),
                         ("16,0,16", "has 3 stages"), ("x,1", "expected comma-separated layer counts")):
        result = run_cli([*base, layers])
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, result.output
    uneven = ["estimate", "--model", "llama3-8b", "--cluster", "dgx-a100-80g", "--gpus-per-node", 2, "--tp", 1,
              "--pp", 2, "--dp", 1, "--global-batch", 32, "--seq-len", 4096, "--stage-layers", "26,6"]
    result = run_cli([*uneven, "--micro-batch", 4])
    assert result.exit_code == 2 and "it fits with --recompute full --micro-batch 1" not in result.output
    assert "no change of recompute, ZeRO" in result.output, result.output
    advised = run_cli([*uneven, "--micro-batch", 1, "--recompute", "full"])
    assert "DOES NOT FIT" in advised.output


def test_no_fit_advice_weighs_the_offloading_layouts():
    """Where nothing fits, the closest layout and the smallest cluster that fits count offloading layouts within
    their host's memory, as the search does at that size: before, llama3.1-70b on 2 x 2 H100 was told 16 nodes where
    4 fit with offload, GPT-OSS-120B on one GB200 node 4 nodes where 2 fit, and llama3.1-8b at 439,552 tokens on 2
    H100s was shown a layout 112.7 GiB over where an offloading one is 0.027 GiB over. An offloading layout beyond
    its host's memory is not the closest (GPT-OSS-120B's 0.4 GiB over the device needs 1.7 TiB of host per node)."""
    result = run_cli(["plan", "--model", "llama3.1-70b", "--cluster", "dgx-h100-80g", "--gpus-per-node", 2,
                      "--nodes", 2, "--global-batch", 16, "--framework", "megatron-core"])
    assert result.exit_code == 2 and "the smallest change that fits: 4 nodes (8 devices)" in result.output
    result = run_cli(["plan", "--model", "gpt-oss-120b", "--cluster", "gb200-nvl72", "--nodes", 1,
                      "--global-batch", 32])
    assert result.exit_code == 2 and "the smallest change that fits: 2 nodes" in result.output, result.output
    assert "0.41 GiB over" not in result.output
    result = run_cli(["plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100-80g", "--gpus-per-node", 2,
                      "--global-batch", 16, "--seq-len", 439552])
    # (0.027 GiB over the H100 read as 80 GiB; 0.81 over the 79.18 GiB CUDA gives a process, since 2026-12-07)
    assert result.exit_code == 2 and "off-act off-opt) needs 76.03 GiB on pipeline rank 0, 0.81 GiB over" in (
        result.output), result.output


def test_nothing_tried_names_only_what_was_tried():
    """With ZeRO pinned to 0 the no-fit line does not claim ZeRO-3 was tried."""
    result = run_cli(["plan", "--model", "llama3-8b", "--cluster", "dgx-a100-80g", "--nodes", 1, "--gpus-per-node",
                      1, "--global-batch", 16, "--fix", "zero=0", "--fix", "tp=1", "--fix", "pp=1", "--fix", "mb=4"])
    assert result.exit_code == 2 and "nothing tried fits (more devices up to 64x, full recompute" in result.output
    assert "ZeRO-3" not in result.output


def test_the_smallest_cluster_advice_keeps_the_offload_pins():
    """`--fix offload_activations=true`: the layout the advice names offloads its activations too."""
    from autoconf.solve.bounds import BoundCache
    from autoconf.solve.search import _fitting_twin, _offload_levers
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.frameworks import execution
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import PRESETS

    model, cluster, ex = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g", nodes=1), execution()
    fixed = {"offload_activations": True}
    config = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=4096, zero_stage=3)
    twin = _fitting_twin(model, cluster, config, ex, BoundCache(model, cluster, ex),
                         _offload_levers(cluster, fixed, ex),
                         fixed)
    assert twin is not None and twin.offload_activations


def test_a_pin_that_keeps_a_layout_from_fitting_is_named():
    """A review: llama3-70b on 8 H100 pinned to tp 1, pp 1 and ZeRO 0 was told to use a bigger device, where the
    pinned ZeRO stage is what stops every layout: the line now names the change that fits and the pin that rules
    it out."""
    result = run_cli(["plan", "--model", "llama3-70b", "--cluster", "dgx-h100-80g", "--global-batch", 64,
                      "--seq-len", 8192, "--fix", "tp=1", "--fix", "pp=1", "--fix", "zero=0"])
    assert result.exit_code == 2 and "zero_stage=3" in result.output, result.output
    assert "which --fix zero_stage=0 rules out: drop or change that pin" in result.output
    assert "use a bigger device" not in result.output
