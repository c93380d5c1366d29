"""Reliability of the executor on CPU with gloo: real faults, atomic checkpoints, resharded resume, no hang.

The session's shared 4-rank torchrun job (tests/executor_jobs.py) trains pp2 x dp2 GPT (tied embeddings) and Llama
plans for 4 uninterrupted steps with a checkpoint every 2 steps, then resumes the step-2 checkpoint under tp2 x dp2 and
pp4. The fault tests then launch real runs through `autoconf.execute.launch` with the test-only hooks of
`autoconf.execute.faults` (a rank SIGKILLs itself, or hangs) and compare with the uninterrupted losses.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import executor_jobs
from autoconf.spec.model import ModelSpec
from executor_jobs import Layout
from plan_helpers import even_plan

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
RESUME_AT = 2


def _specs():
    # 4 layers: enough for pp4 and for two chunks on each of two pipeline ranks.
    gpt = ModelSpec(name="rel-gpt", arch="gpt", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=4,
                    ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True)
    llama = ModelSpec(name="rel-llama", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                      ffn_hidden_size=176, vocab_size=256, max_seq_len=64)
    dropout = ModelSpec(name="rel-dropout", arch="gpt", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=4,
                        ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True, dropout=0.2)
    return {"gpt": gpt, "llama": llama, "dropout": dropout}


def make_plan(arch: str, **layout):
    return even_plan(_specs()[arch], **layout)


def cases() -> dict:
    """arch -> (source plan, {target name: target plan}); all on 4 ranks. The tensor-parallel targets train in
    micro-batches of 2 (their CPU cost is per micro-batch; the global batch, so the losses, is the source's)."""
    return {
        "gpt": (make_plan("gpt", pp=2, dp=2, schedule="1f1b", zero=1),
                {"tp2-dp2": make_plan("gpt", tp=2, dp=2, zero=3, micro_batch=2),
                 "pp4": make_plan("gpt", pp=4, schedule="gpipe")}),
        "llama": (make_plan("llama", pp=2, dp=2, schedule="interleaved-1f1b", vpp=2, zero=2),
                  {"tp2-dp2": make_plan("llama", tp=2, dp=2, sp=True, zero=1, micro_batch=2),
                   "pp4": make_plan("llama", pp=4, schedule="1f1b")}),
        # GPT ties its head to its embedding: one parameter without a pipeline, a copy on the last stage with one.
        "gpt-tied": (make_plan("gpt", tp=2, dp=2, zero=3, micro_batch=2),
                     {"pp2-dp2": make_plan("gpt", pp=2, dp=2, schedule="1f1b", zero=1)}),
        "dropout": (make_plan("dropout", pp=2, dp=2, schedule="1f1b", zero=1),
                    {"same": make_plan("dropout", pp=2, dp=2, schedule="1f1b", zero=1),
                     "pp4": make_plan("dropout", pp=4, schedule="gpipe")}),
    }


def killed_plan():
    """The plan of the killed-worker run: 2 ranks (a torchrun start of 2 is far cheaper on CPU than one of 4, and the
    run starts three times), dp2 with ZeRO-1 (each rank writes its own optimizer shard)."""
    return make_plan("gpt", dp=2, zero=1)


def _layouts() -> dict[str, Layout]:
    """Source plans run STEPS steps with a checkpoint every RESUME_AT steps; each target resumes a copy of step
    RESUME_AT. "gpt/killed-uninterrupted" is the killed-worker run's plan trained without faults."""
    layouts = {"gpt/killed-uninterrupted": Layout(2, killed_plan(), {"steps": STEPS})}
    for arch, (source, targets) in cases().items():
        layouts[f"{arch}/source"] = Layout(4, source, {"steps": STEPS, "checkpoint_dir": f"{arch}-source",
                                                       "checkpoint_every": RESUME_AT})
        for name, plan in targets.items():
            layouts[f"{arch}/{name}"] = Layout(4, plan, {"steps": STEPS, "checkpoint_dir": f"{arch}-{name}",
                                                         "copy_checkpoint": f"{arch}-source/step-{RESUME_AT:08d}"})
    return layouts


executor_jobs.register("reliability", _layouts())


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """name -> step records from the 4-rank job (sources: all STEPS steps; targets: the steps after RESUME_AT)."""
    return {name: out["records"] for name, out in executor_jobs.results("reliability", tmp_path_factory).items()}


def _close(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * abs(b)


# ---- 3. resume under a different plan ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt", "llama"])
@pytest.mark.parametrize("target", ["tp2-dp2", "pp4"])
def test_checkpoint_resumes_under_another_layout(reference, arch, target):
    """A pp2 x dp2 checkpoint resumes under tp2 x dp2 and under pp4 (DCP reshards model and optimizer state): the
    steps after it have the uninterrupted run's losses and gradient norms within 1e-4 relative."""
    source = reference[f"{arch}/source"]
    resumed = reference[f"{arch}/{target}"]
    assert [r["step"] for r in source] == list(range(1, STEPS + 1))
    assert [r["step"] for r in resumed] == list(range(RESUME_AT + 1, STEPS + 1))
    for rec in resumed:
        ref = source[rec["step"] - 1]
        assert _close(rec["loss"], ref["loss"]), (arch, target, rec["step"], rec["loss"], ref["loss"])
        assert _close(rec["grad_norm"], ref["grad_norm"]), (arch, target, rec["step"])
    assert len({round(r["loss"], 6) for r in source}) == STEPS  # the losses move, so equality means something


@pytest.mark.slow
def test_a_tied_head_written_without_a_pipeline_resumes_in_one(reference):
    """A tp2 x dp2 checkpoint of GPT, whose head and embedding are one parameter there (its optimizer state saved
    under the embedding's name), resumes under pp2 x dp2, where the last stage holds its own tied copy: that copy's
    state is read from the embedding's (the load stopped on a missing key), and the steps after it match."""
    source, resumed = reference["gpt-tied/source"], reference["gpt-tied/pp2-dp2"]
    assert [r["step"] for r in resumed] == list(range(RESUME_AT + 1, STEPS + 1))
    for rec in resumed:
        ref = source[rec["step"] - 1]
        assert _close(rec["loss"], ref["loss"]) and _close(rec["grad_norm"], ref["grad_norm"]), (rec, ref)


@pytest.mark.slow
def test_resume_under_the_same_layout_replays_dropout_exactly(reference):
    """With dropout 0.2 each rank's random streams are saved with the checkpoint: resuming under the same layout
    repeats the uninterrupted losses; under another layout the streams restart (the run goes on, the losses move
    but are not the same values)."""
    source, same, other = (reference[f"dropout/{k}"] for k in ("source", "same", "pp4"))
    for rec in same:
        assert _close(rec["loss"], source[rec["step"] - 1]["loss"]), (rec["step"], rec["loss"])
        assert _close(rec["grad_norm"], source[rec["step"] - 1]["grad_norm"]), rec["step"]
    assert [r["step"] for r in other] == list(range(RESUME_AT + 1, STEPS + 1))
    assert not all(_close(r["loss"], source[r["step"] - 1]["loss"]) for r in other)


# ---- 1 + 2. a real kill, torchrun restarts, resume from the newest complete checkpoint -----------------------------
@pytest.mark.slow
def test_killed_worker_is_survived_with_identical_losses(reference, tmp_path, capfd):
    """Rank 1 of 2 (dp2, ZeRO-1) is SIGKILLed twice: while writing checkpoint 2 (after its shards, before the commit)
    and as it starts step 4. torchrun restarts the group each time (--max-restarts 2); the first restart says it
    skips the half-written checkpoint and resumes from step 1, the second resumes from step 3. The metrics hold every
    step once, and each equals the uninterrupted run's loss (the same plan in the shared 2-rank job)."""
    from autoconf.execute.launch import launch

    plan_path = tmp_path / "plan.json"
    killed_plan().save(plan_path)
    metrics, ckpt = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    fault_env = {"AUTOCONF_FAULT_KILL_IN_CHECKPOINT": "2", "AUTOCONF_FAULT_KILL_AT_STEP": "4",
                 "AUTOCONF_FAULT_RANK": "1", "AUTOCONF_FAULT_MARKER": str(tmp_path / "fault")}
    saved = dict(os.environ)
    os.environ.update(_env(**fault_env))
    try:
        rc = launch(plan_path, steps=STEPS, metrics=str(metrics), checkpoint_dir=str(ckpt), checkpoint_every=1,
                    max_restarts=2, timeout_s=60)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, err = capfd.readouterr()
    assert rc == 0, (out[-3000:], err[-5000:])
    assert (tmp_path / "fault.kill_in_checkpoint").exists() and (tmp_path / "fault.kill_at_step").exists()
    assert "skipping incomplete checkpoint" in out and ".tmp-step-00000002" in out
    assert f"resumed from {ckpt / 'step-00000001'} at step 1" in out
    assert f"resumed from {ckpt / 'step-00000003'} at step 3" in out
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [line for line in lines if "step" in line]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    for rec, ref in zip(steps, reference["gpt/killed-uninterrupted"]):
        assert _close(rec["loss"], ref["loss"], 1e-5), (rec["step"], rec["loss"], ref["loss"])
    assert "summary" in lines[-1] and lines[-1]["summary"]["restarts"] == 2
    assert lines[-1]["summary"]["resumed_from_step"] == 3
    assert sorted(p.name for p in ckpt.iterdir() if not p.name.startswith(".")) == [
        f"step-{s:08d}" for s in range(1, STEPS + 1)]
    assert all((ckpt / f"step-{s:08d}" / "complete.json").is_file() for s in range(1, STEPS + 1))


# ---- 4. no hang ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_hung_peer_ends_the_job_within_the_collective_timeout(tmp_path, capfd):
    """Rank 1 stops answering at step 2 (alive, silent) with --max-restarts 0 and a 10 s collective timeout: rank 0's
    pipeline send times out, the job exits non-zero well within a minute of the hang, and the output says what
    happened in plain lines (no torchrun traceback). The ranks start together (AUTOCONF_FAULT_START_TOGETHER: a
    loaded machine's uneven imports are not spent of the 10 s) and rank 1 hangs only after step 1, which every rank
    completed (its gradient-norm reduction joins them); the minute counts from the hang (its marker file's time)."""
    from autoconf.execute.launch import launch

    plan_path = tmp_path / "plan.json"
    make_plan("gpt", pp=2).save(plan_path)
    marker = tmp_path / "fault"
    saved = dict(os.environ)
    os.environ.update(_env(AUTOCONF_FAULT_HANG_AT_STEP="2", AUTOCONF_FAULT_RANK="1",
                           AUTOCONF_FAULT_START_TOGETHER="1", AUTOCONF_FAULT_MARKER=str(marker)))
    try:
        rc = launch(plan_path, steps=STEPS, max_restarts=0, timeout_s=10)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    since_hang = time.time() - (tmp_path / "fault.hang_at_step").stat().st_mtime
    out, err = capfd.readouterr()
    assert rc != 0
    assert "autoconf fault injection: rank 1 hangs at step 2" in err
    assert "autoconf: error: training failed after 0 allowed restart(s): rank 0" in err, err[-3000:]
    assert "lost a peer" in err and "collective timeout" in err
    assert "ChildFailedError" not in err
    assert since_hang < 60, since_hang


@pytest.mark.slow
def test_dead_peer_without_restarts_ends_quickly(tmp_path, capfd):
    """A rank SIGKILLed with --max-restarts 0: the job ends non-zero at once, naming the rank and the signal; torchrun's
    log folders (where the failure was read from) are gone from the temporary directory afterwards."""
    from autoconf.execute.launch import launch

    plan_path = tmp_path / "plan.json"
    make_plan("gpt", dp=2).save(plan_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    saved = dict(os.environ)
    os.environ.update(_env(AUTOCONF_FAULT_KILL_AT_STEP="2", AUTOCONF_FAULT_RANK="1", TMPDIR=str(scratch)))
    try:
        rc = launch(plan_path, steps=STEPS, max_restarts=0, timeout_s=300)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, err = capfd.readouterr()
    assert rc != 0
    assert "autoconf: error: training failed after 0 allowed restart(s): rank 1" in err, err[-3000:]
    assert "SIGKILL" in err and "ChildFailedError" not in err
    assert not [p.name for p in scratch.iterdir() if p.name.startswith(("torchelastic_", "autoconf-torchrun-"))]


def test_a_diverging_run_stops_at_its_first_non_finite_step_and_keeps_its_checkpoints(tmp_path, capfd):
    """A run whose loss or gradient norm stops being a number (here an absurd --weight-decay) trained on to the end,
    exit 0, saving a checkpoint of every diverged step, which a resume would have picked: it stops at the first such
    step with one line naming it and the newest checkpoint, ends with the trainer's own exit code (named in the
    summary), saves none of the diverged steps, and is not restarted under --max-restarts."""
    import math

    from autoconf.errors import EXIT_DIVERGED
    from autoconf.execute.launch import launch

    plan_path = tmp_path / "plan.json"
    make_plan("gpt").save(plan_path)
    saved = dict(os.environ)
    os.environ.update(_env())
    try:
        rc = launch(plan_path, steps=8, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=1, max_restarts=2,
                    metrics=str(tmp_path / "m.jsonl"), timeout_s=300, hyperparameters={"weight_decay": 1e10})
    finally:
        os.environ.clear()
        os.environ.update(saved)
    _, err = capfd.readouterr()
    assert rc != 0
    lines = [line for line in err.splitlines() if "training diverged at step" in line]
    assert len(lines) == 1 and lines[0].startswith("autoconf: error: "), err[-3000:]
    step = int(lines[0].split("training diverged at step ")[1].split(":")[0])
    # (one attempt: torchrun's restarts would each have resumed the same checkpoint and diverged at the same step)
    assert "was not restarted (a restart would end the same way; 0 of 2 allowed restart(s) used)" in err, err[-3000:]
    assert f"the checkpoint of step {step - 1} is the newest" in lines[0] or step == 1
    assert f"exited with code {EXIT_DIVERGED} (training diverged" in err
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, step))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    steps = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith(("step-", ".tmp-step-")))
    assert steps == [f"step-{k:08d}" for k in range(1, step)]


# ---- pieces without a process group --------------------------------------------------------------------------------
def test_only_failures_a_restart_may_clear_are_restarted(monkeypatch):
    """torch's elastic agent keeps its restarts for a lost peer (exit code 3), a killed worker or a refusal (exit code
    2: a file a shared filesystem did not show yet), and drops them to 0 for a diverged run (`EXIT_FINAL`), which a
    restart would repeat."""
    from types import SimpleNamespace

    from torch.distributed.elastic.agent.server.api import RunResult, WorkerState
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    from autoconf.errors import EXIT_DIVERGED, EXIT_LOST_PEER, EXIT_REFUSED
    from autoconf.execute.elastic import restart_only_what_may_pass

    ended = {}
    monkeypatch.setattr(LocalElasticAgent, "_monitor_workers", lambda self, group: RunResult(
        WorkerState.FAILED, failures={rank: SimpleNamespace(exitcode=code) for rank, code in ended.items()}))
    record = restart_only_what_may_pass()
    for codes, before, left in (({0: EXIT_LOST_PEER, 1: -9}, 3, 3), ({0: EXIT_REFUSED}, 3, 3),
                                ({0: EXIT_DIVERGED, 1: 1}, 3, 0), ({0: EXIT_DIVERGED}, 1, 0)):
        ended.clear()
        ended.update(codes)
        agent = SimpleNamespace(_remaining_restarts=before)
        LocalElasticAgent._monitor_workers(agent, None)
        assert agent._remaining_restarts == left, codes
    assert record.stopped == [3, 1]  # (the restarts left when each divergence stopped them)
    assert set(record.failures) == {0}  # (the last group that failed)


def test_the_failure_summary_names_ranks_that_ended_alike_together():
    """After a peer died, every other rank of a 64-rank job was listed one by one in the `autoconf: then:` line;
    ranks that ended the same way on the same node are one group now, and the trainer's exit codes are named."""
    from types import SimpleNamespace

    from autoconf.errors import EXIT_LOST_PEER
    from autoconf.execute.elastic import describe_failures, rank_ranges

    def failure(local, host, code):
        return SimpleNamespace(local_rank=local, hostname=host, exitcode=code, message="", signal_name=lambda: "x")

    failures = {r: failure(r % 8, f"node-{r // 8}", EXIT_LOST_PEER) for r in range(1, 16)}
    failures[9] = failure(1, "node-1", -9)
    failures[9].signal_name = lambda: "SIGKILL"
    assert describe_failures({r: failure(r, "node-2", -9) for r in (16, 17)}).startswith(
        "ranks 16-17 on node-2 were killed by signal")
    line = describe_failures(failures)
    assert line == ("ranks 1-7 on node-0 exited with code 3 (lost a peer: it died, hung past the collective timeout, "
                    "or its node is gone); ranks 8, 10-15 on node-1 exited with code 3 (lost a peer: it died, hung "
                    "past the collective timeout, or its node is gone); rank 9 on node-1 was killed by signal SIGKILL")
    assert rank_ranges([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8" and rank_ranges([3]) == "3"


def test_a_restart_that_cannot_meet_the_master_again_says_why_the_job_ended(capsys):
    """A node whose master's node died: its workers lost their peer (exit code 3), and its agent's restart found the
    rendezvous store gone (torch raises a DistNetworkError). The line names the first failure and the lost master,
    not "torchrun could not run the job"; without a failed worker group the store error reads as before."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from autoconf.errors import EXIT_LOST_PEER
    from autoconf.execute.elastic import AgentRecord, _run

    def run(_args):
        raise dist.DistNetworkError("Broken pipe\nException raised from sendBytes at Utils.hpp:758")

    args = SimpleNamespace(training_script="autoconf.execute.train", max_restarts=2)
    lost = {rank: SimpleNamespace(local_rank=rank % 2, exitcode=EXIT_LOST_PEER, message="", timestamp=10 - rank)
            for rank in (2, 3)}
    assert _run(run, args, AgentRecord(failures=lost)) == 1
    err = capsys.readouterr().err
    assert err.startswith("autoconf: error: training failed: rank 3 (local rank 1 on its node) exited with code 3 ")
    assert "could not meet the other nodes again (DistNetworkError: Broken pipe): the node that started as rank 0" in (
        err)
    assert len(err.splitlines()) == 1
    assert _run(run, args) == 1
    assert capsys.readouterr().err.startswith("autoconf: error: torchrun could not run the job (DistNetworkError: ")


LOST_STORE = """
import subprocess, sys
if sys.argv[1] == "quiet":
    from autoconf.execute.elastic import load_torch_without_cpp_warnings
    load_torch_without_cpp_warnings()
import os
import torch.distributed as dist
server = subprocess.Popen([sys.executable, "-c", "import time, torch.distributed as d; "
                           "s = d.TCPStore('127.0.0.1', 0, 2, True, wait_for_workers=False); "
                           "print(s.port, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
client = dist.TCPStore("127.0.0.1", int(server.stdout.readline()), 2, False)
server.kill()
server.wait()
try:
    client.get("key")
except dist.DistNetworkError:
    print("lost the store; TORCH_CPP_LOG_LEVEL", os.environ.get("TORCH_CPP_LOG_LEVEL"))
"""


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [False, True])
def test_the_agent_logs_a_lost_store_without_torchs_cpp_stack(quiet):
    """torch's TCPStore client logs a lost store as a C++ warning with its whole stack (about 40 frames before the
    agent's own error line); the agent imports torch with the C++ log level at ERROR and leaves no setting behind
    for its workers."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_CPP_LOG_LEVEL", "AUTOCONF_DEBUG")}
    out = subprocess.run([sys.executable, "-c", LOST_STORE, "quiet" if quiet else "default"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.stdout.strip() == "lost the store; TORCH_CPP_LOG_LEVEL None", out.stdout + out.stderr
    assert ("Exception raised from" in out.stderr) == (not quiet), out.stderr[-2000:]


def test_metrics_dedupe_keeps_each_step_up_to_the_resume_point(tmp_path):
    from autoconf.execute.train import dedupe_metrics

    path = tmp_path / "m.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0}, {"step": 2, "loss": 9.0},
             {"summary": {}}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "lo')
    dedupe_metrics(path, 2)
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:2]


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from autoconf.errors import UserError
    from autoconf.execute.train import TrainOptions, check_resumable

    plan = make_plan("gpt")
    meta = {"seed": 0, "data": None, "model": make_plan("llama").model.to_dict()}
    with pytest.raises(UserError, match="differs from this plan"):
        check_resumable(tmp_path, meta, plan, TrainOptions(steps=1), print)
    check_resumable(tmp_path, {**meta, "model": plan.model.to_dict()}, plan, TrainOptions(steps=1), print)


def test_checkpoint_of_another_model_is_refused_before_any_rank_starts(tmp_path):
    """The launcher reads the newest checkpoint's marker itself: one line (every rank refused it in turn, each with
    its own error lines)."""
    from click.testing import CliRunner

    from autoconf.cli import main
    from autoconf.execute.checkpoint import MARKER, step_dir

    gpt = make_plan("gpt")
    path = tmp_path / "plan.json"
    path.write_text(gpt.to_json())
    done = step_dir(tmp_path / "ck", 2)
    done.mkdir(parents=True)
    (done / MARKER).write_text(json.dumps({"step": 2, "data_position": 2, "model": make_plan("llama").model.to_dict()}))
    result = CliRunner().invoke(main, ["launch", str(path), "--dry-run", "--steps", "4", "--checkpoint-dir",
                                       str(tmp_path / "ck")])
    assert result.exit_code == 2 and result.output.count("autoconf: error:") == 1, result.output
    assert "differs from this plan" in result.output
