"""What the megatron memory layout's optimizer-state flags (spec/frameworks.py `grad_buffer_dtype`,
`optimizer_moments`, `optimizer`) become in Megatron-LM's arguments, so that a plan that changed them runs with the
states it modelled.

Megatron-LM core_v0.16.1 (`megatron/training/arguments.py`; scripts/data/megatron_lm_core_v0.16.1_flags.json):
under --bf16 the gradient buffer is fp32 unless `--grad-reduce-in-bf16` keeps and reduces it in bf16; under --fp16
it is fp16 unless `--accumulate-allreduce-grads-in-fp32`;
`--use-precision-aware-optimizer` with `--exp-avg-dtype` and `--exp-avg-sq-dtype` keeps the two Adam moments in
the dtype given (fp32 by default). apex's DistributedFusedAdam (NeMo 1.x) is not a Megatron-LM optimizer.
"""

from __future__ import annotations

from autoconf.spec.dtypes import precision
from autoconf.spec.frameworks import Execution

# The flag that keeps Megatron's gradient buffer in a dtype other than its default for the weights' dtype (fp16
# weights: fp16; otherwise fp32), by (weights, buffer).
MEGATRON_GRAD_BUFFER_FLAGS = {("bf16", "bf16"): "--grad-reduce-in-bf16",
                              ("fp16", "fp32"): "--accumulate-allreduce-grads-in-fp32"}
# Megatron's name of each moments dtype autoconf plans (MOMENTS_DTYPES): fp32 is its default, no flag.
MEGATRON_MOMENT_DTYPES = {"bf16": "bf16"}


def megatron_optimizer_args(execution: Execution, dtype: str) -> tuple[list[str], list[str]]:
    """(arguments, notes) that make Megatron-LM hold the optimizer state a megatron-layout plan of `dtype` modelled
    under `execution`: its gradient buffer's dtype and its Adam moments' dtype; a note for what has no flag. No
    arguments for the torch layout, whose states do not read these flags."""
    if execution.memory_layout != "megatron":
        return [], []
    args, notes = [], []
    weights = dtype if dtype in ("fp16", "fp32") else "bf16"  # Megatron's --fp16, no flag, or --bf16
    buffer, default = execution.grad_buffer_dtype, "fp16" if weights == "fp16" else "fp32"
    if buffer != default:
        flag = MEGATRON_GRAD_BUFFER_FLAGS.get((weights, buffer))
        if flag:
            args.append(flag)
        else:
            notes.append(f"grad_buffer_dtype {buffer}: Megatron-LM has no {buffer} gradient buffer for a {weights} "
                         f"model; the run below keeps it in {default}, where the plan counted "
                         f"{execution.grad_buffer_bytes} bytes per parameter")
    moments = execution.optimizer_moments or precision(dtype).moments
    if moments in MEGATRON_MOMENT_DTYPES:
        name = MEGATRON_MOMENT_DTYPES[moments]
        args += ["--use-precision-aware-optimizer", f"--exp-avg-dtype {name}", f"--exp-avg-sq-dtype {name}"]
    if execution.optimizer == "apex":
        moment_bytes = execution.moment_bytes(dtype)
        notes.append(f"optimizer apex: the plan modelled apex's DistributedFusedAdam (NeMo 1.x: the 16-bit remainders "
                     f"of the master weights, the moments and a gradient copy, 2 + {moment_bytes} + "
                     f"{execution.grad_buffer_bytes} bytes per parameter before sharding); Megatron-LM runs its own "
                     f"distributed optimizer (fp32 master weights and the moments, 4 + {moment_bytes})")
    return args, notes
