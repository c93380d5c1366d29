"""Pictures (Agg PNGs), exports (launch/torchrun/SLURM/Megatron/torchtitan) and the explain folder of a plan."""

from __future__ import annotations

import tomllib

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from autoconf.cost.estimate import estimate  # noqa: E402
from autoconf.errors import UserError  # noqa: E402
from autoconf.report.exporters import (megatron_args, slurm_script, torchrun_script, torchtitan_toml,  # noqa: E402
                                       write_exports)
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


def megatron_parser():
    """An argparse parser with the names, types and choices Megatron-LM itself declares for every flag autoconf may
    write (source: NVIDIA/Megatron-LM megatron/training/arguments.py, _add_network_size_args,
    _add_distributed_args, _add_training_args, _add_mixed_precision_args, _add_regularization_args; e.g.
    `group.add_argument('--rotary-base', type=int, default=10000)`). Unknown flags or wrong types fail to parse."""
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False, allow_abbrev=False)
    for name in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                 "--num-layers-per-virtual-pipeline-stage", "--decoder-first-pipeline-num-layers",
                 "--decoder-last-pipeline-num-layers", "--micro-batch-size", "--global-batch-size", "--seq-length",
                 "--max-position-embeddings", "--recompute-num-layers", "--num-layers", "--hidden-size",
                 "--num-attention-heads", "--ffn-hidden-size", "--num-query-groups", "--rotary-base"):
        parser.add_argument(name, type=int)
    for name in ("--norm-epsilon", "--attention-dropout", "--hidden-dropout"):
        parser.add_argument(name, type=float)
    parser.add_argument("--recompute-granularity", choices=["full", "selective"])
    parser.add_argument("--recompute-method", choices=["uniform", "block"])
    parser.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"])
    parser.add_argument("--position-embedding-type", choices=["learned_absolute", "rope", "relative", "none"])
    for name in ("--sequence-parallel", "--use-distributed-optimizer", "--bf16", "--fp16", "--group-query-attention",
                 "--swiglu", "--disable-bias-linear", "--add-qkv-bias", "--untie-embeddings-and-output-weights"):
        parser.add_argument(name, action="store_true")
    return parser


def parse_megatron(text: str):
    import shlex

    tokens = [t for line in text.splitlines() if not line.startswith("#") for t in shlex.split(line)]
    return megatron_parser().parse_args(tokens)


def _rope_llama(theta: float):
    import dataclasses

    return dataclasses.replace(load_model("tiny-llama"), rope_theta=theta)


@pytest.mark.parametrize("case", ["gpt-full-zero1", "llama-interleaved", "llama-rope-1e6", "gpu-sp-bf16-selective",
                                  "uneven-ends"])
def test_megatron_args_parse_with_megatrons_own_flags(case):
    """Every emitted line parses with Megatron-LM's own flag names and types; the parsed degrees fit the plan's world
    (tp*pp divides it and the batch gives the plan's micro-batch count at dp = world/(tp*pp)), the layers add up
    (per virtual stage x pp x vpp, or first/last overrides), and recompute, the distributed optimizer, sequence
    parallelism and the dtype flag are the plan's."""
    a100 = load_cluster("dgx-a100-80g", nodes=1, gpus_per_node=4)
    if case == "gpt-full-zero1":
        plan = tiny_plan(zero=1, recompute="full")
    elif case == "llama-interleaved":
        plan = tiny_plan("interleaved-1f1b", 2, model="tiny-llama")
    elif case == "llama-rope-1e6":  # Qwen2 / Mistral: rope_theta 1e6, which "{:g}" would write 1e+06
        plan = estimate(_rope_llama(1e6), load_cluster("cpu-local"), tiny_plan().config)
    elif case == "uneven-ends":
        plan = tiny_plan(pp=4, dp=1, partition=[[0, 1], [1, 4], [4, 7], [7, 8]])
    else:
        config = ParallelConfig(tp=2, pp=2, dp=1, micro_batch_size=2, global_batch_size=16, seq_len=128,
                                schedule="1f1b", sequence_parallel=True, recompute="selective", dtype="bf16")
        plan = estimate(load_model("tiny-llama"), a100, config)
    c, model = plan.config, plan.model
    args = parse_megatron(megatron_args(plan))
    world = c.world_size
    assert args.tensor_model_parallel_size == c.tp and args.pipeline_model_parallel_size == c.pp
    assert world % (args.tensor_model_parallel_size * args.pipeline_model_parallel_size) == 0
    dp = world // (args.tensor_model_parallel_size * args.pipeline_model_parallel_size)
    assert args.tensor_model_parallel_size * args.pipeline_model_parallel_size * dp == world
    assert args.global_batch_size // (args.micro_batch_size * dp) == c.num_microbatches
    assert args.global_batch_size % (args.micro_batch_size * dp) == 0 and args.seq_length == c.seq_len
    assert args.num_layers == model.num_layers == plan.partition[-1][1]
    if args.num_layers_per_virtual_pipeline_stage is not None:
        assert args.num_layers_per_virtual_pipeline_stage * c.pp * c.vpp == args.num_layers and c.vpp > 1
    if case == "uneven-ends":
        assert (args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers) == (1, 1)
    assert args.recompute_granularity == (None if c.recompute == "none" else c.recompute)
    assert args.use_distributed_optimizer == (c.zero_stage >= 1)
    assert args.sequence_parallel == c.sequence_parallel
    assert (args.bf16, args.fp16) == (c.dtype == "bf16", c.dtype == "fp16")
    assert (args.hidden_size, args.num_attention_heads) == (model.hidden_size, model.num_heads)
    if model.arch == "llama":
        assert args.rotary_base == model.rope_theta and args.normalization == "RMSNorm"


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
    """Only the end stages differ: --decoder-first/last-pipeline-num-layers; otherwise a note says it can't be
    expressed."""
    ends = megatron_args(tiny_plan(pp=4, dp=1, partition=[[0, 1], [1, 4], [4, 7], [7, 8]])).splitlines()
    assert "--decoder-first-pipeline-num-layers 1" in ends and "--decoder-last-pipeline-num-layers 1" in ends
    middle = megatron_args(tiny_plan(pp=4, dp=1, partition=[[0, 2], [2, 3], [3, 6], [6, 8]]))
    assert "cannot be expressed" in middle and "--decoder-first-pipeline-num-layers" not in middle


@pytest.mark.parametrize("schedule,vpp,zero,name", [("1f1b", 1, 0, "1F1B"), ("zbv", 2, 1, "ZBVZeroBubble"),
                                                     ("interleaved-1f1b", 2, 3, "Interleaved1F1B")])
def test_torchtitan_toml_parses_with_the_degrees(schedule, vpp, zero, name):
    """The torchtitan TOML parses and has the degrees, torchtitan's schedule name, and DP replicate/shard by zero."""
    plan = tiny_plan(schedule, vpp, zero)
    doc = tomllib.loads(torchtitan_toml(plan))
    par = doc["parallelism"]
    assert par["tensor_parallel_degree"] == 1 and par["pipeline_parallel_degree"] == 2
    assert par["pipeline_parallel_schedule"] == name
    assert par["pipeline_parallel_microbatch_size"] == 1
    assert par["enable_async_tensor_parallel"] is False
    if zero == 0:
        assert (par["data_parallel_replicate_degree"], par["data_parallel_shard_degree"]) == (2, 1)
    else:
        assert (par["data_parallel_replicate_degree"], par["data_parallel_shard_degree"]) == (1, 2)
    parts = par["module_fqns_per_model_part"]
    assert len(parts) == 2 * vpp and parts[0][0] == "tok_embeddings" and parts[-1][-1] == "output"
    assert doc["training"]["local_batch_size"] == 4 and doc["training"]["seq_len"] == 64
    assert doc["activation_checkpoint"]["mode"] == "none"


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
    assert names == ["launch.sh", "megatron_args.txt", "slurm.sbatch", "torchrun_node.sh", "torchtitan.toml"]


def test_exports_refuse_to_overwrite_without_force(tmp_path):
    """Exporting twice raises UserError without force and succeeds with it."""
    plan = tiny_plan()
    paths = write_exports(plan, tmp_path / "plan.json", tmp_path / "out")
    assert {p.name for p in paths} == {"launch.sh", "torchrun_node0.sh", "slurm.sbatch", "megatron_args.txt",
                                       "torchtitan.toml"}
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
    assert {"timeline.png", "memory.png", "compare.png", "torchtitan.toml"} <= {p.name for p in shown}
    assert str((tmp_path / "explain" / "plan.json").resolve()) in (tmp_path / "shown" / "launch.sh").read_text()
    with pytest.raises(UserError):
        show(tmp_path / "explain" / "plan.json", tmp_path / "shown")
    assert show(tmp_path / "explain" / "plan.json", tmp_path / "shown", force=True)


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
