"""Context parallelism (cp) as the fourth degree: the axis, old plans, the executor's refusal."""

from __future__ import annotations

import dataclasses
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


# ---- cost ---------------------------------------------------------------------------------------------------------
from autoconf.cost.compute import model_pieces  # noqa: E402
from autoconf.cost.estimate import PRESETS as FRAMEWORKS, cp_attention_comm, estimate  # noqa: E402
from autoconf.spec.cluster import load_cluster  # noqa: E402

H100 = load_cluster("dgx-h100-80g", nodes=2)
LONG = PRESETS["llama3.1-8b"]


def _long(cp: int, cp_comm: str = "ring", seq: int = 131072, **kw) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=16 // cp, cp=cp, cp_comm=cp_comm, micro_batch_size=1, global_batch_size=16 // cp,
                seq_len=seq, zero_stage=3, recompute="full", dtype="bf16")
    return ParallelConfig(**{**base, **kw})


def test_cp_1_predictions_are_those_of_main_to_the_last_bit():
    """Numbers printed by main (8b6e569's parent) for two layouts: adding the cp axis changed none of them."""
    one = load_cluster("dgx-h100-80g", nodes=1)
    c = ParallelConfig(tp=2, pp=2, dp=2, micro_batch_size=1, global_batch_size=16, seq_len=8192, zero_stage=1,
                       recompute="selective", sequence_parallel=True, dtype="bf16")
    p = estimate(PRESETS["llama3-8b"], one, c).prediction
    assert (p["iteration_time_s"], p["peak_memory_bytes"]) == (1.926244869289007, 46891032576.0)
    c = ParallelConfig(tp=8, pp=4, dp=2, vpp=2, schedule="interleaved-1f1b", micro_batch_size=1, global_batch_size=64,
                       seq_len=8192, recompute="full", dtype="bf16")
    p = estimate(PRESETS["llama3-70b"], load_cluster("dgx-h100-80g", nodes=8), c,
                 execution=FRAMEWORKS["megatron-core"]).prediction
    assert (p["iteration_time_s"], p["peak_memory_bytes"]) == (12.53347270312683, 58589659136.0)
    assert "cp_comm" not in p["time_breakdown"]


def test_a_cp_rank_computes_its_tokens_and_one_cp_th_of_the_causal_attention():
    c = _long(4)
    pieces = model_pieces(LONG, H100, c)
    local = model_pieces(LONG, H100, dataclasses.replace(c, seq_len=c.seq_len // 4, cp=1))
    whole = model_pieces(LONG, H100, dataclasses.replace(c, cp=1))
    assert pieces.block_rest == local.block_rest and pieces.head == local.head
    assert pieces.attention_core.forward == pytest.approx(whole.attention_core.forward / 4, rel=1e-12)
    # attention grows with s^2, the rest with s: the rank's attention share is 4x the one of a sequence of s/4
    assert pieces.attention_core.forward == pytest.approx(4 * local.attention_core.forward, rel=1e-9)


def test_memory_per_rank_falls_with_cp_and_ring_holds_less_than_allgather():
    peaks = {}
    for comm in ("ring", "allgather"):
        for cp in (1, 2, 4, 8, 16):
            p = estimate(LONG, H100, _long(cp, comm), detail=False).prediction
            peaks[comm, cp] = p["peak_memory_bytes"]
            activations = p["memory_per_stage"][0]["activations"]
            if cp == 1:
                base = activations
            assert activations == pytest.approx(base / cp, rel=1e-9)  # the sequence / cp
        assert all(peaks[comm, a] > peaks[comm, b] for a, b in ((1, 2), (2, 4), (4, 8), (8, 16)))
    # the K/V buffer: the whole sequence's K/V and their gradients (2 cp blocks) against four blocks of the ring
    from autoconf.cost.memory import cp_buffer_bytes, cp_kv_bytes

    for cp in (4, 8, 16):
        assert peaks["ring", cp] <= peaks["allgather", cp]
        assert cp_buffer_bytes(LONG, _long(cp, "allgather")) == 2 * cp * cp_kv_bytes(LONG, _long(cp))
        assert cp_buffer_bytes(LONG, _long(cp, "ring")) == 4 * cp_kv_bytes(LONG, _long(cp)) > 0


def test_ring_hides_behind_the_attention_where_the_all_gather_cannot():
    """At 128k tokens a K/V block's transfer is far shorter than the attention on the block before: the ring
    exposes nothing, the all-gather its whole time. Both move the same bytes, so with no attention to hide behind
    the ring exposes about what the all-gather does."""
    group = [0, 1, 2, 3]
    c = _long(4)
    core = model_pieces(LONG, H100, c).attention_core
    ring = cp_attention_comm(LONG, H100, c, group, core)
    gather = cp_attention_comm(LONG, H100, dataclasses.replace(c, cp_comm="allgather"), group, core)
    assert ring.forward == ring.backward_input == 0.0 < gather.forward < gather.backward_input
    bare = cp_attention_comm(LONG, H100, c, group, dataclasses.replace(core, forward=0.0, backward_input=0.0))
    assert bare.forward == pytest.approx(gather.forward, rel=0.05)
    across = cp_attention_comm(LONG, H100, dataclasses.replace(c, cp_comm="allgather"), [0, 8, 1, 9], core)
    assert across.forward > gather.forward  # the link matrix: a group across nodes is slower
    p = estimate(LONG, H100, dataclasses.replace(c, cp_comm="allgather")).prediction
    assert p["time_breakdown"]["cp_comm"] > 0


def test_gradients_are_reduced_over_dp_x_cp():
    """CP ranks hold the same weights: with dp 1 a cp 2 layout still reduces gradients (over its two CP ranks), and
    ZeRO shards over dp x cp."""
    c = _long(2, dp=1, global_batch_size=1, zero_stage=0)
    one_node = load_cluster("dgx-h100-80g", nodes=1, gpus_per_node=2)
    assert estimate(LONG, one_node, c).prediction["time_breakdown"]["dp_comm"] > 0
    sharded = estimate(LONG, one_node, dataclasses.replace(c, zero_stage=3)).prediction["memory_per_stage"][0]
    whole = estimate(LONG, one_node, c).prediction["memory_per_stage"][0]
    assert sharded["optimizer"] == pytest.approx(whole["optimizer"] / 2)


def test_context_beyond_the_model_needs_rope_scaling():
    assert "context of 8,192 tokens" in PRESETS["llama3-8b"].context_problem(131072)
    assert "--seq-len 8192 or less" in PRESETS["llama3-8b"].context_problem(8193)
    assert PRESETS["llama3-8b"].context_problem(8192) is None
    assert LONG.context_problem(1 << 20) is None  # llama3.1: RoPE scaling, 1M tokens plannable
    assert _long(16, seq=1 << 20).problems(LONG, 16) == []


# ---- search -------------------------------------------------------------------------------------------------------
from autoconf.solve.space import CP_MIN_SEQ_LEN, candidates, cp_choices  # noqa: E402


def test_cp_is_searched_for_long_sequences_only():
    assert cp_choices(64, CP_MIN_SEQ_LEN - 2) == [1]
    assert cp_choices(64, 32768) == [1, 2, 4, 8, 16, 32]  # 32768 / 64 = 512 tokens a rank: too short
    assert cp_choices(12, 24576) == [1, 2, 3, 4, 6, 12]
    short = {c.cp for c in candidates(LONG, 16, 8, 16, 8192, "bf16", fixed={"pp": 1, "recompute": "full"})}
    assert short == {1}
    long = list(candidates(LONG, 16, 8, 16, 32768, "bf16", fixed={"pp": 1, "recompute": "full", "zero_stage": 3}))
    assert {c.cp for c in long} == {1, 2, 4, 8, 16}
    assert {c.cp_comm for c in long if c.cp > 1} == {"ring", "allgather"}
    assert all(c.world_size == 16 and c.seq_len % (2 * c.cp) == 0 for c in long)


def test_bounds_never_exceed_the_estimate_with_cp():
    """The search's time and memory bounds read the same CP rules as the estimate: never above it."""
    from autoconf.cost.estimate import Execution
    from autoconf.solve.search import _BoundCache

    cache = _BoundCache(LONG, H100, Execution())
    checked = 0
    for config in candidates(LONG, 16, 8, 16, 32768, "bf16", fixed={"micro_batch_size": 1, "zero_stage": 3}):
        if config.cp == 1 or config.pp > 2 or config.schedule not in ("1f1b", "interleaved-1f1b", "zbv"):
            continue
        bound = cache.bounds(config)
        p = estimate(LONG, H100, config, detail=False).prediction
        assert bound.time_s <= p["iteration_time_s"] * (1 + 1e-9), config
        assert bound.memory_bytes <= p["peak_memory_bytes"] * (1 + 1e-9), config
        checked += 1
    assert checked > 50


def test_the_planner_splits_a_128k_sequence_that_fits_no_other_way():
    from autoconf.solve.search import search

    one = load_cluster("dgx-h100-80g", nodes=1)
    fixed = {"micro_batch_size": 1, "recompute": "full", "pp": 1}
    result = search(LONG, one, 8, 131072, "bf16", fixed=fixed, top_k=2, refine=False, launchable_only=False)
    best = result.plans[0]
    assert best.config.cp > 1 and best.prediction["fits"]
    assert not estimate(LONG, one, dataclasses.replace(best.config, cp=1, dp=best.config.dp_cp), detail=False
                        ).prediction["fits"]
    with pytest.raises(UserError, match="executor cannot run"):  # until the executor runs CP
        search(LONG, one, 8, 131072, "bf16", fixed={**fixed, "cp": 8}, top_k=1, refine=False)
