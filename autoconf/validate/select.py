"""Which layouts to validate: the planner's choice, then a deterministic spread over degrees and schedules.

    1. the planner's best plan (search top 1, with its refined partition and placement)
    2. from every legal, launchable layout that is predicted to fit (default partition and placement), greedily the
       one that adds the most that no chosen layout has yet (`novelty`, compared in this order): a new combination
       of every degree (tp, pp, dp, cp, ep, etp); then how many of those degrees take a value no chosen layout
       has; then a new pipeline shape (schedule, vpp, sequence chunks); then the levers (micro-batch size, ZeRO
       stage, recompute, sequence parallelism, CP algorithm, offload, gradient reduction); ties go to the layout
       predicted fastest (the spread stays among layouts someone would run), then to the config key.
Deterministic: the same inputs give the same list, in the same order.
"""

from __future__ import annotations

from autoconf.cost.estimate import Execution, estimate
from autoconf.spec.support import candidate_unsupported_reason
from autoconf.solve.placement import tp_cp_domain
from autoconf.solve.search import ranking_key, search
from autoconf.solve.space import candidates
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, Plan

DEGREES = ("tp", "pp", "dp", "cp", "ep", "etp")  # every degree of a layout (spec/plan.py ParallelConfig)
# Within a tier, the weight of each kind of novelty: the tiers themselves are compared in order (`novelty`).
PIPELINE_WEIGHTS = {"schedule": 4, "vpp": 2, "seq_chunks": 1}
LEVER_WEIGHTS = {"micro_batch": 64, "zero": 32, "recompute": 16, "sp": 8, "cp_comm": 4, "offload": 2,
                 "grad_reduce": 1}


def features(c: ParallelConfig) -> dict:
    """What a layout is made of: its degrees (as one combination, and each alone), its pipeline shape and its
    levers. Without a pipeline the schedule is moot ("none", never new), as is the CP algorithm without CP."""
    out = {"degrees": tuple(getattr(c, d) for d in DEGREES)}
    out.update({f"degree_{d}": getattr(c, d) for d in DEGREES})
    out.update({"schedule": c.schedule if c.pp > 1 else "none", "vpp": c.vpp, "seq_chunks": c.seq_chunks,
                "micro_batch": c.micro_batch_size, "zero": c.zero_stage, "recompute": c.recompute,
                "sp": c.sequence_parallel, "cp_comm": c.cp_comm if c.cp > 1 else "none",
                "offload": (c.offload_activations, c.offload_optimizer), "grad_reduce": c.grad_reduce})
    return out


def novelty(c: ParallelConfig, seen: dict[str, set]) -> tuple[int, int, int, int]:
    """How much `c` adds to the layouts seen (`seen`: each feature's values so far), compared as a tuple: (a new
    combination of every degree, the degrees with a new value, the pipeline shape's weighted novelty, the levers'
    weighted novelty). A higher tuple is more novel; an earlier element outweighs every later one."""
    f = features(c)

    def new(name: str) -> bool:
        return f[name] not in seen.get(name, set())

    return (int(new("degrees")), sum(new(f"degree_{d}") for d in DEGREES),
            sum(w for name, w in PIPELINE_WEIGHTS.items() if new(name)),
            sum(w for name, w in LEVER_WEIGHTS.items() if new(name)))


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
    for config in candidates(model, cluster.world_size, cluster.devices_per_domain, global_batch, seq_len, dtype,
                             attention, fixed, tp_cp_domain=tp_cp_domain(cluster)):
        if config == best.config or candidate_unsupported_reason(config, model):
            continue
        p = estimate(model, cluster, config, execution=execution, detail=False).prediction
        if p["fits"]:
            pool.append((p["iteration_time_s"], ranking_key(config), config))
    seen: dict[str, set] = {"schedule": {"none"}, "cp_comm": {"none"}}

    def remember(c: ParallelConfig) -> None:
        for name, value in features(c).items():
            seen.setdefault(name, set()).add(value)

    remember(best.config)
    while len(chosen) < count and pool:
        index = min(range(len(pool)),
                    key=lambda i: (tuple(-x for x in novelty(pool[i][2], seen)), pool[i][0], pool[i][1]))
        _, _, config = pool.pop(index)
        remember(config)
        chosen.append(estimate(model, cluster, config, execution=execution))
    return chosen
