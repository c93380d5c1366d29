"""What a plan's dtype becomes in other frameworks' configs, as data the exporters read (report/exporters.py).

Only `fp8` needs more than one flag; the bf16/fp16/fp32 spellings stay in the exporters.

- Megatron-LM (Transformer Engine; `megatron/training/arguments.py`, `_add_transformer_engine_args`):
  `--fp8-format hybrid` (e4m3 in the forward, e5m2 for gradients, as torchao's defaults) with `--fp8-recipe
  tensorwise` (per-tensor current scaling: the scale from the tensor's amax at cast time, what `cost/fp8.py`
  charges; Megatron's default recipe is `delayed`, scales from an amax history), and `--fp8-param-gather` (parameters
  all-gathered in fp8) with the distributed optimizer. Megatron-LM releases without `--fp8-recipe` know only delayed
  scaling (`--fp8-amax-history-len 1024 --fp8-amax-compute-algo max` in NVIDIA's recipes).
- torchtitan (JobConfig of the release whose `[parallelism] module_fqns_per_model_part` the exporter writes, 2025-10;
  `torchtitan/config/job_config.py`, class Float8Linear): `[model] converters = ["quantize.linear.float8"]` and a
  `[quantize.linear.float8]` section: `recipe_name = "tensorwise"`, `filter_fqns = ["output"]` (the LM head stays
  bf16, as in autoconf's executor), and with FSDP `enable_fsdp_float8_all_gather` and
  `precompute_float8_dynamic_scale_for_fsdp` (one amax all-reduce for all weights per step). torchtitan's float8 needs
  torch.compile for its speed (`model_compile_enabled`; its published float8 rows all compile).
"""

from __future__ import annotations

from autoconf.spec.plan import ParallelConfig

MEGATRON_FP8 = ["--bf16", "--fp8-format hybrid", "--fp8-recipe tensorwise"]
MEGATRON_FP8_PARAM_GATHER = "--fp8-param-gather"
MEGATRON_FP8_NOTE = ("dtype fp8: Transformer Engine tensorwise current scaling; Megatron-LM releases without "
                     "--fp8-recipe use delayed scaling (--fp8-amax-history-len 1024 --fp8-amax-compute-algo max)")


def megatron_fp8_args(c: ParallelConfig) -> tuple[list[str], list[str]]:
    """(arguments, notes) for an fp8 plan: the format and recipe, and the fp8 parameter gather under the
    distributed optimizer (ZeRO >= 1)."""
    args = list(MEGATRON_FP8) + ([MEGATRON_FP8_PARAM_GATHER] if c.zero_stage >= 1 else [])
    return args, [MEGATRON_FP8_NOTE]


def torchtitan_fp8_lines(c: ParallelConfig) -> list[str]:
    """TOML lines for an fp8 plan (model converters and the float8 section), each section headed."""
    lines = ["", "[model]", 'converters = ["quantize.linear.float8"]', "", "[quantize.linear.float8]",
             'recipe_name = "tensorwise"', 'filter_fqns = ["output"]']
    if c.zero_sharded:
        lines += ["enable_fsdp_float8_all_gather = true", "precompute_float8_dynamic_scale_for_fsdp = true"]
    lines.append("# torchtitan's float8 speed needs torch.compile: [compile] enable = true")
    return lines
