"""What a plan's dtype becomes in other frameworks' configs, as data the exporters read (report/exporters.py).

Only `fp8` needs more than one flag; the bf16/fp16/fp32 spellings stay in the exporters.

- Megatron-LM (Transformer Engine; `megatron/training/arguments.py`, `_add_transformer_engine_args`):
  `--fp8-format hybrid` (e4m3 in the forward, e5m2 for gradients, as torchao's defaults) with `--fp8-recipe
  tensorwise` (per-tensor current scaling: the scale from the tensor's amax at cast time, what `cost/fp8.py`
  charges; Megatron's default recipe is `delayed`, scales from an amax history), and `--fp8-param-gather` (parameters
  all-gathered in fp8) with the distributed optimizer. Megatron-LM releases without `--fp8-recipe` know only delayed
  scaling (`--fp8-amax-history-len 1024 --fp8-amax-compute-algo max` in NVIDIA's recipes).
- torchtitan 0.3.0 (the version the exporter targets; `torchtitan/components/quantization/float8.py`): float8 is a
  model converter, `Float8LinearConverter.Config` in the `converters` of `model_registry(...)`, with recipes
  `rowwise` and `rowwise_with_gw_hp` only and no float8 FSDP all-gather switch; the exported config says so in a
  note rather than write a converter it cannot check. torchtitan's float8 needs torch.compile for its speed (its
  published float8 rows, run with an older release's tensorwise recipe and float8 all-gather, all compile).
"""

from __future__ import annotations

from autoconf.spec.plan import ParallelConfig

MEGATRON_FP8 = ["--bf16", "--fp8-format hybrid", "--fp8-recipe tensorwise"]
MEGATRON_FP8_PARAM_GATHER = "--fp8-param-gather"
MEGATRON_FP8_NOTE = ("dtype fp8: Transformer Engine tensorwise current scaling; Megatron-LM releases without "
                     "--fp8-recipe use delayed scaling (--fp8-amax-history-len 1024 --fp8-amax-compute-algo max)")


def megatron_fp8_args(c: ParallelConfig) -> tuple[list[str], list[str]]:
    """(arguments, notes) for an fp8 plan: the format and recipe, and the fp8 parameter gather under the
    distributed optimizer (ZeRO >= 1), except with optimizer offload, which Megatron-LM's validate_args allows only
    with the delayed recipe."""
    notes = [MEGATRON_FP8_NOTE]
    gather = c.zero_stage >= 1
    if gather and c.offload_optimizer:
        gather = False
        notes.append("dtype fp8 with offload_optimizer: Megatron-LM takes --fp8-param-gather with "
                      "--optimizer-cpu-offload only under --fp8-recipe delayed, so the parameters are all-gathered "
                      "in bf16 (the plan modelled fp8)")
    return list(MEGATRON_FP8) + ([MEGATRON_FP8_PARAM_GATHER] if gather else []), notes


def torchtitan_fp8_note(c: ParallelConfig) -> str:
    """What an fp8 plan needs in torchtitan 0.3.0, which the exported config cannot switch on by itself: float8 is a
    model converter there, with rowwise recipes only (the plan modelled tensorwise scaling)."""
    gather = "; its FSDP all-gather stays bf16" if c.zero_sharded else ""
    return ("dtype fp8: torchtitan 0.3.0 trains float8 through a model converter, "
            "Float8LinearConverter.Config(filter_fqns=['lm_head']) in the model_registry(...) converters (the "
            "config below builds the model without any), with recipe rowwise or rowwise_with_gw_hp only (the plan "
            f"modelled tensorwise scaling, so expect other speed){gather}; its float8 speed needs torch.compile")
