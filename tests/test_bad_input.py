"""Bad input never shows a traceback: every verb answers with one `autoconf: error:` line and a non-zero exit, every
loader raises only UserError for any malformed file, nothing is overwritten without --force, and the same inputs give
a byte-identical plan.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoconf.cli import main
from autoconf.errors import UserError
from autoconf.spec.cluster import PROFILES_DIR, ClusterProfile, load_cluster
from autoconf.spec.plan import ParallelConfig, Plan, load_plan
from autoconf.spec.presets import PRESETS, load_model

ESTIMATE = ["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1", "--pp", "2", "--dp", "2",
            "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64"]
PLAN = ["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64",
        "--fix", "pp=2", "--fix", "tp=1", "--top", "2"]


def run_cli(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_clear_error(result, *needles: str) -> None:
    """Non-zero exit, exactly one `autoconf: error:` line (or click's one `Error:` line for a malformed option), no
    traceback, and the line names what was wrong."""
    text = result.output
    assert result.exit_code != 0, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("autoconf: error:")]
    if not lines and result.exit_code == 2:  # click's own usage errors: "Usage: ..." then one "Error: ..." line
        lines = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], lines[0]


def tiny_plan_dict() -> dict:
    """tiny-llama tp2 x pp2 on cpu-local, with the cost model's prediction."""
    from autoconf.cost.estimate import estimate

    config = ParallelConfig(tp=2, pp=2, dp=1, micro_batch_size=1, global_batch_size=4, seq_len=64, dtype="fp32")
    return estimate(PRESETS["tiny-llama"], load_cluster("cpu-local"), config).to_dict()


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A gallery of bad files and paths."""
    f = {}

    def write(name: str, data) -> Path:
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        f[name.split(".")[0]] = path
        return path

    write("broken.json", '{"kind": "model", "name": ')
    write("binary.json", b"\xff\xfe\x00\x81garbage")
    write("array.json", "[1, 2, 3]")
    write("deep.json", "[" * 100000 + "]" * 100000)
    write("longint.json", '{"kind": "model", "num_layers": ' + "9" * 5000 + "}")
    write("unknown_model.json", json.dumps({"kind": "model", "name": "m", "arch": "rnn", "num_layers": 2}))
    write("hf_bad.json", json.dumps({"model_type": "gpt2", "n_embd": {"x": 1}, "n_layer": 2, "n_head": 2,
                                     "vocab_size": 10}))
    write("hf_unknown.json", json.dumps({"model_type": "mamba", "d_model": 10}))
    write("negative_model.json", json.dumps({**PRESETS["tiny-gpt"].to_dict(), "num_layers": -4}))
    write("huge_model.json", json.dumps({**PRESETS["tiny-gpt"].to_dict(), "num_layers": 10 ** 8}))
    write("future_model.json", json.dumps({**PRESETS["tiny-gpt"].to_dict(), "version": 2}))
    cluster = json.loads((PROFILES_DIR / "cpu-local.json").read_text())
    write("cluster_neg.json", json.dumps({**cluster, "nodes": -1}))
    write("cluster_inf.json", json.dumps({**cluster, "intra_node": {"latency_s": 1e-6, "bandwidth_Bps": 1e400}})
          .replace("Infinity", "1e400"))
    write("cluster_kind.json", json.dumps({**cluster, "kind": "plan"}))
    plan = tiny_plan_dict()
    write("plan.json", json.dumps(plan))
    write("plan_bad_tp.json", json.dumps({**plan, "config": {**plan["config"], "tp": 3}}))
    write("plan_bad_mesh.json", json.dumps({**plan, "placement": {"mesh": [[[0, 0]], [[1, 2]]]}}))
    write("plan_other_cluster.json", json.dumps({**plan, "cluster": {**plan["cluster"], "name": "dgx-h100-80g"}}))
    write("afile.txt", "not a folder")
    f["missing"] = tmp_path / "missing.json"
    f["under_file"] = tmp_path / "afile.txt" / "out.json"
    f["proc"] = Path("/proc/autoconf-test/out.json")
    f["tmp"] = tmp_path
    return f


# ---- every verb ------------------------------------------------------------------------------------------------------
MODEL_FILES = ["broken", "binary", "array", "deep", "longint", "unknown_model", "hf_bad", "hf_unknown",
               "negative_model", "huge_model", "future_model", "missing", "plan"]


@pytest.mark.parametrize("verb", ["estimate", "plan"])
@pytest.mark.parametrize("bad", MODEL_FILES)
def test_malformed_or_unknown_model_file(files, verb, bad):
    args = list(ESTIMATE if verb == "estimate" else PLAN)
    args[args.index("tiny-gpt")] = files[bad]
    assert_one_clear_error(run_cli(args))


@pytest.mark.parametrize("verb", ["estimate", "plan"])
@pytest.mark.parametrize("bad", ["broken", "binary", "array", "deep", "cluster_neg", "cluster_inf", "cluster_kind",
                                 "missing", "plan"])
def test_malformed_or_unknown_profile_file(files, verb, bad):
    args = list(ESTIMATE if verb == "estimate" else PLAN)
    args[args.index("cpu-local")] = files[bad]
    assert_one_clear_error(run_cli(args))


def test_a_model_config_given_as_the_cluster_is_named_for_what_it_is(files):
    """A Hugging Face config given to --cluster said `its "kind" is None`; now that it has no kind, that it looks
    like a model config for --model, and what --cluster takes."""
    args = list(PLAN)
    args[args.index("cpu-local")] = files["hf_bad"]
    assert_one_clear_error(run_cli(args), 'it has no "kind"', "give it to --model", "`autoconf profiles`")


def test_unknown_preset_and_profile_names():
    assert_one_clear_error(run_cli([*ESTIMATE[:2], "gpt-9000", *ESTIMATE[3:]]), "gpt-9000")
    args = list(PLAN)
    args[args.index("cpu-local")] = "no-such-cluster"
    assert_one_clear_error(run_cli(args), "no-such-cluster")
    assert "did you mean" not in run_cli(args).output


def test_a_misspelt_name_gets_the_closest_known_one():
    """A preset, profile, framework or framework flag one typo away is named in the error line."""
    assert_one_clear_error(run_cli([*ESTIMATE[:2], "tiny-gtp", *ESTIMATE[3:]]), "did you mean 'tiny-gpt'?")
    args = list(ESTIMATE)
    args[args.index("cpu-local")] = "cpu-locl"
    assert_one_clear_error(run_cli(args), "did you mean 'cpu-local'?")
    assert_one_clear_error(run_cli([*ESTIMATE, "--framework-flag", "blocking_p2pp=true"]),
                           "did you mean 'blocking_p2p'?")
    from autoconf.spec.frameworks import execution
    with pytest.raises(UserError, match="did you mean 'megatron-core'"):
        execution("megatron-cor")


@pytest.mark.parametrize("option", ["--model", "--cluster"])
def test_empty_and_overlong_names_are_named_shortly(option):
    """An empty --model read the current folder ("is a folder without a config.json"), an empty --cluster said
    "cannot read . : Is a directory", and a 300-character name ended in the file system's "File name too long"."""
    args = list(ESTIMATE)
    at = args.index(option) + 1
    args[at] = " "
    assert_one_clear_error(run_cli(args), f"{option} is empty")
    args[at] = "x" * 300
    result = run_cli(args)
    assert_one_clear_error(result, "unknown", "x" * 79 + "…'")
    assert "x" * 81 not in result.output


def test_an_output_name_too_long_for_the_file_system_is_a_usage_error(tmp_path):
    """A 300-character --out name: exit code 1 and the whole path echoed (6,000 characters for a long one); now
    exit 2, the path shortened and what would work."""
    result = run_cli([*PLAN, "--out", tmp_path / ("a" * 300 + ".json")])
    assert_one_clear_error(result, "File name too long", "use a shorter path")
    assert result.exit_code == 2 and "a" * 100 not in result.output


def test_validate_refuses_a_dtype_the_cpu_executor_cannot_train(tmp_path):
    """`validate --fix dtype=bf16` on cpu-local ran fp32 CPU ranks against bf16 predictions."""
    result = run_cli(["validate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--fix",
                      "dtype=bf16", "--out", tmp_path / "v"])
    assert_one_clear_error(result, "trains in fp32 on CPU ranks")
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("addr", ["", "bad host", "-x", "a" * 300, "node..0"])
def test_a_master_address_that_names_no_host_is_refused(files, addr):
    """launch and profile passed any --master-addr to torchrun (which then waited for a rendezvous that could not
    be)."""
    assert_one_clear_error(run_cli(["launch", files["plan"], "--dry-run", "--nnodes", "2", "--master-addr", addr]),
                           "is not a host name or an IP address")
    assert_one_clear_error(run_cli(["profile", "--out", files["tmp"] / "p.json", "--nnodes", "2", "--master-addr",
                                    addr]), "is not a host name or an IP address")


def test_a_profile_rank_needs_room_for_a_model(tmp_path):
    from autoconf.profile.launch import profile

    with pytest.raises(UserError, match="less than the 64 MiB"):
        profile(tmp_path / "p.json", memory_per_rank="1MiB")
    assert list(tmp_path.iterdir()) == []


def test_a_family_no_limit_reads_is_refused():
    """`limits --family llama3 --only seq` ignored the family."""
    result = run_cli(["limits", "--model", "tiny-gpt", "--family", "llama3", "--only", "seq", "--cluster",
                      "cpu-local", "--global-batch", "8"])
    assert_one_clear_error(result, "--family names the family of the largest-model limit")


@pytest.mark.parametrize("field, value", [("hidden_size", 10 ** 400), ("vocab_size", 10 ** 30),
                                          ("ffn_hidden_size", 10 ** 400), ("max_seq_len", 10 ** 12)])
def test_model_sizes_past_any_model_are_one_short_line(tmp_path, field, value):
    """A width of 10**400 ended in an OverflowError traceback; the line names the field without its 400 digits."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**PRESETS["tiny-llama"].to_dict(), field: value}))
    result = run_cli(["estimate", "--model", path, "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "4",
                      "--micro-batch", "1", "--global-batch", "4", "--seq-len", "16"])
    assert_one_clear_error(result, f"{field} ", "autoconf plans")
    assert len(result.output) < 300


@pytest.mark.parametrize("field", ["dropout", "norm_eps", "rope_theta", "rope_scaling_factor"])
def test_a_number_field_that_is_not_a_number_is_named_once(tmp_path, field):
    """A model field of NaN was named twice, as not a number and as out of its range."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**PRESETS["tiny-llama"].to_dict(), field: math.nan}))
    with pytest.raises(UserError) as err:
        load_model(str(path))
    assert str(err.value).count(field) == 1 and f"{field} must be a number (got nan)" in str(err.value), str(err.value)


def test_many_experts_are_priced_by_count_and_bounded(tmp_path):
    """An expert count of 10**5 kept plan busy for minutes (one GEMM entry per expert, priced one by one) and 10**12
    ran out of memory: local experts are priced as a count, and the count is bounded."""
    from autoconf.cost.moe import expert_gemms

    many = dataclasses.replace(PRESETS["tiny-moe"], moe=dataclasses.replace(PRESETS["tiny-moe"].moe,
                                                                            num_experts=65536))
    c = ParallelConfig(tp=1, pp=1, dp=4, ep=4, micro_batch_size=1, global_batch_size=4, seq_len=16)
    dense, routed, experts = expert_gemms(many, c)
    assert len(routed) == 3 and experts == 65536 // 4
    path = tmp_path / "e.json"
    data = PRESETS["tiny-moe"].to_dict()
    data["moe"]["num_experts"] = 10 ** 12
    path.write_text(json.dumps({k: v for k, v in data.items() if "parameters" not in k}))
    assert_one_clear_error(run_cli(["estimate", "--model", path, *ESTIMATE[3:]]), "num_experts", "65,536")


def test_a_pinned_selective_policy_pins_selective_recompute():
    """`plan --fix selective_recompute=attention_core` without --fix recompute=selective ended in a TypeError."""
    result = run_cli(["plan", "--model", "tiny-llama", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len",
                      "64", "--fix", "selective_recompute=attention_core", "--top", "2", "--json"])
    assert result.exit_code == 0, result.output
    configs = [p["config"] for p in json.loads(result.output)["plans"]]
    assert configs and all(c["recompute"] == "selective" for c in configs)


def test_a_timeout_past_a_week_is_refused(files):
    """`launch --collective-timeout 1e308` passed a dry run; the workers' timedelta would have overflowed."""
    assert_one_clear_error(run_cli(["launch", files["plan"], "--dry-run", "--collective-timeout", "1e308"]),
                           "--collective-timeout")


def test_a_framework_flag_given_twice_is_refused():
    args = [*ESTIMATE, "--framework-flag", "param_gather_overlap=false", "--framework-flag",
            "param_gather_overlap=true"]
    assert_one_clear_error(run_cli(args), "--framework-flag param_gather_overlap is given twice")


@pytest.mark.parametrize("degrees,needle", [
    (("3", "1", "1"), "does not divide the 4 attention heads"),
    (("1", "1", "3"), "pp*dp*cp*tp"),
    (("2", "4", "2"), "pp*dp*cp*tp"),
    (("0", "2", "2"), "positive integer"),
    (("1", "16", "1"), "stages"),
    (("1", "1", "2", "4"), "pp*dp*cp*tp = 1*2*4*1 = 8 but the cluster has 4"),
    (("1", "1", "1", "3"), "seq_len 64 divisible by 2 x cp = 6"),
])
def test_impossible_degrees(degrees, needle):
    args = list(ESTIMATE) + ["--cp", "1"]
    for flag, value in zip(("--tp", "--pp", "--dp", "--cp"), degrees):
        args[args.index(flag) + 1] = value
    assert_one_clear_error(run_cli(args), needle)


def test_micro_batches_times_sequence_chunks_are_bounded():
    """seq1f1b simulates every chunk of every micro-batch: their product has the micro-batches' bound."""
    args = ["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "2", "--dp", "2",
            "--global-batch", "131072", "--micro-batch", "1", "--seq-len", "128", "--schedule", "seq1f1b",
            "--seq-chunks", "2"]
    assert_one_clear_error(run_cli(args), "65536 micro-batches of 2 sequence chunks each")


def test_impossible_fix_in_plan():
    assert_one_clear_error(run_cli([*PLAN, "--fix", "tp=3"]))
    assert_one_clear_error(run_cli([*PLAN, "--fix", "tp=two"]))
    assert_one_clear_error(run_cli([*PLAN, "--fix", "nonsense=1"]))
    assert_one_clear_error(run_cli([*PLAN, "--fix", "tp"]))


def test_a_pin_given_twice_or_against_its_flag_is_refused():
    """`--fix tp=2 --fix tp=4` planned tp 4 and `--dtype bf16 --fix dtype=fp8` planned fp8, silently."""
    assert_one_clear_error(run_cli([*PLAN, "--fix", "dp=2", "--fix", "dp=4"]), "--fix dp is given twice (2 and 4)")
    args = ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--global-batch", "64"]
    assert_one_clear_error(run_cli([*args, "--dtype", "bf16", "--fix", "dtype=fp8"]),
                           "--dtype bf16 and --fix dtype=fp8 disagree")


def test_pinned_cp_that_cannot_split_the_sequence_in_plan():
    """A pinned cp whose 2 x cp chunks do not divide the sequence is named with the degrees that do and that divide
    the devices (it was a line about the global batch)."""
    args = [*PLAN[:PLAN.index("--seq-len") + 1], "62", "--fix", "cp=2", "--top", "2"]
    assert_one_clear_error(run_cli(args), "--fix cp=2: cp 2 needs seq_len 62 divisible by 2 x cp = 4",
                           "use cp in 1)")


def test_fitting_advice_and_the_search_keep_to_the_frameworks_zero_stages():
    """A framework that runs only some ZeRO stages (megatron-core: 0, 1 and 3 as Megatron-FSDP, which reduces every
    micro-batch; or as --framework-flag zero_stages says): the advice of a layout that does not fit names a change
    the framework runs (ZeRO-3 with the reduction it needs; without ZeRO-3, recompute: it tried ZeRO 2 and 3 and
    stopped on the framework's own refusal), and the search plans layouts without data parallelism at a stage the
    framework runs (it stopped on ZeRO 0 there)."""
    base = ["--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--nodes", "1", "--seq-len", "4096",
            "--global-batch", "64"]
    layout = ["--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1", "--framework", "megatron-core"]
    result = run_cli(["estimate", *base, *layout, "--zero", "1"])
    assert_one_clear_error(result, "does not fit", "it fits with --zero 3 --grad-reduce microbatch")
    result = run_cli(["estimate", *base, *layout, "--zero", "1", "--framework-flag", "zero_stages=0,1"])
    assert_one_clear_error(result, "does not fit", "it fits with --")  # (optimizer offload, faster than recompute)
    assert "ZeRO stages" not in result.output and "--zero" not in result.output.splitlines()[-1]
    result = run_cli(["estimate", *base, *layout, "--zero", "1", "--framework-flag", "zero_stages=0,1",
                      "--framework-flag", "optimizer_offload=false", "--framework-flag", "activation_offload=none"])
    assert_one_clear_error(result, "does not fit", "it fits with --recompute")
    planned = run_cli(["plan", *base, "--framework-flag", "zero_stages=3", "--top", "1", "--json"])
    assert planned.exit_code == 0, planned.output
    assert json.loads(planned.output)["plans"][0]["config"]["zero_stage"] == 3


def test_a_plan_the_executor_refuses_says_so_and_gets_no_launch_scripts(tmp_path):
    """A pinned layout the executor cannot run for this model (seq1f1b with an MoE model) is planned and said to be
    not launchable in one line, and --explain writes the other frameworks' exports but none of autoconf's launch
    scripts, which `launch` would refuse."""
    out = tmp_path / "explain"
    result = run_cli(["plan", "--model", "mixtral-8x7b", "--cluster", "dgx-h100-80g", "--nodes", "2",
                      "--global-batch", "64", "--seq-len", "4096", "--fix", "schedule=seq1f1b", "--top", "1",
                      "--explain", out])
    assert result.exit_code == 0, result.output
    assert "#1 is not launchable by autoconf's executor: schedule seq1f1b" in result.output
    written = {p.name for p in out.iterdir()}
    assert {"megatron_args.txt", "torchtitan_config.py", "plan.json"} <= written
    assert not written & {"launch.sh", "slurm.sbatch", "pytorchjob.yaml"} and not any(
        n.startswith("torchrun_node") for n in written), written
    assert json.loads((out / "plan.json").read_text())["prediction"]["launchable"] is False


def test_another_frameworks_precision_recipe_is_planned_and_marked_not_launchable():
    """--dtype fp8-deepseek (DeepSeek's recipe, which the executor does not run) is the user's choice, like a pinned
    schedule: the search costs its layouts and marks them not launchable (every layout was refused before, so the
    dtype `plan --help` offers could never be planned)."""
    result = run_cli(["plan", "--model", "mixtral-8x7b", "--cluster", "dgx-h100-80g", "--nodes", "2",
                      "--global-batch", "64", "--seq-len", "4096", "--framework", "deepseek", "--dtype",
                      "fp8-deepseek", "--top", "1", "--json"])
    assert result.exit_code == 0, result.output
    best = json.loads(result.output)["plans"][0]
    assert best["config"]["dtype"] == "fp8-deepseek" and best["prediction"]["launchable"] is False
    assert "fp8-deepseek" in best["prediction"]["not_launchable_reason"]


@pytest.mark.parametrize("pins, needles", [
    (["vpp=2", "schedule=1f1b"], ["--fix vpp=2 cannot be taken together with --fix schedule=1f1b",
                                  "1f1b needs vpp == 1"]),
    (["offload_optimizer=true", "zero=0"], ["cannot be taken together", "needs FSDP sharding"]),
    (["schedule=seq1f1b", "seq_chunks=3"], ["cannot be taken together", "seq_chunks 3 does not divide seq_len"]),
    (["schedule=zbv", "pp=1"], ["cannot be taken together", "with pp 1", "only a one-chunk schedule goes"]),
])
def test_pins_that_conflict_are_named_with_the_rule_they_break(pins, needles):
    """Pins that no layout can honour together get one line naming them and the rule broken (it blamed the global
    batch, which divides)."""
    args = ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--nodes", "1", "--global-batch", "64",
            "--seq-len", "4096"] + [a for pin in pins for a in ("--fix", pin)]
    result = run_cli(args)
    assert_one_clear_error(result, *needles)
    assert "global batch" not in result.output


@pytest.mark.parametrize("model, batch, pins, needles", [
    # dp 4 x micro-batch 4 outgrows the batch of 8 (it blamed a pipeline of 2 it had made up: 2*4*1*1 = 8 devices)
    ("tiny-gpt", 8, ["dp=4", "micro_batch_size=4"], ["global batch divisible by micro_batch_size x dp = 16"]),
    ("tiny-gpt", 6, ["dp=4"], ["global batch divisible by dp = 4"]),
    ("tiny-gpt", 8, ["micro_batch_size=16"], ["global batch divisible by micro_batch_size = 16"]),
    # a pin alone: the rule it breaks (it blamed the global batch)
    ("tiny-gpt", 8, ["vpp=100"], ["--fix vpp=100: pp*vpp = 1*100 = 100 stages but the model has only 8 layers"]),
    # ep 4 needs tp x cp x dp a multiple of 4; with dp 1 only pinned tp and cp make room (it said "use ep*etp in 1")
    ("tiny-moe", 8, ["ep=4", "dp=1"], ["--fix ep=4 cannot be taken together with --fix dp=1",
                                       "pin tp, cp or dp so that their product is a multiple of ep x etp"]),
])
def test_pins_the_batch_or_the_attention_layout_cannot_take_say_what_would(model, batch, pins, needles):
    """Bad pins on the CPU cluster (4 ranks) name the rule that would work, not one of a layout the user never
    asked for."""
    args = ["plan", "--model", model, "--cluster", "cpu-local", "--global-batch", str(batch), "--seq-len", "64"]
    result = run_cli(args + [a for pin in pins for a in ("--fix", pin)])
    assert_one_clear_error(result, *needles)
    assert "{" not in result.output


def test_validate_of_a_gpu_profile_on_a_host_without_cuda_is_refused(tmp_path):
    """validate measures on this host: a GPU profile here would compare CPU times with GPU predictions (it ran, with
    errors near -100%, and exited 0)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device")
    out = tmp_path / "v"
    result = run_cli(["validate", "--model", "tiny-gpt", "--cluster", "dgx-h100-80g", "--global-batch", "8",
                      "--seq-len", "64", "--configs", "2", "--steps", "3", "--out", out])
    assert_one_clear_error(result, "no CUDA device", "use a CPU profile")
    assert not out.exists()


def test_plan_that_fits_nowhere_names_a_layout_that_fits_on_more_nodes():
    """A sequence too long for one node gets one line naming the node count and a layout that fits there, with its
    context-parallel degree (the line named tp, pp and dp only, so the layout it suggested read as one rank): planned
    on those nodes with the named degrees pinned, it fits."""
    import re

    args = ["plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100-80g", "--global-batch", "8",
            "--seq-len", "2097152"]
    result = run_cli(args)
    assert_one_clear_error(result, "no layout fits", "the smallest change that fits")
    nodes, layout = re.search(r"the smallest change that fits: (\d+) nodes .*e\.g\. (.*)$", result.output.strip()).groups()
    degrees = dict(re.findall(r"\b(tp|pp|dp|cp|ep)(\d+)\b", layout))
    assert int(degrees["cp"]) > 1, layout
    fits = run_cli([*args, "--nodes", nodes, "--top", "1"] + [a for k, v in degrees.items() for a in ("--fix", f"{k}={v}")])
    assert fits.exit_code == 0, fits.output


@pytest.mark.parametrize("verb", ["estimate", "plan", "profile"])
@pytest.mark.parametrize("where", ["under_file", "proc"])
def test_unwritable_out(files, verb, where):
    base = {"estimate": ESTIMATE, "plan": PLAN, "profile": ["profile", "--quick"]}[verb]
    assert_one_clear_error(run_cli([*base, "--out", files[where]]))
    assert not files[where].exists()


@pytest.mark.parametrize("verb", ["estimate", "plan", "profile"])
def test_existing_out_needs_force(files, verb):
    base = {"estimate": ESTIMATE, "plan": PLAN, "profile": ["profile", "--quick"]}[verb]
    before = files["plan"].read_bytes()
    assert_one_clear_error(run_cli([*base, "--out", files["plan"]]), "--force")
    assert files["plan"].read_bytes() == before


def test_existing_out_is_replaced_with_force(files):
    result = run_cli([*ESTIMATE, "--out", files["plan"], "--force"])
    assert result.exit_code == 0, result.output
    assert load_plan(files["plan"]).config.pp == 2


def test_existing_explain_files_need_force(files):
    out = files["tmp"] / "ex"
    assert run_cli([*PLAN, "--explain", out]).exit_code == 0
    assert_one_clear_error(run_cli([*PLAN, "--explain", out]), "--force")


@pytest.mark.parametrize("bad", ["broken", "binary", "array", "deep", "longint", "missing", "unknown_model",
                                 "plan_bad_tp", "plan_bad_mesh"])
@pytest.mark.parametrize("verb", ["show", "launch"])
def test_malformed_plan_file(files, verb, bad):
    extra = ["--dry-run"] if verb == "launch" else ["--out", files["tmp"] / "show"]
    assert_one_clear_error(run_cli([verb, files[bad], *extra]))


def test_deeply_nested_plan_values_are_named_shortly(tmp_path):
    """A partition stage nested 900 deep was echoed whole (a 2,000-character line); a mesh nested as deep said
    "RecursionError". Now both are one short line."""
    plan = tiny_plan_dict()
    stage, mesh = [0, 8], 0
    for _ in range(900):
        stage, mesh = [stage], [mesh]
    for name, doc in (("partition", {**plan, "partition": [stage, *plan["partition"][1:]]}),
                      ("mesh", {**plan, "placement": {"mesh": mesh}})):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        result = run_cli(["show", path, "--out", tmp_path / f"show-{name}"])
        assert_one_clear_error(result, "partition stage 0 is [[[" if name == "partition" else "nested too deeply")
        assert len(result.output) < 400 and "RecursionError" not in result.output


@pytest.mark.parametrize("counts", ["1,1", "4,4,0"])
def test_stage_layers_that_do_not_cover_the_model_give_counts_that_do(counts):
    """--stage-layers 1,1 on an 8-layer model said only where the partition ended; now it gives counts that work."""
    result = run_cli(["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1", "--pp", "2", "--dp",
                      "2", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64", "--stage-layers", counts])
    assert_one_clear_error(result, f"--stage-layers {counts}", "adding up to the 8 layers, e.g. --stage-layers 4,4")


def test_show_refuses_a_profile_of_another_cluster(files):
    assert_one_clear_error(run_cli(["show", files["plan"], "--cluster", "dgx-h100-80g", "--out",
                                    files["tmp"] / "show"]), "cpu-local")


def test_launch_refuses_a_plan_that_does_not_fit(files):
    """A 4-process plan on 3 nodes, a node rank outside the node count: refused before anything starts."""
    assert_one_clear_error(run_cli(["launch", files["plan"], "--dry-run", "--nnodes", "3"]), "4 processes")
    assert_one_clear_error(run_cli(["launch", files["plan"], "--dry-run", "--nnodes", "2", "--node-rank", "2"]))


def test_launch_bad_paths(files):
    plan = files["plan"]
    assert_one_clear_error(run_cli(["launch", plan, "--dry-run", "--data", files["missing"]]), "does not exist")
    files["tmp"].joinpath("m.jsonl").write_text("{}\n")
    assert_one_clear_error(run_cli(["launch", plan, "--dry-run", "--metrics", files["tmp"] / "m.jsonl"]), "--force")
    assert files["tmp"].joinpath("m.jsonl").read_text() == "{}\n"
    assert_one_clear_error(run_cli(["launch", plan, "--dry-run", "--metrics", files["under_file"]]))
    assert_one_clear_error(run_cli(["launch", plan, "--dry-run", "--checkpoint-dir", files["afile"]]))
    assert_one_clear_error(run_cli(["launch", plan, "--dry-run", "--checkpoint-every", "2"]), "--checkpoint-dir")


def test_launch_missing_plan(files):
    assert_one_clear_error(run_cli(["launch", files["missing"], "--dry-run"]))


def test_models_verb_works():
    result = run_cli(["models", "--json"])
    assert result.exit_code == 0 and "tiny-gpt" in result.output


# ---- 6. determinism --------------------------------------------------------------------------------------------------
def test_same_inputs_give_a_byte_identical_plan(tmp_path):
    args = ["plan", "--model", "tiny-llama", "--cluster", "cpu-local", "--global-batch", "16", "--seq-len", "64"]
    for name in ("a.json", "b.json"):
        result = run_cli([*args, "--out", tmp_path / name])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    estimate = [*ESTIMATE, "--out"]
    assert run_cli([*estimate, tmp_path / "c.json"]).exit_code == 0
    assert run_cli([*estimate, tmp_path / "d.json"]).exit_code == 0
    assert (tmp_path / "c.json").read_bytes() == (tmp_path / "d.json").read_bytes()


# ---- every loader, fuzzed ----------------------------------------------------------------------------------------------
_leaf = st.one_of(
    st.none(), st.booleans(), st.text(max_size=12),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([0, -1, 1, 2, 3, 7, 2 ** 31, 2 ** 63, 10 ** 30, 10 ** 300, -(10 ** 300)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["gpt", "llama", "1f1b", "fp32", "cluster", "plan", "model", "nccl", "gloo", "flash"]),
)
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) |
                     st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def _mutated(data, doc):
    """`doc` with 1-4 random edits: a value replaced by random JSON, a key or item deleted, an unknown key added,
    an object wrapped in a list."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 4))):
        parent, key, node = None, None, doc
        while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 3)) > 0:
            key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            parent, node = node, node[key]
        op = data.draw(st.sampled_from(["replace", "delete", "add", "wrap"]))
        if parent is None:
            doc = data.draw(_json) if op == "replace" else [doc] if op == "wrap" else doc
            continue
        if op == "replace":
            parent[key] = data.draw(_json)
        elif op == "delete":
            del parent[key]
        elif op == "wrap":
            parent[key] = [node]
        elif isinstance(node, dict):
            node[data.draw(st.text(max_size=8))] = data.draw(_json)
    return doc


def _only_user_errors(fn, *args) -> None:
    try:
        fn(*args)
    except UserError:
        pass


_TMP: list[Path] = []  # one folder for every hypothesis example (not tmp_path's), made when a fuzz test first runs


def _fuzz_dir() -> Path:
    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="autoconf-fuzz-")))
    return _TMP[0]


def teardown_module() -> None:
    for path in _TMP:
        shutil.rmtree(path, ignore_errors=True)
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
_MODEL = PRESETS["tiny-llama"].to_dict()
_HF = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
       "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 128,
       "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
_GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100, "n_positions": 64}
_CLUSTER = json.loads((PROFILES_DIR / "cpu-local.json").read_text())
_PLAN = tiny_plan_dict()


def _write(name: str, doc) -> Path:
    path = _fuzz_dir() / name
    path.write_text(json.dumps(doc))  # NaN and Infinity are written as JSON's common extensions
    return path


@_FUZZ
@given(st.data())
def test_fuzz_model_loader(data):
    doc = _mutated(data, data.draw(st.sampled_from([_MODEL, _HF, _GPT2])))
    _only_user_errors(load_model, str(_write("model.json", doc)))
    _only_user_errors(load_model, str(_write("config.json", doc)))


@_FUZZ
@given(st.data())
def test_fuzz_cluster_loader(data):
    doc = _mutated(data, _CLUSTER)
    _only_user_errors(ClusterProfile.from_dict, doc)
    _only_user_errors(load_cluster, str(_write("cluster.json", doc)))
    nodes = data.draw(st.none() | st.integers(-2, 5))
    _only_user_errors(load_cluster, str(_fuzz_dir() / "cluster.json"), nodes, data.draw(st.none() | st.integers(-2, 9)))


@_FUZZ
@given(st.data())
def test_fuzz_plan_loader(data):
    doc = _mutated(data, _PLAN)
    _only_user_errors(Plan.from_dict, doc)
    _only_user_errors(load_plan, _write("plan.json", doc))


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=200), st.sampled_from(["model", "cluster", "plan"]))
def test_fuzz_random_bytes(blob, kind):
    path = _fuzz_dir() / f"bytes-{kind}.json"
    path.write_bytes(blob)
    loader = {"model": lambda p: load_model(str(p)), "cluster": lambda p: load_cluster(str(p)),
              "plan": load_plan}[kind]
    _only_user_errors(loader, path)


def test_fuzz_helpers_reach_valid_documents():
    """The seeds of the fuzzers load cleanly, so the fuzzers start from real documents."""
    assert load_model(str(_write("seed-model.json", _MODEL))).name == "tiny-llama"
    assert load_model(str(_write("config.json", _HF))).num_kv_heads == 2
    assert ClusterProfile.from_dict(_CLUSTER).name == "cpu-local"
    assert Plan.from_dict(_PLAN).config.tp == 2
    assert math.isfinite(_PLAN["prediction"]["iteration_time_s"])


VALIDATE = ["validate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--configs", "2",
            "--steps", "3"]


@pytest.mark.parametrize("flag,bad", [("--model", "broken"), ("--model", "hf_unknown"), ("--cluster", "binary"),
                                      ("--cluster", "cluster_neg"), ("--out", "under_file"), ("--out", "proc")])
def test_validate_bad_input(files, flag, bad):
    """`validate` refuses bad model/profile files and unwritable output folders before running any layout."""
    args = [*VALIDATE, "--out", files["tmp"] / "val"]
    if flag == "--out":
        args[-1] = files[bad]
    else:
        args[args.index(flag) + 1] = files[bad]
    assert_one_clear_error(run_cli(args))
    assert not (files["tmp"] / "val").exists()


def test_the_gradient_reduction_defaults_to_the_frameworks_and_another_is_refused():
    """--grad-reduce left out is the framework's: torchtitan without a pipeline reduce-scatters every accumulation
    step (its train loop never turns gradient sync off), so its sharded estimate is the rs-mb layout; asking it for
    once per step is one line naming the fix, and so is asking Megatron's distributed optimizer for every
    micro-batch."""
    base = ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--nodes", "1", "--tp", "1", "--pp",
            "1", "--dp", "8", "--micro-batch", "1", "--global-batch", "64", "--seq-len", "4096", "--zero", "3"]
    default = run_cli([*base, "--framework", "torchtitan", "--json"])
    assert default.exit_code == 0, default.output
    assert json.loads(default.output)["config"]["grad_reduce"] == "microbatch"
    assert_one_clear_error(run_cli([*base, "--framework", "torchtitan", "--grad-reduce", "step"]),
                           "torchtitan", "add --grad-reduce microbatch")
    zero1 = [a if a != "3" else "1" for a in base]
    assert_one_clear_error(run_cli([*zero1, "--framework", "megatron-core", "--grad-reduce", "microbatch"]),
                           "once per step", "drop --grad-reduce microbatch")


def test_a_plan_for_another_framework_says_how_to_export_it_not_that_it_is_refused():
    """A plan made for Megatron-Core is exported, not launched: the line under the table says how to export it
    (it said "#1 is not launchable by autoconf's executor", which reads as a fault of the plan)."""
    result = run_cli(["plan", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--nodes", "1", "--global-batch",
                      "16", "--framework", "megatron-core", "--top", "1"])
    assert result.exit_code == 0, result.output
    assert "planned for megatron-core: `autoconf show PLAN --out DIR`" in result.output
    assert "not launchable" not in result.output


def test_a_k_v_exchange_without_context_parallelism_is_refused_and_the_default_is_the_frameworks():
    """Sixth review: `estimate --cp 1 --cp-comm allgather` was accepted silently (plan refuses the pin); and under
    torchtitan, which runs no ring, the default exchange is its allgather."""
    base = ["estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100-80g", "--tp", "1", "--pp", "1",
            "--micro-batch", "1", "--global-batch", "8"]
    assert_one_clear_error(run_cli(base + ["--dp", "8", "--cp-comm", "allgather"]), "--cp-comm allgather",
                           "needs --cp > 1")
    result = run_cli(base + ["--dp", "4", "--cp", "2", "--seq-len", "16384", "--zero", "3", "--recompute", "full",
                             "--framework", "torchtitan", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["config"]["cp_comm"] == "allgather"


def test_a_sequence_that_sequence_parallelism_cannot_split_names_what_would():
    """A review: the refusal of seq 63 at tp 2 with sequence parallelism named the rule but nothing that works."""
    result = run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "2", "--pp", "1",
                      "--dp", "2", "--micro-batch", "1", "--global-batch", "4", "--seq-len", "63",
                      "--sequence-parallel"])
    assert_one_clear_error(result, "use a seq_len divisible by 2 (e.g. 64), or drop sequence_parallel")


def test_a_fuzzing_reviews_findings_are_one_clear_line_and_nothing_is_replaced(tmp_path):
    """A review fed every verb about 2,900 bad inputs; what it found: `show --force` replaced the --cluster profile
    lying in its --out folder, `validate --force` a model or profile under OUT/runs/; a non-string schedule leaked
    a TypeError; a plan without cluster.name named a cluster "None"; a config.json that is a folder was "a folder
    without a config.json"; MLA widths had no upper limit; an impossible or empty --memory-per-rank and a profile
    table in no profiled dtype were taken silently; a shared-expert message read "and none needs 0"."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan_dict()))
    folder = tmp_path / "x"
    folder.mkdir()
    profile = folder / "memory.png"
    shutil.copy(PROFILES_DIR / "cpu-local.json", profile)
    before = profile.read_bytes()
    assert_one_clear_error(run_cli(["show", plan, "--out", folder, "--cluster", profile, "--force"]),
                           "the cluster profile this run reads")
    assert profile.read_bytes() == before
    runs = tmp_path / "v" / "runs" / "0"
    runs.mkdir(parents=True)
    shutil.copy(PROFILES_DIR / "cpu-local.json", runs / "profile.json")
    assert_one_clear_error(run_cli(["validate", "--model", "tiny-gpt", "--cluster", runs / "profile.json",
                                    "--global-batch", "8", "--seq-len", "64", "--out", tmp_path / "v", "--force"]),
                           "validate writes")
    bad = tiny_plan_dict()
    bad["config"]["schedule"] = [1, 2]
    plan.write_text(json.dumps(bad))
    assert_one_clear_error(run_cli(["show", plan, "--out", tmp_path / "o"]), "field schedule must be a name")
    bad = tiny_plan_dict()
    del bad["cluster"]["name"]
    bad.pop("timeline", None)
    plan.write_text(json.dumps(bad))
    assert_one_clear_error(run_cli(["show", plan, "--out", tmp_path / "o2"]), "cluster.name missing")
    (tmp_path / "cfg" / "config.json").mkdir(parents=True)
    assert_one_clear_error(run_cli(["plan", "--model", tmp_path / "cfg", "--cluster", "cpu-local", "--global-batch",
                                    "8"]), "config.json is a folder")
    assert_one_clear_error(run_cli(["profile", "--out", tmp_path / "p.json", "--quick", "--memory-per-rank",
                                    "99999TiB"]), "more than this host's")
    assert_one_clear_error(run_cli(["profile", "--out", tmp_path / "p.json", "--quick", "--memory-per-rank", ""]),
                           "--memory-per-rank is empty")
    table = json.loads((PROFILES_DIR / "h100-llama3-8b.json").read_text())
    table["compute"]["dtype"] = "x"
    (tmp_path / "t.json").write_text(json.dumps(table))
    assert_one_clear_error(run_cli(["plan", "--model", "llama3-8b", "--cluster", tmp_path / "t.json",
                                    "--global-batch", "8", "--seq-len", "4096"]), "compute.dtype 'x'")
    mla = PRESETS["deepseek-v3"].to_dict()
    mla["mla"]["kv_lora_rank"] = 10**30
    with pytest.raises(UserError, match="kv_lora_rank .* is more than"):
        type(PRESETS["deepseek-v3"]).from_dict(mla)
    shared = PRESETS["mixtral-8x7b"].to_dict()
    shared["moe"]["num_shared_experts"] = 1
    with pytest.raises(UserError, match="num_shared_experts 1 needs a positive shared_expert_intermediate_size "
                                        r"\(got 0\)"):
        type(PRESETS["mixtral-8x7b"]).from_dict(shared)
