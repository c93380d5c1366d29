"""Recompute per pipeline stage: the fewest layers of each stage that recompute, given the stage partition.

A config's `recompute` mode (selective or full) applies to the first `recompute_layers[s]` transformer layers of
virtual stage s (Megatron's --recompute-method block); the other layers keep their activations. Early 1F1B ranks
hold more micro-batches in flight than late ones, so they need more of their layers recomputed to fit.

Why the fewest that fit is the fastest (one stage per pipeline rank). Given the partition, the schedule and every
other field of the config:
- the memory of pipeline rank r depends on its own stage's count k only (`cost/memory.stage_memory`: the rank's
  activations are inflight[s] x (k x recomputed layer + (n - k) x plain layer), everything else is fixed), and for
  k >= 1 it does not grow with k (a recomputed layer keeps no more than a plain one; the one-layer temporary of full
  recompute is there for every k >= 1). k = 0 drops that temporary too, so memory(0) may lie below memory(1):
  the fewest count that fits is 0 if 0 fits, else the least k >= 1 that fits (found by bisection);
- the time only grows with k: recompute adds `recompute_time` per recomputed layer to the stage's backward pass,
  and a simulated step (a fixed order of passes, each starting when its inputs and its rank are free) never ends
  earlier when a pass gets longer.
So the vector of per-stage minima fits and is, stage by stage, at or below any other fitting vector: no fitting
choice is faster. tests/test_recompute.py checks it against every count vector on small cases.

One exception, where the time is not monotone in the counts: under the executor's per-op selective policy with
context parallelism, counts of 0 run torch's ring attention (the plain step) and any count above 0 the executor's own
CP attention in every block (`frameworks.executor_torch_cp`), which may be the faster of the two. There the fewest
counts, if all 0, are the layout without recompute (its own candidate), and the search weighs the fastest way to
switch instead: one recomputed layer, in the stage where the estimate's step is shortest (`fewest_recomputed`).

With several stages per rank (interleaved and V schedules) a rank's memory is a sum over its stages, each
recomputed layer of stage s saving inflight[s] x (plain - recomputed) bytes: the least total count that fits takes
layers from the stages with the most micro-batches in flight first (the greedy choice is optimal for the count,
every layer costing the same time). The rank's busy time is the same for every split of that total; which stage
carries it may move the bubble, which the search does not weigh: the refinement of its top plans moves recomputed
layers between a rank's stages while the estimate says the step gets shorter (`rebalanced`; 0.2-2% on the cases a
search audit found).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from autoconf.cost.cp_ring import recompute_leaves_ring
from autoconf.cost.estimate import Execution, predict, schedule_inflight
from autoconf.cost.memory import RankMemory
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.frameworks import selective_policy
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.schedules import stage_to_rank


def fewest_recomputed(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list,
                      execution: Execution = Execution()) -> ParallelConfig | None:
    """`config` with `recompute_layers` set to the fewest layers per virtual stage of `partition` that fit the
    usable memory of every rank (the module docstring says why that is fastest), or None when even every layer
    recomputed does not fit. The counts are None again when every layer recomputes, and a config that needs no
    recompute at all comes back with recompute "none", unless its policy with a count above 0 takes the attention
    off torch's context-parallel ring (`cp_ring.torch_ring`: the executor's per-op policy runs its own CP attention
    in every block; counts of 0 run the ring, the layout without recompute): then it comes back with one layer
    recomputed, in the stage where it costs least (`_cheapest_switch`; the module docstring says why).
    A config without recompute comes back unchanged."""
    c = dataclasses.replace(config, recompute_layers=None)
    if c.recompute == "none":
        return config
    counts = fewest_counts(model, cluster, c, partition, execution)
    if counts is None:
        return None
    if not any(counts):
        if not recompute_leaves_ring(model, c, execution):
            return dataclasses.replace(c, recompute="none")
        # (counts of 0 are the layout without recompute, weighed apart; one layer recomputed switches the
        # attention off torch's ring)
        return _cheapest_switch(model, cluster, c, partition, execution)
    if list(counts) == [end - first for first, end in partition]:
        return c
    return dataclasses.replace(c, recompute_layers=counts)


def _cheapest_switch(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list,
                     execution: Execution) -> ParallelConfig:
    """`config` with one layer recomputed, in the stage of `partition` where the estimate's step is shortest (the
    recompute lengthens that stage's backward, whose place on the critical path the schedule decides: on a rank-0
    stage 2.3% shorter than on the last under zb-h1, a search audit measured); the first such stage on a tie."""
    stages = len(partition)
    options = [dataclasses.replace(config, recompute_layers=tuple(int(s == k) for s in range(stages)))
               for k in range(stages) if partition[k][1] > partition[k][0]]
    if len(options) == 1:
        return options[0]
    return min(options, key=lambda o: predict(model, cluster, o, partition=partition, execution=execution,
                                              detail=False, extrapolate=True)[3]["iteration_time_s"])


def fewest_counts(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list,
                  execution: Execution = Execution(), ranks: list[int] | None = None) -> tuple[int, ...] | None:
    """The fewest recomputed layers of each virtual stage of `partition` that fit (`fewest_recomputed`'s counts),
    of the stages of pipeline `ranks` (default all; the other stages read 0), or None when one of those ranks does
    not fit with every layer recomputed. A rank's memory reads its own count only, so its counts are the same
    whichever ranks are asked: those of some ranks are a lower bound, stage by stage, of the counts of all."""
    c = dataclasses.replace(config, recompute_layers=None)
    owner = stage_to_rank(c.schedule, c.pp, c.vpp)
    # One rank's in-flight counts read its own order only (cheaper than every rank's for a wide pipeline).
    one = (ranks[0],) if ranks is not None and len(ranks) == 1 else ()
    inflight = schedule_inflight(c.schedule, c.pp, c.vpp, c.num_microbatches, *one, seq_chunks=c.seq_chunks)
    limit = cluster.usable_memory_bytes
    layers = [end - first for first, end in partition]
    # Each rank's stages in the order they take recomputed layers: most micro-batches in flight first; as model
    # stages (dualpipe's copy s of model stage s % n: the mirror ranks r and pp-1-r hold the same two model stages
    # in the same roles, so they choose the same counts).
    n = len(partition)
    order = {r: [s % n for s in sorted((s for s in range(len(owner)) if owner[s] == r),
                                       key=lambda s: (-inflight[s], s))]
             for r in (range(c.pp) if ranks is None else ranks)}
    most = {r: sum(layers[s] for s in order[r]) for r in order}

    def counts_of(totals: dict[int, int]) -> tuple[int, ...]:
        counts = [0] * n
        for r, total in totals.items():
            for s in order[r]:
                counts[s] = min(layers[s], total)
                total -= counts[s]
        return tuple(counts)

    memory = RankMemory(model, cluster, c, partition, owner, inflight, execution.memory_layout,
                        selective_policy(c, execution), execution)

    def fits(totals: dict[int, int]) -> dict[int, bool]:
        """Whether each rank of `totals` fits with that many recomputed layers (its memory reads its own only)."""
        ranks = list(totals)
        return {r: m["total"] <= limit for r, m in zip(ranks, memory.of(counts_of(totals), ranks))}

    chosen = {r: 0 for r, ok in fits({r: 0 for r in order}).items() if ok}
    if len(chosen) == len(order):
        return counts_of(chosen)
    if not all(fits({r: most[r] for r in order if r not in chosen}).values()):
        return None
    # Bisection on the ranks that need recompute: the least total >= 1 that fits lies in (low, high].
    low = {r: 0 for r in order if r not in chosen}
    high = {r: most[r] for r in low}
    while True:
        for r in [r for r in low if high[r] - low[r] <= 1]:
            chosen[r] = high[r]
            del low[r], high[r]
        if not low:
            break
        probe = {r: (low[r] + high[r]) // 2 for r in low}  # strictly between: high - low >= 2
        for r, ok in fits(probe).items():
            if ok:
                high[r] = probe[r]
            else:
                low[r] = probe[r]
    return counts_of(chosen)


# The least relative gain a move of `rebalanced` takes: below it, two steps differ by float rounding only.
MOVE_GAIN = 1e-9


def rebalanced(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list,
               mesh: np.ndarray | None, execution: Execution = Execution()) -> ParallelConfig:
    """`config` with its recomputed layers moved one at a time between stages of one pipeline rank, each time the
    move that shortens the step most while the plan fits, until no move shortens it.
    Moves are scored by the extrapolated estimate (the search's: never below the full simulation, and cheap where
    micro-batches are many); the result is kept where the full estimate says it is faster than `config`, which
    comes back unchanged otherwise, or when its counts are None or each rank holds one stage. Each rank keeps its
    total count (so its busy time). Deterministic: moves are tried in a fixed order and only a step shorter by
    more than MOVE_GAIN (float noise moves no layer) is taken. The caller bounds the work: a sweep scores every
    move, up to S * (S - 1) of S stages."""
    @functools.cache  # (a move and its reverse meet the same counts again)
    def step(counts: tuple[int, ...], extrapolate: bool = True) -> float:
        p = predict(model, cluster, dataclasses.replace(config, recompute_layers=counts), partition=partition,
                    mesh=mesh, execution=execution, detail=False, extrapolate=extrapolate)[3]
        return p["iteration_time_s"] if p["fits"] else math.inf

    n, layers = len(partition), [end - first for first, end in partition]
    owner = stage_to_rank(config.schedule, config.pp, config.vpp)
    # (dualpipe's copy s is model stage s % n; its mirror ranks hold the same two model stages)
    pairs = sorted({(a % n, b % n) for a in range(len(owner)) for b in range(len(owner))
                    if owner[a] == owner[b] and a % n != b % n})
    if config.recompute_layers is None or not pairs:
        return config
    start = counts = tuple(config.recompute_layers)
    best_time = step(counts)
    while True:
        found = None
        for a, b in pairs:
            if counts[a] == 0 or counts[b] == layers[b]:
                continue
            moved = tuple(k - (s == a) + (s == b) for s, k in enumerate(counts))
            t = step(moved)
            if t < (best_time if found is None else found[0]):
                found = (t, moved)
        if found is None or found[0] >= best_time * (1 - MOVE_GAIN):
            break
        best_time, counts = found
    if counts == start or step(counts, False) >= step(start, False) * (1 - MOVE_GAIN):
        return config
    return dataclasses.replace(config, recompute_layers=counts)
