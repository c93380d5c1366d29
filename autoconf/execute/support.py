"""Which plans the executor runs. Pure Python (no torch import), so the planner can exclude what fails here.

Verified on torch 2.13 (CPU, gloo; tests/test_execute.py): every schedule with pp 2 and 4, TP with and without
sequence parallelism, ZeRO 0-3, and mixed layouts train to the single-process losses and gradient norms.

One combination is refused: ZeRO-3 (FSDP2 `reshard_after_forward=True`, only applied when dp > 1) under the
zero-bubble schedules that split the backward into input (I) and weight (W) passes: zb-h1
(ScheduleInterleavedZeroBubble), zbv (ScheduleZBVZeroBubble) and dualpipev (ScheduleDualPipeV). There torch runs W
after FSDP has resharded the stage's parameters, and the weight gradients of the stage are lost or wrong (measured:
the last stage's gradients were None under zb-h1, the global gradient norm 30% low under zbv). The same schedules
with ZeRO 0-2 are correct.
"""

from __future__ import annotations

SPLIT_BACKWARD_SCHEDULES = ("zb-h1", "zbv", "dualpipev")


def unsupported_reason(config) -> str | None:
    """Why the executor refuses this ParallelConfig (one line naming what would work), or None if it runs it."""
    if config.zero_sharded and config.zero_stage == 3 and config.pp > 1 and config.schedule in SPLIT_BACKWARD_SCHEDULES:
        return (f"schedule {config.schedule} with zero_stage 3 (dp {config.dp}) loses weight gradients in torch "
                f"2.13 (its split I/W backward runs after FSDP reshards the parameters); use zero_stage 0-2 with "
                f"{config.schedule}, or zero_stage 3 with gpipe, 1f1b, interleaved-1f1b or looped-bfs")
    return None


def check_supported(config) -> None:
    from autoconf.errors import UserError

    reason = unsupported_reason(config)
    if reason:
        raise UserError(f"the executor cannot run this plan: {reason}")
