"""A plan as commands and configs for the tools people already run: autoconf launch, torchrun, SLURM, Megatron-LM,
torchtitan.

Every exporter is a pure function from a Plan (and the plan file's path) to text; `write_exports` writes them all to
a folder. Where another framework cannot express part of the plan (an uneven partition, a V-shaped schedule, a
custom GPU placement) the text says so in a comment rather than silently approximating it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

from autoconf.files import check_new, write_file
from autoconf.report.precision_flags import megatron_fp8_args, torchtitan_fp8_lines
from autoconf.spec.frameworks import plan_execution
from autoconf.spec.plan import Plan, node_blocks
from autoconf.spec.schedules import schedule_spec

# More nodes than this get one torchrun script that takes the node rank as $1 instead of one script per node.
MAX_NODE_SCRIPTS = 8
DEFAULT_STEPS = 100
MASTER_PORT = 29500


def _nodes(plan: Plan) -> tuple[int, int]:
    return int(plan.cluster.get("nodes", 1)), int(plan.cluster.get("gpus_per_node", 1))


def _is_cpu(plan: Plan) -> bool:
    return plan.cluster.get("backend") == "gloo" or str(plan.cluster.get("device", "")).startswith("cpu")


def _plan_arg(plan_path: str | Path | None) -> str:
    if plan_path is None:
        return "plan.json"
    return str(Path(plan_path).expanduser().resolve())


def _train_args(plan: Plan, plan_var: str) -> str:
    """The trainer's arguments; `plan_var` is already shell-quoted (a path or "$PLAN")."""
    args = f"-m autoconf.execute.train --plan {plan_var} --steps \"${{STEPS:-{DEFAULT_STEPS}}}\""
    if _is_cpu(plan):
        args += " --device cpu"
    return args


def launch_command(plan: Plan, plan_path: str | Path | None) -> str:
    """`autoconf launch PLAN.json`: the bundled launcher runs torchrun itself."""
    cmd = f"autoconf launch {shlex.quote(_plan_arg(plan_path))} --steps {DEFAULT_STEPS}"
    nodes, _ = _nodes(plan)
    if nodes > 1:
        cmd += (f" --nnodes {nodes} --node-rank \"$NODE_RANK\" --master-addr \"$MASTER_ADDR\""
                " --master-port \"$MASTER_PORT\"")
    return cmd


def launch_script(plan: Plan, plan_path: str | Path | None) -> str:
    nodes, _ = _nodes(plan)
    lines = ["#!/usr/bin/env bash", f"# {_summary(plan)}", "set -euo pipefail"]
    if nodes > 1:
        lines += [f"# Run on each of the {nodes} nodes with its node rank (0..{nodes - 1}) as the first argument.",
                  "NODE_RANK=${1:?usage: $0 NODE_RANK}",
                  f"MASTER_ADDR=${{MASTER_ADDR:?set MASTER_ADDR to the address of node {_master_node(plan)}}}",
                  f"MASTER_PORT=${{MASTER_PORT:-{MASTER_PORT}}}"]
    lines.append(launch_command(plan, plan_path))
    return "\n".join(lines) + "\n"


def _master_node(plan: Plan) -> int:
    """The physical node that starts as torchrun node rank 0 and so hosts the rendezvous."""
    mapping = _torchrun_ranks(plan)
    return 0 if mapping is None else mapping.index(0)


def _torchrun_ranks(plan: Plan) -> list[int] | None:
    """torchrun node rank of each physical node when the placement reorders nodes (spec/plan.py node_blocks),
    else None (physical node r is torchrun node r)."""
    _, gpus = _nodes(plan)
    blocks = node_blocks(plan.device_of(), gpus)
    if blocks is None or blocks == sorted(blocks):
        return None
    return [blocks.index(r) for r in range(len(blocks))]


def torchrun_command(plan: Plan, plan_path: str | Path | None, node_rank: str | int = "$NODE_RANK",
                     plan_var: str | None = None) -> str:
    """One node's torchrun line (static rendezvous: --node-rank, --master-addr, --master-port). When the placement
    reorders nodes, physical node `node_rank` is started with the torchrun node rank of the grid block it hosts."""
    nodes, gpus = _nodes(plan)
    mapping = _torchrun_ranks(plan)
    if mapping is not None:
        table = " ".join(map(str, mapping))
        node_rank = (mapping[node_rank] if isinstance(node_rank, int)
                     else f"$(R=({table}); echo ${{R[{node_rank.lstrip('$')}]}})")
    rank = f"\"{node_rank}\"" if isinstance(node_rank, str) else str(node_rank)
    plan_var = plan_var or shlex.quote(_plan_arg(plan_path))
    return (f"torchrun --nnodes {nodes} --nproc-per-node {gpus} --node-rank {rank} "
            f"--master-addr \"$MASTER_ADDR\" --master-port \"$MASTER_PORT\" \\\n    {_train_args(plan, plan_var)}")


def torchrun_script(plan: Plan, plan_path: str | Path | None, node_rank: int | None = None) -> str:
    """A script for node `node_rank`, or with None one script that takes the node rank as its first argument."""
    nodes, _ = _nodes(plan)
    lines = ["#!/usr/bin/env bash", f"# {_summary(plan)}", "set -euo pipefail"]
    if node_rank is None:
        lines += [f"# Run on each of the {nodes} nodes: $0 NODE_RANK (0..{nodes - 1}).",
                  "NODE_RANK=${1:?usage: $0 NODE_RANK}"]
    else:
        lines.append(f"NODE_RANK={node_rank}  # of {nodes} node(s)")
    master = "127.0.0.1" if nodes == 1 else ""
    if master:
        lines.append(f"MASTER_ADDR=${{MASTER_ADDR:-{master}}}")
    else:
        lines.append(f"MASTER_ADDR=${{MASTER_ADDR:?set MASTER_ADDR to the address of node {_master_node(plan)}}}")
    lines += [f"MASTER_PORT=${{MASTER_PORT:-{MASTER_PORT}}}", "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}",
              torchrun_command(plan, plan_path, "$NODE_RANK" if node_rank is None else node_rank)]
    return "\n".join(lines) + "\n"


def slurm_script(plan: Plan, plan_path: str | Path | None) -> str:
    """sbatch script: one task per node, each running torchrun with its $SLURM_NODEID as node rank."""
    nodes, gpus = _nodes(plan)
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={_job_name(plan)}", f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1"]
    if _is_cpu(plan):
        lines.append(f"#SBATCH --cpus-per-task={gpus}")
    else:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    lines += ["#SBATCH --exclusive", f"# {_summary(plan)}", "set -euo pipefail",
              f"export PLAN={shlex.quote(_plan_arg(plan_path))}",
              "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)",
              f"export MASTER_PORT=${{MASTER_PORT:-{MASTER_PORT}}}",
              f"export STEPS=${{STEPS:-{DEFAULT_STEPS}}}", "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}",
              "# Single quotes: $SLURM_NODEID is expanded by each task on its own node.",
              "srun --kill-on-bad-exit=1 bash -c '" + torchrun_command(plan, None, "$SLURM_NODEID", "\"$PLAN\"") + "'"]
    return "\n".join(lines) + "\n"


def _stage_layers(plan: Plan) -> list[int]:
    return [end - first for first, end in plan.partition]


def _summary(plan: Plan) -> str:
    """One line for a '#' comment: names are data, so every character that could end the comment (a newline, a
    carriage return, any control or line-separator character) is written as an escape."""
    from autoconf.report.tables import layout_label

    nodes, gpus = _nodes(plan)
    return comment_text(f"autoconf plan: {plan.model.name}, {layout_label(plan)}, on {nodes} x {gpus} "
                        f"{plan.cluster.get('name')}")


def comment_text(text: str) -> str:
    """`text` with every non-printable character as its Python escape (\\n, \\x1b, \\u2028): safe in a comment."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def _job_name(plan: Plan) -> str:
    """The SLURM job name: `autoconf-` and the model name with every character outside [A-Za-z0-9._-] as '_'
    (sbatch reads #SBATCH lines itself, with its own quoting rules, so nothing is left to quote)."""
    return "autoconf-" + re.sub(r"[^A-Za-z0-9._-]", "_", str(plan.model.name))[:64]


def megatron_args(plan: Plan) -> str:
    """Megatron-LM arguments for the same layout, one per line; '#' lines explain what Megatron cannot express.

    Use with e.g. `grep -v '^#' megatron_args.txt | xargs python pretrain_gpt.py ...`.
    """
    m, c = plan.model, plan.config
    notes: list[str] = []
    args: list[str] = [
        f"--tensor-model-parallel-size {c.tp}",
        f"--pipeline-model-parallel-size {c.pp}",
    ]
    layers = _stage_layers(plan)
    uniform = len(set(layers)) == 1
    if schedule_spec(c.schedule).megatron_note:
        notes.append(schedule_spec(c.schedule).megatron_note)
    if c.vpp > 1:
        if uniform:
            args.append(f"--num-layers-per-virtual-pipeline-stage {layers[0]}")
        else:
            notes.append(f"uneven partition {layers} (layers per virtual stage) cannot be expressed with virtual "
                         f"pipeline stages; the uniform split needs pp*vpp = {c.num_stages} to divide "
                         f"{m.num_layers} layers")
    elif not uniform:
        first, last, middle = layers[0], layers[-1], layers[1:-1]
        if len(set(middle)) <= 1:
            if middle and first != middle[0]:
                args.append(f"--decoder-first-pipeline-num-layers {first}")
            if middle and last != middle[0]:
                args.append(f"--decoder-last-pipeline-num-layers {last}")
            if not middle:
                args += [f"--decoder-first-pipeline-num-layers {first}", f"--decoder-last-pipeline-num-layers {last}"]
        else:
            notes.append(f"uneven partition {layers} (layers per stage) cannot be expressed: Megatron-LM can only "
                         "make the first and last stages differ from the rest")
    args += [f"--micro-batch-size {c.micro_batch_size}", f"--global-batch-size {c.global_batch_size}",
             f"--seq-length {c.seq_len}",
             f"--max-position-embeddings {m.max_seq_len if m.arch == 'gpt' else max(m.max_seq_len, c.seq_len)}"]
    if c.sequence_parallel:
        args.append("--sequence-parallel")
    if c.recompute == "selective":
        args.append("--recompute-granularity selective")
    elif c.recompute == "full":
        args += ["--recompute-granularity full", "--recompute-method uniform", "--recompute-num-layers 1"]
    if c.zero_stage >= 1:
        args.append("--use-distributed-optimizer")
    # what makes Megatron run as the plan's framework was modelled (overlap flags; spec/frameworks.py)
    args += [a for a in plan_execution(plan.prediction).export_lines("megatron", c) if a not in args]
    if c.zero_stage == 3:
        notes.append("zero 3 (parameters sharded, re-gathered per pass) is beyond Megatron's distributed optimizer "
                     "(which shards optimizer state and gradients); recent Megatron-Core offers --use-torch-fsdp2")
    if c.dtype == "bf16":
        args.append("--bf16")
    elif c.dtype == "fp8":
        fp8_args, fp8_notes = megatron_fp8_args(c)
        args, notes = args + fp8_args, notes + fp8_notes
    elif c.dtype == "fp16":
        args.append("--fp16")
    else:
        notes.append("dtype fp32: Megatron's default, no flag")
    args += [f"--num-layers {m.num_layers}", f"--hidden-size {m.hidden_size}",
             f"--num-attention-heads {m.num_heads}", f"--ffn-hidden-size {m.ffn_hidden_size}"]
    if m.arch == "llama":
        if m.num_kv_heads != m.num_heads:
            args += ["--group-query-attention", f"--num-query-groups {m.num_kv_heads}"]
        # Megatron's --rotary-base is an int: 1e6 (Qwen2, Mistral) is written 1000000, not 1e+06.
        if not float(m.rope_theta).is_integer():
            notes.append(f"rope_theta {m.rope_theta:g} is not an integer; Megatron's --rotary-base takes an int")
        args += ["--swiglu", "--normalization RMSNorm", f"--norm-epsilon {m.norm_eps:g}",
                 "--position-embedding-type rope", f"--rotary-base {round(m.rope_theta)}", "--disable-bias-linear"]
        if m.qkv_bias:
            args.append("--add-qkv-bias")
    else:
        args += [f"--attention-dropout {m.dropout:g}", f"--hidden-dropout {m.dropout:g}"]
    if not m.tied_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    notes.append(f"vocabulary {m.vocab_size}: comes from Megatron's tokenizer (--vocab-size with NullTokenizer)")
    if c.attention == "flash":
        notes.append("flash attention: --attention-backend flash (Megatron-Core >= 0.10) or --use-flash-attn (older)")
    mesh = np.asarray(plan.placement.get("mesh"))
    if mesh.size and not np.array_equal(mesh.ravel(), np.arange(mesh.size)):
        notes.append("GPU placement differs from Megatron's rank order (tp fastest, then dp, then pp) and cannot be "
                     "expressed with arguments; order the hosts or CUDA_VISIBLE_DEVICES to match plan placement.mesh")
    header = [f"# {_summary(plan)}", "# Megatron-LM arguments; use with: grep -v '^#' megatron_args.txt | xargs ..."]
    return "\n".join(header + [f"# NOTE: {n}" for n in notes] + args) + "\n"


def _fqns(plan: Plan) -> list[list[str]]:
    """torchtitan module names of each model chunk, in stage order (its llama models: tok_embeddings, layers.N,
    norm, output)."""
    parts = []
    last = len(plan.partition) - 1
    for st, (first, end) in enumerate(plan.partition):
        names = ["tok_embeddings"] if st == 0 else []
        names += [f"layers.{i}" for i in range(first, end)]
        if st == last:
            names += ["norm", "output"]
        parts.append(names)
    return parts


def torchtitan_toml(plan: Plan) -> str:
    """torchtitan job-config sections for the same layout (field names of torchtitan's JobConfig)."""
    m, c = plan.model, plan.config
    replicate, shard = (c.dp, 1) if c.zero_stage == 0 else (1, c.dp)
    reshard = {0: "default", 1: "never", 2: "never", 3: "always"}[c.zero_stage]
    precision = "float32" if c.dtype == "fp32" else "bfloat16"
    lines = [f"# {_summary(plan)}"]
    if m.arch == "gpt":
        lines.append("# NOTE: torchtitan ships llama-style models; a GPT (LayerNorm, GeLU, learned positions) model "
                     "needs its own model definition")
    if c.dtype == "fp16":
        lines.append("# NOTE: torchtitan's mixed precision is bfloat16 or float32, not fp16")
    lines += ["[training]",
              f"local_batch_size = {c.global_batch_size // c.dp}",
              f"global_batch_size = {c.global_batch_size}",
              f"seq_len = {c.seq_len}",
              f'mixed_precision_param = "{precision}"',
              *plan_execution(plan.prediction).export_lines("torchtitan", c),
              "",
              "[parallelism]",
              f"data_parallel_replicate_degree = {replicate}",
              f"data_parallel_shard_degree = {shard}",
              f'fsdp_reshard_after_forward = "{reshard}"',
              f"tensor_parallel_degree = {c.tp}",
              "enable_async_tensor_parallel = false",
              f"pipeline_parallel_degree = {c.pp}",
              f'pipeline_parallel_schedule = "{schedule_spec(c.schedule).torch_class}"',
              f"pipeline_parallel_microbatch_size = {c.micro_batch_size}"]
    if c.pp > 1:
        lines.append("# the stage partition, one list per model chunk in stage order (older torchtitan: "
                     "pipeline_parallel_split_points)")
        lines.append("module_fqns_per_model_part = [")
        lines += ["    [" + ", ".join(f'"{n}"' for n in part) + "]," for part in _fqns(plan)]
        lines.append("]")
    if c.sequence_parallel:
        lines.append("# sequence parallelism: torchtitan applies it with every tensor_parallel_degree > 1")
    elif c.tp > 1:
        lines.append("# NOTE: torchtitan always uses sequence parallelism with tensor parallelism; the plan did not")
    lines += ["", "[activation_checkpoint]", f'mode = "{c.recompute}"']
    if c.recompute == "selective":
        lines.append('selective_ac_option = "op"  # operator-level selective recompute (attention core)')
    if c.dtype == "fp8":
        lines += torchtitan_fp8_lines(c)
    return "\n".join(lines) + "\n"


def export_texts(plan: Plan, plan_path: str | Path | None) -> dict[str, str]:
    """File name -> text of every export."""
    nodes, _ = _nodes(plan)
    files = {"launch.sh": launch_script(plan, plan_path)}
    if nodes <= MAX_NODE_SCRIPTS:
        for i in range(nodes):
            files[f"torchrun_node{i}.sh"] = torchrun_script(plan, plan_path, i)
    else:
        files["torchrun_node.sh"] = torchrun_script(plan, plan_path, None)
    files["slurm.sbatch"] = slurm_script(plan, plan_path)
    files["megatron_args.txt"] = megatron_args(plan)
    files["torchtitan.toml"] = torchtitan_toml(plan)
    return files


def write_exports(plan: Plan, plan_path: str | Path | None, out_dir: str | Path, force: bool = False) -> list[Path]:
    """Writes launch.sh, torchrun_node<i>.sh (or one torchrun_node.sh taking the node rank for more than
    MAX_NODE_SCRIPTS nodes), slurm.sbatch, megatron_args.txt and torchtitan.toml into `out_dir`.

    Refuses (UserError) before writing anything if any of them exists and not `force`.
    """
    out_dir = Path(out_dir)
    texts = export_texts(plan, plan_path)
    for name in texts:  # every refusal before any write, so a folder is never left half-exported
        check_new(out_dir / name, force, hint="choose another folder")
    paths = []
    for name, text in texts.items():
        path = out_dir / name
        write_file(path, text, force=force, mode=0o777 if name.endswith((".sh", ".sbatch")) else 0o666)
        paths.append(path)
    return paths
