"""The partition's memory is the estimate's: for random small layouts (uneven splits, MoE, recompute, offload,
context parallelism, seq1f1b's chunk scales, three frameworks' layouts) a rank's bytes in the CP-SAT model under a
split equal the estimate's peak for that split, and CP-SAT still finds the brute force's optimum of its model."""
import dataclasses
import functools
import itertools
import random

import pytest

from autoconf.cost.estimate import PRESETS as FRAMEWORKS, predict
from autoconf.errors import UserError
from autoconf.solve.partition import MEMORY_QUANTUM_BYTES, evaluate_partition, solve_partition
from autoconf.solve.refine import partition_problem
from autoconf.spec.cluster import load_cluster
from autoconf.spec.plan import ParallelConfig, min_stage_layers
from autoconf.spec.presets import PRESETS
from test_partition import solve_like_brute_force

_MIXTRAL = PRESETS["mixtral-8x7b"]
_MODELS = {
    "llama3.1-8b": PRESETS["llama3.1-8b"],
    "gpt3-1.3b": PRESETS["gpt3-1.3b"],
    # an MoE model whose first layer is dense: the "moe" fact depends on the split
    "mixtral-dense-first": dataclasses.replace(_MIXTRAL, moe=dataclasses.replace(_MIXTRAL.moe, first_k_dense=1)),
}
_SCHEDULES = [("1f1b", 1, 1), ("gpipe", 1, 1), ("interleaved-1f1b", 2, 1), ("zbv", 2, 1), ("zb-h1", 1, 1),
              ("seq1f1b", 1, 2), ("seq1f1b", 1, 4)]


def _random_case(rng: random.Random):
    """(model, cluster, config, execution) drawn from the space above; the config may be one the estimate refuses."""
    name = rng.choice(sorted(_MODELS))
    layers = rng.randint(4, 7)
    model = dataclasses.replace(_MODELS[name], num_layers=layers)
    schedule, vpp, chunks = rng.choice(_SCHEDULES)
    pp = rng.randint(2, 2 if vpp > 1 or layers < 6 else 3)
    tp, cp = rng.choice([1, 2]), rng.choice([1, 1, 2])
    dp = rng.choice([1, 2])
    moe = model.moe is not None
    ep = rng.choice([1, 2]) if moe and dp * cp * tp >= 2 else 1
    recompute = rng.choice(["none", "selective", "full"])
    stages = pp * vpp
    recompute_layers = None
    if recompute != "none" and rng.random() < 0.5:
        recompute_layers = tuple(rng.randint(0, 1) for _ in range(stages))
    microbatches = rng.choice([1, pp, 2 * pp, 3 * pp])
    config = ParallelConfig(
        tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, vpp=vpp, schedule=schedule, micro_batch_size=1,
        global_batch_size=microbatches * dp, seq_len=2048, dtype="bf16", zero_stage=rng.choice([0, 1, 2, 3]),
        recompute=recompute, recompute_layers=recompute_layers, sequence_parallel=tp > 1 and rng.random() < 0.5,
        offload_activations=rng.random() < 0.3, offload_optimizer=rng.random() < 0.3,
        cp_comm=rng.choice(["ring", "allgather"]), seq_chunks=chunks,
        seq_split=rng.choice(["even", "work"]) if chunks > 1 else "even")
    cluster = load_cluster("dgx-h100-80g", nodes=1).resized(gpus_per_node=config.world_size)
    return model, cluster, config, FRAMEWORKS[rng.choice(["autoconf", "megatron", "megatron-core"])]


def _random_split(rng: random.Random, layers: int, stages: int) -> list[list[int]]:
    """A random valid split (`min_stage_layers`) of `layers` layers over `stages` stages."""
    while True:
        cuts = sorted(rng.randint(0, layers) for _ in range(stages - 1))
        bounds = [0, *cuts, layers]
        split = [[bounds[s], bounds[s + 1]] for s in range(stages)]
        if all(b - a >= min_stage_layers(s, stages) for s, (a, b) in enumerate(split)):
            return split


def _units(split: list[list[int]], layers: int) -> tuple[tuple[int, int], ...]:
    """A layer split's unit ranges (unit 0 the embedding, L + 1 the head)."""
    bounds = [0] + [end + 1 for _, end in split[:-1]] + [layers + 2]
    return tuple((bounds[s], bounds[s + 1]) for s in range(len(split)))


@functools.lru_cache(maxsize=1)
def _cases(count: int = 16, seed: int = 0):
    """`count` random cases the estimate accepts, each with its estimate for a uniform and a random split (drawn
    once, when the first test asks)."""
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        model, cluster, config, execution = _random_case(rng)
        splits = [None, _random_split(rng, model.num_layers, config.num_stages)]
        try:  # (a split that leaves a stage fewer layers than its recompute count is refused too)
            predictions = [predict(model, cluster, config, partition=s, execution=execution, detail=False)
                           for s in splits]
        except (UserError, ValueError):
            continue
        out.append((model, cluster, config, execution, [(p[1], p[3]) for p in predictions]))
    return tuple(out)


_COUNT = 16


def _bound_only(model, config: ParallelConfig, execution, split) -> bool:
    """Where `partition_problem` is an upper bound, not equal (its docstring): FSDP's buffers of a stage with fewer
    than two blocks (sharded or one-rank units) or, of an MoE model under ZeRO-1/2, ending in either kind of
    block, the gradients of a rank of several chunks whose reductions torch's runtime defers (the chunks reduce one
    after another), and one micro-batch per step under seq1f1b's work split, in the torch layout."""
    if execution.memory_layout != "torch":
        return False
    from autoconf.cost.memory import holds_unsharded_grads

    several_chunks = config.num_stages > config.pp and holds_unsharded_grads(config)
    return ((config.num_microbatches == 1 and config.seq_split == "work") or any(b - a < 2 for a, b in split)
            or (model.moe is not None and config.zero_sharded and config.zero_stage < 3) or several_chunks)


@pytest.mark.parametrize("index", range(_COUNT))
def test_the_partition_counts_the_estimates_bytes_per_rank(index):
    """For the uniform and a random split, each rank's bytes in the partition's model (what its limit leaves out
    plus `evaluate_partition`'s) equal the estimate's total within a millionth, or, in the two rules where the
    model is an upper bound, are at least the estimate's."""
    model, cluster, config, execution, predicted = _cases()[index]
    problem = partition_problem(model, cluster, config, execution)
    for split, prediction in predicted:
        mine = evaluate_partition(problem, _units(split, model.num_layers)).rank_memory_bytes
        mine = [m + cluster.usable_memory_bytes - lim for m, lim in zip(mine, problem.limits())]
        theirs = [m["total"] for m in prediction["memory_per_stage"]]
        if _bound_only(model, config, execution, split):
            assert all(a >= b * (1 - 1e-9) for a, b in zip(mine, theirs)), (config, split)
        else:
            assert mine == pytest.approx(theirs, rel=1e-6), (config, split)


def test_the_cases_reach_every_term():
    """The random cases hold the terms the partition reads: MoE with a dense layer, recompute (per stage too),
    offload of activations and of the optimizer, context parallelism, seq1f1b and every framework's layout."""
    configs = [case[2] for case in _cases()]
    assert any(c.offload_activations for c in configs) and any(c.offload_optimizer for c in configs)
    assert any(c.recompute == "full" for c in configs) and any(c.recompute_layers for c in configs)
    assert any(c.cp > 1 for c in configs) and any(c.seq_chunks > 1 for c in configs)
    assert any(c.ep > 1 for c in configs)
    assert {case[3].memory_layout for case in _cases()} == {"torch", "megatron"}


@pytest.mark.parametrize("index", range(0, _COUNT, 3))
def test_cp_sat_finds_the_brute_force_optimum_with_the_estimates_terms(index):
    """With every rank's limit set between the smallest and the time-optimal peak (so memory binds), CP-SAT's
    objective is the brute force's on the same model, temporaries and their facts included."""
    model, cluster, config, execution, _ = _cases()[index]
    problem = partition_problem(model, cluster, config, execution)
    loose = dataclasses.replace(problem, memory_limit_bytes=1e18)
    fastest = solve_like_brute_force(loose)
    peak = max(fastest.rank_memory_bytes)
    smallest = min(max(evaluate_partition(loose, _units(_random_split(random.Random(k), model.num_layers,
                                                                       problem.num_stages), model.num_layers))
                       .rank_memory_bytes) for k in range(20))
    binding = dataclasses.replace(problem, memory_limit_bytes=(peak + smallest) / 2 if smallest < peak else peak)
    solve_like_brute_force(binding)


@pytest.mark.parametrize("seed", range(12))
def test_cp_sat_models_the_largest_temporary_whose_facts_hold(seed):
    """On random chains with random temporaries (each under up to two facts, some negated), MoE units, per-stage
    recompute counts, one backward every other seed, and several stages per rank (loop and V placements), with a
    limit that binds, CP-SAT's objective is the brute force's: the maximum over the terms whose facts hold, and
    the larger of gradients and transient bytes, are modelled exactly."""
    from autoconf.cost.memory import TEMPORARY_FACTS, Temporary
    from autoconf.spec.schedules import loop_stage_to_rank, v_stage_to_rank
    from test_partition import _random_problem, _stages

    rng = random.Random(seed)
    v_shape = seed % 3 == 2
    pp = 2 if v_shape else rng.randint(2, 3)
    vpp = 2 if v_shape else rng.randint(1, 2)
    stages = 2 * pp if v_shape else pp * vpp
    layers = rng.randint(stages, 8)
    base = _random_problem(rng, layers, pp, vpp, v_shape)
    def facts():
        return tuple(rng.choice(["", "!"]) + f for f in rng.sample(TEMPORARY_FACTS, rng.randint(0, 2)))

    temporaries = tuple(Temporary(rng.uniform(1, 12) * 2**30, facts()) for _ in range(rng.randint(1, 4)))
    problem = dataclasses.replace(
        base, temporaries=temporaries, moe_units=tuple(u for u in range(1, layers + 1) if rng.random() < 0.25),
        unit_recompute_time=tuple(rng.uniform(0, 1e-3) * (1 <= u <= layers) for u in range(layers + 2)),
        unit_recompute_saved_bytes=tuple(rng.uniform(0, 1) * 2**30 * (1 <= u <= layers) for u in range(layers + 2)),
        recompute_counts=tuple(rng.randint(0, 3) for _ in range(stages)) if rng.random() < 0.7 else None)
    if seed % 2:  # one backward: the gradients (a share of the static bytes) against the transient bytes
        problem = dataclasses.replace(problem, unit_gradient_bytes=tuple(b * rng.uniform(0.2, 0.6)
                                                                         for b in problem.unit_static_bytes),
                                      rank_gradient_bytes=tuple(rng.uniform(0, 4) * 2**30 for _ in range(pp)))
    placement = v_stage_to_rank(pp) if v_shape else loop_stage_to_rank(pp, vpp)
    assert problem.stage_to_rank == placement
    solve_like_brute_force(problem)
    # Limits at the median of every partition's peak: half the partitions fit.
    peaks = sorted(max(evaluate_partition(problem, _stages(inner, layers)).rank_memory_bytes)
                   for inner in itertools.combinations(range(1, layers + 2), stages - 1))
    solve_like_brute_force(dataclasses.replace(problem, memory_limit_bytes=peaks[len(peaks) // 2] * 1.0001))


@pytest.mark.parametrize("index", range(0, _COUNT, 2))
def test_a_device_the_uniform_split_just_fits_gets_a_partition_that_fits(index):
    """On a device whose usable memory is the uniform split's predicted peak, the partition finds a split (the
    uniform one fits its model too) and the estimate says the split it returns fits: the model neither refuses a
    split that fits nor accepts one that does not."""
    model, cluster, config, execution, predicted = _cases()[index]
    (uniform, prediction), _ = predicted
    if _bound_only(model, config, execution, uniform):
        return
    # (CP-SAT reads bytes in MEMORY_QUANTUM_BYTES steps, each term of a rank rounded up: a few KiB of slack per
    # rank, so a split within that of the limit is not refused for the rounding)
    usable = prediction["peak_memory_bytes"] * (1 + 1e-7) + 4 * (model.num_layers + 2) * MEMORY_QUANTUM_BYTES
    device = dataclasses.replace(cluster.device, memory_bytes=usable / (1 - float(cluster.memory_headroom["value"])))
    tight = dataclasses.replace(cluster, device=device)
    solved = solve_partition(partition_problem(model, tight, config, execution), time_limit_s=2.0)
    assert solved is not None, config
    split = solved.layer_ranges()
    assert predict(model, tight, config, partition=split, execution=execution, detail=False)[3]["fits"], (config, split)


@pytest.mark.parametrize("schedule,vpp,zero,recompute", [("gpipe", 1, 0, "none"), ("gpipe", 1, 3, "full"),
                                                          ("interleaved-1f1b", 2, 1, "selective")])
def test_one_backward_counts_the_larger_of_gradients_and_activations(schedule, vpp, zero, recompute):
    """With one micro-batch per step in the executor's layout the gradients come into existence as the activations
    go (`memory.stage_memory`): the partition's bytes per rank are still the estimate's, for the uniform split and
    every other one, whichever of the two is larger on a rank."""
    model = dataclasses.replace(PRESETS["llama3.1-8b"], num_layers=6)
    config = ParallelConfig(tp=1, pp=2, dp=2, vpp=vpp, schedule=schedule, micro_batch_size=1, global_batch_size=2,
                            seq_len=8192, dtype="bf16", zero_stage=zero, recompute=recompute)
    cluster = load_cluster("dgx-h100-80g", nodes=1).resized(gpus_per_node=config.world_size)
    execution = FRAMEWORKS["autoconf"]
    problem = partition_problem(model, cluster, config, execution)
    assert problem.unit_gradient_bytes is not None
    for split in ([[0, 3], [3, 6]], [[0, 1], [1, 6]], [[0, 5], [5, 6]]) if vpp == 1 else (
            [[0, 2], [2, 3], [3, 5], [5, 6]], [[0, 1], [1, 2], [2, 3], [3, 6]]):
        if _bound_only(model, config, execution, split):
            continue
        prediction = predict(model, cluster, config, partition=split, execution=execution, detail=False)[3]
        mine = evaluate_partition(problem, _units(split, model.num_layers)).rank_memory_bytes
        mine = [m + cluster.usable_memory_bytes - lim for m, lim in zip(mine, problem.limits())]
        assert mine == pytest.approx([m["total"] for m in prediction["memory_per_stage"]], rel=1e-6), split
