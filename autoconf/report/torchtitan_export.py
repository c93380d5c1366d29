"""A plan as a torchtitan config: a Python config_registry module (torchtitan_config.py) whose function
`autoconf_plan()` returns torchtitan's Trainer.Config, the format torchtitan 0.3.0 loads with
`--module torchtitan_config --config autoconf_plan` (its TOML job files are gone).

The config starts from torchtitan's own recipe for the model when torchtitan ships the model (TORCHTITAN_FLAVORS,
compared by dimensions; FAMILY_FLAVORS, torchtitan's GPT-OSS, Qwen3 and DeepSeek-V3 models, compared with the
presets they equal), else from its Llama 3.1 8B recipe with a model of the plan's dimensions built by
torchtitan's llama3 builders; then it sets the plan's batch, degrees, schedule, stage partition and recompute.
"""

from __future__ import annotations

import dataclasses

from autoconf.report.offload_flags import torchtitan_offload
from autoconf.report.precision_flags import torchtitan_fp8_note
from autoconf.report.upstream import TORCHTITAN_TARGET, TORCHTITAN_VERSION
from autoconf.spec.frameworks import execution, plan_execution, selective_policy
from autoconf.spec.model import LLAMA3_ROPE_DEFAULTS
from autoconf.spec.plan import Plan, recomputed_layer_indices
from autoconf.spec.presets import PRESETS
from autoconf.spec.schedules import pipeline_problem, schedule_spec

MODULE = "torchtitan_config"
FUNCTION = "autoconf_plan"
# The selective recompute policies (spec/frameworks.py SELECTIVE_RECOMPUTE) that are not torchtitan's own, in words.
SELECTIVE_WORDS = {"attention_core": "the attention core only",
                   "norms_mla_swiglu": "the norms, the latent attention's up-projections and the experts' SwiGLU",
                   "mla_up_proj_mlp": "the latent attention's up-projections and the dense layers' MLPs"}

# torchtitan 0.3.0 torchtitan/models/llama3/__init__.py: the flavors its config_registry names, as
# (layers, dim, heads, kv heads, SwiGLU hidden dim, vocabulary); all with rope theta 500000 and Llama 3.1's "llama"
# RoPE scaling (factor 8), untied embeddings. tests/test_exports_upstream.py checks this table against torchtitan.
TORCHTITAN_FLAVORS = {
    "llama3_8b": ("8B", (32, 4096, 32, 8, 14336, 128256)),
    "llama3_70b": ("70B", (80, 8192, 64, 8, 28672, 128256)),
    "llama3_405b": ("405B", (126, 16384, 128, 8, 53248, 128256)),
}
FLAVOR_ROPE_THETA, FLAVOR_ROPE_SCALING = 500000.0, 8.0
# Recipes that build a float8 model when called (llama3_405b: Float8LinearConverter on every linear, which refuses
# a GPU below SM89 as the config loads): the export starts from llama3_8b's recipe with the flavor's model instead.
FLOAT8_RECIPES = ("llama3_405b",)


# torchtitan 0.3.0's other model families (torchtitan/models/<family>): the autoconf presets equal to one of their
# flavors, as (family, recipe function in <family>/config_registry.py, model_registry flavor). qwen3 ships no
# 235B-A22B recipe: its model on the 30B-A3B one, with that model's Hugging Face assets (FLAVOR_ASSETS; the
# recipe's own name the 30B's). tests/test_exports_upstream.py builds each flavor on the meta device and finds the
# preset's parameter count.
FAMILY_FLAVORS = {
    "gpt-oss-20b": ("gpt_oss", "gpt_oss_20b", "20b"),
    "gpt-oss-120b": ("gpt_oss", "gpt_oss_120b", "120b"),
    "qwen3-30b-a3b": ("qwen3", "qwen3_30b_a3b", "30B-A3B"),
    "qwen3-235b-a22b": ("qwen3", "qwen3_30b_a3b", "235B-A22B"),
    "deepseek-v3": ("deepseek_v3", "deepseek_v3_671b", "671B"),
}
FLAVOR_ASSETS = {"235B-A22B": "./assets/hf/Qwen3-235B-A22B"}


def family_recipe(plan: Plan) -> tuple[str, str, str] | None:
    """(family, recipe, flavor) of torchtitan's own model equal to the plan's (`FAMILY_FLAVORS`: the preset's spec,
    whatever the plan's model is named), or None."""
    for preset, entry in FAMILY_FLAVORS.items():
        if dataclasses.replace(plan.model, name=preset) == PRESETS[preset]:
            return entry
    return None


def upstream_recipe(plan: Plan) -> str | None:
    """The name of torchtitan's config function for the plan's model, or None when torchtitan ships no such model."""
    m = plan.model
    dims = (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.ffn_hidden_size, m.vocab_size)
    if (m.arch != "llama" or m.qkv_bias or m.tied_embeddings or m.sliding_window is not None
            or m.rope_yarn is not None or m.rope_linear_factor != 1 or m.rope_unapplied
            or any(getattr(m, k) != v for k, v in LLAMA3_ROPE_DEFAULTS.items())
            or m.rope_theta != FLAVOR_ROPE_THETA
            or m.rope_scaling_factor != FLAVOR_ROPE_SCALING or m.norm_eps != 1e-5):
        return None
    return next((name for name, (_, flavor) in TORCHTITAN_FLAVORS.items() if flavor == dims), None)


def module_fqns(plan: Plan) -> list[list[str]]:
    """torchtitan module names of each model chunk, in stage order (its llama3 model: tok_embeddings, layers.N,
    norm, lm_head)."""
    parts = []
    last = len(plan.partition) - 1
    for st, (first, end) in enumerate(plan.partition):
        names = ["tok_embeddings"] if st == 0 else []
        names += [f"layers.{i}" for i in range(first, end)]
        if st == last:
            names += ["norm", "lm_head"]
        parts.append(names)
    return parts


def _custom_model(plan: Plan) -> list[str]:
    """Lines of `autoconf_plan()` that replace the recipe's model by one of the plan's dimensions (torchtitan 0.3.0's
    llama3 builders; the leading underscore names are that release's)."""
    m, c = plan.model, plan.config
    scaling = (f'scaling="llama", scaling_factor={m.rope_scaling_factor!r}, '
               f'low_freq_factor={m.rope_low_freq_factor!r}, high_freq_factor={m.rope_high_freq_factor!r}, '
               f'original_max_position_embeddings={m.rope_original_context!r}' if m.rope_scaling_factor != 1
               else 'scaling="none"')
    return [
        f"    dim, n_heads, vocab = {m.hidden_size}, {m.num_heads}, {m.vocab_size}",
        "    rope = ComplexRoPE.Config(dim=dim // n_heads, "
        f"max_seq_len={max(m.max_seq_len, c.seq_len)}, theta={float(m.rope_theta)!r}, {scaling})",
        "    model = llama3.Llama3Model.Config(",
        "        dim=dim, vocab_size=vocab, "
        f"enable_weight_tying={m.tied_embeddings},",
        "        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim, "
        "param_init=llama3._EMBEDDING_INIT),",
        f"        norm=RMSNorm.Config(normalized_shape=dim, eps={m.norm_eps!r}, param_init=llama3._NORM_INIT),",
        "        lm_head=Linear.Config(in_features=dim, out_features=vocab, "
        "param_init=llama3._output_linear_init(dim)),",
        f"        layers=llama3._build_llama3_layers(n_layers={m.num_layers}, dim=dim, n_heads=n_heads, "
        f"n_kv_heads={m.num_kv_heads}, hidden_dim={m.ffn_hidden_size}, rope=rope, attn_backend=\"flex\"),",
        "    )",
        "    for layer in model.layers:",
        f"        layer.attention_norm.eps = layer.ffn_norm.eps = {m.norm_eps!r}",
        "    config.model_spec = dataclasses.replace(config.model_spec, flavor=\"autoconf\", model=model)",
        "    config.loss.loss_fn.global_vocab_size = vocab",
    ]


def _local_batch(plan: Plan) -> int:
    """torchtitan's local_batch_size: what one DP rank runs per gradient-accumulation step. Without pipelining that
    is one forward of the plan's micro-batch (torchtitan accumulates global / (local x DP) steps); a pipeline runs a
    rank's whole batch per step, split into micro-batches of pipeline_parallel_microbatch_size."""
    c = plan.config
    return c.global_batch_size // c.dp if c.pp > 1 else c.micro_batch_size


def _llama3_notes(plan: Plan) -> list[str]:
    """What a model of the plan's dimensions on torchtitan's llama3 builders leaves out of the plan's model."""
    m = plan.model
    notes = []
    if m.arch == "gpt":
        notes.append("torchtitan ships llama-style models; this describes a llama3 model of the GPT's dimensions "
                     "(a GPT with LayerNorm, GeLU and learned positions needs its own model definition)")
    if (m.head_dim != m.hidden_size // m.num_heads or m.qk_norm or m.moe is not None or m.mla is not None
            or m.attention_sinks or m.swiglu_limit is not None):
        notes.append("torchtitan's llama3 builder takes neither a head width of its own, QK norm, MoE, MLA, attention "
                     "sinks nor a clamped SwiGLU; the model below has none of them (torchtitan's own "
                     f"{', '.join(sorted({f for f, _, _ in FAMILY_FLAVORS.values()}))} models are written for the "
                     "presets they equal)")
    if m.qkv_bias:
        notes.append("torchtitan's llama3 model has no QKV bias; the model below has none")
    if m.rope_yarn is not None:
        notes.append("the model's YaRN RoPE scaling is not written: the model below rotates unscaled")
    if m.rope_linear_factor != 1:
        notes.append(f"the model's linear RoPE scaling (factor {m.rope_linear_factor:g}) is not written: the model "
                     f"below rotates unscaled")
    if m.rope_unapplied:
        notes.append(f"the model's {m.rope_unapplied} RoPE scaling is not written: the model below rotates unscaled")
    if m.sliding_window is not None:
        notes.append(f"torchtitan's llama3 model has no sliding-window attention; the model below attends to the "
                     f"whole sequence in every layer (the plan slides a {m.sliding_window}-token window in "
                     f"{m.sliding_layer_count} of {m.num_layers})")
    return notes


def torchtitan_config(plan: Plan, summary: str) -> str:
    """The text of torchtitan_config.py for `plan`; `summary` is the plan's one-line comment text."""
    m, c = plan.model, plan.config
    family = family_recipe(plan)
    recipe = None if family else upstream_recipe(plan)
    replicate, shard = (c.dp, 1) if c.zero_stage == 0 else (1, c.dp)
    reshard = {0: "default", 1: "never", 2: "never", 3: "always"}[c.zero_stage]
    notes = [] if family else _llama3_notes(plan)
    if m.mtp_num_layers:
        notes.append(f"the run below leaves out the model's {m.mtp_num_layers} multi-token-prediction module(s) that "
                     f"the plan costs on the last stage (torchtitan {TORCHTITAN_VERSION}'s deepseek_v3 model builds "
                     f"them with model_registry(..., num_mtp_layers=N) and MTPLoss; this export does not write them)")
    # torchtitan's llama3 model (no family of torchtitan's equals the plan's) has no experts to split
    ep = c.ep if family or m.moe is None else 1
    if ep != c.ep:
        notes.append(f"the plan's expert parallelism (ep {c.ep}) is not written: the model below has no experts "
                     f"(expert_parallel_degree 1)")
    elif c.etp > 1:
        notes.append(f"expert tensor parallelism (etp {c.etp}) has no torchtitan {TORCHTITAN_VERSION} "
                     f"setting: its experts are split over expert_parallel_degree and FSDP only")
    if m.tied_embeddings and c.pp > 1:
        notes.append(f"torchtitan {TORCHTITAN_VERSION} refuses weight tying under pipeline parallelism (its decoder's "
                     f"update_from_config: 'Weight tying is not supported with Pipeline Parallel'), so this config "
                     f"stops as it loads: plan the model at pp 1 for torchtitan")
    if c.dtype == "fp16":
        notes.append("torchtitan's mixed precision is bfloat16 or float32, not fp16: bfloat16 below")
    if c.dtype == "fp8":
        notes.append(torchtitan_fp8_note(c))
    if c.dtype == "fp8-deepseek":
        notes.append(f"dtype fp8-deepseek (DeepSeek's block-scaled FP8 GEMMs) has no torchtitan {TORCHTITAN_VERSION} "
                     f"setting: bfloat16 below")
    offload_lines, offload_notes = torchtitan_offload(c)
    notes += offload_notes
    policy = selective_policy(c, plan_execution(plan.prediction))
    if c.recompute == "selective" and policy != "alternate_matmuls":
        notes.append(f"torchtitan {TORCHTITAN_VERSION}'s selective checkpointing (SelectiveAC) is per-op: it saves "
                     f"every other matmul's output and the attention output and recomputes the rest of each block; "
                     f"the plan recomputes {SELECTIVE_WORDS[policy]} (selective_recompute {policy}), so memory and "
                     f"recompute time differ from the plan's")
    if c.cp > 1 and c.cp_comm == "ring":
        notes.append(f"the plan passes K/V blocks around the CP ring; torchtitan {TORCHTITAN_VERSION}'s attention "
                     f"(FlexAttention) all-gathers K/V for context parallelism and has no ring setting, so its K/V "
                     f"exchange is the allgather one (cp_comm allgather)")
    torchtitan = execution("torchtitan")  # (its rules, for a plan made for another framework)
    mesh, sharding = torchtitan.expert_mesh_problem(c), torchtitan.cp_sharding_problem(c)
    if mesh:
        notes.append(f"torchtitan {TORCHTITAN_VERSION} cannot build this expert mesh: {mesh}")
    if sharding:
        notes.append(f"the plan's ZeRO-0 runs as ZeRO-3 over the CP ranks in torchtitan {TORCHTITAN_VERSION}: "
                     f"{sharding}")
    if c.zero_sharded and c.pp == 1 and c.num_microbatches > 1 and c.grad_reduce == "step":
        notes.append(f"torchtitan {TORCHTITAN_VERSION} reduce-scatters the gradients after every accumulation step "
                     f"(grad_reduce microbatch); the plan holds them unsharded and reduces once per step (more "
                     f"memory, less communication than torchtitan runs)")
    if c.tp > 1 and not c.sequence_parallel:
        notes.append("the plan runs tensor parallelism without sequence parallelism (enable_sequence_parallel=False)")
    schedule = schedule_spec(c.schedule)
    refused = pipeline_problem(c, "torch")  # (torchtitan runs torch's classes)
    if schedule.torchtitan_note:
        notes.append(schedule.torchtitan_note)
    elif refused:
        notes.append(f"torchtitan cannot run this pipeline: {refused}")
    if family:
        package, base, flavor = family
        described = f"torchtitan's {package} model {flavor} on its recipe {base}"
    else:
        package, base = "llama3", "llama3_8b" if recipe is None or recipe in FLOAT8_RECIPES else recipe
        flavor = TORCHTITAN_FLAVORS[recipe][0] if recipe else None
        described = (f"torchtitan's {flavor} model on its recipe llama3_8b (the {recipe} recipe builds it in "
                     f"float8)" if recipe in FLOAT8_RECIPES else f"torchtitan's recipe {recipe}" if recipe
                     else "the plan's model on torchtitan's recipe llama3_8b")
    lines = [f"# {summary}",
             f"# Targets {TORCHTITAN_TARGET}: a config_registry module. Run from this folder with",
             f"#   PYTHONPATH=. torchrun ... -m torchtitan.train --module {MODULE} --config {FUNCTION}",
             f"# Model: {described}"]
    lines += [f"# NOTE: {n}" for n in notes]
    imports = ["from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401",
               f"from torchtitan.models.{package}.config_registry import {base}"]
    if flavor is not None:
        imports.append(f"from torchtitan.models.{package} import model_registry")
    else:
        imports = ["import dataclasses", "", "from torchtitan.models import llama3",
                   "from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm"] + imports
    ac, ac_class = _activation_checkpoint(plan)
    if flavor is not None:
        imports = ["import dataclasses", ""] + imports
    lines += imports + ac_class + ["", "", f"def {FUNCTION}():", f"    config = {base}()"]
    if flavor is None:
        lines += _custom_model(plan)
    else:  # the flavor's model without converters: the plan's dtype decides
        lines += [f'    config.model_spec = model_registry("{flavor}")',
                  # torchtitan refuses a training sequence beyond the flavor's RoPE table (131,072 for llama3):
                  # the tables reach the plan's sequence, as its own update_from_config then sets them
                  "    for layer in config.model_spec.model.layers:",
                  '        attention = getattr(layer, "attention", None)',
                  '        if getattr(attention, "rope", None) is not None and '
                  f'attention.rope.max_seq_len < {c.seq_len}:',
                  f"            attention.rope = dataclasses.replace(attention.rope, max_seq_len={c.seq_len})"]
        if flavor in FLAVOR_ASSETS:  # the recipe is another model's: the tokenizer and weights of this one
            lines.append(f'    config.hf_assets_path = "{FLAVOR_ASSETS[flavor]}"')
    precision = "float32" if c.dtype == "fp32" else "bfloat16"
    lines += ["    training, parallelism = config.training, config.parallelism",
              f"    training.local_batch_size = {_local_batch(plan)}",
              f"    training.global_batch_size = {c.global_batch_size}",
              f"    training.seq_len = {c.seq_len}",
              f'    training.mixed_precision_param = "{precision}"',
              f"    config.compile.enable = {c.compile}  # the plan's compile field",
              "    config.compile.enable_async_tensor_parallel = False  # (not modelled)",
              # what makes torchtitan run as the plan's framework was modelled (spec/frameworks.py)
              *(f"    {line}" for line in plan_execution(plan.prediction).export_lines("torchtitan", c)),
              f"    parallelism.data_parallel_replicate_degree = {replicate}",
              f"    parallelism.data_parallel_shard_degree = {shard}",
              f'    parallelism.fsdp_reshard_after_forward = "{reshard}"',
              f"    parallelism.tensor_parallel_degree = {c.tp}",
              f"    parallelism.enable_sequence_parallel = {c.sequence_parallel or c.tp == 1}",
              f"    parallelism.pipeline_parallel_degree = {c.pp}",
              f"    parallelism.context_parallel_degree = {c.cp}",
              f'    parallelism.pipeline_parallel_schedule = "{schedule.torch_class or "1F1B"}"',
              f"    parallelism.pipeline_parallel_microbatch_size = {c.micro_batch_size}",
              f"    parallelism.expert_parallel_degree = {ep}",
              *(f"    {line}" for line in offload_lines),
              # torchtitan 0.3.0 captures each step's forward and backward in a CUDA graph by default; its config
              # refuses that under pipelining and with the EP dispatchers that synchronise with the host (every one
              # the plan's experts run), and the plan models a step launched kernel by kernel
              "    training.disable_cuda_graphs = True  # (the plan models no CUDA graph capture)"]
    if c.pp > 1:
        lines.append("    parallelism.module_fqns_per_model_part = [  # one list per model chunk, in stage order")
        lines += ["        [" + ", ".join(f'"{n}"' for n in part) + "]," for part in module_fqns(plan)]
        lines.append("    ]")
    lines += [f"    config.activation_checkpoint = {ac}", "    return config"]
    return "\n".join(lines) + "\n"


def _activation_checkpoint(plan: Plan) -> tuple[str, list[str]]:
    """(the value of config.activation_checkpoint, the lines of the policy class it needs). SelectiveAC is
    torchtitan's per-op policy (TOML releases: mode "selective", selective_ac_option "op"), FullAC the whole block.
    torchtitan 0.3.0 applies either to every transformer block; where the plan recomputes only some blocks
    (`recompute_layers`), the module defines PlannedBlocksAC: the same policy on exactly the plan's blocks
    (`recomputed_layer_indices`), the others left as they are."""
    c = plan.config
    blocks = sorted(recomputed_layer_indices(c, plan.partition))
    if not blocks:
        return "None", []
    policy = {"selective": "SelectiveAC", "full": "FullAC"}[c.recompute]
    if len(blocks) == plan.model.num_layers:
        return f"{policy}.Config()", []
    names = ", ".join(f'"layers.{i}"' for i in blocks)
    return "PlannedBlocksAC.Config()", [
        "", "",
        f"class PlannedBlocksAC({policy}):",
        f'    """torchtitan\'s {policy}, only on the transformer blocks the plan recomputes."""',
        "",
        f"    BLOCKS = frozenset({{{names}}})",
        "",
        "    @dataclasses.dataclass(kw_only=True, slots=True)",
        f"    class Config({policy}.Config):",
        "        pass",
        "",
        "    def _wrap_block(self, module, *, base_fqn=None):",
        "        return super()._wrap_block(module, base_fqn=base_fqn) if base_fqn in self.BLOCKS else module"]
