"""What to change so that a layout that does not fit in device memory does: the smallest single step first."""

from __future__ import annotations

from autoconf.cost.estimate import Execution, estimate
from autoconf.solve.space import with_changes
from autoconf.spec.support import unsupported_reason

GiB = 1024**3


def _steps(config) -> list[tuple[str, dict]]:
    """Changes in the order a user would try them: cheaper in time first (selective before full recompute,
    sharding before recompute, a smaller micro-batch), then combinations."""
    steps = [("--recompute selective", {"recompute": "selective"})]
    if config.dp > 1:
        steps += [(f"--zero {z}", {"zero_stage": z}) for z in (1, 2, 3) if z > config.zero_stage]
    steps.append(("--recompute full", {"recompute": "full"}))
    if config.micro_batch_size > 1:
        steps.append(("--micro-batch 1", {"micro_batch_size": 1}))
    if config.tp > 1 and not config.sequence_parallel:
        steps.append(("--sequence-parallel", {"sequence_parallel": True}))
    if config.dp > 1:
        steps.append(("--recompute full --zero 3", {"recompute": "full", "zero_stage": 3}))
    steps.append(("--micro-batch 1 --recompute full", {"micro_batch_size": 1, "recompute": "full"}))
    if config.dp > 1:
        steps.append(("--micro-batch 1 --recompute full --zero 3",
                      {"micro_batch_size": 1, "recompute": "full", "zero_stage": 3}))
    current = config.to_dict()
    return [(label, changes) for label, changes in steps
            if any(current.get(k) != v for k, v in changes.items())]


def advisable(model, cluster, config, execution: Execution) -> bool:
    """Whether fitting advice may name `config`: a legal layout on the cluster's devices that the executor runs
    (`unsupported_reason`) and the framework runs (`Execution.problem`). The one test `smallest_fitting_change`
    and the search's no-fit line (`search.explain_infeasible`) apply to a change."""
    return not (config.problems(model, cluster.world_size) or unsupported_reason(config) or execution.problem(config))


def smallest_fitting_change(model, cluster, config, execution: Execution = Execution()) -> str | None:
    """The first change of `_steps` under which the layout is predicted to fit and stays `advisable`, as the flags
    that make it (e.g. '--recompute selective'); None when none does."""
    for label, changes in _steps(config):
        changed = with_changes(config, **changes)
        if not advisable(model, cluster, changed, execution):
            continue
        if estimate(model, cluster, changed, execution=execution, detail=False).prediction["fits"]:
            return label
    return None


def does_not_fit_message(plan, model, cluster, execution: Execution = Execution()) -> str:
    """One line: which rank is over by how much, and the smallest change that fits (or where to look)."""
    p = plan.prediction
    stages = p["memory_per_stage"]
    worst = max(range(len(stages)), key=lambda r: stages[r]["total"])
    limit = p["memory_limit_bytes"]
    over = stages[worst]["total"] - limit
    change = smallest_fitting_change(model, cluster, plan.config, execution)
    advice = (f"it fits with {change}" if change else
              "no change of recompute, ZeRO, micro-batch or sequence parallelism fits: `autoconf plan` searches every "
              "layout, or use more devices")
    return (f"does not fit: pipeline rank {worst} needs {stages[worst]['total'] / GiB:.1f} GiB of "
            f"{limit / GiB:.1f} GiB per device ({over / GiB:.1f} GiB over); {advice}")
