"""Defects a first-time user met (issue 17), each with the property that would have caught it."""

import dataclasses
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoconf.cli import main
from tests.test_bad_input import assert_one_clear_error

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def estimate_args(*extra):
    return ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--seq-len", "2048", *extra]


@pytest.fixture(scope="module")
def plan_8x8(tmp_path_factory) -> Path:
    """llama3-8b on 8 nodes x 8 H100 (tp8 dp8), saved by `estimate --out`."""
    path = tmp_path_factory.mktemp("p") / "plan.json"
    result = run_cli(estimate_args("--nodes", "8", "--tp", "8", "--pp", "1", "--dp", "8", "--micro-batch", "1",
                                   "--global-batch", "64", "--out", path))
    assert result.exit_code == 0, result.output
    return path


def test_dry_run_of_an_8x8_plan_runs_8_nodes_of_8(plan_8x8):
    """Without --nnodes a plan runs on the nodes it was planned for: one torchrun line per node, 8 processes each,
    distinct node ranks."""
    result = run_cli(["launch", plan_8x8, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [x for x in result.output.splitlines() if "autoconf.execute.train" in x]
    assert len(lines) == 8
    assert all("--nnodes 8 --nproc-per-node 8" in x for x in lines)
    assert sorted(x.split("--node-rank ")[1].split()[0] for x in lines) == [str(r) for r in range(8)]
    assert "--nproc-per-node 64" not in result.output


def test_a_dry_run_makes_no_folders(plan_8x8, tmp_path):
    """`launch --dry-run --checkpoint-dir a/b --metrics c/m.jsonl` made both folders; it checks them now and makes
    nothing, and still refuses a place that cannot become a folder."""
    ckpt, metrics = tmp_path / "a" / "b", tmp_path / "c" / "m.jsonl"
    result = run_cli(["launch", plan_8x8, "--dry-run", "--checkpoint-dir", ckpt, "--metrics", metrics])
    assert result.exit_code == 0, result.output
    assert str(ckpt) in result.output and sorted(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    result = run_cli(["launch", plan_8x8, "--dry-run", "--checkpoint-dir", tmp_path / "file" / "ck"])
    assert_one_clear_error(result, "is not a folder")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a host without CUDA")
def test_gpu_plan_on_a_cpu_host_is_refused_unless_asked(plan_8x8):
    """A plan for H100s on a host without CUDA stops before starting anything, naming --allow-cpu."""
    for extra in ([], ["--nnodes", "1"]):
        assert_one_clear_error(run_cli(["launch", plan_8x8, *extra]), "no CUDA device", "--allow-cpu")


def test_plan_that_does_not_fit_neither_launches_nor_estimates_to_zero(tmp_path):
    """`estimate` of a layout over the device memory prints its prediction, then exits non-zero with one line:
    which rank is over by how much and the smallest change that fits (which does fit); `launch` refuses the saved
    plan unless --allow-unfit."""
    path = tmp_path / "big.json"
    args = estimate_args("--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "4", "--global-batch", "64")
    result = run_cli(args + ["--out", path])
    assert_one_clear_error(result, "does not fit", "pipeline rank 0", "it fits with")
    assert "peak memory" in result.output  # the prediction is still shown
    change = result.output.split("it fits with ")[1].split()
    fixed = run_cli(args + change)
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(path.read_text())["prediction"]["fits"] is False
    assert_one_clear_error(run_cli(["launch", path, "--dry-run"]), "does not fit", "--allow-unfit")
    assert run_cli(["launch", path, "--dry-run", "--allow-unfit"]).exit_code == 0


def test_tables_are_not_cut_when_piped():
    """Output that is not a terminal is not cut at 80 columns: every preset name appears whole."""
    from autoconf.spec.presets import PRESETS

    result = run_cli(["models"])  # CliRunner's output is not a terminal, like `| cat`
    assert result.exit_code == 0
    assert "..." not in result.output and "…" not in result.output
    for name in PRESETS:
        assert f" {name} " in result.output


def test_profiles_verb_and_cluster_help_list_the_measured_profiles():
    from autoconf.spec.cluster import bundled_profiles

    result = run_cli(["profiles"])
    assert result.exit_code == 0, result.output
    names = bundled_profiles()
    assert "h100-llama3-8b" in names
    for name in names:
        assert name in result.output
    assert "measured" in result.output and "specification" in result.output
    doc = json.loads(run_cli(["profiles", "--json"]).output)
    assert {d["name"] for d in doc} == set(names)
    # click may wrap the list at a hyphen ("grand-" / "teton-..."): join such breaks
    help_text = " ".join(run_cli(["plan", "--help"]).output.split()).replace("- ", "-")
    for name in names:
        assert name in help_text


MISTRAL_NEMO_12B = {  # mistralai/Mistral-Nemo-Base-2407 config.json (the fields autoconf reads)
    "model_type": "mistral", "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 14336, "vocab_size": 131072,
    "max_position_embeddings": 1024000, "rope_theta": 1000000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
}


def test_hf_head_dim_is_read():
    """Mistral-NeMo-12B sets head_dim 128 apart from hidden/heads = 160: 12.25B parameters as published (it was
    counted 12.77B); a config without head_dim keeps hidden / heads."""
    from autoconf.spec.presets import from_hf_config

    model = from_hf_config(MISTRAL_NEMO_12B, "mistral-nemo-12b")
    assert model.head_dim == 128 and model.q_dim == 4096
    assert model.total_params() == pytest.approx(12.25e9, rel=0.002)
    plain = from_hf_config({k: v for k, v in MISTRAL_NEMO_12B.items() if k != "head_dim"}, "x")
    assert plain.head_dim == 160 and plain.total_params() > 12.7e9


def test_executor_builds_the_head_dim_the_spec_counts():
    """The executor's model of a spec with its own head_dim has exactly the spec's parameter count."""
    import dataclasses

    import torch

    from autoconf.execute.model import build_model
    from autoconf.spec.presets import PRESETS

    spec = dataclasses.replace(PRESETS["tiny-llama"], head_dim=24)
    assert spec.q_dim != spec.hidden_size
    with torch.device("meta"):
        model = build_model(spec, attention="flash")
    assert sum(p.numel() for p in model.parameters()) == spec.total_params()


def _stub_python(tmp_path: Path, has_torch: bool) -> tuple[Path, Path]:
    """A stand-in for python3 that records its arguments: `import torch` fails unless `has_torch`."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "python"
    stub.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$*" in
  *"print(torch.__version__)"*) {"echo 2.9.0+cu126; exit 0" if has_torch else "exit 1"} ;;
esac
exit 0
""")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return stub, log


@pytest.mark.parametrize("has_torch", [False, True])
def test_install_script_says_which_torch_and_keeps_an_installed_one(tmp_path, has_torch):
    """Without torch and without a GPU it installs the CPU build from PyTorch's CPU index (and says so); an
    installed torch (here a CUDA build) is kept: no torch install at all."""
    stub, log = _stub_python(tmp_path, has_torch)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(stub), "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    torch_installs = [c for c in calls if "pip install" in c and "torch==" in c]
    if has_torch:
        assert torch_installs == [] and "keeping the installed torch 2.9.0+cu126" in result.stdout
    else:
        assert len(torch_installs) == 1 and "--index-url https://download.pytorch.org/whl/cpu" in torch_installs[0]
        assert "CPU build" in result.stdout
    assert any("pip install -q -e ." in c for c in calls)


def test_long_timeline_shows_warm_up_steady_state_and_drain(tmp_path):
    """A step of 256 micro-batches on 8 stages is drawn as three windows of equal length (warm-up from 0, an
    excerpt of the steady state, the drain to the end); a short step as one window over the whole step."""
    from autoconf.cost.estimate import estimate
    from autoconf.report.pictures import phase_windows, timeline_png
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import PRESETS

    cluster = load_cluster("dgx-h100-80g", 1, 8)
    long = estimate(PRESETS["llama3-8b"], cluster, ParallelConfig(
        tp=1, pp=8, dp=1, micro_batch_size=1, global_batch_size=256, seq_len=1024, schedule="1f1b"))
    span = long.prediction["iteration_time_s"]
    windows = phase_windows(long.timeline, span, 8, 1)
    assert [w[0] for w in windows] == ["warm-up", "steady state (excerpt)", "drain"]
    assert windows[0][1] == 0 and windows[2][2] == span
    lengths = [hi - lo for _, lo, hi in windows]
    assert max(lengths) == pytest.approx(min(lengths), rel=1e-9) and sum(lengths) < span / 2
    assert windows[0][2] < windows[1][1] < windows[1][2] < windows[2][1]
    short = estimate(PRESETS["llama3-8b"], cluster, ParallelConfig(
        tp=1, pp=8, dp=1, micro_batch_size=1, global_batch_size=16, seq_len=1024, schedule="1f1b"))
    assert phase_windows(short.timeline, short.prediction["iteration_time_s"], 8, 1) == [
        ("", 0.0, short.prediction["iteration_time_s"])]
    assert timeline_png(long, tmp_path / "t.png").stat().st_size > 0


def test_output_that_cannot_be_written_is_one_line():
    """`autoconf models --json > /dev/full` ended in an OSError traceback."""
    import subprocess
    import sys

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this host")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "autoconf", "models", "--json"], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == ["autoconf: error: No space left on device (writing the output)"]


def test_a_bare_autoconf_prints_its_help():
    """`autoconf` alone printed its whole help squashed into one `autoconf: error:` line."""
    result = run_cli([])
    assert result.exit_code == 0, result.output
    assert "autoconf: error" not in result.output and "Commands:" in result.output
    assert len(result.output.splitlines()) > 10


@pytest.mark.parametrize("args", [["profile", "--out"], ["plan", "--model", "tiny-gpt", "--cluster", "cpu-local",
                                                         "--global-batch", "8", "--out"],
                                  ["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8",
                                   "--memory-picture"]])
def test_a_file_output_ending_in_a_separator_is_refused(tmp_path, args):
    """`profile --out runs/` (a folder not yet made) wrote a file named `runs`."""
    target = tmp_path / "runs"
    result = run_cli([*args, f"{target}/"])
    assert_one_clear_error(result, "names a folder", str(target / "x")[:-1])
    assert not target.exists()


def test_host_memory_is_read_with_a_cgroup_limit(tmp_path):
    """MemAvailable, or what this process's cgroup (or one above it) leaves when that is less, not counting page
    cache the kernel may drop; None where neither can be read."""
    from autoconf.execute.host_memory import available_memory_bytes

    assert available_memory_bytes(tmp_path) is None
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 4000 kB\nMemAvailable: 3000 kB\n")
    assert available_memory_bytes(tmp_path) == 3000 * 1024
    (tmp_path / "proc" / "self" / "cgroup").write_text("0::/jobs/mine\n")
    root = tmp_path / "sys" / "fs" / "cgroup"
    own = root / "jobs" / "mine"
    own.mkdir(parents=True)
    (own / "memory.max").write_text("max\n")
    (own / "memory.current").write_text("100\n")
    assert available_memory_bytes(tmp_path) == 3000 * 1024
    (own / "memory.max").write_text("1000100\n")
    assert available_memory_bytes(tmp_path) == 1_000_000
    (own / "memory.stat").write_text("anon 40\ninactive_file 60\n")
    assert available_memory_bytes(tmp_path) == 1_000_060  # the page cache is not in use
    (root / "jobs" / "memory.max").write_text("500\n")  # a tighter limit above it
    (root / "jobs" / "memory.current").write_text("200\n")
    assert available_memory_bytes(tmp_path) == 300


def test_a_nodes_need_adds_up_the_stages_it_holds():
    """pp2 x dp2 on two nodes of two ranks: a node needs the totals of the stages its ranks hold, and the check
    takes the node that needs the most (the mean over all nodes missed the first stage's extra micro-batches)."""
    from autoconf.cost.estimate import estimate
    from autoconf.execute.host_memory import cpu_run_memory_bytes
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import PRESETS

    config = ParallelConfig(tp=1, pp=2, dp=2, micro_batch_size=1, global_batch_size=8, seq_len=64, dtype="fp32")
    plan = estimate(PRESETS["tiny-gpt"], load_cluster("cpu-local", 2, 2), config)
    stages = [m["total"] for m in plan.prediction["memory_per_stage"]]
    assert stages[0] > stages[1]
    assert cpu_run_memory_bytes(plan, 4) == pytest.approx(2 * sum(stages))  # one node holds every rank
    nodes = [[int(d) // 2 for d in plan.grid().pipeline_rank(r).flatten()] for r in range(2)]
    expected = max(sum(stages[r] * nodes[r].count(node) for r in range(2)) for node in (0, 1))
    assert cpu_run_memory_bytes(plan, 2) == pytest.approx(expected) and expected < 2 * sum(stages)


def test_a_cpu_run_beyond_the_hosts_memory_is_refused_before_it_starts(tmp_path, monkeypatch):
    """A GPU plan rehearsed on CPU (--allow-cpu) or a CPU plan whose ranks need more than the host has started
    every rank and swapped or was killed; it is one line now, with the need estimated as the CPU ranks run it."""
    from autoconf.execute import host_memory
    from autoconf.spec.plan import load_plan

    gpu_plan = tmp_path / "gpu.json"
    result = run_cli(estimate_args("--gpus-per-node", "2", "--tp", "2", "--pp", "1", "--dp", "1", "--micro-batch",
                                   "1", "--global-batch", "1", "--out", gpu_plan))
    assert result.exit_code == 0, result.output
    need = host_memory.cpu_run_memory_bytes(load_plan(gpu_plan), 2)
    assert need > 16 * load_plan(gpu_plan).model.total_params()  # fp32 weights, gradients and Adam over 2 ranks
    problem = host_memory.host_memory_problem(load_plan(gpu_plan), 2, int(need) - 1)
    assert problem and "estimated in fp32 on CPU" in problem and "--allow-unfit" in problem
    assert host_memory.host_memory_problem(load_plan(gpu_plan), 2, int(need) + 1) is None
    cpu_plan = tmp_path / "cpu.json"
    result = run_cli(["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64",
                      "--gpus-per-node", "2", "--out", cpu_plan])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(host_memory, "available_memory_bytes", lambda: 1 << 20)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # (on a CUDA host the ranks train on the GPUs)
    result = run_cli(["launch", cpu_plan, "--steps", "1"])
    assert_one_clear_error(result, "2 ranks on this host need about", "0.0 GiB available")


def test_force_never_replaces_an_input_of_the_same_run(tmp_path):
    """`plan --model inp/config.json --out inp/../inp/config.json --force` replaced the model config with the plan
    (and the same for the cluster profile, `estimate --out`, and an --explain folder holding the model file as
    plan.json); an --out named like one of the --explain folder's exports was overwritten by it, as `show P --out
    DIR` overwrote a plan P that DIR's exports name, and estimate's --memory-picture its --out. Each is refused
    before anything is written."""
    from autoconf.spec.cluster import PROFILES_DIR

    inp = tmp_path / "inp"
    (inp / "ex").mkdir(parents=True)
    config = inp / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                                  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                                  "vocab_size": 256, "max_position_embeddings": 256}))
    profile = inp / "prof.json"
    profile.write_text((PROFILES_DIR / "cpu-local.json").read_text())
    (inp / "ex" / "plan.json").write_text(config.read_text())
    estimate = ["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "4",
                "--micro-batch", "2", "--global-batch", "8"]
    assert run_cli([*estimate, "--out", inp / "launch.sh"]).exit_code == 0
    before = {p: p.read_bytes() for p in inp.rglob("*") if p.is_file()}
    plan = ["plan", "--model", config, "--cluster", profile, "--global-batch", "8", "--force"]
    for args, needle in (
            ([*plan, "--out", inp / ".." / "inp" / "config.json"], "is the model config this run reads"),
            ([*plan, "--out", profile], "is the cluster profile this run reads"),
            (["plan", "--model", inp / "ex" / "plan.json", "--cluster", "cpu-local", "--global-batch", "8",
              "--explain", inp / "ex", "--force"], "holds plan.json, the model config this run reads"),
            ([*plan, "--out", tmp_path / "ex4" / "launch.sh", "--explain", tmp_path / "ex4"],
             "a file the explanation in"),
            (["estimate", "--model", config, "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "4",
              "--micro-batch", "2", "--global-batch", "8", "--out", config, "--force"], "is the model config"),
            ([*estimate, "--out", tmp_path / "e.png", "--memory-picture", tmp_path / "." / "e.png"],
             "--out and --memory-picture are the same file"),
            ([*estimate, "--memory-picture", tmp_path / "e.svg"], "the picture is a PNG; give a name ending in .png"),
            (["show", inp / "launch.sh", "--out", inp, "--force"], "a file the explanation in")):
        assert_one_clear_error(run_cli(args), needle)
    assert {p: p.read_bytes() for p in inp.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "ex4").exists() and not (tmp_path / "e.png").exists() and not (tmp_path / "e.svg").exists()


def test_brackets_in_names_and_paths_are_printed_as_they_are(tmp_path):
    """Output went through rich markup: `--out '[/]x/p.json'` ended in a MarkupError traceback after writing
    everything, `runs/[exp1]/plan.json` was printed as `runs//plan.json`, and a model named "[/]" broke plan."""
    from autoconf.spec.presets import PRESETS

    (tmp_path / "[exp1]").mkdir()
    model = dict(PRESETS["tiny-gpt"].to_dict(), name="[/]a[bold]b")
    (tmp_path / "m.json").write_text(json.dumps(model))
    for out in (tmp_path / "[exp1]" / "plan.json", tmp_path / "[" / "]x" / "p.json"):
        result = run_cli(["plan", "--model", tmp_path / "m.json", "--cluster", "cpu-local", "--global-batch", "8",
                          "--seq-len", "64", "--top", "1", "--out", out])
        assert result.exit_code == 0 and result.exception is None, result.output
        assert f"wrote {out}" in result.output and "[/]a[bold]b" in result.output


@pytest.mark.parametrize("args, needle", [
    (["plan", "--fix", "tp=\u0662"], "expected an integer in ASCII digits"),
    (["plan", "--fix", "tp=1_0"], "expected an integer in ASCII digits"),
    (["plan", "--fix", "seq_split=even"], "needs a schedule that splits sequences"),
    (["limits", "--only", "micro-batch", "--max-seq-len", "64"], "--max-seq-len bounds the longest-sequence limit"),
    (["limits", "--only", "seq", "--seq-len", "64"], "--seq-len is the sequence length of the micro-batch"),
    (["estimate", "--tp", "1", "--pp", "1", "--dp", "4", "--micro-batch", "1", "--memory-headroom", "0.999"],
     "less --memory-headroom's 99.9% headroom"),
])
def test_an_option_that_would_be_misread_or_ignored_is_one_line(args, needle):
    """Second fuzz round: an Arabic-Indic two pinned tp 2, a pinned default split without seq1f1b and --max-seq-len
    or --seq-len beside an --only that never reads them were taken silently; a near-1 headroom said "needs 0.3 GiB
    of 0.0 GiB" without naming the headroom that made the 0.0."""
    common = ["--model", "tiny-llama", "--cluster", "cpu-local"] + (
        ["--global-batch", "8"] + (["--seq-len", "64"] if args[0] != "limits" else []))
    assert_one_clear_error(run_cli([args[0], *common, *args[1:]]), needle)


def test_an_error_that_echoes_a_huge_input_stays_a_short_line(tmp_path):
    """A 5000-character model name was echoed in full (twice), and a 900k-entry list made a line of megabytes: each
    echoed value is shortened where the message is made, and any line still longer keeps its start and its end
    (what would work) and says how much it left out."""
    from autoconf.spec.presets import PRESETS

    doc = dict(PRESETS["tiny-llama"].to_dict(), name="x" * 5000)
    (tmp_path / "m.json").write_text(json.dumps(doc))
    result = run_cli(["estimate", "--model", tmp_path / "m.json", "--cluster", "cpu-local", "--tp", "1", "--pp", "1",
                      "--dp", "4", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64"])
    assert_one_clear_error(result, "name must be")
    assert len(result.output) < 400


def test_an_overlong_error_keeps_its_start_and_its_end():
    from autoconf.cli import MAX_ERROR_LINE, error_line

    line = error_line("what is wrong: " + "x" * 10 * MAX_ERROR_LINE + " use this instead")
    assert line.startswith("what is wrong") and line.endswith("use this instead")
    assert "characters left out" in line and len(line) <= MAX_ERROR_LINE + 60
    assert error_line("short") == "short"


def test_a_framework_flag_the_layout_never_reads_is_said():
    """`--framework-flag param_gather_overlap=false` at ZeRO 0 (no parameter gather to overlap) changed nothing and
    said nothing; at ZeRO 1 it is read and no note is printed."""
    args = ["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "4",
            "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64",
            "--framework-flag", "param_gather_overlap=false"]
    idle, read = run_cli(args), run_cli([*args, "--zero", "1"])
    assert idle.exit_code == 0 and read.exit_code == 0, idle.output + read.output
    note = "--framework-flag param_gather_overlap changes nothing"
    assert note in idle.output and note not in read.output


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(head_dim=33), "head_dim 33 must be even"),
    (lambda d: d.update(hidden_size=66, num_heads=2, num_kv_heads=2), "head_dim 33 must be even"),
])
def test_an_odd_rotary_width_is_refused_before_launch(tmp_path, edit, needle):
    """Third fuzz round: tiny-llama with head_dim 33 planned, then every rank died at launch in RoPE (tensor a (33)
    must match (34)), one traceback per rank."""
    from autoconf.spec.presets import PRESETS

    doc = PRESETS["tiny-llama"].to_dict()
    edit(doc)
    doc.pop("parameters"), doc.pop("active_parameters")
    (tmp_path / "m.json").write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["plan", "--model", tmp_path / "m.json", "--cluster", "cpu-local",
                                    "--global-batch", "8", "--seq-len", "64"]), needle)


@pytest.mark.parametrize("make", [
    lambda tmp: Path("/dev/zero"),
    lambda tmp: (os.mkfifo(tmp / "fifo"), tmp / "fifo")[1],
])
def test_a_device_or_a_pipe_as_an_input_file_is_refused_at_once(tmp_path, make):
    """Third fuzz round: `--model /dev/zero` read 13 GB before it was stopped and a FIFO as a plan, model or profile
    waited forever for a writer; each is one line now, before anything is read."""
    path = make(tmp_path)
    for args in (["show", path], ["plan", "--model", path, "--cluster", "cpu-local", "--global-batch", "8"],
                 ["plan", "--model", "tiny-llama", "--cluster", path, "--global-batch", "8"]):
        assert_one_clear_error(run_cli(args), "is not a regular file")


def test_an_oversized_json_input_is_refused_before_it_is_read(tmp_path):
    from autoconf.spec.presets import MAX_JSON_BYTES

    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: nothing is written
    assert_one_clear_error(run_cli(["show", big]), "more than the 256 MiB")


def test_latent_attention_has_a_key_and_value_per_query_head():
    """Third fuzz round: an MLA model's num_kv_heads, which its attention never reads, changed its predicted step
    and made `--fix tp=2` "not divide the 1 KV heads"; the spec now refuses any value but num_heads, and the
    Hugging Face importer reads DeepSeek's configs so (transformers' MLA reads no num_key_value_heads either)."""
    import dataclasses

    from autoconf.errors import UserError
    from autoconf.spec.presets import PRESETS, from_hf_config

    v3 = PRESETS["deepseek-v3"]
    with pytest.raises(UserError, match="num_kv_heads 1 must equal num_heads 128"):
        dataclasses.replace(v3, num_kv_heads=1)
    from autoconf.spec.hf_moe import PRESET_CONFIGS

    config = {**next(c for c in PRESET_CONFIGS.values() if c["model_type"] == "deepseek_v3"), "num_key_value_heads": 1}
    assert from_hf_config(config, "v3").num_kv_heads == 128


def test_a_stated_parameter_count_is_the_derived_one_or_refused(tmp_path):
    """Third fuzz round: a model JSON whose `parameters` was off by under 1% (449,600 for 451,840) loaded silently
    and every plan used the derived count; a count off in a digit it states is one line now, with both numbers. The
    count itself, or rounded to the digits it states (as counts are published), loads."""
    from autoconf.spec.model import stated_count_agrees
    from autoconf.spec.presets import PRESETS

    doc = PRESETS["tiny-llama"].to_dict()
    derived = doc["parameters"]
    off = derived - derived // 200  # 0.5% low, in a digit it states
    path = tmp_path / "m.json"
    path.write_text(json.dumps(dict(doc, parameters=off)))
    args = ["plan", "--model", path, "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64"]
    assert_one_clear_error(run_cli(args), f"parameters {off:,} disagrees with the {derived:,}")
    path.write_text(json.dumps(dict(doc, parameters=float(derived))))
    assert run_cli([*args, "--top", "1"]).exit_code == 0
    assert stated_count_agrees(46_700_000_000, 46_702_792_704) and stated_count_agrees(451_800, 451_840)
    assert not any(stated_count_agrees(v, 451_840) for v in (449_600, 451_841, 451_840.5, True, "451840"))


@pytest.mark.parametrize("dense_layers, needle", [
    ([7, -1], "moe.dense_layers: -1 is negative and 7 lies beyond the 4 layers; give layer indices from 0 to 3"),
    ([-2, -1], "moe.dense_layers: -2, -1 are negative"),
    (["a", 1.5], "dense_layers 'a', 1.5 are not layer indices"),
])
def test_each_wrong_dense_layer_is_named_with_why(tmp_path, dense_layers, needle):
    """Third fuzz round: `moe.dense_layers: [7, -1]` said "must be a list of layer indices (got (7, -1))", a tuple
    the user never wrote, without saying that -1 is negative and 7 beyond the model's 4 layers."""
    from autoconf.spec.presets import PRESETS

    doc = PRESETS["tiny-moe"].to_dict()
    doc.pop("parameters"), doc.pop("active_parameters")
    doc["moe"]["dense_layers"] = dense_layers
    (tmp_path / "m.json").write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["plan", "--model", tmp_path / "m.json", "--cluster", "cpu-local",
                                    "--global-batch", "8", "--seq-len", "64"]), needle)


@pytest.mark.parametrize("sidecar, needle", [
    ('{"dtype": "uint16", "extra": 1}', "unknown field(s) 'extra'"),
    ("[1]", "must hold a JSON object ({...}), not an array"),
    ('"uint16"', "must hold a JSON object ({...}), not a string"),
    ("{}", 'no "dtype"'),
    ('{"dtype": ["uint16"]}', "dtype ['uint16'] is not uint16 or uint32"),
])
def test_a_token_files_sidecar_is_read_like_every_other_file(tmp_path, sidecar, needle):
    """Third fuzz round: the `X.bin.json` sidecar took unknown keys silently, and a list or a string in it showed
    Python's own words ("list indices must be integers or slices, not str")."""
    import numpy as np

    plan = tmp_path / "p.json"
    result = run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp",
                      "4", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64", "--out", plan])
    assert result.exit_code == 0, result.output
    data = tmp_path / "tokens.bin"
    np.arange(200, dtype=np.uint16).tofile(data)
    (tmp_path / "tokens.bin.json").write_text(sidecar)
    result = run_cli(["launch", plan, "--dry-run", "--steps", "2", "--data", data])
    assert_one_clear_error(result, needle)
    assert "indices must be" not in result.output
    (tmp_path / "tokens.bin.json").write_text('{"dtype": "uint16"}')
    assert run_cli(["launch", plan, "--dry-run", "--steps", "2", "--data", data]).exit_code == 0


def test_offload_on_a_cpu_profile_is_refused_and_a_rehearsal_still_counts_its_memory(tmp_path):
    """Third fuzz round: --offload-optimizer / --offload-activations on cpu-local, whose device memory is host
    memory, were estimated with a cost ("costs 0.00444 s per step") for a change that does nothing; they are one
    line now, in estimate and under plan --fix. A GPU plan that offloads, rehearsed on CPU, is still checked against
    the host's memory (its state counted where the CPU ranks hold it)."""
    from autoconf.execute import host_memory
    from autoconf.spec.plan import load_plan

    args = ["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "4",
            "--zero", "1", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64"]
    for flag, field in (("--offload-optimizer", "offload_optimizer"), ("--offload-activations", "offload_activations")):
        assert_one_clear_error(run_cli([*args, flag]), field, "devices are CPU ranks", "moves nothing")
        assert_one_clear_error(run_cli(["plan", "--model", "tiny-llama", "--cluster", "cpu-local", "--global-batch",
                                        "8", "--seq-len", "64", "--fix", f"{field}=true"]), "moves nothing")
    gpu_plan = tmp_path / "gpu.json"
    result = run_cli(estimate_args("--gpus-per-node", "2", "--tp", "1", "--pp", "1", "--dp", "2", "--zero", "3",
                                   "--offload-optimizer", "--micro-batch", "1", "--global-batch", "2", "--out",
                                   gpu_plan))
    assert result.exit_code == 0, result.output
    assert host_memory.cpu_run_memory_bytes(load_plan(gpu_plan), 2) > 16 * load_plan(gpu_plan).model.total_params()


def test_a_base_profile_of_another_kind_of_device_is_refused(tmp_path):
    """Third fuzz round: `profile --quick --base-profile dgx-h100-80g` on a host without CUDA wrote the H100's
    InfiniBand link (50 GB/s) into a CPU profile as its inter-node link; a base profile must describe the kind of
    device this host profiles, refused in one line before any rank starts."""
    from autoconf.profile.launch import base_profile_problem
    from autoconf.spec.cluster import load_cluster

    h100, cpu = load_cluster("dgx-h100-80g"), load_cluster("cpu-local")
    assert "cpu-local" in base_profile_problem(h100, "dgx-h100-80g", on_gpu=False)
    assert "dgx-h100-80g" in base_profile_problem(cpu, "cpu-local", on_gpu=True)
    assert base_profile_problem(cpu, "cpu-local", False) is None and base_profile_problem(h100, "x", True) is None
    if not __import__("torch").cuda.is_available():
        out = tmp_path / "p.json"
        result = run_cli(["profile", "--quick", "--out", out, "--base-profile", "dgx-h100-80g"])
        assert_one_clear_error(result, "--base-profile dgx-h100-80g describes GPUs", "give a CPU profile")
        assert not out.exists()


@pytest.mark.parametrize("option", ["--model", "--base-profile"])
def test_profile_never_writes_over_a_file_it_reads(tmp_path, option):
    """Sixth review: `profile --model config.json --out config.json --force` replaced the user's model config with
    a profile (and --base-profile likewise its base), where plan and estimate refuse it: now refused before it
    starts, the file untouched. A --out in a folder not yet made is made, as plan's is."""
    source = tmp_path / "in.json"
    from autoconf.spec.cluster import load_cluster

    source.write_text(json.dumps(load_cluster("cpu-local").to_dict()) if option == "--base-profile" else
                      json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 256}))
    before = source.read_bytes()
    result = run_cli(["profile", "--quick", option, source, "--out", tmp_path / "." / "in.json", "--force"])
    assert_one_clear_error(result, "this run reads", "choose another path")
    assert source.read_bytes() == before
    from autoconf.profile.launch import check_output

    assert check_output(tmp_path / "new" / "p.json", False).parent.is_dir()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a host without CUDA")
def test_a_cpu_profile_beyond_the_hosts_memory_is_refused_before_it_starts(tmp_path, monkeypatch):
    """Third fuzz round: `profile --quick --model llama3-70b` on a CPU host grew past 9 GB per minute and was not
    refused. The need is counted on the tensors the profiler builds (its references of the executor's model: one
    layer with AdamW state and the gradient norm's float64 copies, four layers with gradients), and a host whose
    available memory holds fewer ranks than asked is refused in one line before any rank starts."""
    import torch

    from autoconf.execute import host_memory
    from autoconf.profile.overheads import _executor_model
    from autoconf.profile.timed_model import cpu_rank_memory_bytes
    from autoconf.spec.presets import PRESETS

    tiny = PRESETS["tiny-llama"]
    one, four = (list(_executor_model(tiny, torch.device("cpu"), "fp32", n).parameters()) for n in (1, 4))
    largest = max(p.numel() for p in one)
    need = cpu_rank_memory_bytes(tiny, "fp32")
    assert need == max(16 * sum(p.numel() for p in one) + 16 * largest, 8 * sum(p.numel() for p in four))
    assert cpu_rank_memory_bytes(PRESETS["llama3-70b"], "fp32") > 40 * 2**30
    monkeypatch.setattr(host_memory, "available_memory_bytes", lambda: int(1.5 * need))
    out = tmp_path / "p.json"
    result = run_cli(["profile", "--quick", "--out", out, "--model", "tiny-llama"])
    assert_one_clear_error(result, "needs at least", "for 2 ranks", "a smaller model", "--nproc-per-node 1")
    assert not out.exists()


def test_one_node_launch_honours_its_port_and_notes_an_address_it_does_not_use(tmp_path):
    """Third fuzz round: `launch --dry-run --master-port 29555 --master-addr 10.0.0.5` of a one-node plan showed a
    free port on 127.0.0.1 and said nothing. One node now meets at the port asked for (a port in use is one line,
    before any rank starts), a free one when none is asked for, and a note says that the address is for runs on
    several nodes."""
    import socket

    plan = tmp_path / "p.json"
    result = run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp",
                      "4", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64", "--out", plan])
    assert result.exit_code == 0, result.output
    result = run_cli(["launch", plan, "--dry-run", "--steps", "2", "--master-port", "29555", "--master-addr",
                      "10.0.0.5"])
    assert result.exit_code == 0, result.output
    assert "--rdzv-endpoint 127.0.0.1:29555" in result.output
    assert "note: one node: its ranks meet on 127.0.0.1 (--master-addr 10.0.0.5 is for runs on several" in result.output
    result = run_cli(["launch", plan, "--dry-run", "--steps", "2"])
    assert "note:" not in result.output and "--rdzv-endpoint 127.0.0.1:" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_clear_error(run_cli(["launch", plan, "--steps", "1", "--master-port", port]),
                               f"--master-port {port} is already in use")


def test_force_removes_an_earlier_sweep_picture_and_never_a_users_file(tmp_path):
    """Third fuzz round: `plan ... --nodes 1:4 --explain DIR`, then `plan ... --explain DIR --force` without a
    sweep, left the first run's sweep.png beside the new plan's explanation; a picture autoconf drew (its PNG's
    Software text) is removed now, a file of the user's with the same name is not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoconf.files import drawn_by_autoconf
    from autoconf.report.pictures import save_figure

    out = tmp_path / "ex"
    out.mkdir()
    save_figure(plt.subplots()[0], out / "sweep.png")
    assert drawn_by_autoconf(out / "sweep.png")
    args = ["plan", "--model", "tiny-llama", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64",
            "--top", "1", "--explain", out]
    result = run_cli(args)
    assert result.exit_code == 0 and (out / "sweep.png").exists(), result.output  # without --force: kept
    result = run_cli([*args, "--force"])
    assert result.exit_code == 0 and not (out / "sweep.png").exists(), result.output
    assert drawn_by_autoconf(out / "timeline.png")
    fig = plt.figure()
    fig.savefig(out / "sweep.png", format="png")  # the user's own picture (matplotlib's Software text)
    plt.close(fig)
    assert not drawn_by_autoconf(out / "sweep.png")
    assert run_cli([*args, "--force"]).exit_code == 0 and (out / "sweep.png").exists()


def test_the_figures_of_a_fit_message_add_up():
    """Third fuzz round: `estimate --memory-headroom 0.99` said "needs 0.3 GiB of 0.0 GiB per device ..., 0.2 GiB
    over" (0.27 - 0.04, each rounded to one decimal); the figures of one line share enough decimals that the
    smallest has two significant digits, so they add up as the bytes do."""
    import re

    from autoconf.files import gib_figures

    assert gib_figures(0.274 * 2**30, 0.0358 * 2**30, 0.2382 * 2**30) == ["0.274", "0.036", "0.238"]
    assert gib_figures(85.34 * 2**30, 71.9 * 2**30, 13.44 * 2**30) == ["85.3", "71.9", "13.4"]
    assert gib_figures(3 * 2**30, 0) == ["3.0", "0.0"] and gib_figures(2**30, least=2) == ["1.00"]
    result = run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp",
                      "4", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64", "--memory-headroom", "0.99"])
    assert_one_clear_error(result, "does not fit")
    need, limit, over = (float(x) for x in re.search(r"needs ([\d.]+) GiB of ([\d.]+) GiB per device .*, ([\d.]+) GiB "
                                                     r"over", result.output).groups())
    assert limit > 0 and abs(need - limit - over) <= 0.0011, (need, limit, over)


def test_the_estimate_table_says_where_the_offload_cost_sits():
    """Third fuzz round: with --offload-optimizer the table showed "time: offload 0 s (0.0%)" beside "offload ...
    costs 0.5247 s per step": the "offload" term holds activation copies only (so it is shown only with them), and
    the offload row names the terms that grew, which add up to its cost (the CPU step in optimizer, the shard copies
    in dp_comm)."""
    args = estimate_args("--tp", "1", "--pp", "1", "--dp", "8", "--zero", "3", "--micro-batch", "1", "--global-batch",
                         "64", "--offload-optimizer")
    result = run_cli([*args, "--json"])
    assert result.exit_code == 0, result.output
    p = json.loads(result.output)["prediction"]
    by_term = p["offload_effect"]["time_cost_by_term_s"]
    assert "offload" not in p["time_breakdown"] and {"optimizer", "dp_comm"} <= set(by_term)
    assert sum(by_term.values()) == pytest.approx(p["offload_effect"]["time_cost_s"], rel=1e-6)
    table = run_cli(args).output
    assert "time: offload" not in table
    assert "(in " + ", ".join(f"{k} {v:+.4g} s" for k, v in by_term.items()) + ")" in table
    both = json.loads(run_cli([*args, "--offload-activations", "--json"]).output)["prediction"]
    assert both["time_breakdown"]["offload"] > 0 and "offload" in both["offload_effect"]["time_cost_by_term_s"]


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory) -> dict:
    """A tiny-llama plan on cpu-local (dp4), as `estimate --out` writes it."""
    path = tmp_path_factory.mktemp("tiny") / "plan.json"
    result = run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp",
                      "4", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64", "--out", path])
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


@pytest.mark.parametrize("change, needle", [
    (lambda p: p["placement"].update(mesh=[[[[0]], [[1]], [[2]], [[[3]]]]]), "placement mesh must be"),
    (lambda p: p["placement"]["mesh"][0][0].__setitem__(0, 0), "placement mesh must be"),
    (lambda p: p["prediction"].update(memory_per_stage=None), "memory_per_stage must be a list"),
    (lambda p: p["prediction"].update(time_breakdown=None), "time_breakdown must be an object"),
    (lambda p: (p["cluster"].update(name="dgx-h100-80g"), p.pop("timeline", None)),
     "made on cpu-core devices but the profile 'dgx-h100-80g' describes"),
])
def test_a_hand_edited_plan_is_refused_in_one_line_by_show_and_launch(tmp_path, tiny_plan, change, needle):
    """Fourth fuzz round: a ragged placement mesh (one list deeper, or a rank where a list was) crashed `launch
    --dry-run` and `show` in numpy; a null memory or time breakdown crashed `show`'s table; a plan whose cluster name
    was changed to a bundled profile of other devices was redrawn on those devices."""
    plan = json.loads(json.dumps(tiny_plan))
    change(plan)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(plan))
    assert_one_clear_error(run_cli(["show", path, "--out", tmp_path / "ex"]), needle)
    if "mesh" in needle:
        assert_one_clear_error(run_cli(["launch", path, "--dry-run"]), needle)


@pytest.mark.parametrize("where", [("memory_per_stage", 0, "params"), ("time_breakdown", "compute")])
def test_show_draws_a_plan_whose_numbers_are_integers_beyond_64_bits(tmp_path, tiny_plan, where):
    """Fourth fuzz round: an integer above 2**63 in a memory or time breakdown (valid JSON, a finite number) crashed
    the pictures in numpy's object arrays after two of them were written."""
    plan = json.loads(json.dumps(tiny_plan))
    node = plan["prediction"]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = 2**70
    path = tmp_path / "big.json"
    path.write_text(json.dumps(plan))
    result = run_cli(["show", path, "--out", tmp_path / "ex"])
    assert result.exit_code == 0 and (tmp_path / "ex" / "memory.png").exists(), result.output


@pytest.mark.parametrize("profile_name, field", [
    ("cpu-local", ("device", "memory_bandwidth_Bps")), ("cpu-local", ("device", "peak_flops", "fp32")),
    ("cpu-local", ("inter_node", "bandwidth_Bps")), ("cpu-local", ("efficiency", "matmul", "value")),
    ("dgx-h100-80g", ("host", "h2d_Bps")), ("dgx-h100-80g", ("host", "d2h_Bps"))])
def test_a_profile_rate_too_small_to_give_a_finite_step_is_refused(tmp_path, profile_name, field):
    """Fourth fuzz round: a device rate of 1e-300 (positive, so accepted) turned the step time into infinity and
    `plan` crashed in the partition solver ("cannot convert float NaN to integer"); host copy rates of 1e-300 gave an
    infinite step with offload."""
    profile = json.loads((ROOT / "autoconf" / "profiles" / f"{profile_name}.json").read_text())
    node = profile
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = 1e-300
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(profile))
    assert_one_clear_error(run_cli(["plan", "--model", "tiny-gpt", "--cluster", path, "--global-batch", "8"]),
                           ".".join(field[:2]), "1e-300")


def test_a_profile_version_must_be_the_integer_1(tmp_path):
    """Fourth fuzz round: a profile's `"version": true` (and 1.0) equal 1 in Python and loaded."""
    profile = json.loads((ROOT / "autoconf" / "profiles" / "cpu-local.json").read_text())
    for version in (True, 1.0):
        profile["version"] = version
        (tmp_path / "p.json").write_text(json.dumps(profile))
        assert_one_clear_error(run_cli(["plan", "--model", "tiny-gpt", "--cluster", tmp_path / "p.json",
                                        "--global-batch", "8"]), f"version {json.dumps(version)} is not supported")


def test_output_paths_and_inputs_that_are_the_wrong_kind_are_named(tmp_path):
    """Fourth fuzz round: `--out X --explain X` made a folder X and then refused to write the plan into it;
    `limits --out` under a file died on a raw OS error (exit 1); a folder given as a profile was called "a device,
    a pipe or a socket"; a model file holding null was "not NoneType"; bucket_params=1e999 (infinity) was taken."""
    same = tmp_path / "same.json"
    assert_one_clear_error(run_cli(["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8",
                                    "--out", same, "--explain", same]), "--out and --explain both name")
    assert not same.exists()
    (tmp_path / "file").write_text("mine")
    result = run_cli(["limits", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--only",
                      "micro-batch", "--out", tmp_path / "file" / "limits"])
    assert_one_clear_error(result, "cannot write")
    assert result.exit_code == 2 and (tmp_path / "file").read_text() == "mine"
    (tmp_path / "folder").mkdir()
    assert_one_clear_error(run_cli(["plan", "--model", "tiny-gpt", "--cluster", tmp_path / "folder",
                                    "--global-batch", "8"]), "is a folder")
    (tmp_path / "null.json").write_text("null")
    assert_one_clear_error(run_cli(["plan", "--model", tmp_path / "null.json", "--cluster", "cpu-local",
                                    "--global-batch", "8"]), "not null")
    assert_one_clear_error(run_cli(["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8",
                                    "--framework-flag", "bucket_params=1e999"]), "bucket_params must be a finite")


@pytest.mark.parametrize("config, needle", [
    ({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2}, "names no model_type"),
    ({"text_config": {"model_type": "llama"}, "vision_config": {}}, "names no model_type"),
    ({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "text_config": {
        "model_type": "llama"}, "vision_config": {}}, "a multimodal config whose text_config is of type 'llama', read "
                                                     "too: save that object as its own config.json"),
    ({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}, "vision_config": {}},
     "unsupported model_type 'gemma3'; supported:"),  # (its text model is not read either: no such advice)
])
def test_a_hugging_face_config_without_its_type_is_named_as_one(tmp_path, config, needle):
    """Fourth fuzz round: a Hugging Face config.json without model_type was read as autoconf's own model JSON and
    refused for unknown fields; a multimodal one (its language model under text_config) is named as such."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert_one_clear_error(run_cli(["plan", "--model", path, "--cluster", "cpu-local", "--global-batch", "8"]), needle)


@pytest.mark.parametrize("option, key", [("--tp", "tp"), ("--micro-batch", "micro_batch"), ("--zero", "zero")])
def test_a_layout_option_the_search_chooses_points_at_fix(option, key):
    """Fourth fuzz round: `plan --tp 2` said "No such option '--tp'" and suggested --dtype, --out or --top."""
    result = run_cli(["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", option, "2"])
    assert_one_clear_error(result, f"pin it with --fix {key}=VALUE")
    assert "Did you mean" not in result.output


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(version=True), "model version true is not supported"),
    (lambda d: d.update(norm_eps=1e308), "norm_eps must be in (0, 1)"),
    (lambda d: d["moe"].update(capacity_factor=1e308), "capacity_factor 1e+308 lets an expert take more tokens"),
])
def test_a_model_json_with_a_nonsense_value_is_refused(tmp_path, change, needle):
    """Fourth fuzz round: `"version": true` (equal to 1 in Python), norm_eps 1e308 and an MoE capacity factor of 1e308
    (an expert taking more tokens than the batch routes) loaded silently."""
    from autoconf.spec.presets import PRESETS

    doc = PRESETS["tiny-moe"].to_dict()
    doc.pop("parameters"), doc.pop("active_parameters")
    change(doc)
    (tmp_path / "m.json").write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["plan", "--model", tmp_path / "m.json", "--cluster", "cpu-local",
                                    "--global-batch", "8", "--seq-len", "64"]), needle)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be made")
def test_a_dry_run_refuses_a_metrics_folder_nothing_can_be_made_in(tmp_path, tiny_plan):
    """Fourth fuzz round: `launch --dry-run --metrics /proc/x/m.jsonl` passed (root's `os.access` says /proc is
    writable) and only the real run refused it; the dry run now makes and removes an unnamed file where the folder
    would be made, and leaves a folder it could make unmade."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(tiny_plan))
    assert_one_clear_error(run_cli(["launch", path, "--dry-run", "--metrics", "/proc/x/m.jsonl"]),
                           "cannot create metrics directory /proc/x")
    result = run_cli(["launch", path, "--dry-run", "--metrics", tmp_path / "new" / "m.jsonl"])
    assert result.exit_code == 0 and not (tmp_path / "new").exists(), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_a_sequence_parallel_pin_alone_finds_tensor_parallel_layouts():
    """Fifth fuzz round: `--fix sp=true` without a TP pin ended the search with "sequence_parallel needs tp > 1"
    (the space offered the pin at tp 1); a TP pin of 1 beside it is the conflict, named with the pin as typed."""
    result = run_cli(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--nodes", "1",
                      "--global-batch", "16", "--fix", "sp=true", "--top", "1", "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)["plans"][0]["config"]
    assert config["tp"] > 1 and config["sequence_parallel"] is True
    assert_one_clear_error(run_cli(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--nodes", "1",
                                    "--global-batch", "16", "--fix", "sp=true", "--fix", "tp=1"]),
                           "--fix sequence_parallel=true cannot be taken together with --fix tp=1",
                           "sequence_parallel needs tp > 1")


def test_a_pin_conflict_names_the_rule_the_pins_break():
    """Fifth fuzz round: cp_comm (read only under context parallelism) beside seq1f1b (which runs with cp 1) was
    blamed on the example layout's own pipeline ("this plan has pp 1")."""
    result = run_cli(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--nodes", "1",
                      "--global-batch", "16", "--fix", "cp_comm=ring", "--fix", "seq_chunks=2",
                      "--fix", "schedule=seq1f1b"])
    assert_one_clear_error(result, "--fix cp_comm=ring cannot be taken together with", "with cp 2")
    assert "pp 1" not in result.output


@pytest.fixture(scope="module")
def fitting_plan(tmp_path_factory) -> Path:
    """llama3-8b on one node of 8 H100, ZeRO-3: fits; at ZeRO-0 the same layout does not."""
    path = tmp_path_factory.mktemp("fit") / "plan.json"
    result = run_cli(estimate_args("--nodes", "1", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1",
                                   "--global-batch", "8", "--zero", "3", "--out", path))
    assert result.exit_code == 0, result.output
    return path


def test_a_plan_edited_by_hand_is_estimated_again_before_show_and_launch(tmp_path, fitting_plan):
    """Fifth fuzz round: a plan edited to ZeRO-0 still showed its ZeRO-3 memory ("fits") and passed the dry run,
    where the layout needs twice the device. A plan carries the SHA-256 of what autoconf wrote: an edited one is
    estimated again (a note says so) and launch checks the new estimate; re-indenting changes nothing."""
    doc = json.loads(fitting_plan.read_text())
    assert len(doc["content_sha256"]) == 64 and doc["prediction"]["fits"]
    same = tmp_path / "same.json"
    same.write_text(json.dumps(doc, indent=4))
    result = run_cli(["show", same, "--out", tmp_path / "same_out"])
    assert result.exit_code == 0 and "estimated again" not in result.output, result.output
    doc["config"]["zero_stage"] = 0
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    result = run_cli(["show", edited, "--out", tmp_path / "edited_out"])
    assert result.exit_code == 0, result.output
    assert "is not as autoconf wrote it" in result.output and "(does not fit)" in result.output
    assert_one_clear_error(run_cli(["launch", edited, "--dry-run"]), "the plan does not fit")
    doc["content_sha256"] = "not a digest"
    edited.write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["show", edited]), "content_sha256")


def test_an_edited_plan_made_with_tokens_keeps_its_time_and_cost_to_train(tmp_path):
    """A review: `show` of a plan made with --tokens, edited by hand, estimated the step again but dropped the days,
    GPU-hours and cost to train (the file's stale figures stayed). They are made again at the new throughput, for
    the tokens and the price the plan states."""
    from autoconf.report.current import current
    from autoconf.spec.plan import load_plan

    path = tmp_path / "plan.json"
    result = run_cli(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--nodes", "1",
                      "--global-batch", "16", "--seq-len", "128", "--tokens", "2B", "--price", "3", "--top", "1",
                      "--out", path])
    assert result.exit_code == 0, result.output
    doc = json.loads(path.read_text())
    doc["config"]["zero_stage"] = 3 if doc["config"]["zero_stage"] != 3 else 0
    doc["prediction"]["training"]["days"] = 1.0
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    fresh, note = current(load_plan(edited))
    assert note and "estimated again" in note
    p, t = fresh.prediction, fresh.prediction["training"]
    assert t["tokens"] == 2 * 10**9 and t["usd_per_gpu_hour"] == 3 and t["price_source"] == "--price"
    assert t["days"] == pytest.approx(2e9 / p["tokens_per_s"] / 86400)
    assert t["cost"] == pytest.approx(t["gpu_hours"] * 3) and t["gpu_hours"] == pytest.approx(t["days"] * 24 * 8)
    shown = run_cli(["show", edited, "--out", tmp_path / "shown"])
    assert shown.exit_code == 0 and "price from" in shown.output, shown.output


def test_a_plans_command_line_headroom_and_collective_share_hold_when_it_is_estimated_again(tmp_path):
    """Thirtieth session's review: a plan made with --memory-headroom 0.2 --collective-sm-share 0.5 recorded neither,
    so `show` drew its timeline on the profile's values (6.73 s under a table of 6.743 s), an edited copy was
    estimated again against 76 GiB instead of 64 and a plan that fit at headroom 0 did not fit once its checksum was
    gone. The plan's cluster object records what the command line set, and every estimate again applies it."""
    from autoconf.report.current import current, plan_cluster
    from autoconf.spec.plan import load_plan

    path = tmp_path / "plan.json"
    result = run_cli(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--nodes", "1",
                      "--global-batch", "16", "--seq-len", "128", "--top", "1", "--fix", "pp=2",
                      "--memory-headroom", "0.2", "--collective-sm-share", "0.5", "--out", path])
    assert result.exit_code == 0, result.output
    doc = json.loads(path.read_text())
    assert (doc["cluster"]["memory_headroom"], doc["cluster"]["collective_sm_share"]) == (0.2, 0.5)
    plan = load_plan(path)
    cluster = plan_cluster(plan)
    assert cluster.usable_memory_bytes == pytest.approx(0.8 * cluster.device.memory_bytes)
    assert cluster.collective_sm_share == 0.5
    doc.pop("content_sha256")
    unchecked = tmp_path / "unchecked.json"
    unchecked.write_text(json.dumps(doc))
    fresh, _ = current(load_plan(unchecked))
    for key in ("iteration_time_s", "memory_limit_bytes", "peak_memory_bytes"):
        assert fresh.prediction[key] == pytest.approx(plan.prediction[key], rel=1e-12), key
    plain = run_cli(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--nodes", "1",
                     "--global-batch", "16", "--seq-len", "128", "--top", "1", "--fix", "pp=2",
                     "--out", tmp_path / "plain.json"])
    assert plain.exit_code == 0 and not {"memory_headroom", "collective_sm_share"} & set(
        json.loads((tmp_path / "plain.json").read_text())["cluster"])
    zero = tmp_path / "zero.json"  # (a second review: a share of 0 was not recorded, and read back as 0.159)
    assert run_cli(["estimate", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--nodes", "1", "--tp", "1",
                    "--pp", "2", "--dp", "4", "--micro-batch", "1", "--global-batch", "16", "--seq-len", "128",
                    "--collective-sm-share", "0", "--out", zero]).exit_code == 0
    assert json.loads(zero.read_text())["cluster"]["collective_sm_share"] == 0.0
    assert plan_cluster(load_plan(zero)).collective_sm_share == 0.0
    doc["cluster"]["memory_headroom"] = 1.5
    unchecked.write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["show", unchecked]), "cluster memory_headroom must be a fraction in [0, 1)")


def test_a_plan_made_on_another_version_of_its_profile_is_estimated_again(tmp_path):
    """Thirtieth session's review: a profile file edited after planning (its collective SM share) changed `show`'s
    timeline (6.62 s) under the stored table (6.603 s) without a word. The plan records its profile's digest
    (`profile_sha256`); where the profile found now differs, the plan is estimated again on it with a note, and
    where it is the same, or the plan recorded none, the stored prediction stands."""
    from autoconf.report.current import current
    from autoconf.spec.cluster import PROFILES_DIR
    from autoconf.spec.plan import Plan, content_sha256, load_plan

    profile = tmp_path / "mine.json"
    doc = json.loads((PROFILES_DIR / "dgx-h100-80g.json").read_text())
    profile.write_text(json.dumps(doc))
    path = tmp_path / "plan.json"
    layout = ["--model", "tiny-llama", "--cluster", profile, "--nodes", "1", "--tp", "1", "--pp", "2", "--dp", "4",
              "--micro-batch", "1", "--global-batch", "16", "--seq-len", "128"]
    assert run_cli(["estimate", *layout, "--out", path]).exit_code == 0
    plan = load_plan(path)
    assert len(plan.cluster["profile_sha256"]) == 64 and current(plan) == (plan, None)
    doc["efficiency"]["collective_sm_share"]["value"] = 0.9
    doc["memory_headroom"] = {"value": 0.5, "why": "test"}
    profile.write_text(json.dumps(doc))
    fresh, note = current(plan)
    assert note and "was made on another version of the profile 'dgx-h100-80g'" in note, note
    assert fresh.prediction["memory_limit_bytes"] == pytest.approx(plan.prediction["memory_limit_bytes"] / 0.95 * 0.5)
    assert fresh.cluster["profile_sha256"] != plan.cluster["profile_sha256"]
    again = run_cli(["estimate", *layout])
    assert f"{fresh.prediction['iteration_time_s']:.4g} s" in again.output
    shown = run_cli(["show", path, "--out", tmp_path / "shown"])
    assert shown.exit_code == 0 and "another version of the profile" in shown.output, shown.output
    older = json.loads(path.read_text())  # (as written before plans recorded the digest: the stored prediction)
    del older["cluster"]["profile_sha256"], older["content_sha256"]
    older = Plan.from_dict({**older, "content_sha256": content_sha256(older)})
    assert older.as_written and current(older) == (older, None)


def test_a_profile_that_overstates_the_device_gets_a_note_where_mfu_passes_100_percent(tmp_path):
    """A review: a profile with efficiency.matmul 4.0 (the checks' limit: calibration may divide an efficiency by a
    factor below 1) printed "MFU 189.3%" without a word; a prediction above the device's peak now says why."""
    from autoconf.spec.cluster import PROFILES_DIR

    doc = json.loads((PROFILES_DIR / "dgx-h100-80g.json").read_text())
    args = ["estimate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1",
            "--global-batch", "8", "--seq-len", "4096", "--zero", "3"]
    for value, noted in ((0.667, False), (4.0, True)):
        for key in ("matmul", "attention", "memory") if noted else ("matmul",):
            doc["efficiency"][key]["value"] = value
        path = tmp_path / f"eff{value}.json"
        path.write_text(json.dumps(doc))
        result = run_cli(args + ["--cluster", path])
        assert result.exit_code == 0, result.output
        assert ("is above the device's peak" in result.output) == noted, result.output


def test_a_profile_measured_on_one_node_says_its_inter_node_link_was_not_measured_when_resized():
    """A review: a one-node measured profile planned on several nodes modelled every cross-node transfer on a link
    it never measured (a CPU profile's copy of its loopback link) without a word; a note now says so, and where the
    profile's description names the link's origin, names it."""
    args = ["estimate", "--model", "gpt3-1.3b", "--tp", "1", "--pp", "1", "--micro-batch", "1", "--seq-len", "2048",
            "--zero", "1"]
    for cluster, nodes, noted in (("h100-gpt3-1.3b", 2, True), ("h100-gpt3-1.3b", 1, False),
                                  ("dgx-h100-80g", 2, False)):
        result = run_cli(args + ["--cluster", cluster, "--nodes", str(nodes), "--gpus-per-node", "8",
                                 "--dp", str(8 * nodes),
                                 "--global-batch", str(8 * nodes)])
        assert result.exit_code == 0, result.output
        assert ("was measured on one node: its inter-node link" in result.output) == noted, result.output
    from autoconf.spec.cluster import load_cluster

    measured = load_cluster("h100-gpt3-1.3b")
    copied = dataclasses.replace(measured, description="inter-node link not measured (one node): copied from the "
                                                       "intra-node link.")
    assert "(copied from the intra-node link)" in copied.unmeasured_links_note(4)


def test_a_profile_measured_on_one_rank_says_no_link_was_measured_when_planned_on_more():
    """An audit: `profile --quick --nproc-per-node 1` stores placeholder links (memory bandwidth, no latency), and a
    plan resized to 4 devices from it costed every transfer on them without a word (a measured 2-rank profile refuses
    that resize). The note names the stand-in; one rank planned on one device has none."""
    from autoconf.spec.cluster import load_cluster

    one = dataclasses.replace(load_cluster("h100-gpt3-1.3b"), gpus_per_node=1, intra_node_matrix=None,
                              description="Measured on 1 node(s) x 1 GPU(s). no links measured (one rank): "
                                          "placeholders at memory bandwidth.")
    for nodes, devices in ((1, 4), (2, 1)):
        note = one.unmeasured_links_note(nodes, devices)
        assert note.startswith(f"{one.name} was measured on one rank: no link was measured (placeholders at memory "
                               f"bandwidth), and every transfer between the {nodes * devices} devices")
    assert one.unmeasured_links_note(1, 1) is None
    assert one.unmeasured_links_note(1) is None


def test_a_deep_model_keeps_the_uniform_split_without_solving_it(monkeypatch):
    """Fifth fuzz round: a model of 100,000 layers (the model format's limit) planned for over 9 minutes, in the
    refinement's CP-SAT partition (layers x stages booleans) and its polish; past REFINE_MAX_LAYERS the uniform split
    stays and neither runs."""
    import dataclasses as dc

    from autoconf.solve import partition, refine
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.frameworks import Execution
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import PRESETS

    def solve(*args, **kwargs):
        raise AssertionError("CP-SAT's partition was asked for a model past REFINE_MAX_LAYERS")

    monkeypatch.setattr(partition, "solve_partition", solve)
    model = dc.replace(PRESETS["tiny-llama"], num_layers=refine.REFINE_MAX_LAYERS + 1)
    c = ParallelConfig(tp=1, pp=2, dp=4, micro_batch_size=1, global_batch_size=16, seq_len=128, dtype="bf16")
    best, seconds = refine.refined_partition_by_estimate(model, load_cluster("dgx-h100-80g", nodes=1), c,
                                                         Execution())
    assert best is None and seconds > 0


def test_metrics_inside_the_checkpoint_folder_are_refused(tmp_path, tiny_plan):
    """Fifth fuzz round: --metrics equal to --checkpoint-dir passed the dry run, then the run failed on "Is a
    directory" and left a folder and a lock file behind; an empty --checkpoint-dir meant the current folder."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(tiny_plan))
    for metrics, folder in (("m.jsonl", "m.jsonl"), ("ck/m.jsonl", "ck")):
        assert_one_clear_error(run_cli(["launch", path, "--dry-run", "--metrics", tmp_path / metrics,
                                        "--checkpoint-dir", tmp_path / folder]), "is or lies in --checkpoint-dir")
    assert_one_clear_error(run_cli(["launch", path, "--dry-run", "--checkpoint-dir", ""]),
                           "--checkpoint-dir is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_two_rope_scalings_in_one_hugging_face_config_are_refused(tmp_path):
    """Fifth fuzz round: a config with a linear `rope_scaling` and a llama3 `rope_parameters` was read as linear and
    the llama3 scaling dropped without a word; the same scaling written twice (transformers 5 keeps both) is read."""
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
              "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048,
              "rope_scaling": {"rope_type": "linear", "factor": 4.0},
              "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                                  "rope_theta": 500000}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    args = ["estimate", "--model", path, "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "4",
            "--micro-batch", "1", "--global-batch", "4", "--seq-len", "64"]
    assert_one_clear_error(run_cli(args), "give two RoPE scalings")
    config["rope_scaling"] = {k: v for k, v in config["rope_parameters"].items() if k != "rope_theta"}
    path.write_text(json.dumps(config))
    assert run_cli(args).exit_code == 0


def test_the_metrics_summary_of_an_edited_plan_compares_no_stale_prediction(tmp_path, fitting_plan):
    """Fifth fuzz round: a run of an edited plan wrote the file's prediction (another layout's) as the predicted step
    and memory of its metrics summary; it now writes none and says why."""
    import torch

    from autoconf.execute.train import TrainOptions, _summary
    from autoconf.spec.plan import load_plan

    doc = json.loads(fitting_plan.read_text())
    records = [{"step": 1, "step_time_s": 0.5, "peak_memory_bytes": 1}]
    plain = _summary(load_plan(fitting_plan), TrainOptions(steps=1), records, torch.device("cpu"), 0)
    assert plain["predicted_iteration_time_s"] == doc["prediction"]["iteration_time_s"] and "prediction" not in plain
    doc["config"]["zero_stage"] = 0
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    summary = _summary(load_plan(edited), TrainOptions(steps=1), records, torch.device("cpu"), 0)
    assert summary["predicted_iteration_time_s"] is None and summary["predicted_peak_memory_bytes"] is None
    assert "not as autoconf wrote it" in summary["prediction"]
    doc.pop("content_sha256")  # (sixth round: an edit that removed the checksum too)
    edited.write_text(json.dumps(doc))
    summary = _summary(load_plan(edited), TrainOptions(steps=1), records, torch.device("cpu"), 0)
    assert summary["predicted_iteration_time_s"] is None and "carries no checksum" in summary["prediction"]


@pytest.mark.parametrize("config, needle", [
    ({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 256, "n_positions": 128,
      "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "gpt2 learns its positions and has no RoPE"),
    ({"model_type": "qwen3", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
      "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 4096,
      "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                       "mscale": 1.0, "mscale_all_dim": -1.0}}, "mscale_all_dim must be >= 0"),
])
def test_a_rope_setting_that_means_nothing_for_its_model_is_refused(tmp_path, config, needle):
    """Fifth fuzz round: a RoPE scaling on gpt2 (learned positions) and a negative YaRN magnitude were read without a
    word."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert_one_clear_error(run_cli(["estimate", "--model", path, "--cluster", "cpu-local", "--tp", "1", "--pp", "1",
                                    "--dp", "4", "--micro-batch", "1", "--global-batch", "4", "--seq-len", "64"]),
                           needle)


# ---- Sixth fuzz round (2026-12-06) --------------------------------------------------------------------------------
def test_a_plan_whose_checksum_was_removed_is_estimated_again(tmp_path, fitting_plan):
    """An edit that also removed content_sha256 (or set it to null) kept the file's stale prediction: ZeRO-0 showed
    the ZeRO-3 layout's "fits" and passed the dry run. A plan without the checksum is estimated again too."""
    doc = json.loads(fitting_plan.read_text())
    doc["config"]["zero_stage"] = 0
    for checksum in (None, "drop"):
        if checksum == "drop":
            doc.pop("content_sha256")
        else:
            doc["content_sha256"] = checksum
        edited = tmp_path / "edited.json"
        edited.write_text(json.dumps(doc))
        result = run_cli(["show", edited, "--out", tmp_path / f"out_{checksum}"])
        assert result.exit_code == 0, result.output
        assert "carries no checksum of what autoconf wrote" in result.output and "(does not fit)" in result.output
        assert_one_clear_error(run_cli(["launch", edited, "--dry-run"]), "the plan does not fit")


def test_a_plan_without_checksum_whose_cluster_is_gone_still_launches(tmp_path):
    """A plan written before plans carried a checksum, planned on a profile file that is not on this machine, is
    launched on its stored prediction with a note (estimating it again needs the profile); an edited one is not."""
    from autoconf.spec.cluster import PROFILES_DIR

    profile = json.loads((PROFILES_DIR / "cpu-local.json").read_text())
    profile["name"] = "elsewhere-cpu"
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps(profile))
    plan = tmp_path / "plan.json"
    result = run_cli(["estimate", "--model", "tiny-gpt", "--cluster", path, "--tp", "1", "--pp", "1", "--dp", "4",
                      "--micro-batch", "1", "--global-batch", "4", "--out", plan])
    assert result.exit_code == 0, result.output
    path.unlink()
    doc = json.loads(plan.read_text())
    doc.pop("content_sha256")
    plan.write_text(json.dumps(doc))
    result = run_cli(["launch", plan, "--dry-run", "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert "its stored prediction is used unchecked (cannot estimate" in result.output
    assert "the plan's cluster 'elsewhere-cpu' is not available" in result.output
    assert "--steps 1" in result.output
    doc["config"]["zero_stage"] = 1
    doc["content_sha256"] = "0" * 64
    plan.write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["launch", plan, "--dry-run"]), "is not as autoconf wrote it")


@pytest.mark.parametrize("flags, needle", [
    ({"bucket_params": "4e7"}, 'bucket_params is "4e7", which is not a value of its type (e.g. a number or null)'),
    ({"zero_stages": "0,1"}, "zero_stages is \"0,1\", which is not a value of its type (e.g. [0, 1, 2, 3])"),
    ({"zero_stages": [[1]]}, "zero_stages is [[1]]"),
    ({"overlap_comm_sm_share": "0.1"}, 'overlap_comm_sm_share is "0.1"'),
    ({"param_gather_overlap": "false"}, 'param_gather_overlap is "false", which is not a value of its type'),
    ({"param_gather_overlap": None}, "param_gather_overlap is null"),
    ({"name": "autoconf"}, "prediction.framework_flags: 'name' is not a framework flag"),
])
def test_a_plans_framework_flags_must_be_user_flags_of_their_type(tmp_path, flags, needle):
    """A plan's recorded framework flags went to the framework unchecked: a string crashed `show` (TypeError), and
    "false" was read as true (changing the predicted step). Each must be a user flag holding a value of its type."""
    path = tmp_path / "mc.json"
    result = run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "2", "--dp",
                      "2", "--micro-batch", "1", "--global-batch", "8", "--zero", "1", "--framework", "megatron-core",
                      "--out", path])
    assert result.exit_code == 0, result.output
    doc = json.loads(path.read_text())
    doc["prediction"]["framework_flags"] = flags
    path.write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["show", path, "--out", tmp_path / "x"]), needle)


def test_no_output_goes_into_autoconfs_own_package(tmp_path):
    """`estimate --cluster cpu-local --out <package>/profiles/cpu-local.json --force` replaced the bundled profile
    the run read, after which every command naming it failed. Nothing autoconf writes goes into its package."""
    from autoconf.files import PACKAGE_DIR

    target = PACKAGE_DIR / "profiles" / "cpu-local.json"
    before = target.read_bytes()
    result = run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp",
                      "4", "--micro-batch", "1", "--global-batch", "8", "--out", target, "--force"])
    assert_one_clear_error(result, "is inside autoconf's own package folder")
    assert target.read_bytes() == before
    assert not (PACKAGE_DIR / "profiles" / "new.json").exists()
    assert_one_clear_error(run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp",
                                    "1", "--dp", "4", "--micro-batch", "1", "--global-batch", "8", "--out",
                                    PACKAGE_DIR / "profiles" / "new.json"]), "own package folder")


def test_a_framework_flag_the_layout_needs_is_not_probed_into_a_refusal():
    """`estimate --framework megatron-core --zero 2 --framework-flag zero_stages=0,1,2,3` predicted the layout, then
    refused it: the check for flags without effect set the flag back and let the framework's refusal out."""
    result = run_cli(estimate_args("--nodes", "1", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1",
                                   "--global-batch", "8", "--zero", "2", "--framework", "megatron-core",
                                   "--framework-flag", "zero_stages=0,1,2,3"))
    assert result.exit_code == 0, result.output
    assert "runs ZeRO stages" not in result.output


def test_a_pinned_schedule_the_runtime_refuses_names_its_rule():
    """`plan --fix pp=8 --fix schedule=1f1b` with fewer micro-batches than stages printed the pins as a Python dict
    and blamed the global batch's divisibility; it names torch's 1F1B rule and what would work."""
    result = run_cli(["plan", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--nodes", "1", "--global-batch",
                      "2", "--seq-len", "4096", "--fix", "pp=4", "--fix", "schedule=1f1b"])
    assert_one_clear_error(result, "--fix schedule=1f1b cannot be taken together with --fix pp=4",
                           "in torch's 1F1B", "gpipe")


@pytest.mark.parametrize("args, needle", [
    (["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "١", "--pp", "1", "--dp", "4",
      "--micro-batch", "1", "--global-batch", "8"], "'١' is not an integer in ASCII digits"),
    (["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "1_0"],
     "'1_0' is not an integer in ASCII digits"),
    (["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--memory-headroom", "٠.١"],
     "is not a number in ASCII digits"),
    (["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--nodes", "١:4"],
     "--nodes '١:4' must be N, A:B"),
    (["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--framework-flag",
      "bucket_params=1_000"], "--framework-flag bucket_params: cannot read '1_000'"),
    (["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1", "--pp", "2", "--dp", "2",
      "--micro-batch", "1", "--global-batch", "8", "--recompute", "full", "--recompute-layers", "١,1"],
     "expected comma-separated layer counts"),
])
def test_every_number_is_read_in_ascii_digits(args, needle):
    """Sixth fuzz round: click's number options, --nodes ranges and framework flags read `1_0` as 10 and other
    scripts' digits (`٨`) as numbers, where --fix and --tokens refuse them; every numeric input now refuses them in
    one line."""
    assert_one_clear_error(run_cli(args), needle)


def test_a_pin_that_breaks_another_rule_is_named_even_where_the_batch_does_not_divide():
    """Second review of the sixth round: the batch was blamed whenever it did not divide the probe, though tp 3
    not dividing 32 heads is what the pin breaks; the batch is blamed only where it is the probe's one problem."""
    result = run_cli(["plan", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--nodes", "3", "--global-batch",
                      "36", "--fix", "tp=3", "--fix", "pp=1"])
    assert_one_clear_error(result, "--fix tp=3 cannot be taken together with --fix pp=1",
                           "tp 3 does not divide the 32 attention heads")
