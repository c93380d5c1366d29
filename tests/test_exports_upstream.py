"""The exports as the upstream code reads them: megatron_args.txt parsed with the flags Megatron-LM declares at the
tag it names (scripts/data, extracted from its arguments.py) and turned into megatron-core's own config objects;
torchtitan_config.py loaded by torchtitan's ConfigManager and its model built on the meta device; pytorchjob.yaml
parsed with the fields the Kubeflow operator requires. The packages are the pinned ones of the `test` extra; without
them (outside CI) those checks skip."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.report import upstream
from autoconf.report.exporters import export_texts, megatron_args, megatron_flags, pytorchjob, torchtitan_config
from autoconf.report.torchtitan_export import (FAMILY_FLAVORS, FUNCTION, TORCHTITAN_FLAVORS, family_recipe,
                                              module_fqns, upstream_recipe)
from autoconf.spec.cluster import load_cluster
from autoconf.spec.dtypes import precision
from autoconf.spec.frameworks import execution, plan_execution
from autoconf.spec.model import MLASpec, MoESpec
from autoconf.spec.plan import ParallelConfig, recomputed_layer_indices, recomputed_layers
from autoconf.spec.presets import PRESETS, load_model
from autoconf.spec.schedules import schedule_spec

ROOT = Path(__file__).resolve().parent.parent
FLAGS_FILE = ROOT / "scripts" / "data" / f"megatron_lm_{upstream.MEGATRON_LM_TAG}_flags.json"
CRD_SCHEMA_FILE = ROOT / "scripts" / "data" / f"pytorchjob_crd_{upstream.TRAINING_OPERATOR_TAG}_schema.json"


def _upstream(module: str):
    """The upstream package: required in CI (the test extra installs it), skipped elsewhere when absent."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


def _plan(model="tiny-llama", tp=1, pp=2, dp=2, vpp=1, schedule="1f1b", zero=0, recompute="none", sp=False,
          dtype="bf16", partition=None, nodes=1, gpus=4, global_batch=16, seq=64, cluster="dgx-a100-80g", ep=1,
          recompute_layers=None, cp=1, cp_comm="ring", execution=None, **fields):
    config = ParallelConfig(tp=tp, pp=pp, dp=dp, vpp=vpp, micro_batch_size=1, global_batch_size=global_batch,
                            seq_len=seq, schedule=schedule, zero_stage=zero, recompute=recompute,
                            sequence_parallel=sp, dtype=dtype, ep=ep, recompute_layers=recompute_layers, cp=cp,
                            cp_comm=cp_comm, **fields)
    model = PRESETS[model] if isinstance(model, str) else model
    framework = {"execution": execution} if execution else {}
    return estimate(model, load_cluster(cluster, nodes=nodes, gpus_per_node=gpus), config, partition=partition,
                    **framework)


# Several plans: dense Llama 3.1 with rope scaling, uneven interleaved, ZeRO 1/3, SP, each recompute mode.
PLANS = {
    "llama3.1-8b-sp-selective": lambda: _plan("llama3.1-8b", tp=2, pp=2, dp=2, sp=True, recompute="selective",
                                              nodes=1, gpus=8, seq=8192),
    # a million tokens on torchtitan's 8B flavor, whose RoPE tables stop at 131,072
    "llama3.1-8b-1m-cp8": lambda: _plan("llama3.1-8b", tp=1, pp=1, dp=1, cp=8, recompute="full", nodes=1, gpus=8,
                                        global_batch=1, seq=1048576, zero=3),
    "uneven-interleaved-zero1": lambda: _plan(pp=2, dp=2, vpp=2, schedule="interleaved-1f1b", zero=1,
                                              partition=[[0, 1], [1, 3], [3, 6], [6, 8]]),
    "uneven-middle-full": lambda: _plan(pp=4, dp=1, recompute="full", partition=[[0, 2], [2, 3], [3, 6], [6, 8]]),
    "zero3-fp32-gpt": lambda: _plan("tiny-gpt", zero=3, dtype="fp32"),
    "qwen-like-rope-1e6": lambda: _plan(dataclasses.replace(PRESETS["tiny-llama"], rope_theta=1e6, qkv_bias=True,
                                                            norm_eps=1e-6), tp=2, pp=1, dp=2, sp=True),
    "linear-rope-4": lambda: _plan(dataclasses.replace(PRESETS["tiny-llama"], rope_linear_factor=4.0), tp=2, pp=1,
                                   dp=2),
    "uniform-interleaved": lambda: _plan(pp=2, dp=2, vpp=2, schedule="interleaved-1f1b", recompute="full"),
    "no-pp-accumulating-zero1": lambda: _plan(pp=1, dp=4, zero=1),
    "head-dim-64": lambda: _plan(dataclasses.replace(PRESETS["tiny-llama"], head_dim=64), tp=2, pp=1, dp=2),
    "embedding-and-head-chunks": lambda: _plan(pp=2, dp=2, vpp=5, schedule="interleaved-1f1b"),  # 8 layers + 2
    "head-only-last-stage": lambda: _plan(pp=2, dp=2, partition=[[0, 8], [8, 8]]),
    # MoE: four experts over ep 2 behind a leading dense layer (--moe-layer-freq), a shared expert
    "moe-ep2-first-dense": lambda: _plan(dataclasses.replace(PRESETS["tiny-llama"], name="tiny-moe", moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, num_shared_experts=1,
        shared_expert_intermediate_size=96, first_k_dense=1)), pp=2, dp=2, zero=1, ep=2),
    # Qwen1.5-MoE's router: softmax over every expert, the top-k kept as they are (--moe-router-pre-softmax)
    "moe-unnormalised-top-k": lambda: _plan(dataclasses.replace(PRESETS["tiny-llama"], name="tiny-moe", moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, norm_topk_prob=False)), pp=1, dp=4, zero=1,
        ep=2),
    # one MTP module after the last stage's layers: --mtp-num-layers and 'm' before 'L' in the layout
    "mtp-interleaved-layout": lambda: _plan(dataclasses.replace(PRESETS["tiny-llama"], mtp_num_layers=1), pp=2, dp=2,
                                            vpp=2, schedule="interleaved-1f1b",
                                            partition=[[0, 1], [1, 3], [3, 6], [6, 8]]),
    "offload-activations-and-optimizer": lambda: _plan(pp=1, dp=4, zero=3, offload_activations=True,
                                                       offload_optimizer=True),
    "per-stage-recompute": lambda: _plan(pp=2, dp=2, recompute="full", recompute_layers=[3, 1]),
    # torchtitan's per-op policy, on the first layers of each stage: torchtitan's SelectiveAC; Megatron, which has
    # no per-op mode, recomputes those layers in full.
    "per-op-selective-per-stage": lambda: _plan(pp=2, dp=2, recompute="selective",
                                                selective_recompute="alternate_matmuls", recompute_layers=[2, 1]),
    "cp2-ring-tp2-sp-zero3": lambda: _plan(tp=2, pp=1, dp=1, cp=2, sp=True, zero=3, recompute="full"),
    "cp2-allgather-pp2": lambda: _plan(pp=2, dp=1, cp=2, cp_comm="allgather", zero=1),
    # Qwen3's QK norm (--qk-layernorm); fp8 with optimizer offload (no fp8 parameter gather: Megatron-LM allows it
    # there only under the delayed recipe)
    "qk-norm": lambda: _plan(dataclasses.replace(PRESETS["tiny-llama"], qk_norm=True), tp=2, pp=1, dp=2, sp=True),
    # GPT-OSS's alternating sliding layers (--window-size, --window-attn-skip-freq 2; torchtitan: a note)
    "sliding-window": lambda: _plan(dataclasses.replace(PRESETS["tiny-llama"], sliding_window=16,
                                                        full_attention_layers=(1, 3, 5, 7)), pp=2, dp=2),
    # GPT-OSS: quick GeGLU with its clamp and offset, biases, learnable softmax (sinks), experts over ep 4
    "gpt-oss": lambda: _plan("gpt-oss-20b", pp=2, dp=4, ep=4, gpus=8, cluster="dgx-h100-80g", zero=1),
    # experts over ep 8 without a pipeline: torchtitan 0.3.0's config refuses its default CUDA graphs beside the
    # all-to-all dispatcher, and Megatron's expert biases need expert TP 1
    # V placement (zbv, as torchtitan's search may pick it) exported to Megatron, which runs interleaved 1F1B with
    # stage s on rank s % pp: each rank keeps its layers
    "zbv-uneven": lambda: _plan(pp=2, dp=2, vpp=2, schedule="zbv", zero=1, partition=[[0, 3], [3, 4], [4, 5], [5, 8]]),
    "gpt-oss-ep8-no-pipeline": lambda: _plan("gpt-oss-20b", pp=1, dp=8, ep=8, gpus=8, cluster="dgx-h100-80g", zero=1),
    "gpt-oss-expert-tp2": lambda: _plan("gpt-oss-20b", tp=2, pp=1, dp=4, ep=4, etp=2, sp=True, gpus=8,
                                        cluster="dgx-h100-80g", zero=1),
    "fp8-offload-optimizer": lambda: _plan(pp=1, dp=4, zero=1, dtype="fp8", cluster="dgx-h100-80g",
                                           offload_optimizer=True),
    # Megatron-Core's bf16 gradient buffer and bf16 Adam moments (--grad-reduce-in-bf16, the precision-aware
    # optimizer's --exp-avg(-sq)-dtype), the optimizer on the host
    "megatron-core-bf16-states-offload": lambda: _plan(pp=1, dp=4, zero=1, cluster="dgx-h100-80g",
                                                       offload_optimizer=True, execution=execution(
                                                           "megatron-core").replace(grad_buffer_dtype="bf16",
                                                                                    optimizer_moments="bf16")),
    # Megatron 2022's fp16 run with its fp32 gradient buffer (--accumulate-allreduce-grads-in-fp32)
    "megatron-fp16": lambda: _plan(tp=2, pp=2, dp=1, dtype="fp16", execution=execution("megatron")),
    "megatron-fsdp-fp8-params": lambda: _plan(pp=1, dp=4, zero=3, dtype="fp8", cluster="dgx-h100-80g",
                                              grad_reduce="microbatch", execution=execution("megatron-core").replace(
                                                  fp8_params=True, keep_fp8_transpose=True)),
}


# ---- Megatron-LM: flag names and types at the tag ---------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _flag_table() -> dict:
    return json.loads(FLAGS_FILE.read_text())


def megatron_parser() -> argparse.ArgumentParser:
    """A parser with every flag Megatron-LM declares at the tag, with its value kind, nargs and choices: an unknown
    flag, a float for an int (--rotary-base 1e+06) or a value outside the choices fails."""
    doc = _flag_table()
    parser = argparse.ArgumentParser(exit_on_error=False, allow_abbrev=False)
    seen = set()
    for name, entry in doc["flags"].items():
        kwargs = {"dest": entry["dest"]}
        if entry["kind"] == "flag":
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = {"int": int, "float": float}.get(entry["kind"], str)
            if "nargs" in entry:
                kwargs["nargs"] = entry["nargs"]
            if "choices" in entry:
                kwargs["choices"] = entry["choices"]
        if name in seen:
            continue
        seen.add(name)
        parser.add_argument(name, **kwargs)
    return parser


def parse_megatron(text: str) -> tuple[argparse.Namespace, list[str]]:
    """The parsed arguments and the dests of the flags the text gives, as `xargs` would split its lines."""
    tokens = [t for line in text.splitlines() if not line.startswith("#") for t in shlex.split(line)]
    parser = megatron_parser()
    given = [parser._option_string_actions[t].dest for t in tokens if t.startswith("--")]
    return parser.parse_args(tokens), given


def layers_of(plan) -> list[int]:
    return [end - first for first, end in plan.partition]


def test_megatron_flag_table_names_its_source():
    """The vendored flag list names Megatron-LM's file, the tag the exports target and its commit, and holds the
    flags it is known for (so a truncated extraction fails)."""
    doc = json.loads(FLAGS_FILE.read_text())
    assert doc["tag"] == upstream.MEGATRON_LM_TAG and re.fullmatch(r"[0-9a-f]{40}", doc["commit"])
    assert "megatron/training/arguments.py" in doc["source"] and len(doc["flags"]) > 500
    assert doc["flags"]["--rotary-base"]["kind"] == "int"
    assert doc["flags"]["--pipeline-model-parallel-layout"]["kind"] == "str"
    with pytest.raises(argparse.ArgumentError):
        megatron_parser().parse_args(["--rotary-base", "1e+06"])
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        megatron_parser().parse_args(["--no-such-megatron-flag"])


@pytest.mark.parametrize("name", sorted(PLANS))
def test_megatron_args_parse_at_the_named_tag(name):
    """Every line parses with the flags of the Megatron-LM tag the file names; the degrees, batch, layers, recompute,
    distributed optimizer, SP, dtype and rope are the plan's; an uneven split is the plan's own (first/last or a
    layout whose stages hold the plan's layers)."""
    plan = PLANS[name]()
    c, m = plan.config, plan.model
    text = megatron_args(plan)
    assert f"# Targets Megatron-LM {upstream.MEGATRON_LM_TAG}" in text
    args, given = parse_megatron(text)
    assert len(given) == len(set(given)), "a flag is given twice"
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (c.tp, c.pp)
    assert (args.context_parallel_size or 1) == c.cp
    if c.cp > 1:
        assert args.cp_comm_type == [{"ring": "p2p", "allgather": "all_gather"}[c.cp_comm]]
    dp = c.world_size // (c.tp * c.pp * c.cp)
    assert args.global_batch_size // (args.micro_batch_size * dp) == c.num_microbatches
    assert args.seq_length == c.seq_len and args.num_layers == m.num_layers
    per_op = c.recompute == "selective" and c.selective_recompute == "alternate_matmuls"
    assert args.recompute_granularity == (None if c.recompute == "none" else "full" if per_op else c.recompute)
    assert per_op == any("no per-op selective recompute" in line for line in text.splitlines())
    if c.recompute == "full" or per_op:  # Megatron recomputes at least the layers the plan does, in every stage
        counts = recomputed_layers(c, plan.partition)
        if args.recompute_method == "block":
            assert all(min(args.recompute_num_layers, end - first) >= k
                       for k, (first, end) in zip(counts, plan.partition))
            assert args.recompute_num_layers == max(counts)
        else:
            assert args.recompute_method == "uniform" and args.recompute_num_layers == 1
            assert counts == layers_of(plan)
    assert args.use_distributed_optimizer == (c.zero_stage >= 1) and args.sequence_parallel == c.sequence_parallel
    ex = plan_execution(plan.prediction)
    if ex.memory_layout == "megatron":  # the gradient buffer's and the Adam moments' dtypes modelled
        assert bool(args.grad_reduce_in_bf16) == (ex.grad_buffer_dtype == "bf16")
        moments = ex.optimizer_moments or precision(c.dtype).moments
        assert (args.exp_avg_dtype or "fp32", args.exp_avg_sq_dtype or "fp32") == (moments, moments)
    assert (args.bf16, args.fp16) == (c.dtype in ("bf16", "fp8"), c.dtype == "fp16")  # (fp8 GEMMs, bf16 rest)
    layers = [end - first for first, end in plan.partition]
    if args.pipeline_model_parallel_layout:
        stages = args.pipeline_model_parallel_layout.split("|")
        assert len(stages) == c.pp * c.vpp
        counts = [re.sub(r"t\*(\d+)", lambda g: "t" * int(g[1]), s).count("t") for s in stages]
        # Megatron puts stage s on rank s % pp: every rank holds the layers the plan's placement gives it, each
        # chunk the plan's (a loop placement), or the plan's chunks of that rank in order (V placement)
        owner = schedule_spec(c.schedule).stage_to_rank(c.pp, c.vpp)
        for rank in range(c.pp):
            assert counts[rank::c.pp] == [n for n, r in zip(layers, owner) if r == rank]
        assert counts == layers or schedule_spec(c.schedule).v_placement
        assert stages[-1].endswith("m" * m.mtp_num_layers + "L") and "m" not in "".join(stages[:-1])
    elif args.num_layers_per_virtual_pipeline_stage:
        assert [args.num_layers_per_virtual_pipeline_stage] * (c.pp * c.vpp) == layers
    elif len(set(layers)) > 1:
        assert (args.decoder_first_pipeline_num_layers or layers[0]) == layers[0]
        assert (args.decoder_last_pipeline_num_layers or layers[-1]) == layers[-1]
    assert (args.mtp_num_layers or 0) == m.mtp_num_layers
    if m.moe is not None:
        assert (args.num_experts, args.moe_router_topk, args.moe_ffn_hidden_size) == (
            m.moe.num_experts, m.moe.num_experts_per_tok, m.moe.moe_intermediate_size)
        # (Megatron-Core runs experts with biases at expert TP 1 only: such a plan's etp is exported as 1, noted)
        etp = 1 if m.moe.expert_bias and any("at expert TP 1 only" in line for line in text.splitlines()) else c.etp
        assert (args.expert_model_parallel_size, args.expert_tensor_parallel_size) == (c.ep, etp)
        freq = args.moe_layer_freq  # unset (Megatron's default 1): every layer MoE (GPT-OSS), else a pattern
        pattern = [1] * m.num_layers if freq in (None, 1) else eval(freq, {"__builtins__": {}})
        assert pattern == [int(m.is_moe_layer(i)) for i in range(m.num_layers)]
        # Megatron-Core's softmax router renormalises its top-k unless the softmax comes first (pre-softmax)
        assert args.moe_router_pre_softmax == (m.moe.scoring_func == "softmax" and not m.moe.norm_topk_prob)
    if m.arch == "llama":
        assert args.rotary_base == m.rope_theta and args.normalization == "RMSNorm"
        assert args.use_rope_scaling == (m.rope_scaling_factor != 1)
        if args.use_rope_scaling:
            assert args.rope_scaling_factor == m.rope_scaling_factor
        assert (args.rotary_seq_len_interpolation_factor or 1) == m.rope_linear_factor


def test_llama31_gets_rope_scaling_and_uneven_interleaving_keeps_its_virtual_stages():
    """The defects of issue 17: Llama 3.1 plans carry --use-rope-scaling (factor 8), an interleaved plan with unequal
    chunks keeps its virtual stages as a layout, and rope theta 1e6 is the int 1000000."""
    llama31 = dict(megatron_flags(PLANS["llama3.1-8b-sp-selective"]())[0])
    assert "--use-rope-scaling" in llama31 and float(llama31["--rope-scaling-factor"]) == 8.0
    assert "--use-rope-scaling" not in dict(megatron_flags(_plan("llama3-8b", tp=8, pp=1, dp=1, gpus=8))[0])
    uneven = dict(megatron_flags(PLANS["uneven-interleaved-zero1"]())[0])
    assert uneven["--pipeline-model-parallel-layout"] == "Et|t*2|t*3|t*2L"
    assert "--num-layers-per-virtual-pipeline-stage" not in uneven
    assert dict(megatron_flags(PLANS["qwen-like-rope-1e6"]())[0])["--rotary-base"] == 1000000
    ends = dict(megatron_flags(PLANS["embedding-and-head-chunks"]())[0])
    assert ends["--pipeline-model-parallel-layout"] == "E|t|t|t|t|t|t|t|t|L"
    head = dict(megatron_flags(PLANS["head-only-last-stage"]())[0])
    assert head["--pipeline-model-parallel-layout"] == "Et*8|L" and "--decoder-last-pipeline-num-layers" not in head


# ---- Megatron-Core: the config classes -------------------------------------------------------------------------

# Megatron-LM flags whose dest is not a field name of the config classes, and where Megatron-LM puts them
# (core_transformer_config_from_args and the GPT model builder at the tag).
RENAMED = {"decoder_first_pipeline_num_layers": "num_layers_in_first_pipeline_stage",
           "decoder_last_pipeline_num_layers": "num_layers_in_last_pipeline_stage",
           "swiglu": "gated_linear_unit", "quick_geglu": "gated_linear_unit", "group_query_attention": None,
           "num_layers_per_virtual_pipeline_stage": None, "num_experts": "num_moe_experts",
           "bias_swiglu_fusion": "bias_activation_fusion"}  # validate_args: virtual_pipeline_model_parallel_size
GPT_MODEL_ARGS = {"rotary_base": "rotary_base", "use_rope_scaling": "rope_scaling",
                  "rope_scaling_factor": "rope_scaling_factor", "position_embedding_type": "position_embedding_type",
                  "max_position_embeddings": "max_sequence_length",
                  "rotary_seq_len_interpolation_factor": "seq_len_interpolation_factor",
                  "untie_embeddings_and_output_weights": "share_embeddings_and_output_weights"}
# megatron.training, not core (the checkpoint format: Megatron-FSDP's validate_args asserts fsdp_dtensor)
TRAINING_LOOP = {"micro_batch_size", "global_batch_size", "seq_length", "ckpt_format"}


@pytest.fixture(scope="module")
def megatron_core():
    _upstream("megatron.core")
    from megatron.core.distributed.distributed_data_parallel_config import DistributedDataParallelConfig
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.optimizer.optimizer_config import OptimizerConfig
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig, ModelParallelConfig, OptimizerConfig, DistributedDataParallelConfig, GPTModel


@pytest.mark.parametrize("name", sorted(PLANS))
def test_megatron_args_build_megatron_cores_configs(megatron_core, name, monkeypatch):
    """Every given flag lands on a field of TransformerConfig, ModelParallelConfig, OptimizerConfig,
    DistributedDataParallelConfig or a GPTModel argument (or is one of the training loop's three); the fields build
    megatron-core's TransformerConfig (whose checks cover heads vs TP, recompute and the pipeline layout against
    num_layers), OptimizerConfig and DistributedDataParallelConfig."""
    import inspect

    transformer_cls, parallel_cls, optimizer_cls, ddp_cls, gpt_model = megatron_core
    plan = PLANS[name]()
    args, given = parse_megatron(megatron_args(plan))
    fields = {cls: {f.name for f in dataclasses.fields(cls)}
              for cls in (transformer_cls, parallel_cls, optimizer_cls, ddp_cls)}
    gpt_params = set(inspect.signature(gpt_model.__init__).parameters)
    kwargs: dict[type, dict] = {cls: {} for cls in fields}
    for dest in given:
        value = getattr(args, dest)
        target = RENAMED.get(dest, dest)
        homes = [cls for cls, names in fields.items() if target in names]
        if dest == "attention_backend":
            from megatron.core.transformer.enums import AttnBackend

            value = AttnBackend[value]
        if dest == "moe_layer_freq":  # Megatron-LM's moe_freq_type evaluates the list expression
            value = eval(value, {"__builtins__": {}})
        if dest == "swiglu":
            import torch.nn.functional as F

            kwargs[transformer_cls]["activation_func"] = F.silu
        if dest == "quick_geglu":  # GPT-OSS's gate: x sigmoid(1.702 x), as core_transformer_config_from_args sets it
            from megatron.core.fusions.fused_bias_geglu import quick_gelu

            kwargs[transformer_cls]["activation_func"] = quick_gelu
        if dest in ("grad_reduce_in_bf16", "accumulate_allreduce_grads_in_fp32"):  # (validate_args', below)
            continue
        if dest in ("exp_avg_dtype", "exp_avg_sq_dtype"):  # validate_args maps the names to torch dtypes
            import torch

            value = {"fp32": torch.float32, "bf16": torch.bfloat16}[value]
        assert homes or dest in RENAMED or GPT_MODEL_ARGS.get(dest) in gpt_params or dest in TRAINING_LOOP, (
            f"--{dest.replace('_', '-')} reaches no megatron-core config field")
        for cls in homes:
            kwargs[cls][target] = value
    if args.group_query_attention is False:
        kwargs[transformer_cls].pop("num_query_groups", None)
    if isinstance(args.cp_comm_type, list) and len(args.cp_comm_type) == 1:  # as core_transformer_config_from_args
        kwargs[transformer_cls]["cp_comm_type"] = args.cp_comm_type[0]
    if args.num_layers_per_virtual_pipeline_stage:  # Megatron-LM's validate_args derives the vpp size from it
        kwargs[transformer_cls]["virtual_pipeline_model_parallel_size"] = (
            args.num_layers // (args.pipeline_model_parallel_size * args.num_layers_per_virtual_pipeline_stage))
    import torch  # Megatron-LM: params_dtype from --bf16/--fp16 (else fp32), and pipeline_dtype = params_dtype

    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    # validate_args: gradients accumulate and reduce in fp32 under --bf16 unless --grad-reduce-in-bf16, under --fp16
    # only with --accumulate-allreduce-grads-in-fp32; training.py hands that to DistributedDataParallelConfig
    kwargs[ddp_cls]["grad_reduce_in_fp32"] = bool(args.accumulate_allreduce_grads_in_fp32
                                                  or (args.bf16 and not args.grad_reduce_in_bf16))
    kwargs[transformer_cls]["params_dtype"] = kwargs[transformer_cls]["pipeline_dtype"] = dtype
    config = transformer_cls(**kwargs[transformer_cls])
    assert config.num_layers == plan.model.num_layers and config.tensor_model_parallel_size == plan.config.tp
    if args.pipeline_model_parallel_layout:
        layout = config.pipeline_model_parallel_layout
        layout.validate_layer_layout(num_layers=plan.model.num_layers, mtp_num_layers=plan.model.mtp_num_layers or None)
        assert layout.virtual_pipeline_model_parallel_size == plan.config.vpp
    # (the precision-aware optimizer, which optimizer offload needs, asks for Transformer Engine >= 2.1, a GPU
    # package this CPU test does not install)
    monkeypatch.setattr("megatron.core.optimizer.optimizer_config.is_te_min_version", lambda *a, **k: True)
    optimizer = optimizer_cls(**kwargs[optimizer_cls])
    ddp = ddp_cls(**kwargs[ddp_cls])
    assert ddp.use_distributed_optimizer == (plan.config.zero_stage >= 1)
    ex = plan_execution(plan.prediction)
    if ex.memory_layout == "megatron":  # the states modelled: the gradient buffer's dtype, the moments'
        if dtype != torch.float32:  # (an fp32 model's gradients are fp32 whatever the flag)
            assert ddp.grad_reduce_in_fp32 == (ex.grad_buffer_dtype == "fp32")
        moments = {"fp32": torch.float32, "bf16": torch.bfloat16}[ex.optimizer_moments
                                                                   or precision(plan.config.dtype).moments]
        assert (optimizer.exp_avg_dtype, optimizer.exp_avg_sq_dtype) == (moments, moments)


# ---- torchtitan ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torchtitan():
    _upstream("torchtitan")
    from torchtitan.config import ConfigManager
    from torchtitan.distributed.parallel_dims import ParallelDims

    return ConfigManager, ParallelDims


def _load_torchtitan(text: str, tmp_path: Path, ConfigManager):
    """torchtitan's own config manager loads the exported module by name, as `--module M --config F` does."""
    module = f"autoconf_tt_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        return ConfigManager().parse_args(["--module", module, "--config", FUNCTION])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


def _check_planned_blocks(ac_config, plan) -> None:
    """torchtitan's policy, built from the exported config and applied to a stand-in model with the plan's blocks,
    checkpoints exactly the transformer blocks the plan recomputes, with the plan's policy (SelectiveAC per-op,
    FullAC the whole block)."""
    import torch
    from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC

    c = plan.config
    blocks = recomputed_layer_indices(c, plan.partition)
    if not blocks:
        assert ac_config is None
        return
    assert isinstance(ac_config, {"selective": SelectiveAC.Config, "full": FullAC.Config}[c.recompute])
    stand_in = torch.nn.Module()
    stand_in.layers = torch.nn.ModuleDict({str(i): torch.nn.Linear(2, 2) for i in range(plan.model.num_layers)})
    ac_config.build().apply(stand_in)
    wrapped = {int(name) for name, block in stand_in.layers.named_children() if not isinstance(block, torch.nn.Linear)}
    assert wrapped == blocks


@pytest.mark.parametrize("name", sorted(PLANS))
def test_torchtitan_config_loads_with_torchtitans_config_manager(torchtitan, name, tmp_path):
    """torchtitan's ConfigManager loads torchtitan_config.py; ParallelDims accepts its degrees for the plan's world
    size; batch, micro-batch, schedule, SP and recompute are the plan's; its model, built on the meta device, has the
    plan model's parameter count (GPT: the llama3 model of its dimensions) and every module the stage lists name."""
    import torch

    ConfigManager, ParallelDims = torchtitan
    plan = PLANS[name]()
    c, m = plan.config, plan.model
    text = torchtitan_config(plan)
    assert f"# Targets torchtitan {upstream.TORCHTITAN_VERSION}" in text
    config = _load_torchtitan(text, tmp_path, ConfigManager)
    if m.tied_embeddings and c.pp > 1:  # (torchtitan refuses it, and the export says so)
        assert "refuses weight tying under pipeline parallelism" in text
        with pytest.raises(NotImplementedError, match="Weight tying"):
            config.model_spec.model.update_from_config(config=config)
    else:
        config.model_spec.model.update_from_config(config=config)  # (torchtitan's trainer does: its checks run)
    par, train = config.parallelism, config.training
    dims = ParallelDims.from_config(par, c.world_size)
    assert (dims.tp, dims.pp, dims.cp, dims.dp_replicate * dims.dp_shard) == (c.tp, c.pp, c.cp, c.dp)
    # (a model of no torchtitan family is written as its llama3 model, without experts: no EP, noted)
    from autoconf.report.torchtitan_export import family_recipe
    ep = c.ep if family_recipe(plan) or m.moe is None else 1
    assert dims.dp_shard == (c.dp if c.zero_stage else 1) and par.expert_parallel_degree == ep
    assert (ep != c.ep) == (f"the plan's expert parallelism (ep {c.ep}) is not written" in text)
    # one forward runs the plan's micro-batch (torchtitan: local_batch_size without PP, else the PP micro-batch),
    # and a step takes the global batch (accumulating global / (local x DP) steps)
    forward_batch = par.pipeline_parallel_microbatch_size if c.pp > 1 else train.local_batch_size
    assert forward_batch == c.micro_batch_size and train.seq_len == c.seq_len
    assert train.global_batch_size == c.global_batch_size and c.global_batch_size % (train.local_batch_size * c.dp) == 0
    if c.pp > 1:
        assert train.local_batch_size // par.pipeline_parallel_microbatch_size == c.num_microbatches
    assert par.enable_sequence_parallel == (c.sequence_parallel or c.tp == 1)
    torch.distributed.pipelining.schedules.get_schedule_class(par.pipeline_parallel_schedule)
    _check_planned_blocks(config.activation_checkpoint, plan)
    # SelectiveAC is the per-op policy: a plan recomputing the attention core is told it differs.
    core = c.recompute == "selective" and c.selective_recompute != "alternate_matmuls"
    assert core == ("SelectiveAC) is per-op" in text)
    if upstream_recipe(plan):
        assert config.model_spec.flavor == TORCHTITAN_FLAVORS[upstream_recipe(plan)][0]
        return  # an 8B model is not built in a unit test; the flavor table is checked below
    with torch.device("meta"):
        model = config.model_spec.model.build()
    names = {n for n, _ in model.named_modules()}
    assert {n for part in (par.module_fqns_per_model_part or module_fqns(plan)) for n in part} <= names
    params = sum(p.numel() for p in model.parameters())
    plain = (m.arch == "llama" and not m.qkv_bias and m.head_dim == m.hidden_size // m.num_heads
             and m.moe is None and not m.qk_norm)  # (torchtitan's llama3 has no QK norm: a note says so)
    expected = m.total_params() if plain else None
    if expected is not None:
        assert params == expected


def test_torchtitan_flavor_table_is_torchtitans(torchtitan):
    """TORCHTITAN_FLAVORS holds the dimensions torchtitan's llama3 flavors have, and Llama 3.1 8B maps to its recipe
    (Llama 3 8B, without rope scaling, does not)."""
    from torchtitan.models.llama3 import llama3_configs

    for recipe, (flavor, (layers, dim, heads, kv, ffn, vocab)) in TORCHTITAN_FLAVORS.items():
        model = llama3_configs[flavor](attn_backend="flex")
        attn = model.layers[0].attention
        assert (len(model.layers), model.dim, model.vocab_size) == (layers, dim, vocab), recipe
        assert model.layers[0].feed_forward.w1.out_features == ffn, recipe
        assert attn.n_heads == heads and attn.n_kv_heads == kv, recipe
    assert upstream_recipe(_plan("llama3.1-8b", tp=8, pp=1, dp=1, gpus=8)) == "llama3_8b"
    assert upstream_recipe(_plan("llama3-8b", tp=8, pp=1, dp=1, gpus=8)) is None


def test_a_recipe_model_is_rebuilt_without_the_recipes_float8_and_async_tp(torchtitan, tmp_path):
    """torchtitan's llama3_405b recipe converts every linear to float8 and turns on async TP; an export of a bf16
    405B plan kept both (and failed to load below SM89, here too). It starts from the 8B recipe with the 405B
    flavor's model, without converters, and async TP off."""
    ConfigManager, _ = torchtitan
    plan = _plan("llama3.1-405b", tp=8, pp=8, dp=8, zero=1, recompute="full", sp=True, nodes=64, gpus=8,
                 global_batch=512, seq=8192, cluster="dgx-h100-80g")
    config = _load_torchtitan(torchtitan_config(plan), tmp_path, ConfigManager)
    assert config.model_spec.flavor == "405B" and not config.compile.enable_async_tensor_parallel
    assert "Float8" not in type(config.model_spec.model.layers[0].feed_forward.w1).__qualname__


def test_torchtitan_loads_the_adamw_kernels_modelled(torchtitan, tmp_path):
    """A plan modelled with torchtitan's foreach AdamW (`adam_kernels`) exports the implementation torchtitan then
    builds its optimizer with; the preset's fused kernel is torchtitan's default."""
    ConfigManager, _ = torchtitan
    c = ParallelConfig(tp=1, pp=1, dp=4, micro_batch_size=1, global_batch_size=16, seq_len=64, zero_stage=3,
                       grad_reduce="microbatch")  # (torchtitan reduces every accumulation step)
    cluster = load_cluster("dgx-a100-80g", nodes=1, gpus_per_node=4)
    for kernels in ("foreach", "fused"):
        plan = estimate(PRESETS["tiny-llama"], cluster, c,
                        execution=execution("torchtitan").replace(adam_kernels=kernels))
        (tmp_path / kernels).mkdir()
        config = _load_torchtitan(torchtitan_config(plan), tmp_path / kernels, ConfigManager)
        assert config.optimizer.implementation == kernels


def test_torchtitan_notes_say_what_it_runs_instead():
    """Notes for what torchtitan cannot take: the plan's own selective policy named (it said "attention core" for
    every one), its FlexAttention all-gathering K/V under a ring plan (it advised a rotate method FlexAttention
    ignores), experts that ZeRO-0's replicated data parallelism leaves no shard ranks for, gradients reduced after
    every accumulation step."""

    deepseek = execution("megatron-core").replace(selective_recompute="norms_mla_swiglu")
    tiny_moe = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-mla", num_kv_heads=4, moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, first_k_dense=1),
        mla=MLASpec(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16))
    config = ParallelConfig(tp=1, pp=2, dp=4, ep=4, micro_batch_size=1, global_batch_size=16, seq_len=256,
                            zero_stage=1, recompute="selective")
    text = torchtitan_config(estimate(tiny_moe, load_cluster("dgx-h100-80g", 1, 8), config, execution=deepseek))
    assert "the plan recomputes the norms, the latent attention's up-projections and the experts' SwiGLU" in text
    assert "FlexAttention) all-gathers K/V" in torchtitan_config(PLANS["cp2-ring-tp2-sp-zero3"]())
    zero0 = _plan(dataclasses.replace(PRESETS["tiny-llama"], name="tiny-moe", moe=MoESpec(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)), pp=1, dp=4, ep=2, zero=0)
    assert ("cannot build this expert mesh: framework 'torchtitan' splits the experts over ranks of dp_shard x cp "
            "x tp, which ep 2 must divide; at ZeRO 0 that is 1 rank (ZeRO-0 replicates dp: dp_shard 1)"
            in torchtitan_config(zero0))
    assert "cannot build this mesh" not in torchtitan_config(PLANS["moe-ep2-first-dense"]())
    # torchtitan reduce-scatters after every accumulation step; a plan that reduces once per step is told
    assert "reduce-scatters the gradients after every accumulation step" in torchtitan_config(
        PLANS["no-pp-accumulating-zero1"]())


# ---- Kubernetes ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes,gpus,cluster", [(1, 8, "dgx-a100-80g"), (4, 8, "dgx-h100-80g"), (2, 2, "cpu-local")])
def test_pytorchjob_has_what_the_operator_requires(nodes, gpus, cluster, tmp_path):
    """pytorchjob.yaml parses and validates against the PyTorchJob CRD schema of the operator release it names; as
    the operator's admission webhook requires (pkg/webhooks/pytorch/pytorchjob_webhook.go at that tag): a DNS-1035
    name, exactly one Master, Workers (nodes-1) at least one when present, a container named `pytorch` with an
    image; it asks for the node's GPUs (CPUs for a CPU plan); the container's command, run with a stub torchrun and
    the operator's RANK (the pod's index, Workers from 1), parses with torch's torchrun parser as one node of the
    plan's world with the mounted plan."""
    import jsonschema
    import yaml
    from torch.distributed.run import get_args_parser

    plan = _plan(pp=2, dp=nodes * gpus // 2, nodes=nodes, gpus=gpus, global_batch=nodes * gpus * 2, cluster=cluster)
    text = pytorchjob(plan, tmp_path / "it's a plan.json")
    assert f"Targets Kubeflow Training Operator {upstream.TRAINING_OPERATOR_TAG}" in text
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 1
    job = docs[0]
    crd = json.loads(CRD_SCHEMA_FILE.read_text())
    assert f"{crd['group']}/{crd['version']}" == job["apiVersion"] == upstream.PYTORCHJOB_API_VERSION
    assert job["kind"] == crd["kind"] == "PyTorchJob"
    jsonschema.validate(job, crd["openAPIV3Schema"])
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", job["metadata"]["name"])
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == ({"Master", "Worker"} if nodes > 1 else {"Master"})
    assert specs["Master"]["replicas"] == 1 and specs.get("Worker", {"replicas": 0})["replicas"] == nodes - 1
    assert job["spec"]["nprocPerNode"] == str(gpus)
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "torchrun").write_text(f"#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" > {tmp_path}/args\n")
    (stub / "torchrun").chmod(0o755)
    for rank, spec in enumerate([specs["Master"]] + ([specs["Worker"]] if nodes > 1 else [])):
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"]
        assert spec["replicas"] == (1 if rank == 0 else nodes - 1) >= 1
        limits = container["resources"]["limits"]
        assert limits == ({"cpu": gpus} if cluster == "cpu-local" else {"nvidia.com/gpu": gpus})
        mount = container["volumeMounts"][0]
        assert pod["volumes"][0]["name"] == mount["name"] and pod["volumes"][0]["configMap"]["name"]
        env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "RANK": str(rank), "MASTER_ADDR": "10.0.0.1",
               "MASTER_PORT": "23456"}
        done = subprocess.run(container["command"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        args = get_args_parser().parse_args((tmp_path / "args").read_text().split("\0")[:-1])
        assert int(args.nnodes) == nodes and int(args.nproc_per_node) == gpus and int(args.node_rank) == rank
        assert args.master_addr == "10.0.0.1" and args.module and args.training_script == "autoconf.execute.train"
        assert args.training_script_args[:2] == ["--plan", f"{mount['mountPath']}/plan.json"]


# ---- every export: quoting, versions, pins -------------------------------------------------------------------------

def test_every_export_names_its_target_and_quotes_a_hostile_plan_path(tmp_path):
    """Each export names the upstream version it targets; with a plan path holding a space, quotes, `$(...)` and a
    backtick, every shell script run with stubbed tools passes that exact path and runs nothing else."""
    plan = _plan(nodes=2, gpus=2, pp=2, dp=2, global_batch=8, cluster="cpu-local", dtype="fp32")
    hostile = tmp_path / "a b'\"$(touch PWNED)`touch PWNED2`.json"
    texts = export_texts(plan, hostile)
    targets = {"megatron_args.txt": upstream.MEGATRON_TARGET, "torchtitan_config.py": upstream.TORCHTITAN_TARGET,
               "pytorchjob.yaml": upstream.PYTORCHJOB_TARGET}
    for name, target in targets.items():
        assert f"Targets {target}" in texts[name], name
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("torchrun", "autoconf", "srun", "scontrol"):
        (stubs / tool).write_text(f"#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" > {tmp_path}/{tool}.args\n")
        (stubs / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "MASTER_ADDR": "127.0.0.1", "SLURM_NODEID": "0",
           "STEPS": "7"}
    for name in ("launch.sh", "torchrun_node0.sh"):
        script = tmp_path / name
        script.write_text(texts[name])
        done = subprocess.run(["bash", str(script), "0"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        tool = "autoconf" if name == "launch.sh" else "torchrun"
        args = (tmp_path / f"{tool}.args").read_text().split("\0")
        assert str(hostile.resolve()) in args and args[args.index("--steps") + 1] == "7", name  # (both take STEPS)
    assert not list(tmp_path.glob("PWNED*"))
    kubectl = next(line for line in texts["pytorchjob.yaml"].splitlines() if "kubectl create" in line)
    assert shlex.split(kubectl.lstrip("# "))[-1] == f"--from-file=plan.json={hostile.resolve()}"


def test_test_extra_pins_the_targeted_versions():
    """pyproject's test extra pins exactly the torchtitan and megatron-core versions the exports name."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins = {req.split(";")[0].strip() for req in extra}
    assert f"torchtitan=={upstream.TORCHTITAN_VERSION}" in pins
    assert f"megatron-core=={upstream.MEGATRON_CORE_VERSION}" in pins
    assert upstream.MEGATRON_LM_TAG.endswith(upstream.MEGATRON_CORE_VERSION)


def test_rope_scaling_survives_json_and_comes_from_hugging_face(tmp_path):
    """The rope scaling factor survives the model JSON round trip, the Hugging Face loader reads Llama 3.1's, and a
    factor below 1 is refused."""
    from autoconf.spec.presets import from_hf_config

    path = tmp_path / "m.json"
    path.write_text(json.dumps(PRESETS["llama3.1-8b"].to_dict()))
    assert load_model(str(path)).rope_scaling_factor == 8.0
    hf = {"model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "hidden_size": 4096,
          "intermediate_size": 14336, "vocab_size": 128256, "num_key_value_heads": 8, "rope_theta": 500000.0,
          "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    assert from_hf_config(hf, "Llama-3.1-8B").rope_scaling_factor == 8.0
    assert from_hf_config({**hf, "rope_scaling": None}, "Llama-3-8B").rope_scaling_factor == 1.0
    with pytest.raises(UserError, match="rope_scaling_factor"):
        dataclasses.replace(PRESETS["llama3.1-8b"], rope_scaling_factor=0.5)


FAMILY_PLANS = {
    "gpt-oss-20b": dict(pp=2, dp=4, ep=4, zero=1),
    "gpt-oss-120b": dict(pp=4, dp=2, ep=2, zero=1),
    "qwen3-30b-a3b": dict(tp=2, pp=2, dp=2, ep=4, sp=True, zero=3, recompute="full"),
    "qwen3-235b-a22b": dict(pp=2, dp=4, ep=4, zero=1),
    "deepseek-v3": dict(pp=8, dp=1, ep=1, zero=1),
}


@pytest.mark.parametrize("name", sorted(FAMILY_PLANS))
def test_moe_presets_export_torchtitans_own_model_of_the_same_parameters(torchtitan, name, tmp_path):
    """A plan of a preset torchtitan ships in another family (GPT-OSS, Qwen3-MoE, DeepSeek-V3) starts from that
    family's recipe and flavor: ConfigManager loads it, ParallelDims takes its degrees, and the flavor's model, built
    on the meta device, has the preset's parameter count and every module the stages name; no llama3 note."""
    import torch

    ConfigManager, ParallelDims = torchtitan
    plan = _plan(name, gpus=8, cluster="dgx-h100-80g", seq=4096, global_batch=64, **FAMILY_PLANS[name])
    family, recipe, flavor = FAMILY_FLAVORS[name]
    assert family_recipe(plan) == FAMILY_FLAVORS[name]
    text = torchtitan_config(plan)
    assert f"from torchtitan.models.{family}.config_registry import {recipe}" in text
    assert "llama3 builder" not in text and "sliding-window" not in text
    config = _load_torchtitan(text, tmp_path, ConfigManager)
    c, par = plan.config, config.parallelism
    dims = ParallelDims.from_config(par, c.world_size)
    assert (dims.tp, dims.pp, dims.cp, dims.dp_replicate * dims.dp_shard) == (c.tp, c.pp, c.cp, c.dp)
    assert par.expert_parallel_degree == c.ep and config.model_spec.flavor == flavor
    assets = config.hf_assets_path.rsplit("/", 1)[-1].replace("-", "").lower()
    assert name.replace("-", "") in assets  # the flavor's own tokenizer and weights
    with torch.device("meta"):
        model = config.model_spec.model.build()
    assert sum(p.numel() for p in model.parameters()) == plan.model.total_params()
    names = {n for n, _ in model.named_modules()}
    assert {n for part in (par.module_fqns_per_model_part or module_fqns(plan)) for n in part} <= names


def test_every_v_placed_export_says_where_megatron_runs_the_head():
    """A zbv or dualpipev plan runs its head and loss on rank 0, Megatron's interleaved schedule on rank pp - 1:
    the note says so whatever the partition (it had been written only where the layer counts moved)."""
    for schedule in ("zbv", "dualpipev"):
        flags, notes = megatron_flags(_plan(pp=2, dp=2, vpp=2, schedule=schedule))
        assert ("--num-layers-per-virtual-pipeline-stage", 2) in flags
        assert any("V placement" in n and "rank 1, not on rank 0" in n for n in notes), notes
    assert not any("V placement" in n for n in megatron_flags(_plan(pp=2, dp=2, vpp=2,
                                                                    schedule="interleaved-1f1b"))[1])


def test_a_schedule_megatron_runs_as_another_is_checked_by_that_ones_rule():
    """zbv, dualpipev and looped-bfs export as Megatron's interleaved 1F1B, whose micro-batch count must be a
    multiple of pp: a layout breaking that rule says so (found by a review: the note had named only the swap)."""
    for schedule in ("zbv", "dualpipev", "looped-bfs"):
        odd = megatron_flags(_plan(pp=2, dp=2, vpp=2, schedule=schedule, global_batch=10))[1]  # 5 micro-batches
        assert any(n.startswith("and Megatron-LM cannot run that either: interleaved-1f1b needs num_microbatches (5)")
                   for n in odd), (schedule, odd)
        even = megatron_flags(_plan(pp=2, dp=2, vpp=2, schedule=schedule, global_batch=16))[1]
        assert not any("cannot run that either" in n for n in even), (schedule, even)
