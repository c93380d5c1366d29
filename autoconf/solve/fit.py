"""What to change so that a layout that does not fit in device memory does: the fewest flags, the fastest first, and
the fastest with one flag more where that is faster still."""

from __future__ import annotations

import itertools
import math
from typing import Callable

from autoconf.cost.estimate import Execution, estimate
from autoconf.cost.offload import plans_offload
from autoconf.errors import UserError
from autoconf.files import gib_figures
from autoconf.solve.space import expert_choices, with_changes
from autoconf.spec.plan import OFFLOADS
from autoconf.spec.support import candidate_unsupported_reason

GiB = 1024**3


def _levers(config, model=None, offload: bool = False) -> list[list[tuple[tuple[str, ...], dict]]]:
    """Per memory lever, the changes it offers `config` as (flags, config changes), each lever's options ordered by
    the memory they save, the most last: recompute (selective, full, on every layer), ZeRO over dp x cp with the
    sharded gradients held or reduce-scattered every micro-batch, micro-batch 1, sequence parallelism, and for an
    MoE `model` each larger expert-parallel degree the layout's ranks allow (`space.expert_choices` at its expert
    TP), and with `offload` (a cluster that plans it) the activations, the optimizer or both to the host."""
    drop_layers = ("(drop --recompute-layers)",) if config.recompute_layers is not None else ()
    # (a selective policy goes with selective recompute: `ParallelConfig` drops it under full)
    drop_policy = {"full": ("(drop --selective-recompute)",) if config.selective_recompute else ()}
    recompute = [((f"--recompute {mode}",) + drop_layers + drop_policy.get(mode, ()),
                  {"recompute": mode, "recompute_layers": None})
                 for mode in ("selective", "full")
                 if (mode, None) != (config.recompute, config.recompute_layers)
                 and not (mode == "selective" and config.recompute == "full" and not drop_layers)]
    sharding = []
    if config.dp_cp > 1:
        reductions = ("step", "microbatch") if config.grad_reduce == "step" else (config.grad_reduce,)
        if config.zero_stage >= 1 and config.grad_reduce == "step":
            sharding.append((("--grad-reduce microbatch",), {"grad_reduce": "microbatch"}))
        sharding += [((f"--zero {z}",) + (("--grad-reduce microbatch",) if g != config.grad_reduce else ()),
                      {"zero_stage": z, "grad_reduce": g})
                     for z in range(config.zero_stage + 1, 4) for g in reductions]
    levers = [recompute, sharding]
    if config.micro_batch_size > 1:
        levers.append([(("--micro-batch 1",), {"micro_batch_size": 1})])
    if config.tp > 1 and not config.sequence_parallel:
        levers.append([(("--sequence-parallel",), {"sequence_parallel": True})])
    if model is not None and model.moe is not None:
        eps = sorted(ep for ep, _ in expert_choices(model, config.ranks_per_stage, config.tp, {"etp": config.etp})
                     if ep > config.ep)
        levers.append([((f"--ep {ep}",), {"ep": ep}) for ep in eps])
    if offload:
        off = [name for name in OFFLOADS if not getattr(config, name)]
        levers.append([(tuple(f"--{name.replace('_', '-')}" for name in names), dict.fromkeys(names, True))
                       for names in ([[name] for name in off] + ([off] if len(off) > 1 else []))])
    return [lever for lever in levers if lever]


def _combined(options) -> tuple[str, dict]:
    flags = " ".join(flag for option in options for flag in option[0])
    return flags, {k: v for option in options for k, v in option[1].items()}


def advisable(model, cluster, config, execution: Execution, executor: bool = True) -> bool:
    """Whether fitting advice may name `config`: a legal layout on the cluster's devices that the framework runs
    (`Execution.problem`) and, with `executor`, that the bundled executor runs with this model
    (`candidate_unsupported_reason`: an MoE layer's token split over tp included). The one test
    `smallest_fitting_change` applies to a change, for `estimate`'s advice and the search's no-fit line
    (`search.explain_infeasible`)."""
    return not (config.problems(model, cluster.world_size) or (executor and candidate_unsupported_reason(config, model))
                or execution.problem(config, model))


def fitting_changes(model, cluster, config, execution: Execution = Execution(),
                    allowed: Callable[[dict], bool] | None = None,
                    partition: list | None = None) -> list[tuple[str, dict, dict]]:
    """The changes of the fewest levers (`_levers`) under which the layout is predicted to fit and stays `advisable`
    (the executor's support asked only of a layout that had it, planning for the executor): the fastest of those
    first, as (its flags, e.g. '--zero 3 --grad-reduce microbatch', its config changes, its prediction), then the
    fastest change of one lever more where it is faster still; [] when none fits. `allowed`: which changes may be
    named (the search's no-fit line: none that a `--fix` pins otherwise); `partition`: the layout's stages (None:
    the default split; no lever changes the stage count). When the change that saves the most on every lever is
    advisable and still does not fit, nothing smaller is tried."""
    executor = execution.is_executor and candidate_unsupported_reason(config, model) is None
    levers = [[option for option in lever if allowed is None or allowed(option[1])]
              for lever in _levers(config, model, plans_offload(cluster))]
    levers = [lever for lever in levers if lever]

    def prediction(changes: dict) -> dict | None:
        changed = with_changes(config, **changes)
        if not advisable(model, cluster, changed, execution, executor):
            return None
        try:
            return estimate(model, cluster, changed, partition=partition, execution=execution,
                            detail=False).prediction
        except UserError:  # (offloading beyond the host's memory: a change with less offload may fit)
            return None

    def fastest(count: int) -> tuple[str, dict, dict] | None:
        fitting = []
        for chosen in itertools.combinations(levers, count):
            for options in itertools.product(*chosen):
                flags, changes = _combined(options)
                p = prediction(changes)
                if p is not None and p["fits"]:
                    fitting.append((p["iteration_time_s"], flags, changes, p))
        return min(fitting, key=lambda f: f[0])[1:] if fitting else None

    if levers:
        most = prediction(_combined([lever[-1] for lever in levers])[1])
        if most is not None and not most["fits"]:
            return []
    for count in range(1, len(levers) + 1):
        found = fastest(count)
        if found:
            faster = fastest(count + 1) if count < len(levers) else None
            if faster and faster[2]["iteration_time_s"] < found[2]["iteration_time_s"]:
                return [found, faster]
            return [found]
    return []


def smallest_fitting_change(model, cluster, config, execution: Execution = Execution(),
                            allowed: Callable[[dict], bool] | None = None,
                            partition: list | None = None) -> tuple[str, dict, dict] | None:
    """The first of `fitting_changes` (the fastest change of the fewest levers that fits), None when none does."""
    found = fitting_changes(model, cluster, config, execution, allowed, partition)
    return found[0] if found else None


def does_not_fit_message(plan, model, cluster, execution: Execution = Execution()) -> str:
    """One line: which rank is over by how much, and the smallest change that fits with its step time and peak (or
    where to look)."""
    p = plan.prediction
    stages = p["memory_per_stage"]
    worst = max(range(len(stages)), key=lambda r: stages[r]["total"])
    over = stages[worst]["total"] - p["memory_limit_bytes"]
    found = fitting_changes(model, cluster, plan.config, execution, partition=plan.partition)
    if found:
        flags, _, fits = found[0]
        advice = (f"at {fits['iteration_time_s']:.4g} s per step and {fits['peak_memory_bytes'] / GiB:.1f} GiB it "
                  f"fits with {flags}")
        if len(found) > 1:
            flags, _, fits = found[1]
            advice += (f" (faster with one lever more: {fits['iteration_time_s']:.4g} s and "
                       f"{fits['peak_memory_bytes'] / GiB:.1f} GiB with {flags})")
    else:
        advice = ("no change of recompute, ZeRO, gradient reduction, micro-batch, sequence or expert parallelism "
                  "or offload fits: `autoconf plan` searches every layout, or use more devices")
        advice += headroom_advice(cluster, stages[worst]["total"])
    need, limit, over = gib_figures(stages[worst]["total"], p["memory_limit_bytes"], over)
    return (f"does not fit: pipeline rank {worst} needs {need} GiB of {cluster.memory_limit_phrase(limit)}, {over} "
            f"GiB over; {advice}")


def headroom_advice(cluster, need_bytes: float) -> str:
    """", or a --memory-headroom below h (...)" where the headroom is the command line's and a layout needing
    `need_bytes` per device fits its device with a smaller one; "" otherwise (a profile's own headroom is not
    offered: it states what the device needs)."""
    needed = need_bytes / cluster.device.memory_bytes
    below = math.floor((1 - needed) * 1000) / 1000  # (rounded down: any headroom below it fits)
    if not cluster.headroom_from_command_line or below <= 0:
        return ""
    return f", or a --memory-headroom below {below:g} (it needs {100 * needed:.3g}% of the device)"
