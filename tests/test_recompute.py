"""Recompute per pipeline stage (`recompute_layers`): the config field and its one reading (`recomputed_layers`),
what memory and time charge for it, the fewest counts that fit (solve/recompute.py) against every count vector,
and the search that chooses them."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from rich.console import Console

from autoconf.cost.estimate import estimate, predict
from autoconf.errors import UserError
from autoconf.report.tables import prediction_table
from autoconf.solve.recompute import fewest_recomputed, rebalanced
from autoconf.solve.search import search
from autoconf.spec.cluster import load_cluster
from autoconf.spec.plan import ParallelConfig, Plan, recomputed_layers, uniform_partition
from autoconf.spec.presets import PRESETS
from autoconf.spec.schedules import stage_to_rank

# A six-layer Llama-3.1-8B (its 128k context) on four H100: at seq 28672 and micro-batch 4 some stages must
# recompute, not all (one stage per rank under 1F1B: at seq 32768, as compiled blocks keep less; GPipe, which holds
# every micro-batch, at seq 16384).
MODEL = dataclasses.replace(PRESETS["llama3.1-8b"], num_layers=6)
CLUSTER = load_cluster("dgx-h100-80g", nodes=1, gpus_per_node=4)
SEQ = 28672


def _config(schedule="1f1b", vpp=1, **changes) -> ParallelConfig:
    fields = dict(tp=2, pp=2, dp=1, micro_batch_size=4, global_batch_size=16, seq_len=SEQ, recompute="full")
    return ParallelConfig(schedule=schedule, vpp=vpp, **{**fields, **changes})


def _time(config: ParallelConfig, partition) -> float:
    """The fast estimate's step time, inf when it does not fit."""
    p = predict(MODEL, CLUSTER, config, partition=partition, detail=False)[3]
    return p["iteration_time_s"] if p["fits"] else float("inf")


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_the_fewest_counts_that_fit_are_the_fastest_of_every_count_vector(schedule):
    """One stage per rank: the chosen counts fit, lie at or below every fitting count vector stage by stage, and no
    vector is faster (brute force over all (k0, k1))."""
    config = _config(schedule, seq_len=16384 if schedule == "gpipe" else 32768)
    partition = uniform_partition(MODEL.num_layers, 2)
    chosen = fewest_recomputed(MODEL, CLUSTER, config, partition)
    counts = recomputed_layers(chosen, partition)
    times = {ks: _time(dataclasses.replace(config, recompute_layers=ks), partition)
             for ks in itertools.product(*(range(end - first + 1) for first, end in partition))}
    fitting = [ks for ks, t in times.items() if t < float("inf")]
    assert 0 < len(fitting) < len(times)  # the case needs some recompute, and not all of it
    assert any(counts) and counts != [end - first for first, end in partition]
    assert _time(chosen, partition) == min(times.values())
    assert all(all(k <= f for k, f in zip(counts, ks)) for ks in fitting)


def test_with_two_stages_per_rank_the_fewest_total_per_rank_fits():
    """Interleaved 1F1B: the counts fit, and no fitting vector recomputes fewer layers on any rank."""
    config = _config("interleaved-1f1b", vpp=2)
    partition = uniform_partition(MODEL.num_layers, 4)
    chosen = fewest_recomputed(MODEL, CLUSTER, config, partition)
    counts = recomputed_layers(chosen, partition)
    assert _time(chosen, partition) < float("inf") and any(counts)

    def per_rank(ks):
        return [ks[r] + ks[r + 2] for r in range(2)]

    for ks in itertools.product(*(range(end - first + 1) for first, end in partition)):
        if any(ks) and _time(dataclasses.replace(config, recompute_layers=ks), partition) < float("inf"):
            assert all(a <= b for a, b in zip(per_rank(counts), per_rank(ks))), (counts, ks)


@pytest.mark.parametrize("schedule,vpp,seq,micro_batch", [("looped-bfs", 2, 16384, 4), ("looped-bfs", 3, 20480, 2),
                                                           ("interleaved-1f1b", 3, 32768, 4)])
def test_rebalancing_a_ranks_recomputed_layers_finds_the_fastest_split_of_its_total(schedule, vpp, seq, micro_batch):
    """Several stages per rank: moving recomputed layers between a rank's stages (`rebalanced`) keeps each rank's
    total, fits, is never slower than the fewest counts' greedy split, and here reaches the fastest of every vector
    with the same per-rank totals (brute force); under looped BFS the greedy split is slower than that."""
    config = _config(schedule, vpp=vpp, seq_len=seq, micro_batch_size=micro_batch)
    partition = uniform_partition(MODEL.num_layers, 2 * vpp)
    owner = stage_to_rank(schedule, 2, vpp)

    def totals(ks):
        return [sum(k for s, k in enumerate(ks) if owner[s] == r) for r in range(2)]

    chosen = fewest_recomputed(MODEL, CLUSTER, config, partition)
    moved = rebalanced(MODEL, CLUSTER, chosen, partition, None)
    moved_time = _time(moved, partition)
    assert totals(moved.recompute_layers) == totals(chosen.recompute_layers)
    assert moved_time <= _time(chosen, partition) < float("inf")
    fastest = min(_time(dataclasses.replace(config, recompute_layers=ks), partition)
                  for ks in itertools.product(*(range(end - first + 1) for first, end in partition))
                  if totals(ks) == totals(chosen.recompute_layers))
    assert moved_time == fastest
    assert (moved_time < _time(chosen, partition)) == (schedule == "looped-bfs")


def test_a_long_count_list_is_labelled_with_runs():
    """A review at scale: 128 counts (Llama 3.1 405B, pp32 vpp4) filled the ranked table's layout column and squeezed
    its step time to "45.…". Up to eight counts are written whole, longer lists with runs of three or more."""
    short = _config(recompute_layers=(4, 4, 2, 0))
    assert "rc-full[4,4,2,0]" in short.label()
    counts = (0, *[1] * 62, 0, *[1] * 18, *[0] * 46, 2, 2)
    config = ParallelConfig(tp=1, pp=32, dp=1, vpp=4, micro_batch_size=1, global_batch_size=64, seq_len=SEQ,
                            recompute="full", schedule="interleaved-1f1b", recompute_layers=counts)
    assert "rc-full[0,1*62,0,1*18,0*46,2,2]" in config.label()


def test_counts_that_need_no_recompute_or_every_layer_come_back_in_the_old_form():
    """A layout that fits without recompute comes back as recompute "none"; one that does not fit with every layer
    recomputed is None; without recompute the config is unchanged."""
    partition = uniform_partition(MODEL.num_layers, 2)
    short = _config(seq_len=4096)
    assert fewest_recomputed(MODEL, CLUSTER, short, partition).recompute == "none"
    assert fewest_recomputed(MODEL, CLUSTER, _config(micro_batch_size=16, global_batch_size=64), partition) is None
    none = dataclasses.replace(short, recompute="none")
    assert fewest_recomputed(MODEL, CLUSTER, none, partition) is none


def test_memory_and_time_read_the_counts():
    """Counts equal to every layer are the old all-layer plan; zero counts under full recompute are the plan
    without recompute; in between, the recompute time is the recomputed layers' and the last stage's activations
    lie between the two, while the first stage's are those without recompute."""
    partition = uniform_partition(MODEL.num_layers, 2)
    full = estimate(MODEL, CLUSTER, _config(), partition=partition).prediction
    every = estimate(MODEL, CLUSTER, _config(recompute_layers=(3, 3)), partition=partition).prediction
    none = estimate(MODEL, CLUSTER, _config(recompute="none"), partition=partition).prediction
    zero = estimate(MODEL, CLUSTER, _config(recompute_layers=(0, 0)), partition=partition).prediction
    some = estimate(MODEL, CLUSTER, _config(recompute_layers=(0, 2)), partition=partition).prediction
    assert every["memory_per_stage"] == full["memory_per_stage"]
    assert every["iteration_time_s"] == full["iteration_time_s"]
    assert zero["memory_per_stage"] == none["memory_per_stage"]
    assert zero["time_breakdown"]["recompute"] == 0.0 and zero["hfu"] == pytest.approx(zero["mfu"])
    act = [m["memory_per_stage"][1]["activations"] for m in (full, some, none)]
    assert act[0] < act[1] < act[2]
    assert some["memory_per_stage"][0] == none["memory_per_stage"][0]
    # the busiest (last, with the head) rank's backward passes recompute 2 of its 3 layers once per micro-batch
    assert some["time_breakdown"]["recompute"] == pytest.approx(2 / 3 * full["time_breakdown"]["recompute"])
    flops = [m["hfu"] * m["iteration_time_s"] for m in (none, some, full)]  # hardware FLOPs, to a constant
    assert flops[1] - flops[0] == pytest.approx(2 / 6 * (flops[2] - flops[0]))


def test_plans_with_and_without_counts_load_and_bad_counts_are_one_line(tmp_path):
    """A plan without the field (every old plan) loads with None and writes no field; counts round-trip; a wrong
    length, a negative count, more than a stage holds, or counts without a recompute mode are one UserError."""
    plan = estimate(MODEL, CLUSTER, _config(recompute_layers=[2, 0]))
    data = json.loads(plan.to_json())
    assert data["config"]["recompute_layers"] == [2, 0]
    assert Plan.from_dict(data).config.recompute_layers == (2, 0)
    old = estimate(MODEL, CLUSTER, _config()).to_dict()
    assert "recompute_layers" not in old["config"] and Plan.from_dict(old).config.recompute_layers is None
    for bad, words in (([1], "2 stages"), ([-1, 0], "counts >= 0"),
                       ([4, 0], r"exceeds the layers .*; give at most 3,3,"),
                       ("ab", "list of layer counts")):
        broken = json.loads(json.dumps(data))
        broken["config"]["recompute_layers"] = bad
        with pytest.raises(UserError, match=words):
            Plan.from_dict(broken)
    broken = json.loads(json.dumps(data))
    broken["config"]["recompute"] = "none"
    with pytest.raises(UserError, match="needs recompute selective or full"):
        Plan.from_dict(broken)


def test_the_search_picks_per_stage_counts_at_least_as_fast_as_all_or_nothing():
    """With the recompute mode left free (tp 2, pp 2, cp 1, micro-batch 4 pinned; no refinement), the search's best
    plan is no slower than the best with each mode pinned (all or nothing per layer) and it recomputes some layers
    of some stages only; pinning the mode keeps every layer."""
    fixed = {"tp": 2, "pp": 2, "micro_batch_size": 4, "cp": 1}
    free = search(MODEL, CLUSTER, 16, SEQ, "bf16", fixed=fixed, top_k=1, refine=False).plans[0]
    pinned = [search(MODEL, CLUSTER, 16, SEQ, "bf16", fixed={**fixed, "recompute": mode}, top_k=1,
                     refine=False).plans
              for mode in ("none", "selective", "full")]
    best_pinned = min(p[0].prediction["iteration_time_s"] for p in pinned if p)
    assert free.prediction["iteration_time_s"] <= best_pinned
    assert free.config.recompute_layers is not None
    assert all(p[0].config.recompute_layers is None for p in pinned if p)
    # the plan says what the counts bought against recomputing every layer of the same layout, in the table too
    bought = free.prediction["recompute_per_stage"]
    assert bought["layers"] == list(free.config.recompute_layers)
    assert bought["every_layer_iteration_time_s"] > free.prediction["iteration_time_s"]
    assert bought["every_layer_peak_memory_bytes"] < free.prediction["peak_memory_bytes"]
    console = Console(width=200, record=True)
    console.print(prediction_table(free))
    text = console.export_text()
    recompute = next(part for part in free.config.label().split() if part.startswith("rc-"))
    assert "every layer" in text and recompute.endswith(f"[{','.join(map(str, bought['layers']))}]")
    assert recompute in text


@pytest.mark.parametrize("seed", range(12))
def test_the_cp_sat_partition_charges_recompute_on_each_stages_first_layers_as_brute_force_does(seed):
    """With per-stage counts (`recompute_counts`, None: every layer) the partition charges a recomputed unit's time
    and activation saving on the first counts[s] layers of each stage only (`PartitionProblem.recomputed_units`,
    the rule of `recomputed_layers`): on random small chains, loop and V placements, loose and binding memory, CP-SAT
    (and the exact DP of one stage per rank behind it) reaches the exhaustive optimum, and every stage's recomputed
    units are the first layers its counts name."""
    import random

    from autoconf.solve.partition import PartitionProblem, brute_force_partition, evaluate_partition
    from autoconf.spec.schedules import loop_stage_to_rank, v_stage_to_rank
    from test_partition import solve_like_brute_force

    rng = random.Random(seed)
    v_shape = seed % 4 == 3
    pp = rng.randint(1, 2) if v_shape else rng.randint(2, 4)
    vpp = 1 if v_shape else rng.randint(1, max(1, 4 // pp))
    placement = v_stage_to_rank(pp) if v_shape else loop_stage_to_rank(pp, vpp)
    stages = len(placement)
    layers = rng.randint(max(1, stages - 2), 8)
    units = layers + 2
    time = tuple(rng.uniform(0.1, 3.0) * 1e-3 for _ in range(units))
    static = tuple(rng.uniform(1, 4) * 2**30 for _ in range(units))
    act = tuple(rng.uniform(0.5, 2) * 2**30 for _ in range(units))
    layer_only = [0.0] + [1.0] * layers + [0.0]
    rc_time = tuple(w * rng.uniform(0.2, 1.0) * t for w, t in zip(layer_only, time))
    rc_saved = tuple(w * rng.uniform(0.3, 0.9) * a for w, a in zip(layer_only, act))
    inflight = tuple(min(pp, stages - s) for s in range(stages))
    counts = None if seed % 5 == 0 else tuple(rng.randint(0, 3) for _ in range(stages))
    loose = PartitionProblem(time, static, act, placement, inflight, 1e18, rng.randint(1, 16),
                             unit_recompute_time=rc_time, unit_recompute_saved_bytes=rc_saved,
                             recompute_counts=counts)
    problem = loose
    if seed % 2:  # a limit between the smallest peak and the fastest partition's, so memory binds
        peak = max(brute_force_partition(loose).rank_memory_bytes)
        problem = dataclasses.replace(loose, memory_limit_bytes=0.97 * peak)
    solved = solve_like_brute_force(problem)
    if solved is None:
        return
    for s, (a, b) in enumerate(solved.stages):
        first, end = max(a, 1), min(b, layers + 1)
        want = max(0, min(end - first, layers if counts is None else counts[s]))
        assert list(problem.recomputed_units(s, a, b)) == list(range(first, first + want))
    # Recomputing more layers never lowers a fixed partition's time nor raises its memory.
    if counts is not None:
        more = dataclasses.replace(problem, recompute_counts=tuple(k + 1 for k in counts))
        mine, theirs = evaluate_partition(problem, solved.stages), evaluate_partition(more, solved.stages)
        assert sum(theirs.stage_time_s) >= sum(mine.stage_time_s)
        assert all(x <= y for x, y in zip(theirs.rank_memory_bytes, mine.rank_memory_bytes))


@pytest.mark.parametrize("framework, schedule, rewalks", [
    ("autoconf", "zb-h1", True), ("torchtitan", "zbv", True), ("autoconf", "1f1b", False),
    ("megatron-core", "interleaved-1f1b", False)])
def test_a_split_weight_pass_recomputes_and_rewalks_each_whole_recomputing_block(framework, schedule, rewalks):
    """torch's weight pass over a fully recomputed block (execute/pipeline.py weight_pass_groups) recomputes it and
    runs its backward between the block's intermediates again: each stage's weight pass costs its recompute and the
    recomputed blocks' input backward on top of its weight GEMMs, under split-backward schedules on torch's runtime
    only; the forward and input pass do not change, nor does a step without recompute."""
    from autoconf.cost.compute import model_pieces
    from autoconf.cost.estimate import default_mesh, stage_plan
    from autoconf.spec.frameworks import execution
    from autoconf.spec.schedules import schedule_spec
    from autoconf.spec.grid import RankGrid

    vpp = 2 if schedule in ("zbv", "interleaved-1f1b") else 1
    c = ParallelConfig(tp=1, pp=2, dp=1, vpp=vpp, micro_batch_size=1, global_batch_size=8, seq_len=4096,
                       schedule=schedule, recompute="full")
    ex = execution(framework)
    partition = uniform_partition(MODEL.num_layers, c.pp * vpp)
    owner = schedule_spec(schedule).stage_to_rank(c.pp, vpp)
    grid = RankGrid(default_mesh(c))
    full = stage_plan(MODEL, CLUSTER, c, partition, owner, grid, ex)
    kept = stage_plan(MODEL, CLUSTER, dataclasses.replace(c, recompute="none"), partition, owner, grid, ex)
    block = model_pieces(MODEL, CLUSTER, c, execution=ex).block.backward_input
    for st, layers in enumerate(recomputed_layers(c, partition)):
        extra = full.recompute[st] + layers * block if rewalks else 0.0
        assert full.costs.backward_weight[st] == pytest.approx(kept.costs.backward_weight[st] + extra, rel=1e-9)
        assert full.costs.forward[st] == pytest.approx(kept.costs.forward[st], rel=1e-9)
        assert layers > 0 and full.recompute[st] > 0
