"""Issue 18: hostile and careless input. Each test states a property that failed at 74f1489.

Names cannot break out of generated scripts; outputs are never written through links; profiles are checked field by
field; bad CLI input is one `autoconf: error:` line; corrupt checkpoints are skipped for the newest intact one; a
stopped launcher leaves no training behind; two runs cannot share outputs; the rendezvous store listens on loopback.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoconf.errors import UserError
from autoconf.spec.cluster import PROFILES_DIR, ClusterProfile
from autoconf.spec.plan import Plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bad_input import assert_one_clear_error, run_cli, tiny_plan_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INJECTED = "touch INJECTED"


# ---- 1. names cannot inject commands ------------------------------------------------------------------------------
def _hostile_plan() -> dict:
    plan = tiny_plan_dict()
    plan["model"]["name"] = f"m\n{INJECTED}\n"
    plan["cluster"]["name"] = f"c\r\n{INJECTED}\u2028x"
    return plan


@pytest.mark.parametrize("where", ["model", "cluster"])
def test_plan_with_a_newline_in_a_name_is_refused(tmp_path, where):
    plan = tiny_plan_dict()
    plan[where]["name"] = f"x\n{INJECTED}"
    (tmp_path / "p.json").write_text(json.dumps(plan))
    assert_one_clear_error(run_cli(["show", tmp_path / "p.json", "--out", tmp_path / "o"]), "name")
    assert_one_clear_error(run_cli(["launch", tmp_path / "p.json", "--dry-run"]), "name")


def test_hf_config_in_a_folder_with_a_newline_is_refused(tmp_path):
    folder = tmp_path / f"evil\n{INJECTED}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "intermediate_size": 128, "vocab_size": 100}))
    assert_one_clear_error(run_cli(["estimate", "--model", folder / "config.json", "--cluster", "cpu-local", "--tp",
                                    "1", "--pp", "1", "--dp", "4", "--micro-batch", "1", "--global-batch", "4",
                                    "--seq-len", "32"]), "newline")


def test_cluster_profile_with_a_control_character_in_its_name_is_refused():
    doc = json.loads((PROFILES_DIR / "cpu-local.json").read_text())
    with pytest.raises(UserError, match="name"):
        ClusterProfile.from_dict({**doc, "name": f"x\n{INJECTED}"})


def test_generated_scripts_run_no_injected_command(tmp_path):
    """Even for a plan object built in code (no loader to refuse its names), every generated script, run by a stub
    shell with `torchrun`, `autoconf`, `srun` and `scontrol` stubbed out, creates no INJECTED file."""
    from autoconf.report.exporters import export_texts

    plan = Plan.from_dict(tiny_plan_dict())
    hostile = _hostile_plan()
    plan.model = copy.copy(plan.model)
    object.__setattr__(plan.model, "name", hostile["model"]["name"])
    plan.cluster = hostile["cluster"]
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("torchrun", "autoconf", "srun", "scontrol"):
        (stubs / tool).write_text("#!/bin/sh\nexit 0\n")
        (stubs / tool).chmod(0o755)
    texts = export_texts(plan, tmp_path / "plan.json")
    for name, text in texts.items():
        for line in text.splitlines():
            assert INJECTED not in line or line.lstrip().startswith("#"), (name, line)
        if name.endswith((".sh", ".sbatch")):
            script = tmp_path / name
            script.write_text(text)
            env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", MASTER_ADDR="127.0.0.1",
                       SLURM_JOB_NODELIST="n1", SLURM_NODEID="0")
            subprocess.run(["bash", str(script), "0"], cwd=tmp_path, env=env, capture_output=True, timeout=30)
            assert not (tmp_path / "INJECTED").exists(), (name, text)
    sbatch = texts["slurm.sbatch"]
    assert all("\n" not in line and line.count("#SBATCH") == 1 for line in sbatch.splitlines() if "#SBATCH" in line)
    assert "--job-name=autoconf-m_touch_INJECTED_\n" in sbatch


def test_a_plan_path_cannot_add_a_document_to_the_kubernetes_manifest(tmp_path):
    """The manifest's header quoted the plan path for the shell only, so a path holding a newline and a YAML
    document added a Pod that `kubectl apply` would create. The header escapes it, and the manifest is one document
    whose job name leaves the operator room for its pod and service suffixes (63 characters in all)."""
    import yaml

    from autoconf.report.exporters import export_texts

    plan = Plan.from_dict(tiny_plan_dict())
    plan.model = copy.copy(plan.model)
    object.__setattr__(plan.model, "name", "Meta-Llama-3.1-8B-Instruct-abliterated-finetune-v2-longcontext-128k")
    for path in ("p\n---\n{apiVersion: v1, kind: Pod, metadata: {name: pwn}}\n---\n#.json", "p\r.json",
                 "p\u2028.json"):
        manifest = export_texts(plan, tmp_path / path)["pytorchjob.yaml"]
        docs = [d for d in yaml.safe_load_all(manifest) if d is not None]
        assert [d["kind"] for d in docs] == ["PyTorchJob"], manifest
        name = docs[0]["metadata"]["name"]
        assert name.startswith("autoconf-meta-llama") and len(name + "-worker-12345") <= 63


def test_scripts_run_the_plan_at_the_path_written(tmp_path, monkeypatch):
    """`plan --out '~/p.json'` (a `~` the shell left alone) wrote ./~/p.json while launch.sh ran ~/p.json from the
    home folder, and `--explain '~ex'` ended in a traceback (no user "ex"): the scripts name the file as written."""
    from autoconf.report.exporters import export_texts

    monkeypatch.chdir(tmp_path)
    plan = Plan.from_dict(tiny_plan_dict())
    for written in ("~/p.json", "~nosuchuser/p.json"):
        assert str(tmp_path / written) in export_texts(plan, written)["launch.sh"]


# ---- 4. writes never follow links; one writer --------------------------------------------------------------------
def test_writer_refuses_links_and_leaves_no_temporary(tmp_path):
    from autoconf.files import write_file

    target = tmp_path / "precious.txt"
    target.write_text("mine")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    for force in (False, True):
        with pytest.raises(UserError, match="symbolic link"):
            write_file(link, "overwritten", force=force)
    assert target.read_text() == "mine"
    with pytest.raises(UserError, match="already exists"):
        write_file(target, "x")
    with pytest.raises(UserError, match="cannot write"):
        write_file(tmp_path / "missing" / "\0bad" / "x", "x")

    def fail(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    from autoconf.files import write_with

    with pytest.raises(UserError, match="No space"):
        write_with(tmp_path / "new.json", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "precious.txt"]


def test_plan_out_through_links_leaves_targets_untouched(tmp_path):
    """A link at the old fixed temporary name, at --out, at a picture of --explain: the targets are not touched."""
    victim = tmp_path / "victim"
    victim.write_text("mine")
    (tmp_path / ".plan.json.tmp").symlink_to(victim)
    args = ["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64",
            "--fix", "pp=2", "--fix", "tp=1", "--top", "1"]
    assert run_cli([*args, "--out", tmp_path / "plan.json"]).exit_code == 0
    assert victim.read_text() == "mine" and (tmp_path / "plan.json").is_file()
    (tmp_path / "link.json").symlink_to(victim)
    assert_one_clear_error(run_cli([*args, "--out", tmp_path / "link.json", "--force"]), "symbolic link")
    ex = tmp_path / "ex"
    ex.mkdir()
    (ex / "timeline.png").symlink_to(victim)
    assert_one_clear_error(run_cli([*args, "--explain", ex, "--force"]), "symbolic link")
    assert_one_clear_error(run_cli(["show", tmp_path / "plan.json", "--out", ex, "--force"]), "symbolic link")
    (tmp_path / "m.jsonl").symlink_to(victim)
    assert_one_clear_error(run_cli(["launch", tmp_path / "plan.json", "--dry-run", "--metrics", tmp_path / "m.jsonl",
                                    "--force"]), "symbolic link")
    assert victim.read_text() == "mine"


def test_writes_never_replace_a_pipe_or_a_device(tmp_path):
    """`plan --out /dev/null --force` renamed the plan over /dev/null: a path that is not a regular file is refused
    with or without --force, and stays what it was."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    plan = ["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64",
            "--fix", "pp=2", "--fix", "tp=1", "--top", "1"]
    estimate = ["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "4",
                "--micro-batch", "2", "--global-batch", "8"]
    for force in ([], ["--force"]):
        assert_one_clear_error(run_cli([*plan, "--out", fifo, *force]), "not a regular file")
        assert_one_clear_error(run_cli([*estimate, "--memory-picture", fifo, *force]), "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    from autoconf.files import check_new

    with pytest.raises(UserError, match="not a regular file"):
        check_new(os.devnull, force=True)


def test_one_atomic_writer_in_the_package():
    """No module but autoconf/files.py renames temporaries into place."""
    offenders = []
    for path in (REPO / "autoconf").rglob("*.py"):
        text = path.read_text()
        if path.name != "files.py" and any(s in text for s in (".tmp\")", "tmp.replace(", ".tmp{", "mkstemp",
                                                              "NamedTemporaryFile(mode=\"w")):
            offenders.append(str(path))
    assert offenders == []


# ---- 7. profiles below the top level -----------------------------------------------------------------------------
_CPU = json.loads((PROFILES_DIR / "cpu-local.json").read_text())
_H100 = json.loads((PROFILES_DIR / "h100-gpt3-1.3b.json").read_text())


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(compute="garbage"), "compute"),
    (lambda d: d["compute"]["entries"].__setitem__(0, [1, 2]), "compute.entries[0]"),
    (lambda d: d["compute"]["chain_scales"][0].pop("seq_len"), "compute.chain_scales[0].seq_len"),
    (lambda d: d["compute"]["entries"][0].update(forward_s=float("nan")), "compute.entries[0].forward_s"),
    (lambda d: d["compute"]["entries"][0].update(forward_s=-1.0), "compute.entries[0].forward_s"),
    (lambda d: d.update(gpus_per_node=2.9), "gpus_per_node"),
    (lambda d: d.update(nodes="1"), "nodes"),
    (lambda d: d["efficiency"]["matmul"].update(value=1e6), "efficiency.matmul"),
    (lambda d: d["device"].update(peak_flops={"bf16": "fast"}), "device.peak_flops.bf16"),
    (lambda d: d["intra_node"].update(latency_s="1"), "intra_node.latency_s"),
    (lambda d: d["compute"]["entries"][0].update(forward_s=0.0), "compute.entries[0].forward_s"),
    (lambda d: d["device"].update(memory_bytes=1), "device.memory_bytes"),
    (lambda d: d.update(memory_head_room={"fraction": 0.2}), "unknown field(s) 'memory_head_room'"),
])
def test_profile_fields_are_checked_with_their_range(tmp_path, edit, field):
    doc = copy.deepcopy(_H100)
    edit(doc)
    with pytest.raises(UserError) as err:
        ClusterProfile.from_dict(doc, "p.json")
    assert field in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "p.json").write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["estimate", "--model", "gpt3-1.3b", "--cluster", tmp_path / "p.json", "--tp",
                                    "1", "--pp", "1", "--dp", "1", "--micro-batch", "1", "--global-batch", "1"]),
                           field)


def test_every_field_a_profile_writes_is_one_it_reads():
    """PROFILE_FIELDS (what a profile may hold) is what the bundled profiles write, each optional part included."""
    from autoconf.spec.cluster import bundled_profiles
    from autoconf.spec.profile_checks import PROFILE_FIELDS

    written = set()
    for name in bundled_profiles():
        written |= set(ClusterProfile.from_dict(json.loads((PROFILES_DIR / f"{name}.json").read_text())).to_dict())
    assert written == set(PROFILE_FIELDS)


def _paths(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


_DEEP = [p for p in _paths(_H100) if len(p) >= 2]
_bad_value = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(-10, 10), st.sampled_from([-1e30, 1e30, [], {}, [1], {"x": 1}]))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.sampled_from(_DEEP), _bad_value)
def test_fuzz_profile_fields_below_the_top_level(path, value):
    """A value anywhere below the top level replaced by junk: the profile either loads, and then every number the
    cost model reads is finite, or is refused with a UserError; never another exception."""
    doc = copy.deepcopy(_H100)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        profile = ClusterProfile.from_dict(doc)
    except UserError:
        return
    from autoconf.cost.estimate import estimate
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import PRESETS

    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=2, seq_len=512, dtype="bf16")
    try:
        pred = estimate(PRESETS["gpt3-1.3b"], profile, config).prediction
    except UserError:
        return
    assert math.isfinite(pred["iteration_time_s"]) and pred["iteration_time_s"] > 0


# ---- 8, 9, 12. one line for bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("edit", [
    lambda p: p.update(iteration_time_s=float("nan")),
    lambda p: p.update(iteration_time_s="fast"),
    lambda p: p.update(memory_per_stage=[1, 2]),
    lambda p: p.update(memory_per_stage={"a": 1}),
    lambda p: p.update(time_breakdown=[1]),
    lambda p: p.update(fits="yes"),
    lambda p: p.update(training=[1]),
    lambda p: p.update(training={"tokens": "abc", "days": 1, "gpu_hours": 1, "cost": None}),
    lambda p: p.update(training={"tokens": 1, "days": -1, "gpu_hours": 1, "cost": None}),
    lambda p: p.update(training={"tokens": 1, "days": 1, "gpu_hours": 1, "cost": "x", "usd_per_gpu_hour": 2}),
])
def test_show_with_a_malformed_prediction(tmp_path, edit):
    plan = tiny_plan_dict()
    edit(plan["prediction"])
    (tmp_path / "p.json").write_text(json.dumps(plan))
    assert_one_clear_error(run_cli(["show", tmp_path / "p.json", "--out", tmp_path / "o"]), "prediction")


def test_show_of_a_plan_without_a_prediction_estimates_it_or_writes_nothing(tmp_path):
    """It wrote timeline.png, then stopped on the missing memory prediction with two lines. A plan whose prediction
    was removed is not as autoconf wrote it, so `show` estimates it again on its cluster, as `launch` does (sixth
    fuzz round: they disagreed); where the cluster is not at hand (which redrawing the timeline needs too), that is
    one line and nothing is written."""
    plan = tiny_plan_dict()
    plan["prediction"] = {}
    (tmp_path / "p.json").write_text(json.dumps(plan))
    result = run_cli(["show", tmp_path / "p.json", "--out", tmp_path / "o"])
    assert result.exit_code == 0 and "holds no prediction; it is estimated now" in result.output, result.output
    plan.pop("content_sha256")
    plan["cluster"]["name"], plan["cluster"]["profile"] = "gone-cpu", str(tmp_path / "gone.json")
    (tmp_path / "q.json").write_text(json.dumps(plan))
    assert_one_clear_error(run_cli(["show", tmp_path / "q.json", "--out", tmp_path / "o2"]),
                           "the plan's cluster 'gone-cpu' is not available")
    assert not (tmp_path / "o2").exists()


ESTIMATE = ["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1", "--pp", "2", "--dp", "2",
            "--micro-batch", "1", "--seq-len", "64"]


@pytest.mark.parametrize("args,needle", [
    ([*ESTIMATE, "--global-batch", str(10 ** 30)], "--global-batch"),
    ([*ESTIMATE, "--global-batch", str(2 ** 22)], "micro-batches"),
    (["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", str(10 ** 18)], "--global-batch"),
    ([*ESTIMATE, "--global-batch", "8", "--tp", "x"], "--tp"),
    ([*ESTIMATE, "--global-batch", "8", "--out", ""], "--out"),
    (["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--out", ""], "--out"),
    (["launch", "PLAN", "--dry-run", "--nnodes", "0"], "--nnodes"),
    (["launch", "PLAN", "--dry-run", "--master-port", "99999"], "--master-port"),
    (["models", "--no-such-flag"], "no-such-flag"),
])
def test_bad_values_are_one_line(tmp_path, args, needle):
    """Each bad value is refused with exit code 2 and one 'autoconf: error:' line naming the option (no traceback;
    a huge batch is refused by its cap, not by running out of time, which is no test's business)."""
    (tmp_path / "plan.json").write_text(json.dumps(tiny_plan_dict()))
    args = [str(tmp_path / "plan.json") if a == "PLAN" else a for a in args]
    result = run_cli(args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("autoconf: error:"), result.output
    assert needle in lines[0], lines[0]


def test_hf_zero_kv_heads_and_boolean_partition_are_refused(tmp_path):
    from autoconf.spec.presets import load_model

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 0, "intermediate_size": 128, "vocab_size": 100}))
    with pytest.raises(UserError, match="num_key_value_heads"):
        load_model(str(tmp_path / "m" / "config.json"))
    plan = tiny_plan_dict()
    plan["partition"][0][0] = False
    with pytest.raises(UserError, match="partition"):
        Plan.from_dict(plan)


# ---- 10. the data file is checked by the launcher ----------------------------------------------------------------
@pytest.mark.parametrize("make,needle", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"\x01\x00\x02"), "multiple"),
    (lambda p: p.write_bytes(b"\x01\x00" * 4), "fewer than"),
    (lambda p: p.write_bytes(b"\xff\xff" * 200), "vocabulary"),
    (lambda p: p.mkdir(), "directory"),
])
def test_launch_checks_the_data_file_before_starting(tmp_path, make, needle):
    (tmp_path / "plan.json").write_text(json.dumps(tiny_plan_dict()))
    data = tmp_path / "tokens.bin"
    make(data)
    assert_one_clear_error(run_cli(["launch", tmp_path / "plan.json", "--dry-run", "--data", data]), needle)


def test_launch_calls_dev_zero_not_a_regular_file(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps(tiny_plan_dict()))
    assert_one_clear_error(run_cli(["launch", tmp_path / "plan.json", "--dry-run", "--data", "/dev/zero"]),
                           "not a regular file")


def test_metrics_at_the_plan_or_data_path_is_refused_even_with_force(tmp_path):
    """`--metrics` naming the plan, the data file or a token file's dtype sidecar (an audit: emptied, and the run
    died on a lost peer), with --force, deleted it before the run read it."""
    import numpy as np

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan_dict()))
    text = tmp_path / "tokens.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 200)
    tokens = tmp_path / "tokens.bin"
    (np.arange(5000) % 200).astype(np.uint16).tofile(tokens)
    sidecar = tmp_path / "tokens.bin.json"
    sidecar.write_text('{"dtype": "uint16"}')
    for data, target, what in ((text, plan, "is the plan"), (text, text, "is the data file"),
                               (tokens, sidecar, "is the data file's dtype sidecar")):
        before = target.read_bytes()
        assert_one_clear_error(run_cli(["launch", plan, "--dry-run", "--data", data, "--metrics", target,
                                        "--force"]), what)
        assert target.read_bytes() == before


@pytest.mark.parametrize("edit, needle", [(lambda c: c.pop("pp"), "missing config field(s) pp"),
                                          (lambda c: c.update(sequence_parallel="yes"),
                                           "sequence_parallel must be true or false")])
def test_a_plan_config_missing_a_degree_or_with_a_word_for_a_flag_is_named(tmp_path, edit, needle):
    """A config without pp read as Python's "__init__() missing 1 required positional argument"; a string where
    sequence_parallel's true or false belongs was taken."""
    doc = tiny_plan_dict()
    edit(doc["config"])
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["launch", tmp_path / "plan.json", "--dry-run"]), needle)


def test_a_launch_with_nothing_left_to_train_is_refused(tmp_path):
    """--steps at or below the newest checkpoint's step started every rank to train nothing and said "done"."""
    from autoconf.execute.checkpoint import MARKER, step_dir

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan_dict()))
    done = step_dir(tmp_path / "ck", 14)
    done.mkdir(parents=True)
    (done / MARKER).write_text(json.dumps({"step": 14, "data_position": 0}))
    args = ["launch", plan, "--dry-run", "--checkpoint-dir", tmp_path / "ck"]
    assert_one_clear_error(run_cli([*args, "--steps", "5"]), "at step 14, at or past --steps 5",
                           "--steps above 14")
    assert run_cli([*args, "--steps", "15"]).exit_code == 0


def test_a_resumed_run_continues_its_metrics_without_force(tmp_path):
    """Relaunching a run to go on from its checkpoint with the same --metrics needed --force, which deleted the steps
    before the checkpoint; a run that resumes now continues the file (the trainer keeps the steps up to the
    checkpoint, `train.dedupe_metrics`), and one that does not still needs --force."""
    from autoconf.execute.checkpoint import MARKER, step_dir

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan_dict()))
    metrics = tmp_path / "m.jsonl"
    mine = "".join(json.dumps({"step": k, "loss": 5.0 - k / 10}) + "\n" for k in range(1, 5))
    metrics.write_text(mine)
    args = ["launch", plan, "--dry-run", "--steps", "10", "--metrics", metrics, "--checkpoint-dir", tmp_path / "ck"]
    assert_one_clear_error(run_cli(args), "--force")
    done = step_dir(tmp_path / "ck", 4)
    done.mkdir(parents=True)
    (done / MARKER).write_text(json.dumps({"step": 4, "data_position": 4, "loss": 4.6}))
    assert run_cli(args).exit_code == 0
    assert metrics.read_text() == mine


@pytest.mark.parametrize("text, needle", [
    ("my precious notes\nline two\n", "line 1 is not a metrics record"),
    ('{"step": 1, "loss": 4.9}\n', "lacks step 2 of the 4"),
    ("".join(json.dumps({"step": k, "loss": 9.0}) + "\n" for k in range(1, 7)), "it is another run's file")])
def test_a_resume_continues_only_its_own_metrics_file(tmp_path, text, needle):
    """A relaunch that resumed rewrote any --metrics file without --force: a user's notes were replaced by step
    records, another run's file was cut and mixed with this one's, a partial one got a gap. It continues only a
    file that holds this run's steps up to the checkpoint (the checkpoint records its step's loss)."""
    from autoconf.execute.checkpoint import MARKER, step_dir

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan_dict()))
    done = step_dir(tmp_path / "ck", 4)
    done.mkdir(parents=True)
    (done / MARKER).write_text(json.dumps({"step": 4, "data_position": 4, "loss": 4.6}))
    metrics = tmp_path / "m.txt"
    metrics.write_text(text)
    args = ["launch", plan, "--dry-run", "--steps", "10", "--metrics", metrics, "--checkpoint-dir", tmp_path / "ck"]
    assert_one_clear_error(run_cli(args), needle, "--force")
    assert metrics.read_text() == text
    assert run_cli([*args, "--force"]).exit_code == 0
    link = tmp_path / "link.jsonl"
    link.symlink_to(metrics)  # (refused before any rank starts, as without a checkpoint)
    assert_one_clear_error(run_cli([*args[:6], link, *args[7:]]), "symbolic link")


def test_a_folder_named_like_a_checkpoint_is_not_replaced(tmp_path):
    """A step-NNNNNNNN folder autoconf did not write (no marker) was deleted when the run saved that step; the run
    is refused before it starts when it would save that step, and skips the folder otherwise."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan_dict()))
    mine = tmp_path / "ck" / "step-00000002"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("precious")
    base = ["launch", plan, "--dry-run", "--checkpoint-dir", tmp_path / "ck"]
    assert_one_clear_error(run_cli([*base, "--steps", "2"]), "holds step-00000002, which autoconf did not write")
    assert_one_clear_error(run_cli([*base, "--steps", "4", "--checkpoint-every", "2"]), "step-00000002")
    assert run_cli([*base, "--steps", "3"]).exit_code == 0  # (it saves step 3 only)
    assert (mine / "notes.txt").read_text() == "precious"
    # A review: a file of that name passed and the run died at its save with a traceback; a .tmp-step-* folder
    # holding the user's files was removed after the first save. Both are refused before the run, and left.
    (tmp_path / "ck" / "step-00000005").write_text("mine")
    assert_one_clear_error(run_cli([*base, "--steps", "5"]), "holds step-00000005, which autoconf did not write")
    theirs = tmp_path / "ck" / ".tmp-step-00000006"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("precious")
    assert_one_clear_error(run_cli([*base, "--steps", "6"]), "holds .tmp-step-00000006, which autoconf did not")
    from autoconf.execute.checkpoint import remove_interrupted, written_by_save

    ours = tmp_path / "ck" / ".tmp-step-00000007"
    (ours / "rng").mkdir(parents=True)
    (ours / "rng" / "rank-00000.pt").write_bytes(b"x")
    (ours / "__0_0.distcp").write_bytes(b"x")
    assert written_by_save(ours) and not written_by_save(theirs)
    assert remove_interrupted(tmp_path / "ck") == [ours] and (theirs / "notes.txt").read_text() == "precious"


def test_a_plan_edited_past_its_models_context_is_refused_at_launch(tmp_path):
    """A plan whose seq_len was edited past the model's context trained; plan and estimate refuse that length."""
    plan = tiny_plan_dict()
    plan["config"]["seq_len"] = plan["model"]["max_seq_len"] * 8
    (tmp_path / "p.json").write_text(json.dumps(plan))
    assert_one_clear_error(run_cli(["launch", tmp_path / "p.json", "--dry-run"]), "exceeds")


# ---- 3. corrupt checkpoints ----------------------------------------------------------------------------------------
def _ckpt_plan():
    from plan_helpers import even_plan

    from autoconf.spec.model import ModelSpec

    spec = ModelSpec(name="ck-gpt", arch="gpt", num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=2,
                     ffn_hidden_size=64, vocab_size=64, max_seq_len=16)
    return even_plan(spec, global_batch=2, seq=16)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "truncated shard": lambda d: _truncate(next(d.glob("*.distcp"))),
    "truncated metadata": lambda d: _truncate(d / ".metadata"),
    "zeroed shard": lambda d: next(d.glob("*.distcp")).write_bytes(bytes(next(d.glob("*.distcp")).stat().st_size)),
    "deleted shard": lambda d: next(d.glob("*.distcp")).unlink(),
    "truncated rng": lambda d: _truncate(d / "rng" / "rank-00000.pt"),
}


def test_corrupt_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, capfd):
    """For each corruption of the newest (complete) checkpoint: the resume says it skips it, resumes from the older
    one, and the re-run step's loss equals the uninterrupted run's."""
    import shutil

    import torch.distributed as dist

    from autoconf.execute.train import TrainOptions, train

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plan = _ckpt_plan()
        clean = tmp_path / "clean"
        ref = train(plan, TrainOptions(steps=2, checkpoint_dir=str(clean), checkpoint_every=1, quiet=True))
        for name, corrupt in CORRUPTIONS.items():
            root = tmp_path / name.replace(" ", "-")
            shutil.copytree(clean, root)
            corrupt(root / "step-00000002")
            capfd.readouterr()
            out = train(plan, TrainOptions(steps=3, checkpoint_dir=str(root)))
            text = capfd.readouterr().out
            assert f"skipping corrupt checkpoint {root / 'step-00000002'}" in text, (name, text)
            assert f"resumed from {root / 'step-00000001'} at step 1" in text, (name, text)
            assert out[0]["step"] == 2 and abs(out[0]["loss"] - ref[1]["loss"]) <= 1e-6 * abs(ref[1]["loss"]), name
    finally:
        dist.destroy_process_group()


# ---- 2, 5, 6. the launcher: signals, locks, bind address ---------------------------------------------------------
def _long_plan(tmp_path) -> Path:
    plan = _ckpt_plan()
    from plan_helpers import even_plan

    plan = even_plan(plan.model, dp=2, global_batch=2, seq=16)
    path = tmp_path / "plan.json"
    plan.save(path)
    return path


def _start_launch(tmp_path, plan: Path, *extra: str, steps: int = 100000) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "autoconf", "launch", str(plan), "--steps", str(steps),
                             *extra], cwd=tmp_path, env=env, stdout=open(tmp_path / "launch.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _training_processes(marker: str) -> list[int]:
    out = subprocess.run(["ps", "-e", "-ww", "-o", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if marker in line and "ps -e" not in line]


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.3)
    return False


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """(plan, metrics, checkpoint dir, launcher) of one long 2-rank run with metrics and a checkpoint folder: the
    lock and bind-address test reads it while it trains, then the SIGTERM case of the stop test ends it (one launch
    start-up for both). Whatever is left of it at the end is killed."""
    folder = tmp_path_factory.mktemp("shared-run")
    plan = _long_plan(folder)
    metrics, ckpt = folder / "m.jsonl", folder / "ck"
    proc = _start_launch(folder, plan, "--metrics", str(metrics), "--checkpoint-dir", str(ckpt),
                         "--checkpoint-every", "1000")
    yield plan, metrics, ckpt, proc
    for pid in _training_processes(str(plan)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_second_run_into_the_same_outputs_is_refused_and_store_binds_loopback(shared_run):
    plan, _, ckpt, first = shared_run
    assert _wait_for(lambda: (ckpt / ".autoconf-run.lock").exists() and len(_descendants(first.pid)) >= 3, 300)
    time.sleep(5)  # the agent's stores are up once the workers run
    second = subprocess.run([sys.executable, "-m", "autoconf", "launch", str(plan), "--steps", "1",
                             "--checkpoint-dir", str(ckpt)], cwd=plan.parent, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert second.returncode == 2 and "in use by another run" in second.stderr and str(first.pid) in second.stderr
    # every listening socket of the run's processes is on 127.0.0.1
    pids = _descendants(first.pid) | {first.pid}
    listen = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ours = [line for line in listen.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert ours, listen
    wildcard = [line for line in ours if line.split()[3].startswith(("*:", "0.0.0.0:", "[::]:"))]
    store = [line for line in wildcard if "python" in line and any(f"pid={p}," in line for p in _agent(pids))]
    assert store == [], ours


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_launcher_ends_torchrun_and_the_workers(tmp_path, sig, request):
    """A signal to the launcher's PID alone (not its group): within seconds no process of the run is left,
    and no worker of it keeps writing metrics. SIGTERM ends the shared run; SIGKILL one of its own."""
    if sig == signal.SIGTERM:
        plan, metrics, _, proc = request.getfixturevalue("shared_run")
    else:
        plan, metrics = _long_plan(tmp_path), tmp_path / "m.jsonl"
        proc = _start_launch(tmp_path, plan, "--metrics", str(metrics))
    try:
        assert _wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, 300), \
            (plan.parent / "launch.log").read_text()[-3000:]
        marker = str(plan)
        assert len(_training_processes(marker)) >= 3  # launcher, torchrun, 2 workers
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        assert _wait_for(lambda: not [p for p in _training_processes(marker) if p != proc.pid], 30), \
            subprocess.run(["ps", "-ef"], capture_output=True, text=True).stdout
        size = metrics.stat().st_size
        time.sleep(1.5)
        assert metrics.stat().st_size == size
        if sig == signal.SIGTERM:  # (an audit: torchrun's agent said "torchrun got SIGTERM" beside the launcher's line)
            log = (plan.parent / "launch.log").read_text()
            assert "autoconf: stopped by SIGTERM" in log and "torchrun got" not in log, log[-3000:]
    finally:
        for pid in _training_processes(str(plan)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopping_a_profile_ends_its_workers_without_tracebacks(tmp_path, sig):
    """Ctrl-C (SIGINT to the terminal's process group) printed a traceback per rank and one of torchrun; a SIGKILL
    to `autoconf profile` left torchrun and its workers running. Now either leaves no process of the run, writes no
    profile, and Ctrl-C ends in plain lines and exit code 130."""
    out = tmp_path / "stopped-profile.json"
    log = tmp_path / "profile.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "autoconf", "profile", "--quick", "--out", str(out)],
                                cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    marker = str(out)
    try:
        assert _wait_for(lambda: "layout:" in log.read_text(), 120), log.read_text()[-3000:]
        assert len(_training_processes(marker)) >= 4  # launcher, torchrun, 2 ranks
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        code = proc.wait(timeout=60)
        assert _wait_for(lambda: not _training_processes(marker), 30), \
            subprocess.run(["ps", "-ef"], capture_output=True, text=True).stdout
        assert not out.exists()
        if sig == signal.SIGINT:
            text = log.read_text()
            assert code == 130 and "Traceback" not in text, text[-3000:]
            assert "autoconf: stopped by SIGINT" in text
    finally:
        for pid in _training_processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _agent(pids: set[int]) -> set[int]:
    """The torchrun agent among the run's processes (the workers' own gloo sockets are not the store)."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-p", ",".join(map(str, pids))], capture_output=True,
                         text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines() if "autoconf.execute.elastic" in line}


def test_a_resume_says_when_the_schedule_batch_or_sequence_changed(tmp_path):
    """Resuming with a larger --steps silently stretched the learning-rate schedule (the step after the resume
    took another rate than the uninterrupted run's); a new global batch or sequence length went unmentioned."""
    from plan_helpers import even_plan

    from autoconf.execute.train import TrainOptions, check_resumable
    from autoconf.spec.presets import PRESETS

    plan = even_plan(PRESETS["tiny-llama"])
    meta = {"seed": 0, "data": None, "steps": 4, "config": {**plan.config.to_dict(), "global_batch_size": 99}}
    said: list[str] = []
    check_resumable(tmp_path, meta, plan, TrainOptions(steps=6), said.append)
    assert any("schedule now spans 6 steps where the checkpoint's run planned 4" in m for m in said), said
    assert any("global_batch_size 99" in m for m in said), said
    said.clear()
    check_resumable(tmp_path, {**meta, "config": plan.config.to_dict()}, plan, TrainOptions(steps=4), said.append)
    assert said == []


@pytest.mark.slow
def test_stopping_validate_ends_the_run_it_is_training(tmp_path):
    """SIGTERM to `autoconf validate` alone (a batch system's time limit): it left its current torchrun and the
    workers training, re-parented to init. Now no process of its runs is left, none starts after it, and it says
    so in one line."""
    out = tmp_path / "stopped-validate"
    log = tmp_path / "validate.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "autoconf", "validate", "--model", "tiny-gpt", "--cluster",
                                 "cpu-local", "--global-batch", "8", "--seq-len", "64", "--configs", "3",
                                 "--steps", "1000", "--out", str(out)],
                                cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
    marker = str(out)
    try:
        assert _wait_for(lambda: len(_training_processes(marker)) >= 3, 180), log.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=90)
        assert _wait_for(lambda: not _training_processes(marker), 30), \
            subprocess.run(["ps", "-ef"], capture_output=True, text=True).stdout
        time.sleep(2)
        assert not _training_processes(marker)
        text = log.read_text()
        assert code == 128 + signal.SIGTERM and "autoconf: stopped by SIGTERM" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    finally:
        for pid in _training_processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_supervised_run_past_its_time_is_ended_with_124(tmp_path):
    """validate's per-run time limit, now through `run_supervised`: the run is ended as a signal would end it, its
    output goes to the given file, and 124 comes back."""
    from autoconf.execute.launch import run_supervised

    start = time.monotonic()
    with open(tmp_path / "out.log", "w") as log:
        code = run_supervised([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"],
                              dict(os.environ), output=log, timeout_s=5.0)  # (time to start on a loaded host)
    assert code == 124 and time.monotonic() - start < 60
    assert "started" in (tmp_path / "out.log").read_text()


def test_an_unwritable_metrics_path_is_named_as_given(tmp_path):
    """A review: `--metrics /proc/foo.jsonl` was refused as "cannot lock metrics file /proc", naming neither the
    file nor what failed (its lock file beside it)."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan_dict()))
    assert_one_clear_error(run_cli(["launch", plan, "--steps", "1", "--metrics", "/proc/foo.jsonl"]),
                           "cannot write the metrics file /proc/foo.jsonl: its lock file .foo.jsonl.lock")
