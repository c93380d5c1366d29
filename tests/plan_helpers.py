"""Plans built directly for executor tests (no planner): even layer split, ranks laid out in grid order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, Plan


def even_plan(spec: ModelSpec, tp: int = 1, pp: int = 1, dp: int = 1, schedule: str = "1f1b", vpp: int = 1,
              zero: int = 0, sp: bool = False, recompute: str = "none", attention: str = "flash",
              global_batch: int = 8, micro_batch: int = 1, seq: int = 32,
              recompute_layers: list[int] | None = None, cp: int = 1,
              selective_recompute: str | None = None) -> Plan:
    """A validated fp32 plan of `spec` on one node: layers split evenly over pp*vpp stages, mesh
    arange(world).reshape(pp, dp, cp, tp)."""
    config = ParallelConfig(tp=tp, pp=pp, dp=dp, cp=cp, vpp=vpp, micro_batch_size=micro_batch,
                            global_batch_size=global_batch, seq_len=seq, schedule=schedule, zero_stage=zero,
                            recompute=recompute, sequence_parallel=sp, dtype="fp32", attention=attention,
                            recompute_layers=recompute_layers, selective_recompute=selective_recompute)
    stages = pp * vpp
    bounds = [round(i * spec.num_layers / stages) for i in range(stages + 1)]
    plan = Plan(model=spec, cluster={"name": "test", "nodes": 1, "gpus_per_node": config.world_size},
                config=config, partition=[[bounds[i], bounds[i + 1]] for i in range(stages)],
                placement={"mesh": np.arange(config.world_size).reshape(pp, dp, cp, tp).tolist()})
    plan.validate()
    return plan


def script_module(name: str):
    """scripts/NAME.py loaded as a module (the truth scripts are files, not a package), with scripts/ on the import
    path as when run as `python scripts/NAME.py` (they import their shared helpers from beside them)."""
    folder = Path(__file__).resolve().parent.parent / "scripts"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARAM_COUNT = {"probe": "tests/param_count_probe.py"}  # a layout option: count what each rank holds


def assert_ranks_hold_the_estimated_params(plan: Plan, found: list[dict]) -> None:
    """Every rank of `plan` (no ZeRO sharding of parameters) holds, as tests/param_count_probe.py counted it
    (`found`, one entry per rank), exactly the parameters the memory estimate gives its pipeline rank:
    `local_params` of `rank_params` over the model stages the schedule puts there (each TP rank's share of the split
    ones, the TP-replicated ones whole, its EP x ETP share of the routed experts)."""
    from autoconf.cost.memory import rank_params
    from autoconf.cost.moe import local_params
    from autoconf.spec.schedules import stage_to_rank

    c = plan.config
    assert not c.zero_sharded
    owner = stage_to_rank(c.schedule, c.pp, c.vpp)
    for rank, entry in enumerate(found):
        stages = [st % len(plan.partition) for st, r in enumerate(owner) if r == entry["pp"]]
        expected = sum(local_params(c, *rank_params(plan.model, plan.partition, stages, "torch")))
        assert entry["params"] == expected, (rank, entry, expected)
