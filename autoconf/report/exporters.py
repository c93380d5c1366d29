"""A plan as commands and configs for the tools people already run: autoconf launch, torchrun, SLURM, Kubernetes
(Kubeflow PyTorchJob), Megatron-LM, torchtitan. Each names the upstream version it targets (report/upstream.py).

Every exporter is a pure function from a Plan (and the plan file's path) to text; `write_exports` writes them all to
a folder. Where another framework cannot express part of the plan (an uneven partition, a V-shaped schedule, a
custom GPU placement) the text says so in a comment rather than silently approximating it.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import numpy as np

from autoconf.cost.memory import holds_unsharded_grads
from autoconf.files import check_new, write_file
from autoconf.report.kubernetes_export import pytorchjob_yaml
from autoconf.report.offload_flags import megatron_offload_args
from autoconf.report.optimizer_flags import megatron_optimizer_args
from autoconf.report.precision_flags import megatron_fp8_args
from autoconf.report.torchtitan_export import MODULE as TORCHTITAN_MODULE
from autoconf.report.torchtitan_export import torchtitan_config as _torchtitan_config
from autoconf.report.upstream import MEGATRON_TARGET
from autoconf.spec.frameworks import PRESETS, Execution, plan_execution, selective_policy
from autoconf.spec.model import LLAMA3_ROPE_DEFAULTS
from autoconf.spec.plan import ParallelConfig, Plan, node_blocks, recomputed_layers
from autoconf.spec.schedules import pipeline_problem, schedule_spec
from autoconf.spec.support import plan_unsupported_reason

# More nodes than this get one torchrun script that takes the node rank as $1 instead of one script per node.
MAX_NODE_SCRIPTS = 8
DEFAULT_STEPS = 100
MASTER_PORT = 29500
SUMMARY_PREFIX = "autoconf plan: "  # every export's first comment: how a script autoconf wrote is recognised


def _nodes(plan: Plan) -> tuple[int, int]:
    return int(plan.cluster.get("nodes", 1)), int(plan.cluster.get("gpus_per_node", 1))


def _is_cpu(plan: Plan) -> bool:
    return plan.cluster.get("backend") == "gloo" or str(plan.cluster.get("device", "")).startswith("cpu")


def _plan_arg(plan_path: str | Path | None) -> str:
    if plan_path is None:
        return "plan.json"
    return str(Path(plan_path).resolve())  # (as written: a `~` the shell left alone is a folder's name)


def _train_args(plan: Plan, plan_var: str) -> str:
    """The trainer's arguments; `plan_var` is already shell-quoted (a path or "$PLAN")."""
    args = f"-m autoconf.execute.train --plan {plan_var} --steps \"${{STEPS:-{DEFAULT_STEPS}}}\""
    if _is_cpu(plan):
        args += " --device cpu"
    return args


def launch_command(plan: Plan, plan_path: str | Path | None) -> str:
    """`autoconf launch PLAN.json`: the bundled launcher runs torchrun itself (STEPS steps, as the torchrun scripts
    take them)."""
    cmd = f"autoconf launch {shlex.quote(_plan_arg(plan_path))} --steps \"${{STEPS:-{DEFAULT_STEPS}}}\""
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


def pytorchjob(plan: Plan, plan_path: str | Path | None) -> str:
    """Kubeflow PyTorchJob manifest: one pod per node, node rank from the operator's $RANK (kubernetes_export)."""
    line = torchrun_command(plan, None, "$RANK", "\"$PLAN\"").replace(" \\\n    ", " ")
    return pytorchjob_yaml(plan, line, _summary(plan), comment_text(shlex.quote(_plan_arg(plan_path))), _is_cpu(plan))


def torchtitan_config(plan: Plan) -> str:
    """torchtitan_config.py: the plan as a torchtitan config_registry module (torchtitan_export)."""
    return _torchtitan_config(plan, _summary(plan))


def _stage_layers(plan: Plan) -> list[int]:
    return [end - first for first, end in plan.partition]


def _summary(plan: Plan) -> str:
    """One line for a '#' comment: names are data, so every character that could end the comment (a newline, a
    carriage return, any control or line-separator character) is written as an escape."""
    from autoconf.report.tables import layout_label

    nodes, gpus = _nodes(plan)
    return comment_text(f"{SUMMARY_PREFIX}{plan.model.name}, {layout_label(plan)}, on {nodes} x {gpus} "
                        f"{plan.cluster.get('name')}")


def comment_text(text: str) -> str:
    """`text` with every non-printable character as its Python escape (\\n, \\x1b, \\u2028): safe in a comment."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def _job_name(plan: Plan) -> str:
    """The SLURM job name: `autoconf-` and the model name with every character outside [A-Za-z0-9._-] as '_'
    (sbatch reads #SBATCH lines itself, with its own quoting rules, so nothing is left to quote)."""
    return "autoconf-" + re.sub(r"[^A-Za-z0-9._-]", "_", str(plan.model.name))[:64]


Flag = tuple[str, object]  # (Megatron-LM flag, value); value None for a switch, a tuple for a list (nargs '+')
# The plan's CP K/V exchange (spec/plan.py CP_COMM) as Megatron-LM's --cp-comm-type.
MEGATRON_CP_COMM = {"ring": "p2p", "allgather": "all_gather"}


def _megatron_stage_layers(plan: Plan) -> list[int]:
    """Layers of each virtual stage as Megatron places them: stage v*pp + r on rank r (loop placement). Where the
    plan's schedule places its stages otherwise (V placement: zbv, dualpipev, which Megatron runs as interleaved
    1F1B), Megatron's chunk v of rank r takes the layers of the plan's v-th stage on rank r, so every rank holds
    the layers the plan gave it (in model order the second chunks' counts come reversed)."""
    c, layers = plan.config, _stage_layers(plan)
    owner = schedule_spec(c.schedule).stage_to_rank(c.pp, c.vpp)
    if len(owner) != len(layers):  # (dualpipe: one partition entry per model stage of two directions)
        return layers
    per_rank = [[n for n, rank in zip(layers, owner) if rank == r] for r in range(c.pp)]
    return [per_rank[s % c.pp][s // c.pp] for s in range(len(layers))]


def _pipeline_layout(plan: Plan) -> str:
    """Megatron-Core's --pipeline-model-parallel-layout for the plan's partition: one '|'-separated entry per virtual
    stage in Megatron's stage order (chunk-major: stage v*pp + r is rank r's chunk v, `_megatron_stage_layers`), 't'
    per transformer layer (written t*N), 'E' (embedding) first, the MTP modules 'm' (cost/mtp.py: after the last
    stage's layers) and 'L' (loss) last."""
    stages = []
    last = len(plan.partition) - 1
    mtp = "m" * plan.model.mtp_num_layers
    for st, n in enumerate(_megatron_stage_layers(plan)):
        text = (("E" if st == 0 else "") + ("t" if n == 1 else f"t*{n}" if n else "")
                + (mtp + "L" if st == last else ""))
        stages.append(text)
    return "|".join(stages)


# The authors' Seq1F1B fork of Megatron-LM (github.com/thunlp/Seq1F1B, also MayDomine/Seq1F1B, commit 43eb818):
# --pipe-sp-splits K and --pipe-sp-strategy, which megatron/core/pipeline_parallel/sp_utils.py `get_splits` reads as
# equal lengths for "average" and as its FLOP solver's split otherwise ("uniform_comp" in the authors' exp.sh): the
# strategy of each `seq_split`. Not upstream Megatron-LM flags, so they go in a note, never in the flags.
SEQ1F1B_FORK_STRATEGY = {"even": "average", "work": "uniform_comp"}


def _seq1f1b_fork_note(c) -> str:
    """The authors' fork's flags for the plan's chunks and split, in words (a note: upstream has neither)."""
    how = ("equal lengths" if c.seq_split == "even" else
           "its computation-wise split, which equalises FLOPs where the plan equalises modelled time, so its "
           "boundaries may differ from the plan's sequence_split")
    return (f"seq_chunks {c.seq_chunks}, seq_split {c.seq_split}: in the Seq1F1B authors' fork of Megatron-LM "
            f"(github.com/thunlp/Seq1F1B; these flags are the fork's, not upstream Megatron-LM's) "
            f"--pipe-sp-splits {c.seq_chunks} --pipe-sp-strategy {SEQ1F1B_FORK_STRATEGY[c.seq_split]} ({how})")


def megatron_flags(plan: Plan) -> tuple[list[Flag], list[str]]:
    """The Megatron-LM arguments for the plan's layout and model as (flag, value) pairs, and notes on what Megatron
    cannot express. Every flag is one Megatron-LM declares at MEGATRON_LM_TAG (tests check them against the flags
    extracted from its arguments.py and the megatron-core config classes)."""
    m, c = plan.model, plan.config
    notes: list[str] = []
    flags: list[Flag] = [("--tensor-model-parallel-size", c.tp), ("--pipeline-model-parallel-size", c.pp)]
    if c.cp > 1:
        # Megatron-Core's CP runs in Transformer Engine's attention: p2p is the ring of K/V blocks, all_gather Llama
        # 3's gather of the whole sequence's K/V; both split the sequence into 2 x cp load-balanced chunks.
        flags += [("--context-parallel-size", c.cp), ("--cp-comm-type", MEGATRON_CP_COMM[c.cp_comm])]
    schedule = schedule_spec(c.schedule)
    refused = pipeline_problem(c, "megatron")
    if schedule.megatron_note:
        notes.append(schedule.megatron_note)
        # what Megatron runs instead, by its virtual pipeline size, has its own micro-batch rule
        instead = dataclasses.replace(c, schedule="interleaved-1f1b" if c.vpp > 1 else "1f1b")
        refused = c.pp > 1 and pipeline_problem(instead, "megatron")
        if refused:
            notes.append(f"and Megatron-LM cannot run that either: {refused}")
    elif refused:
        notes.append(f"Megatron-LM cannot run this pipeline: {refused}")
    if schedule.v_placement and c.pp > 1:
        notes.append(f"the plan's {c.schedule} places stage pp + k on rank pp-1-k (V placement), Megatron on rank k: "
                     f"the stages below keep every rank's layers (the second chunks' counts reversed), and the head "
                     f"and the loss run on rank {c.pp - 1}, not on rank 0 as planned")
    if c.seq_chunks > 1:
        notes.append(_seq1f1b_fork_note(c))
    flags += _megatron_partition(plan)
    flags += [("--micro-batch-size", c.micro_batch_size), ("--global-batch-size", c.global_batch_size),
              ("--seq-length", c.seq_len),
              ("--max-position-embeddings", m.max_seq_len if m.arch == "gpt" else max(m.max_seq_len, c.seq_len))]
    if c.sequence_parallel:
        flags.append(("--sequence-parallel", None))
    flags += _megatron_recompute(plan, notes)
    if c.zero_stage >= 1:
        flags.append(("--use-distributed-optimizer", None))
    execution = plan_execution(plan.prediction)
    offload_args, offload_notes = megatron_offload_args(c, m.num_layers, execution.memory_layout)
    state_args, state_notes = megatron_optimizer_args(execution, c.dtype)
    flags, notes = flags + _as_flags(offload_args + state_args), notes + offload_notes + state_notes
    # what makes Megatron run as the plan's framework was modelled (overlap flags; spec/frameworks.py)
    flags += _as_flags(execution.export_lines("megatron", c))
    beyond = _beyond_distributed_optimizer(c, execution)
    if beyond:
        notes.append(beyond)
    if c.zero_stage == 1 and execution.zero1_all_reduce:
        notes.append("the plan's ZeRO-1 all-reduces the whole gradients (zero1_all_reduce, nanotron's); Megatron's "
                     "distributed optimizer reduce-scatters them, so the run below moves half the gradient bytes "
                     "modelled")
    if c.dtype == "bf16":
        flags.append(("--bf16", None))
    elif c.dtype == "fp8":
        fp8_args, fp8_notes = megatron_fp8_args(c)
        flags, notes = flags + _as_flags(fp8_args), notes + fp8_notes
    elif c.dtype == "fp16":
        flags.append(("--fp16", None))
    elif c.dtype != "fp32":  # a recipe of another framework (spec/dtypes.py), e.g. fp8-deepseek
        flags.append(("--bf16", None))
        notes.append(f"dtype {c.dtype} is not exported: its fp8 recipe, cached activations and optimizer moments "
                     f"have no Megatron flags here (bf16 below)")
    else:
        notes.append("dtype fp32: Megatron's default, no flag")
    flags += _megatron_model(plan)
    if m.rope_scaling_factor != 1 and any(getattr(m, k) != v for k, v in LLAMA3_ROPE_DEFAULTS.items()):
        notes.append(f"Megatron-Core's RoPE scaling takes the factor only (low_freq_factor 1, high_freq_factor 4, "
                     f"original context 8192, Llama 3.1's); the model's {m.rope_low_freq_factor:g}, "
                     f"{m.rope_high_freq_factor:g} and {m.rope_original_context} are not passed")
    if m.rope_yarn is not None:
        notes.append(f"the model's YaRN RoPE scaling (factor {m.rope_yarn.factor:g} over "
                     f"{m.rope_yarn.original_context} tokens) has no flag here: the run below rotates unscaled")
    if m.rope_unapplied:
        notes.append(f"the model's {m.rope_unapplied} RoPE scaling has no flag here: the run below rotates unscaled")
    if m.rope_linear_factor != 1 and not float(m.rope_linear_factor).is_integer():
        notes.append(f"the model's linear RoPE scaling (factor {m.rope_linear_factor:g}) is not an integer, which "
                     f"Megatron's --rotary-seq-len-interpolation-factor takes: the run below rotates unscaled")
    moe_flags, moe_notes = _megatron_moe(plan)
    window_flags, window_notes = _megatron_window(plan.model)
    flags, notes = flags + moe_flags + window_flags, notes + moe_notes + window_notes
    if m.arch == "llama" and not float(m.rope_theta).is_integer():
        notes.append(f"rope_theta {m.rope_theta:g} is not an integer; Megatron's --rotary-base takes an int")
    notes.append(f"vocabulary {m.vocab_size}: comes from Megatron's tokenizer (--vocab-size with NullTokenizer)")
    flags.append(("--attention-backend", "flash" if c.attention == "flash" else "unfused"))
    mesh = np.asarray(plan.placement.get("mesh"))
    if mesh.size and not np.array_equal(mesh.ravel(), np.arange(mesh.size)):
        notes.append("GPU placement differs from Megatron's rank order (tp fastest, then cp, dp, pp) and cannot be "
                     "expressed with arguments; order the hosts or CUDA_VISIBLE_DEVICES to match plan placement.mesh")
    return _first_of_each(flags), notes


def _megatron_recompute(plan: Plan, notes: list[str]) -> list[Flag]:
    """Recompute flags. Every layer: selective, or full with --recompute-method uniform over 1-layer groups. The
    first N layers of each stage (`recompute_layers`): full with --recompute-method block
    --recompute-num-layers N, which Megatron applies to every (virtual) stage alike, so N is the largest count and
    a note says where that recomputes more than the plan; selective has no count in Megatron (every layer).
    Megatron has no per-op policy (selective_recompute "alternate_matmuls"): such a plan exports as full recompute
    of the same layers, which keeps only each block's input (less memory than the policy, more recompute), and a
    note says so; Megatron's selective (the attention core) would keep more than planned."""
    c = plan.config
    counts = recomputed_layers(c, plan.partition)
    if not any(counts):  # recompute none, or recompute_layers all zero
        return []
    every_layer = all(k == end - first for k, (first, end) in zip(counts, plan.partition))
    if c.recompute == "selective" and selective_policy(c, plan_execution(plan.prediction)) == "alternate_matmuls":
        notes.append("Megatron has no per-op selective recompute (torchtitan's policy, which the plan runs): full "
                     "recompute of the same layers below (less memory, more recompute than planned)")
    elif c.recompute == "selective":
        if not every_layer:
            notes.append(f"Megatron's selective recompute covers every layer; the plan recomputes only the first "
                         f"{counts} layers of its stages (more recompute, less memory than planned)")
        modules = MEGATRON_RECOMPUTE_MODULES.get(selective_policy(c, plan_execution(plan.prediction)))
        return [("--recompute-granularity", "selective")] + ([("--recompute-modules", modules)] if modules else [])
    if every_layer:
        return [("--recompute-granularity", "full"), ("--recompute-method", "uniform"), ("--recompute-num-layers", 1)]
    most = max(counts)
    if any(min(most, end - first) != k for k, (first, end) in zip(counts, plan.partition)):
        notes.append(f"Megatron recomputes the first --recompute-num-layers {most} layers of every pipeline stage; "
                     f"the plan recomputes {counts} per stage, so stages that planned fewer recompute more "
                     f"(slower, never more memory)")
    return [("--recompute-granularity", "full"), ("--recompute-method", "block"), ("--recompute-num-layers", most)]


# The selective recompute policies (spec/frameworks.py SELECTIVE_RECOMPUTE) as Megatron-Core's --recompute-modules;
# "attention_core" is its default (["core_attn"]), written as no flag. DeepSeek's norms, MLA up-projections and the
# experts' SwiGLU are Megatron-Core's layernorm, mla_up_proj and moe_act modules (transformer_config.py
# `recompute_modules`, core_v0.16.1).
MEGATRON_RECOMPUTE_MODULES = {"mla_up_proj_mlp": ("mla_up_proj", "mlp"),
                              "norms_mla_swiglu": ("layernorm", "mla_up_proj", "moe_act")}


def _beyond_distributed_optimizer(c: ParallelConfig, execution: Execution) -> str | None:
    """The note for a plan whose ZeRO sharding Megatron's distributed optimizer (the optimizer state only, every
    rank keeping the whole gradient buffer) does not run: ZeRO-3 outside Megatron-FSDP, and a plan that holds its
    gradients sharded (the megatron layout's ZeRO-2; the torch layout's ZeRO-1 and 2, which FSDP2 runs alike, where
    the gradients are not held whole through the step: `holds_unsharded_grads`). None otherwise."""
    if not c.zero_sharded or c.zero_stage == 0 or (c.zero_stage == 3 and execution.megatron_fsdp):
        return None
    if c.zero_stage == 3:
        sharded, strategy = "gradients and parameters sharded, parameters re-gathered per pass", "optim_grads_params"
    elif (not holds_unsharded_grads(c) if execution.memory_layout == "torch" else c.zero_stage == 2):
        sharded, strategy = "gradients sharded", "optim_grads"
    else:
        return None
    return (f"zero {c.zero_stage} ({sharded}) is beyond Megatron's distributed optimizer below, which "
            f"shards the optimizer state only (every rank keeps the whole gradient buffer, so the run below holds "
            f"more memory than planned); Megatron-Core's own FSDP is --use-megatron-fsdp "
            f"--data-parallel-sharding-strategy {strategy}")


def _as_flags(lines: list[str]) -> list[Flag]:
    """Argument lines ("--flag" or "--flag value") as (flag, value) pairs."""
    return [(flag, value or None) for flag, _, value in (line.partition(" ") for line in lines)]


def _first_of_each(flags: list[Flag]) -> list[Flag]:
    """Each flag once (its first value), so that flags added from several sources (the layout, a framework's
    overlap switches) never repeat one."""
    seen: set[str] = set()
    return [(f, v) for f, v in flags if not (f in seen or seen.add(f))]


def _megatron_partition(plan: Plan) -> list[Flag]:
    """Uniform stages need no flag (interleaved: layers per virtual stage); stages that differ only at the two
    ends use --decoder-first/last-pipeline-num-layers; any other partition, and any with an embedding-only or
    head-only chunk, is written as a layout."""
    c = plan.config
    layers = _megatron_stage_layers(plan)
    if len(set(layers)) == 1:
        return [("--num-layers-per-virtual-pipeline-stage", layers[0])] if c.vpp > 1 else []
    first, last, middle = layers[0], layers[-1], layers[1:-1]
    if c.vpp == 1 and len(set(middle)) <= 1 and min(layers) > 0:
        flags: list[Flag] = []
        if not middle or first != middle[0]:
            flags.append(("--decoder-first-pipeline-num-layers", first))
        if not middle or last != middle[0]:
            flags.append(("--decoder-last-pipeline-num-layers", last))
        return flags
    return [("--pipeline-model-parallel-layout", _pipeline_layout(plan))]


def _megatron_model(plan: Plan) -> list[Flag]:
    m = plan.model
    flags: list[Flag] = [("--num-layers", m.num_layers), ("--hidden-size", m.hidden_size),
                         ("--num-attention-heads", m.num_heads), ("--ffn-hidden-size", m.ffn_hidden_size)]
    if m.mtp_num_layers:  # on the last pipeline stage, as the plan costs them (cost/mtp.py)
        flags.append(("--mtp-num-layers", m.mtp_num_layers))
    if m.head_dim != m.hidden_size // m.num_heads:  # e.g. Mistral-NeMo: heads of 128 at hidden 5120 / 32 heads
        flags.append(("--kv-channels", m.head_dim))
    if m.arch == "llama":
        if m.num_kv_heads != m.num_heads:
            flags += [("--group-query-attention", None), ("--num-query-groups", m.num_kv_heads)]
        # --rotary-base is an int in Megatron-LM: 1e6 (Qwen2, Mistral) is written 1000000, never 1e+06.
        # GPT-OSS: its clamped SwiGLU is Megatron's quick GeGLU (x sigmoid(1.702 x)) with the clamp and the up
        # projection's offset of 1; its biased linear layers keep Megatron's biases; its sinks are the learnable
        # softmax offset.
        biased = m.out_proj_bias or (m.moe is not None and m.moe.expert_bias)
        activation = ([("--quick-geglu", None), ("--activation-func-clamp-value", f"{m.swiglu_limit:g}"),
                       ("--glu-linear-offset", "1")] if m.swiglu_limit is not None else [("--swiglu", None)])
        modelled = plan_execution(plan.prediction)
        if m.swiglu_limit is None and modelled.memory_layout == "megatron" and not modelled.fused_swiglu:
            activation.append(("--no-bias-swiglu-fusion", None))  # as modelled: the silu output kept
        flags += [*activation, ("--normalization", "RMSNorm"), ("--norm-epsilon", f"{m.norm_eps:g}"),
                  ("--position-embedding-type", "rope"), ("--rotary-base", round(m.rope_theta))]
        if not biased:
            flags.append(("--disable-bias-linear", None))
        if m.attention_sinks:
            flags.append(("--softmax-type", "learnable"))
        if m.rope_scaling_factor != 1:
            flags += [("--use-rope-scaling", None), ("--rope-scaling-factor", f"{m.rope_scaling_factor:g}")]
        if m.rope_linear_factor != 1 and float(m.rope_linear_factor).is_integer():
            flags.append(("--rotary-seq-len-interpolation-factor", round(m.rope_linear_factor)))
        if m.qkv_bias:
            flags.append(("--add-qkv-bias", None))
        if m.qk_norm:  # Qwen3: an RMSNorm on each query and key head
            flags.append(("--qk-layernorm", None))
    # (Megatron's default is 0.1 for both; the model's own, 0 for the Llama-shaped families, is what was planned)
    flags += [("--attention-dropout", f"{m.dropout:g}"), ("--hidden-dropout", f"{m.dropout:g}")]
    if not m.tied_embeddings:
        flags.append(("--untie-embeddings-and-output-weights", None))
    return flags


def _megatron_window(m) -> tuple[list[Flag], list[str]]:
    """Megatron-Core's flags for a sliding attention window (and for GPT-OSS, whose sinks go with its windows, a note
    on what has no flag): `--window-size LEFT,0` (Transformer Engine's window,
    the keys left of the query: the spec's window less the query itself) and, where some layers attend fully,
    `--window-attn-skip-freq N` (Megatron's layers numbered from 1 attend fully where the number is a multiple of
    N: GPT-OSS's odd 0-based layers at N = 2). Another pattern of full layers has no flag: a note says so."""
    if m.sliding_window is None:
        return [], []
    flags: list[Flag] = [("--window-size", f"{m.sliding_window - 1},0")]
    notes = ([f"{m.name}'s router bias has no flag here: the run below routes without a bias"]
             if m.attention_sinks else [])
    full = sorted(set(m.full_attention_layers))
    if not full:
        return flags, notes
    every = full[0] + 1
    if full == list(range(every - 1, m.num_layers, every)):
        return flags + [("--window-attn-skip-freq", every)], notes
    return flags, notes + [f"full-attention layers {full} (0-based) follow no period Megatron's "
                           f"--window-attn-skip-freq expresses; the run below slides the window in every layer"]


def _megatron_moe(plan: Plan) -> tuple[list[Flag], list[str]]:
    """Megatron-Core's flags for the model's MoE layers and latent attention and the plan's expert layout (EP, ETP,
    grouped GEMMs, the all-to-all dispatcher), and notes on what they do not say."""
    m, c = plan.model, plan.config
    flags: list[Flag] = []
    notes: list[str] = []
    if m.mla is not None:
        a = m.mla
        flags.append(("--multi-latent-attention", None))
        if a.q_lora_rank is not None:
            flags.append(("--q-lora-rank", a.q_lora_rank))
        flags += [("--kv-lora-rank", a.kv_lora_rank), ("--qk-head-dim", a.qk_nope_head_dim),
                  ("--qk-pos-emb-head-dim", a.qk_rope_head_dim), ("--v-head-dim", a.v_head_dim)]
    if m.moe is None:
        return flags, notes
    e = m.moe
    etp = c.etp
    if PRESETS["megatron-core"].expert_tp_problem(c, m):
        etp = 1  # (Megatron-Core refuses the whole configuration otherwise)
        notes.append(f"expert TP {c.etp}: Megatron-Core runs experts with biases at expert TP 1 only ('Bias in Moe "
                     f"is only supported when ETP==1'), so the run below keeps each expert whole on one rank (no "
                     f"expert TP): another layout than planned (plan it with --framework megatron-core)")
    flags += [("--num-experts", e.num_experts), ("--moe-router-topk", e.num_experts_per_tok),
              ("--moe-ffn-hidden-size", e.moe_intermediate_size),
              ("--expert-model-parallel-size", c.ep), ("--expert-tensor-parallel-size", etp),
              ("--moe-grouped-gemm", None)]
    # a dispatch that sends a token once per node (the framework's `dispatch_per_node`) is DeepEP's, Megatron-Core's
    # flex dispatcher; NCCL's all-to-all otherwise
    flags += ([("--moe-token-dispatcher-type", "flex"), ("--moe-flex-dispatcher-backend", "deepep")]
              if plan_execution(plan.prediction).dispatch_per_node else [("--moe-token-dispatcher-type", "alltoall")])
    flags.append(("--moe-router-score-function", e.scoring_func))
    if not e.norm_topk_prob:
        if e.scoring_func == "softmax":  # softmax over every expert, the top-k scores kept as they are
            flags.append(("--moe-router-pre-softmax", None))
        else:
            notes.append(f"the model keeps its top-k {e.scoring_func} scores unnormalised (norm_topk_prob false); "
                         f"Megatron-Core renormalises them whenever top-k > 1, so the exported router differs")
    if e.scoring_func == "sigmoid":
        notes.append("a sigmoid router that balances with a per-expert correction bias (DeepSeek-V3's noaux_tc) "
                     "needs --moe-router-enable-expert-bias (update rate --moe-router-bias-update-rate, default 1e-3) "
                     "and DeepSeek's sequence-wise auxiliary loss --moe-router-load-balancing-type seq_aux_loss; "
                     "autoconf's model spec does not record the balancing method, so neither is written")
    if e.num_shared_experts:
        flags.append(("--moe-shared-expert-intermediate-size",
                      e.num_shared_experts * e.shared_expert_intermediate_size))
        if e.shared_expert_gate:
            flags.append(("--moe-shared-expert-gate", None))
    pattern = [int(m.is_moe_layer(i)) for i in range(m.num_layers)]
    if 0 in pattern:
        dense = sum(1 for i in pattern if i == 0)
        regular = pattern == [0] * dense + [1] * (m.num_layers - dense)
        flags.append(("--moe-layer-freq", f"([0]*{dense}+[1]*{m.num_layers - dense})" if regular
                      else "[" + ",".join(map(str, pattern)) + "]"))
    if e.n_group > 1:
        flags += [("--moe-router-num-groups", e.n_group), ("--moe-router-group-topk", e.topk_group)]
    if e.routed_scaling_factor != 1:
        flags.append(("--moe-router-topk-scaling-factor", f"{e.routed_scaling_factor:g}"))
    if e.capacity_factor is not None:
        flags.append(("--moe-expert-capacity-factor", f"{e.capacity_factor:g}"))
    flags.append(("--moe-aux-loss-coeff", f"{e.router_aux_loss_coef:g}"))
    if c.tp > 1 and not c.sequence_parallel:
        notes.append("Megatron-Core runs MoE layers under tensor parallelism only with --sequence-parallel; the plan "
                     "has tp > 1 without it")
    return flags, notes


def megatron_args(plan: Plan) -> str:
    """Megatron-LM arguments for the same layout, one per line (values shell-quoted); '#' lines name the target
    version and explain what Megatron cannot express.

    Use with e.g. `grep -v '^#' megatron_args.txt | xargs python pretrain_gpt.py ...`.
    """
    flags, notes = megatron_flags(plan)
    header = [f"# {_summary(plan)}", f"# Targets {MEGATRON_TARGET}.",
              "# Megatron-LM arguments; use with: grep -v '^#' megatron_args.txt | xargs python pretrain_gpt.py ..."]
    lines = [flag if value is None else f"{flag} {' '.join(shlex.quote(str(v)) for v in value)}"
             if isinstance(value, tuple) else f"{flag} {shlex.quote(str(value))}" for flag, value in flags]
    return "\n".join(header + [f"# NOTE: {comment_text(n)}" for n in notes] + lines) + "\n"


# Every name `export_texts` can write, as globs (the torchrun scripts' count follows the plan's node count).
EXPORT_GLOBS = ("launch.sh", "torchrun_node*.sh", "slurm.sbatch", "pytorchjob.yaml", "megatron_args.txt",
                f"{TORCHTITAN_MODULE}.py")


def export_texts(plan: Plan, plan_path: str | Path | None) -> dict[str, str]:
    """File name -> text of every export (each name matches one of EXPORT_GLOBS). The scripts that run `autoconf
    launch` (launch.sh, torchrun, SLURM, PyTorchJob) only for a plan the executor runs (`plan_unsupported_reason`):
    for another, `launch` would refuse, and the other frameworks' exports are what there is to run."""
    nodes, _ = _nodes(plan)
    files = {}
    if plan_unsupported_reason(plan) is None:
        files["launch.sh"] = launch_script(plan, plan_path)
        if nodes <= MAX_NODE_SCRIPTS:
            for i in range(nodes):
                files[f"torchrun_node{i}.sh"] = torchrun_script(plan, plan_path, i)
        else:
            files["torchrun_node.sh"] = torchrun_script(plan, plan_path, None)
        files["slurm.sbatch"] = slurm_script(plan, plan_path)
        files["pytorchjob.yaml"] = pytorchjob(plan, plan_path)
    files["megatron_args.txt"] = megatron_args(plan)
    files[f"{TORCHTITAN_MODULE}.py"] = torchtitan_config(plan)
    return files


def write_exports(plan: Plan, plan_path: str | Path | None, out_dir: str | Path, force: bool = False) -> list[Path]:
    """Writes launch.sh, torchrun_node<i>.sh (or one torchrun_node.sh taking the node rank for more than
    MAX_NODE_SCRIPTS nodes), slurm.sbatch, pytorchjob.yaml, megatron_args.txt and torchtitan_config.py into
    `out_dir`.

    Refuses (UserError) before writing anything if any of them exists and not `force`. With `force`, the exports
    of an earlier plan that this one does not write (node scripts for another node count; launch scripts of a plan
    the executor ran, where this one's does not run) are removed, as they would now run this plan wrongly: only
    files autoconf wrote (its summary line).
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
    for stale in sorted({p for glob in EXPORT_GLOBS for p in out_dir.glob(glob)}):
        if stale.name not in texts and not stale.is_symlink() and _written_by_autoconf(stale):
            stale.unlink()
    return paths


def _written_by_autoconf(path: Path, lines: int = 40) -> bool:
    """Whether an export's summary comment (`_summary`) is among the first `lines` lines of `path`."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [f.readline() for _ in range(lines)]
    except OSError:
        return False
    return any(line.startswith(f"# {SUMMARY_PREFIX}") for line in head)
