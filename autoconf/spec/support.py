"""Which plans the bundled executor runs: the one rule the planner, `validate` and the executor all read.

Verified on torch 2.13 (CPU, gloo; tests/test_execute.py): every schedule with pp 2 and 4, TP with and without
sequence parallelism, ZeRO 0-3, and mixed layouts train to the single-process losses and gradient norms; context
parallelism (tests/test_context_parallel.py) with cp 2 and 4, and cp 2 with TP + SP, 1F1B, interleaved 1F1B and
ZeRO-3 over dp x cp.

One combination is refused, per schedule in the registry (`ScheduleSpec.executor_zero3`): ZeRO-3 (FSDP2
`reshard_after_forward=True`, only applied when dp > 1) under the schedules that split the backward into input (I)
and weight (W) passes: zb-h1, zbv and dualpipev. There torch runs W after FSDP has resharded the stage's
parameters, and the weight gradients of the stage are lost or wrong (measured: the last stage's gradients were None
under zb-h1, the global gradient norm 30% low under zbv). The same schedules with ZeRO 0-2 are correct.
"""

from __future__ import annotations

from autoconf.errors import UserError
from autoconf.spec.schedules import SCHEDULES, schedule_spec


def unsupported_reason(config) -> str | None:
    """Why the executor refuses this ParallelConfig (one line naming what would work), or None if it runs it."""
    if config.dtype == "fp8" and config.tp > 1:
        return (f"dtype fp8 with tp {config.tp}: the executor's FP8 linears (torchao Float8Linear) are not combined "
                f"with its tensor parallelism; use tp 1 (FSDP and pipelining run fp8), or bf16")
    spec = schedule_spec(config.schedule)
    if config.zero_sharded and config.zero_stage == 3 and config.pp > 1 and not spec.executor_zero3:
        runs = ", ".join(name for name in SCHEDULES if schedule_spec(name).executor_zero3)
        return (f"schedule {config.schedule} with zero_stage 3 (dp {config.dp}) loses weight gradients in torch "
                f"2.13 (its split I/W backward runs after FSDP reshards the parameters); use zero_stage 0-2 with "
                f"{config.schedule}, or zero_stage 3 with {runs}")
    if config.reduces_every_microbatch and config.pp > 1 and spec.split_backward:
        return (f"grad_reduce microbatch under schedule {config.schedule} (split I/W backward) is not run: FSDP "
                f"would reduce before the weight pass; use grad_reduce step, or a schedule without a split "
                f"backward ({', '.join(n for n in SCHEDULES if not schedule_spec(n).split_backward)})")
    return None


def check_supported(config) -> None:
    """Raises a UserError naming what would work unless the executor runs `config`."""
    reason = unsupported_reason(config)
    if reason:
        raise UserError(f"the executor cannot run this plan: {reason}")
