"""Which plans the bundled executor runs: the one rule the planner, `validate` and the executor all read.

Verified on torch 2.13 (CPU, gloo; tests/test_execute.py): every schedule with pp 2 and 4, TP with and without
sequence parallelism, ZeRO 0-3, and mixed layouts train to the single-process losses and gradient norms; context
parallelism (tests/test_context_parallel.py) with cp 2 and 4, and cp 2 with TP + SP, 1F1B, interleaved 1F1B and
ZeRO-3 over dp x cp. MoE models (tests/test_moe_execute.py): expert parallelism with dp, tp, pp and ZeRO-3, and
expert tensor parallelism (ep2 x etp2 over tp2 x dp2). Multi-head latent attention (tests/test_mla.py): a
DeepSeek-style model under tp2 (with and without sequence parallelism), tp2 x dp2 with sequence parallelism and
ZeRO-3, ep2 x pp2 and dp2 ZeRO-3; with values narrower than a query head under cp2 (both K/V exchanges), cp2 x ep2,
cp2 x tp2 with sequence parallelism and the per-op policy, and (dense) seq1f1b at pp2. qk_norm (Qwen3) under tp2
with sequence parallelism and cp2. Multi-token-prediction modules (tests/test_mtp_execute.py) with dp, ZeRO-3, tp
with and without sequence parallelism, ep, and pp2 under 1F1B, interleaved 1F1B and zb-h1 (tp2 x pp2 with ZeRO-3,
pp2 x dp2 with tied embeddings, zbv and dualpipev), cp2 (all-gather and ring, with pp2) and seq1f1b at pp2 (a
Llama in two chunks, a tied GPT in four uneven ones). Not built: capacity-factor routing (refused in one line).

The levers: optimizer offload runs wherever its layout runs without it (fp8 with a pipeline included); the per-op
selective policy with context parallelism and MoE layers (also at tp or etp > 1), short of what
`op_policy_unsupported` names.

seq1f1b (sequence-level pipelining, execute/seq_chunks.py) runs on the layouts its tests check
(`sequence_chunks_reason`: pp > 1 with any tp (with or without SP), dp, ZeRO stage, recompute and offload, cp 1;
`schedule_model_reason`: dense models).

dualpipe (DeepSeek's bidirectional DualPipe) is refused in one line (`ScheduleSpec.executor_note`): its ranks hold
two copies of stages in two directions, which no torch.distributed.pipelining class runs. The planner still costs it
where `--fix schedule=dualpipe` pins it.

One combination is refused, per schedule in the registry (`ScheduleSpec.executor_zero3`): ZeRO-3 (FSDP2
`reshard_after_forward=True`, only applied when dp > 1) under the schedules that split the backward into input (I)
and weight (W) passes: zb-h1, zbv and dualpipev. There torch runs W after FSDP has resharded the stage's
parameters, and the weight gradients of the stage are lost or wrong (measured: the last stage's gradients were None
under zb-h1, the global gradient norm 30% low under zbv). The same schedules with ZeRO 0-2 are correct.
"""

from __future__ import annotations

from autoconf.errors import UserError
from autoconf.spec.frameworks import EXECUTOR_FRAMEWORK
from autoconf.spec.schedules import SCHEDULES, pipeline_problem, schedule_spec


def model_unsupported_reason(model) -> str | None:
    """Why the executor cannot build `model` (one line naming what would work), or None if it can."""
    if model.moe is not None and model.moe.capacity_factor is not None:
        return (f"{model.name} has capacity_factor {model.moe.capacity_factor}: the executor routes dropless only "
                f"(every token reaches its experts); set capacity_factor null")
    return None


def candidate_unsupported_reason(config, model) -> str | None:
    """Why the executor refuses this candidate layout of `model`, as the search's and validate's filters ask: every
    rule of the layout with this model (`layout_unsupported_reason`), not what it refuses of the model in every
    layout (`model_unsupported_reason`: such a model's plans are still costed, and marked not launchable)."""
    return layout_unsupported_reason(config, model)


def dtype_unsupported_reason(dtype: str) -> str | None:
    """Why the executor does not run `dtype` in any layout (another framework's precision recipe), or None."""
    if dtype not in ("fp32", "bf16", "fp16", "fp8"):
        return (f"dtype {dtype} is another framework's precision recipe (autoconf.spec.dtypes), which the executor "
                f"does not run; use fp8 (torchao) or bf16")
    return None


def unsupported_reason(config, model=None) -> str | None:
    """Why the executor refuses this ParallelConfig (one line naming what would work), or None if it runs it. With
    `model`, also what the executor cannot build of the model (`model_unsupported_reason`) or of its layout."""
    return (model is not None and model_unsupported_reason(model)) or layout_unsupported_reason(config, model)


def layout_unsupported_reason(config, model=None) -> str | None:
    """Why the executor does not run this ParallelConfig, or None: the config's own rules (`_config_reason`), then,
    of `model` where given, the rules of the layout with the model (`_model_layout_reason`). In that order, so that
    a refusal the search excuses as the user's choice (a pinned schedule's `schedule_model_reason`, search.py
    `executor_refusal`) never hides a rule of the config."""
    return _config_reason(config, model) or (_model_layout_reason(config, model) if model is not None else None)


def _model_layout_reason(config, model) -> str | None:
    """The rules of a layout with its model: the schedule's (`schedule_model_reason`), an MoE layer's token split
    over tp."""
    reason = schedule_model_reason(config.schedule, model)
    if reason:
        return reason
    held = config.micro_batch_size * config.local_seq_len  # (a rank's tokens: seq_len / (cp x seq_chunks))
    if model.moe is not None and config.tp > 1 and held % config.tp:
        split = " after cp and seq_chunks split it" if config.cp * config.seq_chunks > 1 else ""
        return (f"tp {config.tp} does not divide the {held} tokens of a micro-batch one rank holds{split}, which "
                f"an MoE layer's TP ranks route a share each of; use a seq_len whose share per rank tp divides")
    return None


def _config_reason(config, model=None) -> str | None:
    """The rules of the config itself (`model` read only for its dropout under the per-op policy)."""
    reason = dtype_unsupported_reason(config.dtype)
    if reason:
        return reason
    if config.dtype == "fp8" and config.tp > 1:
        return (f"dtype fp8 with tp {config.tp}: the executor's FP8 linears (torchao Float8Linear) are not combined "
                f"with its tensor parallelism; use tp 1 (FSDP and pipelining run fp8), or bf16")
    if config.selective_recompute == "alternate_matmuls":
        reason = op_policy_unsupported(config, model)
        if reason:
            return reason
    spec = schedule_spec(config.schedule)
    if spec.executor_note:
        return spec.executor_note
    torch_refusal = pipeline_problem(config, "torch")  # (its runtime's minimums, beyond what the order needs)
    if torch_refusal:
        return torch_refusal
    if spec.sequence_chunks:
        reason = sequence_chunks_reason(config)
        if reason:
            return reason
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


def op_policy_unsupported(config, model=None) -> str | None:
    """Why the executor does not run selective_recompute "alternate_matmuls" (torchtitan's per-op policy) with this
    layout, or None. Run on CPU to the single-process losses: TP with and without SP, pipelines, FSDP
    (tests/test_execute.py); FP8 linears, offload_activations, context parallelism (its attention one custom op the
    policy saves, execute/cp_attention.py) and MoE layers (router and routed experts recomputed outside the matmul
    count, the all-to-alls saved, the TP share gathers recomputed) at ep 2, ep2 x tp2, ep2 x tp2 x dp2 with
    sequence parallelism and ep2 x etp2 (tests/test_memory_op_policy.py, tests/test_moe_policy.py: the block keeps
    what the estimate counts); latent attention under cp2 and cp2 x tp2 with SP (tests/test_mla.py, whose blocks
    keep what the estimate counts). Not run (docs/recompute.md): context parallelism with attention dropout: the CP
    attention op has none (no RNG state of its own to replay in its backward)."""
    c = config
    found = [(what, why) for what, why, on in (
        (f"cp {c.cp} and attention dropout {getattr(model, 'dropout', 0.0)}",
         "autoconf's CP attention op, which the policy saves, runs without dropout",
         c.cp > 1 and model is not None and model.dropout > 0),) if on]
    if not found:
        return None
    return ("selective_recompute alternate_matmuls (the per-op policy) is not run " +
            "; nor ".join(f"with {what}: {why}" for what, why in found) +
            "; use selective_recompute attention_core")


def sequence_chunks_reason(config) -> str | None:
    """Why the executor does not run this seq1f1b layout, or None. It runs the schedule (execute/seq_chunks.py,
    tests/test_seq1f1b.py and test_execute.py; latent attention: tests/test_mla.py) on a pipeline of dense blocks,
    with tensor (and sequence) and data parallelism at any ZeRO stage, under any recompute and offload, without
    context parallelism (a second split of the sequence, not built): the layouts its CPU tests check. What it
    refuses of a model under the schedule in every layout: `schedule_model_reason`."""
    c = config
    found = [f"{name} {value}" for name, value, ok in (
        ("pp", c.pp, c.pp > 1), ("cp", c.cp, c.cp == 1)) if not ok]
    if not found:
        return None
    return (f"schedule seq1f1b runs in the executor with pp > 1 and cp 1; this plan has {', '.join(found)}: use "
            f"those, or 1f1b")


def schedule_model_reason(schedule: str, model) -> str | None:
    """Why the executor runs `model` in no layout under `schedule` (one line naming what would work), or None: the
    sequence-chunk schedule (seq1f1b) with MoE blocks (their load-balancing statistics would be per chunk: not
    built). A search pinned to the schedule costs such plans all the same and marks them not launchable."""
    if schedule_spec(schedule).sequence_chunks and model.moe is not None:
        return (f"schedule {schedule} runs in the executor on dense models; {model.name} is a mixture-of-experts "
                f"model (its routers' load-balancing statistics would be per chunk): use 1f1b or another schedule")
    return None


def plan_unsupported_reason(plan) -> str | None:
    """Why `launch` refuses `plan` (one line naming what would work), or None if the executor runs it as predicted:
    a prediction made for another framework (its times, memory and fit, which launch checks, describe that
    framework's run, not the executor's); what it cannot run of the config and model (`unsupported_reason`); a plan
    for CPU ranks (a gloo cluster) in a dtype other than fp32, which the executor trains in fp32 there."""
    framework = plan.prediction.get("framework", EXECUTOR_FRAMEWORK)
    reason = unsupported_reason(plan.config, plan.model)
    if framework != EXECUTOR_FRAMEWORK:
        export = "run its Megatron-LM or torchtitan export (`autoconf show PLAN --out DIR`)"
        if reason:
            return (f"it was predicted for framework {framework}, and the executor cannot run its layout "
                    f"({reason}); {export}")
        return (f"it was predicted for framework {framework}, whose times, memory and fit are not the executor's; "
                f"estimate its layout again with --framework autoconf to launch it here, or {export}")
    if reason:
        return reason
    if plan.cluster.get("backend") == "gloo" and plan.config.dtype != "fp32":
        return (f"its cluster {plan.cluster.get('name', '')} has CPU ranks (gloo), where the executor trains in fp32, "
                f"but its dtype is {plan.config.dtype}; plan it again without --dtype (fp32)")
    return None


def check_supported(config, model=None) -> None:
    """Raises a UserError naming what would work unless the executor runs `config` (of `model`, when given)."""
    reason = unsupported_reason(config, model)
    if reason:
        raise UserError(f"the executor cannot run this plan: {reason}")
