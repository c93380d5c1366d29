"""Split a chain of costed units into contiguous (virtual) pipeline stages with CP-SAT.

Units are in model order: unit 0 is the embedding, units 1..L the transformer layers and unit L+1 the final
norm + LM head + loss. There are S = pp * vpp virtual stages; ``stage_to_rank[s]`` is the pipeline rank that holds
stage s (loop placement ``s % pp``, or V placement where rank r holds stages r and 2pp-1-r).

Rules (`autoconf.spec.plan.min_stage_layers`): the embedding is on stage 0, the head unit on stage S-1, every
other stage holds at least one transformer layer and stages are contiguous in unit order; stage 0 may hold the
embedding alone and stage S-1 the head alone. So every stage holds at least one unit, and S <= L + 2.

Objective (the standard pipeline approximation of the critical path)::

    T = sum_s w_s * stage_time[s] + (m - 1) * max_r rank_time[r],   rank_time[r] = sum of its stages' times

one micro-batch walks through every stage once, and the other m-1 micro-batches queue behind the busiest rank.
With the default weights w_s = 1 the first term is the total chain time, a constant, so the solver minimises the
busiest rank. A caller can pass other ``stage_weight`` / ``bottleneck_weight`` values.

Memory: for every rank r,
``sum over its stages of (static + inflight[s] * scale[r] * activation) + temporary[r] <= limit[r]``, where
``scale[r]`` (`activation_scale`, default 1) is what the rank's in-flight activations weigh against the units' own:
seq1f1b's uneven chunks (`autoconf.cost.memory.seq_chunk_scales`, the one source of that rule); ``inflight[s]``
may be fractional (the estimate's `stage_inflight`); and ``temporary[r]`` is the largest of the `temporaries`
(`autoconf.cost.memory.Temporary`) whose facts hold on rank r under the partition: it holds the last stage, one of
the `moe_units`, a recomputed unit, a layer it does not recompute. CP-SAT models that maximum exactly (one 0/1
indicator per fact and rank, equal to the OR of its units' literals), so the memory of a partition is the same
number in every solver here.

One backward (`unit_gradient_bytes` given: one micro-batch per step, where the gradients come into existence as
the activations go, `autoconf.cost.memory.stage_memory`): a rank's bytes are its static bytes less its units'
gradients plus the larger of (those gradients + `rank_gradient_bytes[r]`) and (its activations + temporary), so
two limits per rank in CP-SAT; `rank_gradient_bytes` are gradient buffers beyond the units, outside the limit
otherwise.

Recompute per stage (`recompute_counts`, the plan's `recompute_layers`; spec/plan.py `recomputed_layers` is the
rule): stage s recomputes its first ``recompute_counts[s]`` transformer layers (every layer when the counts are
None), each adding ``unit_recompute_time[u]`` to the stage's time and keeping ``unit_recompute_saved_bytes[u]``
less activation per micro-batch (`recomputed_units` is the one reading; the units' own time and activation are
those without recompute). Without the two per-unit tuples nothing recomputes.

Integer resolution. CP-SAT works on integers, so the data are quantised before solving (by every solver here,
the brute force included, so they decide on the same numbers):

- time: one quantum is total chain time / 2**20 (about one part per million of a step), each unit rounded to
  the nearest quantum;
- memory: KiB; unit usages are rounded up and limits down, so a plan the solver accepts also fits in bytes;
- weights: 1/1000 (integers are exact).

Reported objectives, stage times and memory are recomputed from the unrounded floats.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from autoconf.cost.memory import TEMPORARY_FACTS, Temporary
from autoconf.spec.plan import max_pipeline_stages, uniform_partition
from autoconf.spec.schedules import v_stage_to_rank

TIME_QUANTA = 1 << 20  # total chain time is split into this many integer time steps
MEMORY_QUANTUM_BYTES = 1024  # KiB
WEIGHT_SCALE = 1000


@dataclass(frozen=True)
class PartitionProblem:
    unit_time: tuple[float, ...]  # seconds per micro-batch, forward + backward, for units 0..L+1
    unit_static_bytes: tuple[float, ...]  # parameters + gradients + optimizer state
    unit_activation_bytes: tuple[float, ...]  # activations kept per micro-batch
    stage_to_rank: tuple[int, ...]  # one entry per virtual stage
    inflight: tuple[float, ...]  # micro-batches whose activations a stage holds at its rank's peak
    memory_limit_bytes: float | tuple[float, ...]  # one for all ranks or one per rank
    num_microbatches: int
    stage_weight: tuple[float, ...] | None = None  # weight of each stage in the path term; default 1
    bottleneck_weight: float | None = None  # weight of the busiest rank; default num_microbatches - 1
    unit_recompute_time: tuple[float, ...] | None = None  # seconds a recomputed unit adds per micro-batch
    unit_recompute_saved_bytes: tuple[float, ...] | None = None  # activation bytes a recomputed unit keeps less
    recompute_counts: tuple[int, ...] | None = None  # recomputed layers per stage; None: every layer
    activation_scale: tuple[float, ...] | None = None  # per rank: multiplies its activations and the recompute savings
    temporaries: tuple[Temporary, ...] = ()  # one at a time: a rank holds the largest whose facts hold on it
    moe_units: tuple[int, ...] = ()  # the units that make the "moe" fact of a rank that holds one
    unit_gradient_bytes: tuple[float, ...] | None = None  # one backward: the gradients within unit_static_bytes
    rank_gradient_bytes: tuple[float, ...] | None = None  # one backward: each rank's gradient buffers beyond them

    def __post_init__(self):
        n = len(self.unit_time)
        if len(self.unit_static_bytes) != n or len(self.unit_activation_bytes) != n:
            raise ValueError(f"unit_time, unit_static_bytes and unit_activation_bytes differ in length "
                             f"({n}, {len(self.unit_static_bytes)}, {len(self.unit_activation_bytes)})")
        if len(self.inflight) != self.num_stages:
            raise ValueError(f"inflight has {len(self.inflight)} entries for {self.num_stages} stages")
        if self.stage_weight is not None and len(self.stage_weight) != self.num_stages:
            raise ValueError(f"stage_weight has {len(self.stage_weight)} entries for {self.num_stages} stages")
        if sorted(set(self.stage_to_rank)) != list(range(self.num_ranks)):
            raise ValueError(f"stage_to_rank {self.stage_to_rank} must use every rank 0..{self.num_ranks - 1}")
        if not isinstance(self.memory_limit_bytes, (int, float)) and len(self.memory_limit_bytes) != self.num_ranks:
            raise ValueError(f"memory_limit_bytes has {len(self.memory_limit_bytes)} entries for "
                             f"{self.num_ranks} ranks")
        if self.num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {self.num_microbatches}")
        if self.num_stages > max_pipeline_stages(self.num_layers):
            raise ValueError(f"{self.num_layers} transformer layers cannot fill {self.num_stages} stages "
                             f"(at most layers + 2)")
        if (self.unit_recompute_time is None) != (self.unit_recompute_saved_bytes is None) or any(
                x is not None and len(x) != n for x in (self.unit_recompute_time, self.unit_recompute_saved_bytes)):
            raise ValueError(f"unit_recompute_time and unit_recompute_saved_bytes go together, {n} entries each")
        if self.activation_scale is not None and len(self.activation_scale) != self.num_ranks:
            raise ValueError(f"activation_scale has {len(self.activation_scale)} entries for {self.num_ranks} ranks")
        if self.recompute_counts is not None and len(self.recompute_counts) != self.num_stages:
            raise ValueError(f"recompute_counts has {len(self.recompute_counts)} entries for {self.num_stages} "
                             f"stages")
        if (self.unit_gradient_bytes is not None and len(self.unit_gradient_bytes) != n) or (
                self.rank_gradient_bytes is not None and len(self.rank_gradient_bytes) != self.num_ranks):
            raise ValueError(f"unit_gradient_bytes has {n} entries, rank_gradient_bytes one per rank")
        unknown = {w.lstrip("!") for t in self.temporaries for w in t.when} - set(TEMPORARY_FACTS)
        if unknown:
            raise ValueError(f"temporaries name unknown facts {sorted(unknown)} (known: {TEMPORARY_FACTS})")


    @property
    def num_layers(self) -> int:
        return len(self.unit_time) - 2

    @property
    def num_stages(self) -> int:
        return len(self.stage_to_rank)

    @property
    def num_ranks(self) -> int:
        return max(self.stage_to_rank) + 1

    def limits(self) -> tuple[float, ...]:
        if isinstance(self.memory_limit_bytes, (int, float)):
            return (float(self.memory_limit_bytes),) * self.num_ranks
        return tuple(float(x) for x in self.memory_limit_bytes)

    @property
    def recomputes(self) -> bool:
        return self.unit_recompute_time is not None

    def counts(self) -> tuple[int, ...]:
        """Recomputed layers per stage: none without recompute, every layer (L) when the counts are None."""
        if not self.recomputes:
            return (0,) * self.num_stages
        return self.recompute_counts if self.recompute_counts is not None else (self.num_layers,) * self.num_stages

    def recomputed_units(self, stage: int, first: int, end: int) -> range:
        """The units of `stage` = units [first, end) that recompute: its first `counts()[stage]` transformer layers
        (units 1..L; the embedding and the head never)."""
        start = max(first, 1)
        return range(start, max(start, min(end, self.num_layers + 1, start + self.counts()[stage])))

    def stage_scale(self, stage: int) -> float:
        """What an in-flight activation byte of `stage` weighs on its rank (`activation_scale`; 1 without)."""
        return 1.0 if self.activation_scale is None else float(self.activation_scale[self.stage_to_rank[stage]])

    def rank_facts(self, stages) -> list[dict[str, bool]]:
        """Each rank's facts (`Temporary`) under the partition `stages` ([first_unit, end_unit) per stage)."""
        facts = [dict.fromkeys(TEMPORARY_FACTS, False) for _ in range(self.num_ranks)]
        for s, (a, b) in enumerate(stages):
            self.add_stage_facts(facts[self.stage_to_rank[s]], s, a, b)
        return facts

    def add_stage_facts(self, facts: dict[str, bool], stage: int, first: int, end: int) -> None:
        """Adds to a rank's `facts` those that `stage` on units [first, end) makes hold."""
        rc = self.recomputed_units(stage, first, end)
        layers = range(max(first, 1), min(end, self.num_layers + 1))
        facts["last"] |= stage == self.num_stages - 1
        facts["moe"] |= any(first <= u < end for u in self.moe_units)
        facts["recomputes"] |= len(rc) > 0
        facts["keeps"] |= len(layers) > len(rc)

    def rank_temporary(self, facts: dict[str, bool], sizes=None) -> float:
        """The largest temporary whose facts hold (0 without any); `sizes`: the terms' sizes (default their
        bytes)."""
        sizes = [t.bytes for t in self.temporaries] if sizes is None else sizes
        return max([0, *(x for t, x in zip(self.temporaries, sizes) if t.holds(facts))])

    def rank_bytes(self, static: float, gradients: float, transient: float, rank: int,
                   rank_gradients: float | None = None) -> float:
        """A rank's bytes from its units' static bytes, the gradients among them and its activations plus
        temporary (`transient`): their sum, or under one backward the larger of the gradients (with the rank's
        gradient buffers: `rank_gradients`, default `rank_gradient_bytes`) and the transient bytes."""
        if self.unit_gradient_bytes is None:
            return static + transient
        if rank_gradients is None:
            rank_gradients = self.rank_gradient_bytes[rank] if self.rank_gradient_bytes is not None else 0.0
        return static - gradients + max(gradients + rank_gradients, transient)

    def weights(self) -> tuple[tuple[float, ...], float]:
        path = self.stage_weight if self.stage_weight is not None else (1.0,) * self.num_stages
        neck = self.bottleneck_weight if self.bottleneck_weight is not None else self.num_microbatches - 1
        return tuple(float(w) for w in path), float(neck)


@dataclass(frozen=True)
class PartitionResult:
    stages: tuple[tuple[int, int], ...]  # [first_unit, end_unit) per stage
    objective_s: float
    stage_time_s: tuple[float, ...]
    rank_memory_bytes: tuple[float, ...]
    optimal: bool

    def layer_ranges(self) -> list[list[int]]:
        """Per stage [first_layer, end_layer) in transformer-layer indices 0..L (embedding/head removed)."""
        num_layers = self.stages[-1][1] - 2
        return [[max(a, 1) - 1, min(b, num_layers + 1) - 1] for a, b in self.stages]


@dataclass(frozen=True)
class _Quantised:
    time: tuple[int, ...]
    static: tuple[int, ...]
    act: tuple[tuple[int, ...], ...]  # per stage, per unit: times the stage's in-flight count and its rank's
    # `activation_scale`
    limit: tuple[int, ...]
    path_w: tuple[int, ...]
    neck_w: int
    rc_time: tuple[int, ...]  # added by a recomputed unit
    rc_saved: tuple[tuple[int, ...], ...]  # per stage, as `act`: what a recomputed unit keeps less (rounded down:
    # usage stays rounded up)
    temp: tuple[int, ...]  # the temporaries, rounded up
    grad: tuple[int, ...]  # one backward: the units' gradients, rounded down (usage stays rounded up)
    rank_grad: tuple[int, ...]  # one backward: each rank's gradient buffers, rounded up


def _quantise(p: PartitionProblem) -> _Quantised:
    total = sum(p.unit_time)
    quantum = total / TIME_QUANTA if total > 0 else 1.0
    path, neck = p.weights()
    saved = p.unit_recompute_saved_bytes or (0.0,) * len(p.unit_time)
    scaled: dict[float, tuple] = {}  # (activations, savings) at each distinct weight, quantised once
    weights = [p.inflight[s] * p.stage_scale(s) for s in range(p.num_stages)]
    for x in weights:
        if x not in scaled:
            scaled[x] = (tuple(math.ceil(b * x / MEMORY_QUANTUM_BYTES) for b in p.unit_activation_bytes),
                         tuple(math.floor(b * x / MEMORY_QUANTUM_BYTES) for b in saved))
    per_stage = [scaled[x] for x in weights]
    return _Quantised(
        time=tuple(round(t / quantum) for t in p.unit_time),
        static=tuple(math.ceil(b / MEMORY_QUANTUM_BYTES) for b in p.unit_static_bytes),
        act=tuple(a for a, _ in per_stage),
        limit=tuple(math.floor(b / MEMORY_QUANTUM_BYTES) for b in p.limits()),
        path_w=tuple(round(w * WEIGHT_SCALE) for w in path),
        neck_w=round(neck * WEIGHT_SCALE),
        rc_time=tuple(round(t / quantum) for t in p.unit_recompute_time or (0.0,) * len(p.unit_time)),
        rc_saved=tuple(r for _, r in per_stage),
        temp=tuple(math.ceil(t.bytes / MEMORY_QUANTUM_BYTES) for t in p.temporaries),
        grad=tuple(math.floor(b / MEMORY_QUANTUM_BYTES) for b in p.unit_gradient_bytes or (0.0,) * len(p.unit_time)),
        rank_grad=tuple(math.ceil(b / MEMORY_QUANTUM_BYTES) for b in p.rank_gradient_bytes or (0.0,) * p.num_ranks),
    )


def _bounds_to_stages(bounds: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple((bounds[s], bounds[s + 1]) for s in range(len(bounds) - 1))


def evaluate_partition(p: PartitionProblem, stages, optimal: bool = False) -> PartitionResult:
    """Float objective, stage times and per-rank memory of a given partition (no feasibility check)."""
    path, neck = p.weights()
    rc_time = p.unit_recompute_time or (0.0,) * len(p.unit_time)
    rc_saved = p.unit_recompute_saved_bytes or (0.0,) * len(p.unit_time)
    recomputed = [p.recomputed_units(s, a, b) for s, (a, b) in enumerate(stages)]
    stage_time = tuple(sum(p.unit_time[a:b]) + sum(rc_time[u] for u in rc)
                       for (a, b), rc in zip(stages, recomputed))
    static, grads, transient = ([0.0] * p.num_ranks for _ in range(3))
    rank_time = [0.0] * p.num_ranks
    unit_grads = p.unit_gradient_bytes or (0.0,) * len(p.unit_time)
    for s, (a, b) in enumerate(stages):
        r = p.stage_to_rank[s]
        static[r] += sum(p.unit_static_bytes[a:b])
        grads[r] += sum(unit_grads[a:b])
        transient[r] += p.inflight[s] * p.stage_scale(s) * (
            sum(p.unit_activation_bytes[a:b]) - sum(rc_saved[u] for u in recomputed[s]))
        rank_time[r] += stage_time[s]
    if p.temporaries:
        for r, facts in enumerate(p.rank_facts(stages)):
            transient[r] += p.rank_temporary(facts)
    mem = [p.rank_bytes(*x, r) for r, x in enumerate(zip(static, grads, transient))]
    objective = sum(w * t for w, t in zip(path, stage_time)) + neck * max(rank_time)
    return PartitionResult(tuple(tuple(x) for x in stages), objective, stage_time, tuple(mem), optimal)


def _int_cost(p: PartitionProblem, q: _Quantised, stages) -> int | None:
    """Integer objective of a partition on the quantised data, or None when it breaks a memory limit."""
    held: list[list] = [[] for _ in range(p.num_ranks)]
    for s, (a, b) in enumerate(stages):
        held[p.stage_to_rank[s]].append((s, a, b))
    path, neck = 0, 0
    for r, own in enumerate(held):
        rank_time, rank_path, fits = _rank_int_cost(p, q, r, own)
        if not fits:
            return None
        path, neck = path + rank_path, max(neck, rank_time)
    return path + q.neck_w * neck


def _rank_int_cost(p: PartitionProblem, q: _Quantised, rank: int, own) -> tuple[int, int, bool]:
    """(time, path term, whether it fits its memory limit) of pipeline `rank` holding the stages `own`, as
    (stage, first unit, end unit) in stage order, on the quantised data: `_int_cost`'s rule for one rank."""
    static = grads = transient = rank_time = path = 0
    facts = dict.fromkeys(TEMPORARY_FACTS, False)
    for s, a, b in own:
        rc = p.recomputed_units(s, a, b)
        t = sum(q.time[a:b]) + sum(q.rc_time[u] for u in rc)
        path += q.path_w[s] * t
        rank_time += t
        static += sum(q.static[a:b])
        grads += sum(q.grad[a:b])
        transient += sum(q.act[s][a:b]) - sum(q.rc_saved[s][u] for u in rc)
        p.add_stage_facts(facts, s, a, b)
    if p.temporaries:
        transient += p.rank_temporary(facts, q.temp)
    return rank_time, path, p.rank_bytes(static, grads, transient, rank, q.rank_grad[rank]) <= q.limit[rank]


def _greedy_fill(p: PartitionProblem, q: _Quantised, budget: int) -> list[int] | None:
    """Walk the stages in order; each takes units while its rank stays within a fair share of ``budget`` time and
    of its memory limit (the rank's remainder split evenly over its stages still to come), less the largest
    temporary whatever its facts. None if the chain does not fit."""
    num_stages, num_units = p.num_stages, len(q.time)
    left = [p.stage_to_rank.count(r) for r in range(p.num_ranks)]
    time_left = [budget] * p.num_ranks
    mem_left = [lim - max([0, *q.temp]) - g for lim, g in zip(q.limit, q.rank_grad)]
    # The embedding and the head are pinned to the first and last stage: share only the rest evenly.
    fixed_t, fixed_m = [0] * num_stages, [0] * num_stages
    for s, u in ((0, 0), (num_stages - 1, num_units - 1)):
        fixed_t[s] += q.time[u]
        fixed_m[s] += q.static[u] + q.act[s][u]
    fixed_t_left, fixed_m_left = [0] * p.num_ranks, [0] * p.num_ranks
    for s in range(num_stages):
        fixed_t_left[p.stage_to_rank[s]] += fixed_t[s]
        fixed_m_left[p.stage_to_rank[s]] += fixed_m[s]
    bounds, a = [0], 0
    for s in range(num_stages):
        r = p.stage_to_rank[s]
        lo = a + 1  # at least one unit: a layer, or the embedding alone on stage 0
        hi = num_units - (num_stages - 1 - s)  # leave one unit for every later stage
        t_cap = (time_left[r] - fixed_t_left[r]) // left[r] + fixed_t[s]
        m_cap = (mem_left[r] - fixed_m_left[r]) // left[r] + fixed_m[s]
        fixed_t_left[r] -= fixed_t[s]
        fixed_m_left[r] -= fixed_m[s]
        b, t, m = a, 0, 0
        recomputed = p.recomputed_units(s, a, num_units)
        while b < hi:
            dt, dm = q.time[b], q.static[b] + q.act[s][b]
            if b in recomputed:
                dt, dm = dt + q.rc_time[b], dm - q.rc_saved[s][b]
            if b >= lo and (t + dt > t_cap or m + dm > m_cap):
                break
            b, t, m = b + 1, t + dt, m + dm
        if (s == num_stages - 1 and b < num_units) or t > time_left[r] or m > mem_left[r]:
            return None
        time_left[r] -= t
        mem_left[r] -= m
        left[r] -= 1
        bounds.append(b)
        a = b
    return bounds


def greedy_partition(p: PartitionProblem) -> tuple[tuple[int, int], ...]:
    """Bisect the smallest rank-time budget that ``_greedy_fill`` fits; used as the CP-SAT hint.

    Always structurally valid (embedding first, head last, >= 1 unit per stage). When no budget fits memory it
    falls back to the uniform split.
    """
    q = _quantise(p)
    lo, hi = 0, (sum(q.time) + sum(q.rc_time)) * p.num_stages
    best = _greedy_fill(p, q, hi)
    if best is None:
        layers = uniform_partition(p.num_layers, p.num_stages)
        return _bounds_to_stages([0] + [b + 1 for _, b in layers[:-1]] + [p.num_layers + 2])
    while lo < hi:
        mid = (lo + hi) // 2
        bounds = _greedy_fill(p, q, mid)
        if bounds is None:
            lo = mid + 1
        else:
            hi, best = mid, bounds
    return _bounds_to_stages(best)


class _OneStageRows:
    """Each stage's quantised time and whether it fits its rank's memory limit, for stage s on units [a, b) of
    every start a (numpy, a block of ends b at a time), where every rank holds one stage: the one memory and time
    rule of `_one_stage_per_rank_dp` and `_least_path` (that of `_int_cost` for a rank of one stage)."""

    def __init__(self, p: PartitionProblem, q: _Quantised):
        self.p, self.q = p, q
        self.time_pre = np.concatenate([[0], np.cumsum(q.time, dtype=np.int64)])
        self.static_pre = np.concatenate([[0], np.cumsum(q.static, dtype=np.int64)])
        self.rc_time_pre = np.concatenate([[0], np.cumsum(q.rc_time, dtype=np.int64)])
        self.grad_pre = np.concatenate([[0], np.cumsum(q.grad, dtype=np.int64)])
        self.starts = np.arange(len(q.time) + 1)
        self.first_layer = np.maximum(self.starts, 1)  # `recomputed_units`: a stage's first layers
        moe = np.zeros(len(q.time), dtype=np.int64)
        moe[list(p.moe_units)] = 1
        self.moe_pre = np.concatenate([[0], np.cumsum(moe)])
        self.facts_used = {w.lstrip("!") for t in p.temporaries for w in t.when}
        self._stage = None

    def rows(self, s: int, b: np.ndarray, memory: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(time, fits) of stage s on [start, b) for the ends `b` (a column) and every start (a row); fits is None
        without `memory`. Only the entries with start < b mean anything."""
        p, q, starts, first_layer = self.p, self.q, self.starts, self.first_layer
        rc_end = np.maximum(first_layer, np.minimum(np.minimum(b, p.num_layers + 1), first_layer + p.counts()[s]))
        time = (self.time_pre[b] - self.time_pre[starts] + self.rc_time_pre[rc_end]
                - self.rc_time_pre[first_layer])
        if not memory:
            return time, None
        if self._stage is None or self._stage[0] != s:
            self._stage = (s, np.concatenate([[0], np.cumsum(q.act[s], dtype=np.int64)]),
                           np.concatenate([[0], np.cumsum(q.rc_saved[s], dtype=np.int64)]))
        _, act_pre, rc_saved_pre = self._stage
        static = self.static_pre[b] - self.static_pre[starts]
        mem = static + act_pre[b] - act_pre[starts] - (rc_saved_pre[rc_end] - rc_saved_pre[first_layer])
        if p.temporaries:  # `PartitionProblem.rank_facts` of the stage [starts, b) alone on its rank, as needed
            facts = {"last": s == p.num_stages - 1}
            if "moe" in self.facts_used:
                facts["moe"] = self.moe_pre[b] > self.moe_pre[starts]
            if "recomputes" in self.facts_used:
                facts["recomputes"] = rc_end > first_layer
            if "keeps" in self.facts_used:
                facts["keeps"] = np.minimum(b, p.num_layers + 1) > rc_end
            temp = 0
            for term, size in zip(p.temporaries, q.temp):
                holds = True
                for w in term.when:
                    fact = facts[w.lstrip("!")]
                    holds = np.logical_and(holds, np.logical_not(fact) if w.startswith("!") else fact)
                temp = np.maximum(temp, np.where(holds, size, 0)) if size else temp
            mem = mem + temp
        if p.unit_gradient_bytes is not None:  # `PartitionProblem.rank_bytes` under one backward
            grads = self.grad_pre[b] - self.grad_pre[starts]
            mem = np.maximum(static + q.rank_grad[p.stage_to_rank[s]], mem - grads)
        return time, mem <= q.limit[p.stage_to_rank[s]]


def _one_stage_per_rank_dp(p: PartitionProblem, q: _Quantised) -> tuple[int, list[int]] | None:
    """Exact smallest bottleneck (and a partition reaching it) when every rank holds one stage, by dynamic
    programming over stage boundaries: O(S * U^2) with numpy. None when no partition fits in memory."""
    num_units, num_stages = len(q.time), p.num_stages
    inf = np.iinfo(np.int64).max
    # best[b] = smallest bottleneck of stages 0..s-1 covering units [0, b); arg[s][b] = where stage s-1 starts.
    best = np.full(num_units + 1, inf, dtype=np.int64)
    best[0] = 0
    args = []
    table = _OneStageRows(p, q)
    starts = table.starts
    # Ends b are scored a block of rows at a time, each row every start a < b (later starts never win).
    rows = max(1, 4_000_000 // (num_units + 1))
    for s in range(num_stages):
        new, arg = np.full(num_units + 1, inf, dtype=np.int64), np.zeros(num_units + 1, dtype=np.int64)
        lo_end = s + 1  # stages 0..s hold at least one unit each
        hi_end = num_units - (num_stages - 1 - s)  # and every later stage one
        for first in range(lo_end, hi_end + 1, rows):
            b = np.arange(first, min(first + rows, hi_end + 1))[:, None]
            time, fits = table.rows(s, b)
            cost = np.maximum(best, time)
            cost = np.where((starts < b) & (best < inf) & fits, cost, inf)
            a = np.argmin(cost, axis=1)  # the first of equal costs, as scanning the starts in order
            new[b[:, 0]], arg[b[:, 0]] = cost[np.arange(len(a)), a], a
        best = new
        args.append(arg)
    if best[num_units] == inf:
        return None
    bounds = [num_units]
    for s in reversed(range(num_stages)):
        bounds.append(int(args[s][bounds[-1]]))
    return int(best[num_units]), bounds[::-1]


def _stage_times(p: PartitionProblem, q: _Quantised, stages) -> list[int]:
    """Each stage's quantised time under `stages` ([first_unit, end_unit) per stage): its units and the recomputed
    ones' extra (`recomputed_units`), as the CP-SAT model's `stage_time`."""
    return [sum(q.time[a:b]) + sum(q.rc_time[u] for u in p.recomputed_units(s, a, b))
            for s, (a, b) in enumerate(stages)]


def _least_path(p: PartitionProblem, q: _Quantised, cap: int | None = None, memory: bool = False) -> int | None:
    """The smallest path term (sum over stages of path_w[s] x stage time, quantised) of a partition whose every
    stage takes at most `cap` (any partition without it), memory left out unless `memory` (then every rank holds
    one stage and only the partitions that fit count): so at most the path term of every partition that fits and
    keeps within `cap`. None when no partition keeps within `cap` (and fits). Dynamic programming over stage ends,
    O(S * U^2) with numpy, on the stage times of `_stage_times`."""
    num_units, num_stages = len(q.time), p.num_stages
    inf = np.iinfo(np.int64).max
    best = np.full(num_units + 1, inf, dtype=np.int64)  # best[b]: stages 0..s-1 covering units [0, b)
    best[0] = 0
    table = _OneStageRows(p, q)
    starts = table.starts
    for s in range(num_stages):
        b = np.arange(s + 1, num_units - (num_stages - 1 - s) + 1)[:, None]
        t, fits = table.rows(s, b, memory)
        ok = (starts < b) & (best < inf) & (t <= (inf if cap is None else cap))
        if memory:
            ok &= fits
        cost = np.where(ok, np.where(best < inf, best, 0) + q.path_w[s] * t, inf)
        best = np.full(num_units + 1, inf, dtype=np.int64)
        best[b[:, 0]] = cost.min(axis=1)
    return None if best[num_units] == inf else int(best[num_units])


def _dp_optimum_proven(p: PartitionProblem, q: _Quantised, bottleneck: int, bounds: list[int]) -> bool:
    """Whether the partition `bounds` that `_one_stage_per_rank_dp` found (smallest bottleneck `bottleneck`, every
    rank one stage) also minimises the whole objective, path term included, on the quantised data. With its path
    term P_h and the least path term of any fitting partition P_min (`_least_path`), a partition whose busiest
    stage exceeds bottleneck + (P_h - P_min) // neck_w costs more in the bottleneck term than it can save in the
    path term; every other fitting partition has a bottleneck of at least `bottleneck` (the DP is exact) and a
    path term of at least the least one of the fitting partitions within that cap. So where that least is P_h, no
    partition is cheaper, and CP-SAT, which keeps its hint (this partition) unless it finds a strictly cheaper one,
    would return it. Memory is first left out (a cheaper DP, which decides most problems: a lower P_min only
    widens the cap), then, where that leaves a cheaper path, counted (a rank's limit can rule out the splits with
    the cheaper paths)."""
    times = _stage_times(p, q, _bounds_to_stages(bounds))
    if max(times) != bottleneck:
        return False
    path = sum(w * t for w, t in zip(q.path_w, times))
    for memory in (False, True):
        least = _least_path(p, q, memory=memory)
        if q.neck_w == 0:
            proven = least == path
        else:
            proven = _least_path(p, q, bottleneck + (path - least) // q.neck_w, memory=memory) == path
        if proven:
            return True
    return False


# The V-placement proof (`_v_optimum_proven`) walks (slack + 1)^4 rank choices per rank, slack = units - stages
# (how many units beyond one per stage): it is tried up to this many in all.
V_PROOF_MAX_CHOICES = 20_000


def _v_optimum_proven(p: PartitionProblem, q: _Quantised, hint) -> bool:
    """Whether `hint` ([first_unit, end_unit) per stage) minimises the whole objective on the quantised data where
    rank r holds stages r and S-1-r (`v_placement`), by dynamic programming over the ranks from the outside in:
    rank r's two stages start and end where rank r-1's leave off at either end of the chain, so a state is the
    pair (first unit of stage r, end unit of stage S-1-r) and every rank is costed by `_rank_int_cost`, memory
    included. The least bottleneck B* and the least path terms follow (`_dp_optimum_proven`'s argument: a
    partition whose busiest rank exceeds B* + (P_h - P_min) // neck_w costs more than the hint, whose bottleneck
    must be B*, and where the least path term within that cap is the hint's P_h no partition is cheaper, so CP-SAT
    would keep its hint). Only where the chain leaves few units beyond one per stage (V_PROOF_MAX_CHOICES);
    False elsewhere and where the proof fails."""
    S, R, U = p.num_stages, p.num_ranks, len(q.time)
    slack = U - S
    if tuple(p.stage_to_rank) != v_stage_to_rank(R) or R * (slack + 1) ** 4 > V_PROOF_MAX_CHOICES:
        return False
    # Each rank's choices: from state (a, b) to (a2, b2), stage r on [a, a2) and stage S-1-r on [b2, b), each of
    # at least one unit and at least one unit left for every stage between; the innermost rank takes all of
    # [a, b) in its two stages, split at a2 = b2.
    steps = []
    states = {(0, U)}
    for r in range(R):
        step = {}
        inner = S - 2 * (r + 1)  # stages left between
        for a, b in states:
            if r == R - 1:
                choices = ((a2, a2) for a2 in range(a + 1, b))
            else:
                choices = ((a2, b2) for a2 in range(a + 1, b - inner) for b2 in range(a2 + inner, b))
            for a2, b2 in choices:
                time, path, fits = _rank_int_cost(p, q, r, ((r, a, a2), (S - 1 - r, b2, b)))
                if fits:
                    step[a, b, a2, b2] = (time, path)
        steps.append(step)
        states = {(a2, b2) for _, _, a2, b2 in step}
    last = {(x, x) for x in range(U + 1)}

    def least(cap: int | None, bottleneck: bool) -> int | None:
        """The least path term of the fitting partitions whose every rank takes at most `cap`, or with
        `bottleneck` the least busiest rank of any fitting partition; None when there is none."""
        best = {(0, U): 0}
        for step in steps:
            new: dict = {}
            for (a, b, a2, b2), (time, path) in step.items():
                if (a, b) not in best or (cap is not None and time > cap):
                    continue
                value = max(best[a, b], time) if bottleneck else best[a, b] + path
                if new.get((a2, b2), value + 1) > value:
                    new[a2, b2] = value
            best = new
        ends = [v for key, v in best.items() if key in last]
        return min(ends) if ends else None

    own = [[] for _ in range(R)]
    for s, (a, b) in enumerate(hint):
        own[p.stage_to_rank[s]].append((s, a, b))
    costs = [_rank_int_cost(p, q, r, own[r]) for r in range(R)]
    if not all(fits for _, _, fits in costs):
        return False
    neck, path = max(t for t, _, _ in costs), sum(x for _, x, _ in costs)
    if least(None, True) != neck:
        return False
    smallest = least(None, False)
    if q.neck_w == 0:
        return smallest == path
    return least(neck + (path - smallest) // q.neck_w, False) == path


def brute_force_partition(p: PartitionProblem) -> PartitionResult | None:
    """Try every partition (on the same quantised data as CP-SAT). For tests and tiny chains only."""
    q = _quantise(p)
    best, best_cost = None, None
    for inner in itertools.combinations(range(1, p.num_layers + 2), p.num_stages - 1):
        stages = _bounds_to_stages([0, *inner, p.num_layers + 2])
        cost = _int_cost(p, q, stages)
        if cost is not None and (best_cost is None or cost < best_cost):
            best, best_cost = stages, cost
    return None if best is None else evaluate_partition(p, best, optimal=True)


def solve_partition(p: PartitionProblem, time_limit_s: float = 10.0, seed: int = 0) -> PartitionResult | None:
    """Minimise the pipeline critical-path estimate with CP-SAT.

    Returns None when no partition fits in memory (or, for a hard instance, none was found in the time limit).
    ``optimal`` says whether CP-SAT proved the answer. When every rank holds one stage an exact DP supplies the
    hint and a matching lower bound, so CP-SAT proves optimality at once; with several stages per rank CP-SAT
    starts from the greedy budget split and usually runs to the limit without closing the gap.
    """
    # Data.
    q = _quantise(p)
    num_units, num_stages, num_ranks = len(p.unit_time), p.num_stages, p.num_ranks
    rank_stages = [[s for s in range(num_stages) if p.stage_to_rank[s] == r] for r in range(num_ranks)]

    # The bottleneck is at least every rank's total stage time, and at least the exact optimum of the chain
    # split when each rank holds a single stage (dynamic programming; then CP-SAT only confirms it). The hint:
    # that optimum, else the greedy budget split.
    total = sum(q.time)
    floor = math.ceil(total / num_ranks) if total else 0
    if all(len(stages) == 1 for stages in rank_stages):
        exact = _one_stage_per_rank_dp(p, q)
        if exact is None:
            return None  # the DP is exhaustive: no partition fits in memory
        floor, hint = exact[0], _bounds_to_stages(exact[1])
        if _dp_optimum_proven(p, q, *exact):
            return evaluate_partition(p, hint, optimal=True)  # what CP-SAT would prove from this hint
    else:
        hint = greedy_partition(p)
        if _v_optimum_proven(p, q, hint):
            return evaluate_partition(p, hint, optimal=True)  # what CP-SAT would prove from this hint

    # ortools loads only when a model is solved (its import, pandas included, takes about half a CPU second).
    from ortools.sat.python import cp_model

    from autoconf.solve import cpsat

    # Variables: after[u, s] <=> unit u sits on stage s or later (order encoding of the unit's stage, s >= 1).
    # Unit u >= 1 can be on stages [u + S - 2 - L ... u] only (one unit at least on every stage), so the rest are
    # constants.
    model = cp_model.CpModel()
    after = {}
    on_stage = [[] for _ in range(num_stages)]  # the units that can be on each stage: on(u, s) is 0 for the others
    lows, highs = [], []  # after[u, s] is a variable for lows[u] < s <= highs[u] only
    for u in range(num_units):
        lo = 0 if u == 0 else max(0, u + num_stages - 2 - p.num_layers)
        hi = min(num_stages - 1, u)
        for s in range(1, num_stages):
            after[u, s] = 1 if s <= lo else (0 if s > hi else model.new_bool_var(f"after_{u}_{s}"))
        for s in range(lo, hi + 1):
            on_stage[s].append(u)
        lows.append(lo)
        highs.append(hi)

    def on(u, s):  # 1 when unit u is on stage s, as a linear expression
        return (after[u, s] if s > 0 else 1) - (after[u, s + 1] if s + 1 < num_stages else 0)

    def implies(a, b):  # a => b where either side may be a fixed 0/1
        fixed_a, fixed_b = isinstance(a, int), isinstance(b, int)
        if not fixed_a and not fixed_b:
            model.add_implication(a, b)
        elif fixed_a and not fixed_b and a == 1:
            model.add(b == 1)
        elif fixed_b and not fixed_a and b == 0:
            model.add(a == 0)
        else:
            assert not (fixed_a and fixed_b and a == 1 and b == 0)  # the domains above are consistent

    # A unit on stage >= s is also on stage >= s-1 (the encoding is consistent). (The loops skip the stages where
    # every term is fixed: there the implication holds by the domains.)
    for u in range(num_units):
        for s in range(max(2, lows[u] + 1), highs[u] + 1):
            implies(after[u, s], after[u, s - 1])
    # Stages follow unit order and never skip: unit u+1 is on the same stage as unit u or the next one.
    for u in range(num_units - 1):
        for s in range(max(1, min(lows[u] + 1, lows[u + 1])), min(num_stages, max(highs[u], highs[u + 1]) + 1)):
            implies(after[u, s], after[u + 1, s])
            if s + 1 < num_stages:
                implies(after[u + 1, s + 1], after[u, s])
    # Embedding on stage 0, head on the last stage, and each stage holds a unit: fixed by the domains above
    # (the head's lower bound is S-1, no skipped stage in between).

    # Recompute (`recomputed_units`): rc[u, s] <=> unit u is one of the first counts[s] layers of stage s, that is
    # u is a layer on stage s and unit u - counts[s] (clipped to the embedding) lies on an earlier stage (stage 0
    # starts at the embedding: its layers 1..counts[0]).
    counts = p.counts()
    facts_used = {w.lstrip("!") for t in p.temporaries for w in t.when}
    every_rc = bool(facts_used & {"recomputes", "keeps"})  # the facts read every recomputed unit
    rc = {}
    for s in range(num_stages):
        for u in on_stage[s]:
            if u == 0 or u > p.num_layers or counts[s] == 0 or not (q.rc_time[u] or q.rc_saved[s][u] or every_rc):
                continue
            before = (1 if u <= counts[s] else 0) if s == 0 else 1 - after[max(u - counts[s], 0), s]
            if isinstance(before, int) and before == 0:
                continue
            var = model.new_bool_var(f"rc_{u}_{s}")
            model.add(var <= on(u, s))
            model.add(var <= before)
            model.add(var >= on(u, s) + before - 1)
            rc[u, s] = var

    stage_time = [sum(q.time[u] * on(u, s) for u in on_stage[s])
                  + sum(q.rc_time[u] * rc[u, t] for u, t in rc if t == s) for s in range(num_stages)]

    # Temporaries: a rank's facts are 0/1 indicators equal to the OR of their literals (constants where the domains
    # decide them), and its temporary is at least every term whose facts all hold; the memory limit pushes it down
    # to their maximum.
    def known(literals):  # the OR's value when the domains decide it, else None
        if any(isinstance(x, int) and x == 1 for x in literals):
            return 1
        return 0 if all(isinstance(x, int) for x in literals) else None

    moe_units = set(p.moe_units)
    rank_temp, indicators = [0] * num_ranks, {}
    for r in range(num_ranks) if any(q.temp) else ():
        held = [(u, s) for s in rank_stages[r] for u in on_stage[s]]
        literals = {"last": [int(r == p.stage_to_rank[-1])],
                    "moe": [on(u, s) for u, s in held if u in moe_units],
                    "recomputes": [rc[u, s] for u, s in held if (u, s) in rc],
                    "keeps": [on(u, s) - rc[u, s] if (u, s) in rc else on(u, s) for u, s in held
                              if 1 <= u <= p.num_layers]}
        value = {name: known(literals[name]) for name in facts_used}
        terms = []  # (size, the facts the domains leave open as (name, negated)) of the terms that can hold
        for term, size in zip(p.temporaries, q.temp):
            open_facts, holds = [], size > 0
            for w in term.when:
                name, negated = w.lstrip("!"), w.startswith("!")
                if value[name] is None:
                    open_facts.append((name, negated))
                elif value[name] == negated:
                    holds = False
            if holds:
                terms.append((size, open_facts))
        fixed = max([0, *(size for size, open_facts in terms if not open_facts)])
        terms = [(size, open_facts) for size, open_facts in terms if size > fixed]
        if not terms:
            rank_temp[r] = fixed
            continue
        for name in sorted({name for _, open_facts in terms for name, _ in open_facts}):
            var = indicators[r, name] = model.new_bool_var(f"{name}_{r}")
            open_literals = [x for x in literals[name] if not isinstance(x, int)]
            for x in open_literals:
                model.add(var >= x)
            model.add(var <= sum(open_literals))
        temp = rank_temp[r] = model.new_int_var(fixed, max(size for size, _ in terms), f"temp_{r}")
        for size, open_facts in terms:
            holds = [1 - indicators[r, name] if negated else indicators[r, name] for name, negated in open_facts]
            model.add(temp >= size * (sum(holds) - (len(holds) - 1)))

    # Each rank's static memory plus in-flight activations of its stages plus its temporary fit in its limit.
    # Under one backward (`PartitionProblem.rank_bytes`) the gradients and the transient bytes are two limits.
    one_backward = p.unit_gradient_bytes is not None
    for r in range(num_ranks):
        held = [(u, s) for s in rank_stages[r] for u in on_stage[s]]
        static = sum(q.static[u] * on(u, s) for u, s in held)
        transient = (sum(q.act[s][u] * on(u, s) for u, s in held)
                     - sum(q.rc_saved[t][u] * rc[u, t] for u, t in rc if p.stage_to_rank[t] == r) + rank_temp[r])
        if one_backward:
            model.add(static + q.rank_grad[r] <= q.limit[r])
            model.add(static - sum(q.grad[u] * on(u, s) for u, s in held) + transient <= q.limit[r])
        else:
            model.add(static + transient <= q.limit[r])

    # The bottleneck: at least `floor`, and at least every rank's total stage time.
    bottleneck = model.new_int_var(floor, max(floor, total + sum(q.rc_time)), "bottleneck")
    for r in range(num_ranks):
        model.add(sum(stage_time[s] for s in rank_stages[r]) <= bottleneck)

    # Objective: weighted path through all stages plus (m - 1) times the busiest rank.
    model.minimize(sum(w * t for w, t in zip(q.path_w, stage_time)) + q.neck_w * bottleneck)

    # Hint: the greedy budget split (or the DP optimum).
    hints = [(after[u, t], s >= t) for s, (a, b) in enumerate(hint) for u in range(a, b)
             for t in range(1, num_stages) if not isinstance(after[u, t], int)]
    hinted = {(u, s) for s, (a, b) in enumerate(hint) for u in p.recomputed_units(s, a, b)}
    hints += [(var, key in hinted) for key, var in rc.items()]
    if indicators:
        hint_facts = p.rank_facts(hint)
        hints += [(var, hint_facts[r][name]) for (r, name), var in indicators.items()]
        hints += [(rank_temp[r], p.rank_temporary(hint_facts[r], q.temp)) for r in range(num_ranks)
                  if not isinstance(rank_temp[r], int)]

    # Solve (seeded, time-limited, one worker: solve/cpsat.py); presolve and probing spend seconds here and find
    # nothing.
    solver, status = cpsat.solve(model, time_limit_s, seed, "partition", hints,
                                 cp_model_presolve=False, cp_model_probing_level=0)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        # Out of time before any solution: fall back on the hint when it fits, otherwise report no partition.
        fits = status == cp_model.UNKNOWN and _int_cost(p, q, hint) is not None
        return evaluate_partition(p, hint) if fits else None
    solution = solver.response_proto.solution
    unit_stage = [sum(after[u, s] if isinstance(after[u, s], int) else solution[after[u, s].index]
                      for s in range(1, num_stages)) for u in range(num_units)]
    bounds = [0] + [u for u in range(1, num_units) if unit_stage[u] != unit_stage[u - 1]] + [num_units]
    assert len(bounds) == num_stages + 1, bounds
    return evaluate_partition(p, _bounds_to_stages(bounds), optimal=status == cp_model.OPTIMAL)

