"""Pictures (Agg PNGs), exports (launch/torchrun/SLURM/Megatron/torchtitan) and the explain folder of a plan."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from autoconf.cost.estimate import estimate  # noqa: E402
from autoconf.errors import UserError  # noqa: E402
from autoconf.report.exporters import megatron_args, slurm_script, torchrun_script, write_exports  # noqa: E402
from autoconf.report.explain import explain, show  # noqa: E402
from autoconf.report.pictures import compare_png, memory_png, plan_timeline, timeline_png  # noqa: E402
from autoconf.spec.cluster import load_cluster  # noqa: E402
from autoconf.spec.plan import ParallelConfig  # noqa: E402
from autoconf.spec.presets import load_model  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_plan(schedule: str = "1f1b", vpp: int = 1, zero: int = 0, pp: int = 2, dp: int = 2, partition=None,
              model: str = "tiny-gpt", cluster=None, recompute: str = "none", global_batch: int = 8):
    cluster = cluster or load_cluster("cpu-local")
    config = ParallelConfig(tp=1, pp=pp, dp=dp, vpp=vpp, micro_batch_size=1, global_batch_size=global_batch, seq_len=64,
                            schedule=schedule, zero_stage=zero, dtype="fp32", recompute=recompute)
    return estimate(load_model(model), cluster, config, partition=partition)


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 5 * 1024, f"{path} is only {len(data)} bytes"


@pytest.mark.parametrize("schedule,vpp", [("1f1b", 1), ("zbv", 2)])
def test_pictures_are_nontrivial_pngs(tmp_path, schedule, vpp):
    """timeline, memory and compare pictures are valid PNG files of more than 5 KB for a 1f1b and a zbv plan."""
    plan = tiny_plan(schedule, vpp, zero=1)
    other = tiny_plan("gpipe")
    assert_png(timeline_png(plan, tmp_path / "timeline.png"))
    assert_png(memory_png(plan, tmp_path / "memory.png"))
    assert_png(compare_png([plan, other], tmp_path / "compare.png"))


@pytest.mark.parametrize("schedule,vpp,zero,framework", [
    ("gpipe", 1, 0, "autoconf"), ("1f1b", 1, 0, "autoconf"), ("zbv", 2, 2, "autoconf"),
    ("interleaved-1f1b", 2, 3, "autoconf"), ("1f1b", 1, 1, "megatron")])
def test_drawn_timeline_is_the_estimated_step(schedule, vpp, zero, framework):
    """On a measured CPU profile (ranks sharing cores, so the estimate re-simulates at the share busy ranks get),
    the picture's timeline is the estimate's own: its last event ends at the makespan, and the makespan plus the
    step's collectives, optimizer and step overhead is the plan's iteration time; a plan read back from its JSON
    (which does not store the timeline) draws the same step."""
    from autoconf.spec.frameworks import execution
    from autoconf.spec.plan import Plan
    from profile_helpers import measured_cpu_profile

    cluster = measured_cpu_profile(0.5, alone=0.9)
    config = ParallelConfig(tp=1, pp=4, dp=1, vpp=vpp, micro_batch_size=1, global_batch_size=8, seq_len=64,
                            schedule=schedule, zero_stage=zero, dtype="fp32")
    if zero:
        config = ParallelConfig(**{**config.__dict__, "pp": 2, "dp": 2})
    plan = estimate(load_model("tiny-gpt"), cluster, config, execution=execution(framework))
    terms = plan.prediction["time_breakdown"]
    tail = terms["step_comm"] + terms["optimizer"] + cluster.overhead("step_overhead_s")
    for drawn in (plan, Plan.from_dict(plan.to_dict())):
        timeline, drawn_tail = plan_timeline(drawn, cluster)
        ends = [end for ev in timeline.events for _, _, end in ev] + [e for ev in timeline.comm_events
                                                                      for *_, e in ev]
        assert max(ends) == pytest.approx(timeline.makespan, rel=1e-12)
        assert timeline.makespan + tail == pytest.approx(plan.prediction["iteration_time_s"], rel=1e-9)
        assert drawn_tail == pytest.approx(tail, rel=1e-9, abs=1e-12)


def _torchrun_args(script: str, tmp_path, *argv: str):
    """Runs `script` (after `bash -n`) with a stub `torchrun` first on PATH that records its arguments, and parses
    them with torch's own torchrun parser."""
    import os
    import subprocess

    from torch.distributed.run import get_args_parser

    path = tmp_path / "node.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    stub, record = tmp_path / "bin", tmp_path / "args"
    stub.mkdir(exist_ok=True)
    (stub / "torchrun").write_text(f"#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" > {record}\n")
    (stub / "torchrun").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "MASTER_ADDR": "10.0.0.1"}
    done = subprocess.run(["bash", str(path), *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return get_args_parser().parse_args(record.read_text().split("\0")[:-1])


@pytest.mark.parametrize("nodes,gpus,swap", [(1, 4, False), (16, 1, False), (2, 2, True)])
def test_torchrun_scripts_parse_with_torchs_own_parser(tmp_path, nodes, gpus, swap):
    """The torchrun scripts pass `bash -n`, and the torchrun line they run parses with torch's own
    `torch.distributed.run.get_args_parser()`: nnodes x nproc-per-node is the world size, every node starts with a
    distinct node rank in [0, nnodes) (a permutation when the placement swaps nodes), a static rendezvous on
    MASTER_ADDR, and the trainer module with the plan."""
    cluster = load_cluster("cpu-local", nodes, gpus)
    plan = tiny_plan(pp=2, dp=nodes * gpus // 2, cluster=cluster, global_batch=16)
    if swap:
        import numpy as np

        mesh = np.asarray(plan.placement["mesh"])
        plan.placement = {"mesh": ((mesh + gpus) % (nodes * gpus)).tolist()}
    plan_path = str(tmp_path / "my plan.json")  # a space, to check the quoting
    ranks = []
    for node in range(nodes):
        args = _torchrun_args(torchrun_script(plan, plan_path, None), tmp_path, str(node))
        assert int(args.nnodes) * int(args.nproc_per_node) == plan.config.world_size == nodes * gpus
        assert int(args.nproc_per_node) == gpus and args.master_addr == "10.0.0.1" and args.master_port == 29500
        assert args.module and args.training_script == "autoconf.execute.train"
        assert args.training_script_args[:2] == ["--plan", plan_path]
        ranks.append(args.node_rank)
        fixed = _torchrun_args(torchrun_script(plan, plan_path, node), tmp_path)
        assert fixed.node_rank == args.node_rank
    assert sorted(ranks) == list(range(nodes))
    if swap:
        assert ranks == [1, 0]


def test_every_term_of_a_breakdown_has_its_colour():
    """Sixth review: compare.png drew an MoE plan's token exchange and a CP plan's ring in grey as "not broken
    down" (the colours had no ep_comm, cp_comm or offload). An MoE plan under CP with offloaded activations has all
    of them, each coloured."""
    from autoconf.report.pictures import TERM_COLOURS

    config = ParallelConfig(tp=1, pp=2, dp=4, cp=2, micro_batch_size=1, global_batch_size=16, seq_len=32768, ep=4,
                            zero_stage=1, offload_activations=True)
    plan = estimate(load_model("mixtral-8x7b"), load_cluster("dgx-h100-80g", nodes=2), config)
    terms = plan.prediction["time_breakdown"]
    assert {"ep_comm", "cp_comm", "offload"} <= set(terms) and set(terms) <= set(TERM_COLOURS)


def test_megatron_args_for_llama_interleaved_and_v_schedules():
    """llama flags (GQA, SwiGLU, RMSNorm, rope, untied), layers per virtual stage; zbv is flagged as inexpressible."""
    text = megatron_args(tiny_plan("interleaved-1f1b", 2, model="tiny-llama"))
    lines = text.splitlines()
    for arg in ("--group-query-attention", "--num-query-groups 2", "--swiglu", "--normalization RMSNorm",
                "--position-embedding-type rope", "--untie-embeddings-and-output-weights",
                "--num-layers-per-virtual-pipeline-stage 2"):
        assert arg in lines, f"{arg} missing from\n{text}"
    zbv = megatron_args(tiny_plan("zbv", 2))
    assert any(line.startswith("# NOTE: schedule zbv") for line in zbv.splitlines())


def test_megatron_uneven_partition():
    """Only the end stages differ: --decoder-first/last-pipeline-num-layers; otherwise a pipeline layout with the
    plan's layers per stage (quoted: '|' and '*' are shell characters)."""
    ends = megatron_args(tiny_plan(pp=4, dp=1, partition=[[0, 1], [1, 4], [4, 7], [7, 8]])).splitlines()
    assert "--decoder-first-pipeline-num-layers 1" in ends and "--decoder-last-pipeline-num-layers 1" in ends
    middle = megatron_args(tiny_plan(pp=4, dp=1, partition=[[0, 2], [2, 3], [3, 6], [6, 8]])).splitlines()
    assert "--pipeline-model-parallel-layout 'Et*2|t|t*3|t*2L'" in middle
    assert not any(line.startswith("--decoder-first") for line in middle)


def test_slurm_and_torchrun_scripts_name_the_nodes():
    """SLURM asks for every node, one task each; many nodes get one torchrun script taking the node rank."""
    cluster = load_cluster("cpu-local", 16, 1)
    plan = tiny_plan(pp=2, dp=8, cluster=cluster, global_batch=16)
    slurm = slurm_script(plan, "plan.json")
    assert "#SBATCH --nodes=16" in slurm and "#SBATCH --ntasks-per-node=1" in slurm
    assert "$SLURM_NODEID" in slurm and "scontrol show hostnames" in slurm
    script = torchrun_script(plan, "plan.json", None)
    assert "--nnodes 16" in script and "--nproc-per-node 1" in script and "${1:?" in script


def test_write_exports_many_nodes_writes_one_torchrun_script(tmp_path):
    plan = tiny_plan(pp=2, dp=8, cluster=load_cluster("cpu-local", 16, 1), global_batch=16)
    names = sorted(p.name for p in write_exports(plan, tmp_path / "plan.json", tmp_path))
    assert names == ["launch.sh", "megatron_args.txt", "pytorchjob.yaml", "slurm.sbatch", "torchrun_node.sh",
                     "torchtitan_config.py"]


def test_exports_refuse_to_overwrite_without_force(tmp_path):
    """Exporting twice raises UserError without force and succeeds with it."""
    plan = tiny_plan()
    paths = write_exports(plan, tmp_path / "plan.json", tmp_path / "out")
    assert {p.name for p in paths} == {"launch.sh", "torchrun_node0.sh", "slurm.sbatch", "megatron_args.txt",
                                       "pytorchjob.yaml", "torchtitan_config.py"}
    with pytest.raises(UserError, match="already exists"):
        write_exports(plan, tmp_path / "plan.json", tmp_path / "out")
    assert write_exports(plan, tmp_path / "plan.json", tmp_path / "out", force=True) == paths


def test_explain_and_show(tmp_path):
    """explain writes pictures, exports and (without a plan file) plan.json; show redraws them from the file."""
    plans = [tiny_plan("zbv", 2), tiny_plan("1f1b")]
    written = explain(plans, tmp_path / "explain")
    names = {p.name for p in written}
    assert {"timeline.png", "memory.png", "compare.png", "plan.json", "megatron_args.txt"} <= names
    for name in ("timeline.png", "memory.png", "compare.png"):
        assert_png(tmp_path / "explain" / name)
    with pytest.raises(UserError):
        explain(plans, tmp_path / "explain")
    shown = show(tmp_path / "explain" / "plan.json", tmp_path / "shown")
    assert {"timeline.png", "memory.png", "compare.png", "torchtitan_config.py"} <= {p.name for p in shown}
    assert str((tmp_path / "explain" / "plan.json").resolve()) in (tmp_path / "shown" / "launch.sh").read_text()
    with pytest.raises(UserError):
        show(tmp_path / "explain" / "plan.json", tmp_path / "shown")
    assert show(tmp_path / "explain" / "plan.json", tmp_path / "shown", force=True)


def test_showing_a_plan_again_keeps_its_folder_and_prints_its_prediction(tmp_path):
    """`show PLAN` twice: the second prints the prediction and keeps the pictures and scripts the first drew beside
    the plan (exit 0, nothing overwritten); --force redraws them; an --out folder that holds them is refused."""
    from click.testing import CliRunner

    from autoconf.cli import main

    plan = tmp_path / "p.json"
    tiny_plan("1f1b").save(plan)
    first = CliRunner().invoke(main, ["show", str(plan)])
    assert first.exit_code == 0, first.output
    script = tmp_path / "p_explain" / "launch.sh"
    script.write_text("# the user's edit\n")
    again = CliRunner().invoke(main, ["show", str(plan)])
    assert again.exit_code == 0 and "step" in again.output and "kept them" in again.output, again.output
    assert script.read_text() == "# the user's edit\n"
    forced = CliRunner().invoke(main, ["show", str(plan), "--force"])
    assert forced.exit_code == 0 and script.read_text() != "# the user's edit\n"
    taken = CliRunner().invoke(main, ["show", str(plan), "--out", str(tmp_path / "p_explain")])
    assert taken.exit_code != 0 and "already holds" in taken.output


def test_showing_a_plan_beside_a_folder_of_the_users_names_what_it_kept(tmp_path):
    """A default folder holding only a file of the user's that show would write (timeline.png): the note named it
    "this plan's pictures and scripts", which it is not; it names the file, kept, and that nothing was drawn."""
    from click.testing import CliRunner

    from autoconf.cli import main

    plan = tmp_path / "p.json"
    tiny_plan("1f1b").save(plan)
    mine = tmp_path / "p_explain" / "timeline.png"
    mine.parent.mkdir()
    mine.write_text("the user's own picture\n")
    result = CliRunner().invoke(main, ["show", str(plan)])
    assert result.exit_code == 0, result.output
    assert "already holds timeline.png; kept it and drew nothing" in " ".join(result.output.split()), result.output
    assert "this plan's pictures" not in result.output
    assert mine.read_text() == "the user's own picture\n" and sorted(mine.parent.iterdir()) == [mine]


def test_a_plan_made_on_a_profile_file_is_shown_from_it(tmp_path):
    """A plan made with --cluster FILE recorded only the profile's name, so `show` could not find the profile to
    draw its timeline; the plan now records the file's path, and a file gone or renamed is one clear line."""
    import json

    from click.testing import CliRunner

    from autoconf.cli import main
    from autoconf.spec.cluster import PROFILES_DIR
    from tests.test_bad_input import assert_one_clear_error

    data = json.loads((PROFILES_DIR / "cpu-local.json").read_text())
    data["name"] = "my-cluster"
    profile = tmp_path / "mine.json"
    profile.write_text(json.dumps(data))
    plan = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", "--model", "tiny-gpt", "--cluster", str(profile), "--global-batch",
                                       "8", "--seq-len", "64", "--out", str(plan)])
    assert result.exit_code == 0, result.output
    assert json.loads(plan.read_text())["cluster"]["profile"] == str(profile.resolve())
    bundled = load_cluster("cpu-local").to_dict()
    assert load_cluster(str(profile)).to_dict() == {**bundled, "name": "my-cluster"}  # the path is not written
    result = CliRunner().invoke(main, ["show", str(plan), "--out", str(tmp_path / "shown")])
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "shown" / "timeline.png")
    profile.rename(tmp_path / "moved.json")
    result = CliRunner().invoke(main, ["show", str(plan), "--out", str(tmp_path / "again")])
    assert_one_clear_error(result, "'my-cluster' is not available", "where it was planned, is gone")
    assert not (tmp_path / "again").exists() and "iteration time" not in result.output
    result = CliRunner().invoke(main, ["show", str(plan), "--out", str(tmp_path / "again"), "--cluster",
                                       str(tmp_path / "moved.json")])
    assert result.exit_code == 0, result.output


def test_torchrun_scripts_follow_a_placement_that_swaps_nodes():
    """When the placement puts grid block 0 on physical node 1, node 1's script starts torchrun as node rank 0."""
    import numpy as np

    from autoconf.spec.presets import PRESETS

    cluster = load_cluster("dgx-a100-80g", nodes=2)
    config = ParallelConfig(tp=8, pp=2, dp=1, micro_batch_size=1, global_batch_size=8, seq_len=2048)
    swapped = np.concatenate([np.arange(8, 16), np.arange(0, 8)]).reshape(2, 1, 8)
    plan = estimate(PRESETS["gpt3-1.3b"], cluster, config, mesh=swapped)
    assert "--node-rank 0 " in torchrun_script(plan, "plan.json", 1)
    assert "--node-rank 1 " in torchrun_script(plan, "plan.json", 0)
    assert "R=(1 0)" in torchrun_script(plan, "plan.json", None)


def test_a_forced_export_removes_the_exports_it_does_not_write(tmp_path):
    """`--explain DIR --force` for 16 nodes over an export for 2 left torchrun_node0.sh and torchrun_node1.sh, which
    then ran the new plan with --nnodes 2, and one for a plan the executor does not run left the launch scripts of
    the earlier plan; scripts autoconf did not write are kept."""
    from autoconf.spec.presets import PRESETS

    def plan_on(nodes):
        cluster = load_cluster("dgx-h100-80g", nodes=nodes)
        config = ParallelConfig(tp=8, pp=1, dp=nodes, micro_batch_size=1, global_batch_size=8 * nodes,
                                seq_len=2048)
        return estimate(PRESETS["llama3-8b"], cluster, config, detail=False)

    write_exports(plan_on(2), tmp_path / "plan.json", tmp_path)
    assert {p.name for p in tmp_path.glob("torchrun_node*.sh")} == {"torchrun_node0.sh", "torchrun_node1.sh"}
    (tmp_path / "torchrun_node_mine.sh").write_text("#!/bin/sh\necho mine\n")
    written = write_exports(plan_on(16), tmp_path / "plan.json", tmp_path, force=True)
    assert {p.name for p in tmp_path.glob("torchrun_node*.sh")} == {"torchrun_node.sh", "torchrun_node_mine.sh"}
    assert tmp_path / "torchrun_node.sh" in written
    # a plan the executor does not run (an MoE model under seq1f1b) gets no launch scripts: the earlier ones go
    config = ParallelConfig(tp=8, pp=2, schedule="seq1f1b", seq_chunks=2, dp=1, micro_batch_size=1,
                            global_batch_size=8, seq_len=2048)
    unlaunchable = estimate(PRESETS["mixtral-8x7b"], load_cluster("dgx-h100-80g", nodes=2), config, detail=False)
    written = write_exports(unlaunchable, tmp_path / "plan.json", tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in written] + ["torchrun_node_mine.sh"]), sorted(p.name for p in tmp_path.iterdir())
    assert "launch.sh" not in {p.name for p in written}


def test_plan_prints_what_per_stage_recompute_bought_as_show_does(tmp_path):
    """A review at scale: the README says the plan table shows what per-stage recompute and offload bought, but only
    `show` and `estimate` printed those rows. `plan` prints #1's, the same text as `show`'s table."""
    from click.testing import CliRunner

    from autoconf.cli import main
    from autoconf.report.tables import bought_rows
    from autoconf.spec.plan import load_plan

    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100-80g", "--nodes", "1",
                                       "--global-batch", "16", "--seq-len", "32768", "--top", "1", "--out", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = bought_rows(load_plan(out))
    assert rows and all(label.startswith("recompute ") for label in rows)
    for label, value in rows.items():
        assert f"#1 {label}: {value}" in result.output
