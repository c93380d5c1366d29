"""Which layouts to validate: the planner's choice, then a deterministic spread over degrees and schedules.

    1. the planner's best plan (search top 1, with its refined partition and placement)
    2. from every legal, launchable layout that is predicted to fit (default partition and placement), greedily the
       one that adds the most that no chosen layout has yet: a new (tp, pp, dp) combination first, then a new
       schedule, micro-batch size, ZeRO stage, recompute and sequence-parallel setting; ties go to the layout
       predicted fastest (the spread stays among layouts someone would run), then to the config key.
Deterministic: the same inputs give the same list, in the same order.
"""

from __future__ import annotations

from autoconf.cost.estimate import Execution, estimate
from autoconf.spec.support import unsupported_reason
from autoconf.solve.placement import tp_cp_domain
from autoconf.solve.search import ranking_key, search
from autoconf.solve.space import candidates
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, Plan

# Weight of each kind of novelty: one new degree combination outweighs every lesser novelty together.
NOVELTY_WEIGHTS = {"degrees": 64, "schedule": 32, "micro_batch": 16, "zero": 8, "recompute": 4, "sp": 2,
                   "vpp": 1}


def features(c: ParallelConfig) -> dict:
    """What a layout is made of. Without a pipeline the schedule is moot ("none", never new)."""
    return {"degrees": (c.tp, c.pp, c.dp), "schedule": c.schedule if c.pp > 1 else "none",
            "micro_batch": c.micro_batch_size, "zero": c.zero_stage, "recompute": c.recompute,
            "sp": c.sequence_parallel, "vpp": c.vpp}


def novelty(c: ParallelConfig, seen: dict[str, set]) -> int:
    f = features(c)
    return sum(w for name, w in NOVELTY_WEIGHTS.items() if f[name] not in seen[name])


def select_layouts(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int, dtype: str,
                   count: int, fixed: dict | None = None, attention: str = "flash",
                   execution: Execution = Execution(), refine: bool = True) -> list[Plan]:
    """`count` plans: the planner's best first, then the spread. Fewer if fewer layouts fit and launch.
    `refine`: give the planner's best its CP-SAT partition and placement, as `autoconf plan` does."""
    if count < 1:
        raise ValueError(f"count must be >= 1 (got {count})")
    result = search(model, cluster, global_batch, seq_len, dtype, attention, fixed, top_k=1, execution=execution,
                    refine=refine)
    if not result.plans:
        from autoconf.errors import UserError
        from autoconf.solve.search import explain_infeasible

        raise UserError(explain_infeasible(model, cluster, result, global_batch, seq_len, dtype, attention,
                                           fixed or {}, execution))
    best = result.plans[0]
    chosen: list[Plan] = [best]
    pool: list[tuple[float, tuple, ParallelConfig]] = []
    for config in candidates(model, cluster.world_size, cluster.gpus_per_node, global_batch, seq_len, dtype,
                             attention, fixed, tp_cp_domain=tp_cp_domain(cluster)):
        if config == best.config or unsupported_reason(config):
            continue
        p = estimate(model, cluster, config, execution=execution, detail=False).prediction
        if p["fits"]:
            pool.append((p["iteration_time_s"], ranking_key(config), config))
    seen = {name: set() for name in NOVELTY_WEIGHTS}
    seen["schedule"].add("none")

    def remember(c: ParallelConfig) -> None:
        for name, value in features(c).items():
            seen[name].add(value)

    remember(best.config)
    while len(chosen) < count and pool:
        index = min(range(len(pool)), key=lambda i: (-novelty(pool[i][2], seen), pool[i][0], pool[i][1]))
        _, _, config = pool.pop(index)
        remember(config)
        chosen.append(estimate(model, cluster, config, execution=execution))
    return chosen
