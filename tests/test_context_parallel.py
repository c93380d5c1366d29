"""Context parallelism (cp) as the fourth degree: the axis, old plans, the executor's refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoconf.errors import UserError
from autoconf.spec.plan import ParallelConfig, Plan, load_plan
from autoconf.spec.presets import PRESETS
from plan_helpers import even_plan


def _cp_plan(cp: int = 2, dp: int = 1, seq: int = 64) -> Plan:
    model = PRESETS["tiny-llama"]
    config = ParallelConfig(tp=1, pp=1, dp=dp, cp=cp, micro_batch_size=1, global_batch_size=4, seq_len=seq,
                            dtype="fp32")
    return Plan(model=model, cluster={"name": "test", "nodes": 1, "gpus_per_node": config.world_size},
                config=config, partition=[[0, model.num_layers]],
                placement={"mesh": np.arange(config.world_size).reshape(config.dims.shape).tolist()})


def test_a_plan_written_before_the_cp_axis_loads_with_cp_1(tmp_path):
    """An old plan (no `cp` in its config, a [pp][dp][tp] mesh) loads, reads cp = 1 and saves a 4-D mesh."""
    plan = even_plan(PRESETS["tiny-llama"], tp=2, pp=2, dp=2)
    data = plan.to_dict()
    del data["config"]["cp"]
    data["placement"]["mesh"] = np.asarray(data["placement"]["mesh"]).reshape(2, 2, 2).tolist()
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_plan(tmp_path / "old.json")
    assert old.config.cp == 1 and old.config == plan.config
    assert np.asarray(old.placement["mesh"]).shape == (2, 2, 1, 2)
    assert old.grid().group_of("tp", 5) == [4, 5] and old.grid().group_of("dp", 5) == [5, 7]


def test_cp_plans_validate_and_the_launcher_refuses_them_in_one_line(tmp_path):
    from autoconf.execute.launch import launch

    plan = _cp_plan(cp=2, dp=2)
    plan.validate()
    assert plan.grid().group_of("cp", 0) == [0, 1] and plan.grid().group_of("dp", 0) == [0, 2]
    plan.save(tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json").config.cp == 2
    with pytest.raises(UserError, match=r"context parallelism \(cp 2\).*use cp 1"):
        launch(tmp_path / "plan.json", steps=1, dry_run=True)


def test_cp_rules_name_what_would_work():
    model = PRESETS["tiny-llama"]
    base = dict(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=4, dtype="fp32")
    problems = ParallelConfig(cp=3, seq_len=64, **base).problems(model, 3)
    assert problems == ["cp 3 needs seq_len 64 divisible by 2 x cp = 6 (each rank holds one head and one tail "
                        "chunk of the causal sequence; use cp in 1, 2, 4, 8, 16, 32)"]
    assert ParallelConfig(cp=4, seq_len=64, **base).problems(model, 4) == []
    sp = ParallelConfig(cp=4, seq_len=32, sequence_parallel=True, **{**base, "tp": 16})
    assert any("sequence_parallel needs tp 16 to divide the 32 / cp 4 tokens" in p for p in sp.problems(model))
