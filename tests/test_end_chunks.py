"""End chunks: a first virtual stage that holds only the embedding and a last that holds only the head (pp * vpp up
to layers + 2): the rule, its costing, and the solvers choosing such chunks when the head is heavy."""
import dataclasses
import itertools

import pytest

from autoconf.errors import UserError
from autoconf.spec.plan import ParallelConfig, Plan, max_pipeline_stages, min_stage_layers, uniform_partition
from autoconf.spec.presets import PRESETS
from autoconf.solve.partition import PartitionProblem, brute_force_partition, solve_partition
from autoconf.spec.schedules import loop_stage_to_rank


def test_rule_allows_only_the_end_stages_to_hold_no_layer():
    assert max_pipeline_stages(126) == 128  # Llama 3 405B: PP16 x 8 chunks, one layer per middle chunk
    assert [min_stage_layers(s, 4) for s in range(4)] == [0, 1, 1, 0]
    assert min_stage_layers(0, 1) == 1  # a single stage holds every layer


def _plan(partition, pp, vpp, schedule, layers=4) -> Plan:
    model = dataclasses.replace(PRESETS["tiny-llama"], num_layers=layers)
    config = ParallelConfig(tp=1, pp=pp, dp=1, vpp=vpp, micro_batch_size=1, global_batch_size=8, seq_len=32,
                            schedule=schedule, dtype="fp32")
    return Plan(model=model, cluster={"name": "t", "nodes": 1, "gpus_per_node": pp}, config=config,
                partition=partition, placement={"mesh": [[[r]] for r in range(pp)]})


def test_plan_accepts_end_chunks_and_refuses_an_empty_middle_stage():
    _plan([[0, 0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 4]], 2, 3, "interleaved-1f1b").validate()
    with pytest.raises(UserError, match="stage 1 is \\[1, 1\\]"):
        _plan([[0, 1], [1, 1], [1, 4], [4, 4]], 2, 2, "interleaved-1f1b").validate()
    with pytest.raises(UserError, match="at most layers \\+ 2"):
        _plan(uniform_partition(4, 6) + [[4, 4], [4, 4]], 2, 4, "interleaved-1f1b").validate()


def test_search_space_offers_layers_plus_two_stages():
    from autoconf.solve.space import candidates

    model = dataclasses.replace(PRESETS["tiny-llama"], num_layers=2)
    stages = {c.num_stages for c in candidates(model, 4, 4, 8, 32, "fp32", fixed={"tp": 1})}
    assert 4 in stages and max(stages) == 4


def test_cp_sat_gives_a_heavy_head_its_own_stage():
    """Six unit layers and a head worth three over four stages: the head alone on the last stage (bottleneck 3)
    beats every split that gives it a layer (at least 4); CP-SAT and the brute force agree."""
    time = (0.1e-3,) + (1e-3,) * 6 + (3e-3,)
    problem = PartitionProblem(time, (1.0,) * 8, (0.0,) * 8, loop_stage_to_rank(4), (4, 3, 2, 1), 1e18, 16)
    solved = solve_partition(problem)
    assert solved.layer_ranges()[-1] == [6, 6]
    assert solved.objective_s == pytest.approx(brute_force_partition(problem).objective_s, rel=1e-6)


def _setup(layers, gpus=4):
    from autoconf.cost.estimate import Execution, predict
    from autoconf.spec.cluster import load_cluster

    model = dataclasses.replace(PRESETS["llama3-8b"], num_layers=layers)
    cluster = load_cluster("dgx-h100-80g", nodes=1).resized(gpus_per_node=gpus)
    return model, cluster, Execution(), predict


def test_an_empty_stage_costs_exactly_its_embedding_or_head():
    """The estimate's compute, TP and memory of a layer-free end stage are the embedding's or the head's terms."""
    from autoconf.cost.compute import model_pieces
    from autoconf.cost.estimate import stage_plan
    from autoconf.cost.memory import stage_memory, stage_params, state_bytes_per_param
    from autoconf.spec.grid import RankGrid
    from autoconf.spec.schedules import stage_to_rank

    model, cluster, execution, _ = _setup(4)
    c = ParallelConfig(tp=1, pp=4, dp=1, vpp=1, micro_batch_size=1, global_batch_size=8, seq_len=2048,
                       schedule="1f1b", dtype="bf16")
    partition = [[0, 0], [0, 2], [2, 4], [4, 4]]
    placement = stage_to_rank(c.schedule, c.pp, c.vpp)
    sp = stage_plan(model, cluster, c, partition, placement, RankGrid([[[r]] for r in range(4)]), execution)
    pieces = model_pieces(model, cluster, c)
    assert sp.compute[0] == pieces.embedding and sp.compute[3] == pieces.head
    assert sp.recompute[0] == sp.recompute[3] == 0.0
    assert stage_params(model, partition, 0) == model.embedding_params()
    assert stage_params(model, partition, 3) == model.head_params()
    memory = stage_memory(model, cluster, c, partition, placement, (4, 3, 2, 1))
    assert memory[0]["activations"] == 0.0  # no dropout: the embedding keeps nothing
    assert memory[3]["activations"] > 0.0  # the head's inputs
    weights, _, optimizer, copy = state_bytes_per_param(c, "torch")
    for stage, params in ((0, model.embedding_params()), (3, model.head_params())):
        assert memory[stage]["params"] == params * (weights + copy)
        assert memory[stage]["optimizer"] == params * optimizer


def _all_partitions(layers, stages):
    for inner in itertools.combinations(range(1, layers + 2), stages - 1):
        cuts = [0, *inner, layers + 2]
        yield [[max(a, 1) - 1, min(b, layers + 1) - 1] for a, b in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("layers,pp,vpp,schedule", [(6, 4, 1, "1f1b"), (6, 2, 4, "interleaved-1f1b")])
def test_planner_gives_a_128k_vocabulary_head_its_own_chunk(layers, pp, vpp, schedule):
    """Llama 3 8B's 128k-vocabulary head is worth about five layers: the estimate-scored refinement ends the
    pipeline with a head-only chunk, and its step time is the best of every partition under the same estimate
    (at pp * vpp = layers + 2 the only partition has both end chunks)."""
    from autoconf.solve.refine import refined_partition_by_estimate

    model, cluster, execution, predict = _setup(layers, pp)
    c = ParallelConfig(tp=1, pp=pp, dp=1, vpp=vpp, micro_batch_size=1, global_batch_size=8, seq_len=2048,
                       schedule=schedule, dtype="bf16")

    def score(partition):
        p = predict(model, cluster, c, partition=partition, execution=execution, detail=False)[3]
        return p["iteration_time_s"] if p["fits"] else float("inf")

    partition, refined = refined_partition_by_estimate(model, cluster, c, execution, time_limit_s=0.2)
    partition = partition or uniform_partition(layers, c.num_stages)
    assert partition[-1] == [layers, layers]
    if c.num_stages == layers + 2:
        assert partition[0] == [0, 0]
    assert refined == min(score(p) for p in _all_partitions(layers, c.num_stages))


def test_search_returns_a_plan_with_end_chunks():
    """The planner itself, pinned to pp 4 (1F1B) and to pp 2 x vpp 4 = layers + 2 (interleaved 1F1B), returns
    plans whose last chunk is Llama 3's 128k-vocabulary head alone, and whose first is the embedding alone at
    layers + 2."""
    from autoconf.solve.search import search

    model, cluster, _, _ = _setup(6)
    plan = search(model, cluster, 8, 2048, "bf16", fixed={"tp": 1, "pp": 4, "schedule": "1f1b", "mb": 1,
                                                          "recompute": "none"}, top_k=1).plans[0]
    assert plan.partition[-1] == [6, 6]
    plan = search(model, cluster.resized(gpus_per_node=2), 8, 2048, "bf16",
                  fixed={"tp": 1, "pp": 2, "vpp": 4, "schedule": "interleaved-1f1b", "mb": 1, "recompute": "none"},
                  top_k=1).plans[0]
    assert plan.config.num_stages == 8 and plan.partition[0] == [0, 0] and plan.partition[-1] == [6, 6]
