"""Expert-parallel layouts: the ep/etp fields of a config and their rules, and the folded expert grid (attention's
ranks of a pipeline rank reshaped as edp x ep x etp)."""

import dataclasses

import numpy as np
import pytest

from autoconf.errors import UserError
from autoconf.spec.grid import ParallelDims, RankGrid, expert_grid, expert_groups
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS


def config(**changes) -> ParallelConfig:
    base = dict(tp=2, pp=2, dp=4, micro_batch_size=1, global_batch_size=32, seq_len=4096)
    return ParallelConfig(**{**base, **changes})


def test_old_config_json_loads_with_ep_and_etp_one():
    """A config written before expert parallelism (no ep/etp keys) loads with ep = etp = 1, and both are saved."""
    data = config().to_dict()
    del data["ep"], data["etp"]
    loaded = ParallelConfig.from_dict(data)
    assert (loaded.ep, loaded.etp) == (1, 1)
    assert config(ep=4).to_dict()["ep"] == 4


def test_expert_rules_name_what_would_work():
    """ep must divide the experts, etp an expert's FFN width, ep x etp the ranks of a pipeline rank, and only MoE
    models take ep/etp > 1."""
    mixtral = PRESETS["mixtral-8x7b"]
    assert config(ep=8, etp=1).problems(mixtral, 16) == []
    assert config(ep=4, etp=2).problems(mixtral, 16) == []
    bad = config(ep=3).problems(mixtral, 16)
    assert any("ep 3 does not divide the 8 experts" in p and "1, 2, 4, 8" in p for p in bad)
    narrow = config(etp=3).problems(mixtral, 16)  # (it named no etp that would divide the width)
    assert any("etp 3 does not divide the expert FFN width 14336 (use etp in 1, 2, 4, 7, 8" in p for p in narrow)
    too_wide = config(ep=8, etp=2).problems(mixtral, 16)
    assert any("does not divide the 8 ranks of a pipeline rank" in p for p in too_wide)
    dense = config(ep=2).problems(PRESETS["llama3-8b"], 16)
    assert any("need a mixture-of-experts model" in p for p in dense)
    with pytest.raises(UserError, match="ep 3 does not divide"):
        config(ep=3).check(mixtral, 16)


def test_expert_grid_folds_the_pipeline_rank():
    """Each pipeline rank's devices appear exactly once in its expert grid; etp is innermost (an ETP group of
    width tp is the attention TP group) and edp x ep x etp covers the same ranks as dp x tp."""
    dims = ParallelDims(pp=2, dp=4, tp=2)
    grid = RankGrid(np.random.default_rng(0).permutation(dims.world_size).reshape(dims.shape))
    for p in range(2):
        folded = expert_grid(grid, p, ep=4, etp=2)
        assert folded.shape == (1, 4, 2)
        assert sorted(folded.reshape(-1)) == sorted(grid.pipeline_rank(p).reshape(-1))
        etp_groups = expert_groups(grid, p, 4, 2, "etp")
        tp_groups = grid.pipeline_rank(p).reshape(-1, dims.tp)  # (dp x cp) rows of a TP group each
        assert sorted(map(tuple, etp_groups)) == sorted(map(tuple, tp_groups))
        ep_groups = expert_groups(grid, p, 2, 1, "ep")
        assert ep_groups.shape == (4, 2)
        assert [int(d) for d in ep_groups[0]] == [int(d) for d in tp_groups[0]]
        assert expert_groups(grid, p, 2, 1, "edp").shape == (2, 4)
    with pytest.raises(ValueError, match="does not divide the 8 ranks"):
        expert_grid(grid, 0, ep=3, etp=1)


def test_fixed_ep_reaches_candidates_and_dense_is_refused():
    """`plan --fix ep=..` pins ep in every candidate; on a dense model it is one clear error."""
    from autoconf.solve.space import candidates, parse_fix_value

    mixtral = PRESETS["mixtral-8x7b"]
    assert parse_fix_value("ep", "8") == 8
    seen = list(dataclasses.astuple(c)[:3] + (c.ep,) for c in
                candidates(mixtral, 16, 8, 32, 4096, "bf16", fixed={"ep": 8, "tp": 1, "zero_stage": 1,
                                                                    "recompute": "full"}))
    assert seen and all(c[3] == 8 for c in seen)
    with pytest.raises(UserError, match="is dense"):
        next(iter(candidates(PRESETS["llama3-8b"], 16, 8, 32, 4096, "bf16", fixed={"ep": 2})))
