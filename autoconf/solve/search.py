"""The planner: enumerate legal layouts, prune with cheap bounds, simulate the survivors, refine the best.

    1. space.candidates          every legal config honouring --fix
    2. bounds                    per candidate, closed-form lower bounds of peak memory and of iteration time
                                 (busiest rank's compute + the schedule's textbook bubble + optimizer)
    3. branch and bound          candidates in order of their time bound; a candidate whose memory bound exceeds the
                                 device is pruned; once the K-th best simulated time is below the next bound, the
                                 rest are pruned; survivors get the full critical-path simulation (cost/estimate.py)
    4. refinement (top K)        CP-SAT stage partition and GPU placement, then a detailed estimate; the refined
                                 layout replaces the uniform one only where it is predicted faster and fits

Deterministic: the same inputs visit candidates in the same order and the solvers are seeded and single-threaded.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import json
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autoconf.cost.comm import distinct_pair_sets, p2p_time
from autoconf.cost.cp_ring import torch_ring
from autoconf.cost.compute import PassTimes, measured_tp_layer, model_pieces, rank_optimizer_time
from autoconf.cost.estimate import (EXTRAPOLATION_MARGIN, Execution, cp_attention_comm, default_mesh, default_partition,
                                    dp_collectives, estimate, exposed_dp, overlapped_tp_layer, overlaps_pairs,
                                    p2p_bytes, predict, recompute_time, schedule_inflight, selective_matmul_share,
                                    selective_matmuls_only, step_collectives, tp_collective, tp_overlap_gemms,
                                    tp_sp_collectives)
from autoconf.cost.memory import (holds_unsharded_grads, layer_activation_bytes, pipeline_buffer_floor, rank_params,
                                  root_reduced_grad_bytes, root_unit_params, stage_memory, state_bytes_per_param)
from autoconf.cost.moe import ep_comm_passes, layer_kind_params, layer_kinds, moe_layers, smallest_layer_params
from autoconf.cost.moe import local_params as local_params_of
from autoconf.cost.offload import (activation_copy_bytes, activation_copy_times, check_offload, host_memory_per_node,
                                   plans_offload)
from autoconf.errors import UserError
from autoconf.files import gib_figures
from autoconf.spec.support import dtype_unsupported_reason, unsupported_reason
from autoconf.solve.fit import smallest_fitting_change
from autoconf.solve.placement import tp_cp_domain
from autoconf.solve.recompute import fewest_counts, fewest_recomputed
from autoconf.solve.space import candidates, normalise_fixed, replaced
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import precision
from autoconf.spec.frameworks import selective_policy
from autoconf.spec.grid import RankGrid, expert_groups
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import OFFLOADS, ParallelConfig, Plan, cp_split_problem, node_blocks
from autoconf.spec.schedules import SCHEDULES, schedule_spec, stage_to_rank

# Every config field but grad_reduce: what the time bound reads (`search` shares one bound between twins).
_BOUND_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ParallelConfig) if f.name != "grad_reduce"))
# Every config field but grad_reduce and the recompute mode and policy: what the time bound reads of a candidate that
# recomputes no layer yet (`search`: each recomputed layer's term is 0 x its time) and does not offload activations.
_UNFITTED_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ParallelConfig)
                                         if f.name not in ("grad_reduce", "recompute", "selective_recompute")))
# Every config field but the ZeRO stage and grad_reduce: what rank 0's activations and other bytes read
# (`_BoundCache.offload_floor` shares them between the layouts that differ only there).
_RESIDENT_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ParallelConfig)
                                         if f.name not in ("grad_reduce", "zero_stage")))
# Every config field but grad_reduce, the optimizer's offload, the ZeRO stage and the per-stage recompute counts: at
# least what `_BoundCache._blocks_work` and `_end_pieces` read (the ZeRO sharding only through a dynamic-scaling fp8
# dtype's weight casts, which `_work_key` adds), so twins that differ only there share one.
_WORK_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ParallelConfig)
                                     if f.name not in ("grad_reduce", "offload_optimizer", "zero_stage",
                                                       "recompute_layers")))
# The most entries each memo by `_BoundCache._work_key` keeps (`_blocks_work`, `_end_pieces`, `busy_bound`): twins
# that share one are met close together (a family's members in turn, an offloading parent's twins at once), so a memo
# starts again when full instead of holding every key of a search of millions of candidates (GPT-OSS-120B at 128k on
# 64 GPUs peaked 300 MiB higher without a limit).
_MEMO_ENTRIES = 1 << 15
# The fields a family of candidates shares (`space.candidates` varies the levers innermost: ZeRO, recompute,
# sequence parallelism, grad_reduce, the CP exchange, the expert degrees); the walk bounds a family before it
# builds its members' entries (`search`).
_FAMILY_FIELDS = operator.attrgetter("tp", "cp", "pp", "dp", "vpp", "micro_batch_size", "schedule", "seq_chunks",
                                     "seq_split")
# How far the walk has fitted a recompute candidate's per-stage counts (`search`'s walk); FAMILY marks a family's
# entry, whose members are not yet in the heap.
# OFFLOAD_PARENT marks the entry of a candidate that did not fit, standing for its offloading twins.
OFFLOAD_PARENT, FAMILY, UNFITTED, RANK0_FITTED, FITTED = -2, -1, 0, 1, 2


def _remembered(memo: dict, key, make: Callable[[], object]):
    """memo[key], made by `make()` where it is missing; a memo holding _MEMO_ENTRIES starts again first."""
    if key not in memo:
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[key] = make()
    return memo[key]


@dataclass
class SearchResult:
    plans: list[Plan]
    stats: dict = field(default_factory=dict)
    closest: tuple[float, ParallelConfig] | None = None  # (bytes over the limit, config) when nothing fits


@dataclass(frozen=True)
class _Bounds:
    time_s: float
    memory_bytes: float


class _BoundCache:
    """Closed-form lower bounds, with the per-(tp, mb, sp, ...) pieces computed once."""

    def __init__(self, model: ModelSpec, cluster: ClusterProfile, execution: Execution):
        self.model, self.cluster, self.execution = model, cluster, execution
        self._pieces: dict = {}
        self._tp: dict = {}
        self._dp: dict = {}
        self._p2p: dict = {}
        self._pair_sets: dict = {}
        self._layers_of_rank: dict = {}
        self._hop_count: dict = {}
        self._layout: dict = {}
        self._smallest: dict = {}  # (pp, vpp, schedule) -> layers of the default partition's smallest stage
        self._step: dict = {}
        self._owner: dict = {}
        self._layers: dict = {}
        self._exchange: dict = {}
        self._moe_blocks = moe_layers(model, 0, model.num_layers)
        self._fewest_moe: dict = {}
        self._optimizers: dict = {}
        self._recomputed_of: dict = {}
        self._shapes: dict = {}
        self._last_memory: tuple = (None, None)
        self._rank0_params: dict = {}
        self._resident: dict = {}
        self._overheads = (cluster.overhead("pass_overhead_s"), cluster.overhead("step_overhead_s"))
        self._work: dict = {}
        self._busy: dict = {}
        self._fewest_params: dict = {}
        self._ends: dict = {}

    def _stage_to_rank(self, c: ParallelConfig) -> tuple[int, ...]:
        key = (c.schedule, c.pp, c.vpp)
        if key not in self._owner:
            self._owner[key] = stage_to_rank(c.schedule, c.pp, c.vpp)
        return self._owner[key]

    def _layer(self, c: ParallelConfig):
        # (the recompute mode and policy decide only whether cp > 1 runs torch's ring: `cp_ring.torch_ring`; the
        # weight casts of a dynamic-scaling fp8 dtype read the ZeRO sharding: `fp8.cast_seconds`)
        key = (c.tp, c.cp, c.micro_batch_size, c.sequence_parallel, c.dtype, c.attention, c.seq_len, c.ep, c.etp,
               c.seq_chunks, c.compile, torch_ring(self.model, c, self.execution),
               (c.zero_sharded, c.dp_cp) if precision(c.dtype).dynamic_scaling else None)
        if key not in self._pieces:
            # A CPU rank may get a whole core when others wait: bound with the fastest share.
            self._pieces[key] = model_pieces(self.model, self.cluster, c, share=1.0, execution=self.execution)
        return self._pieces[key]

    def _tp_collective(self, c: ParallelConfig) -> float:
        key = (c.tp, c.cp, c.micro_batch_size, c.sequence_parallel, c.dtype, c.seq_len, c.seq_chunks)
        if key not in self._tp:
            measured = measured_tp_layer(self.model, self.cluster, c) if self.execution.executor_overheads else None
            one = tp_collective(self.model, self.cluster, c, list(range(c.tp)))
            if self.execution.tp_comm_overlap and c.sequence_parallel and c.tp > 1:
                # what the GEMMs leave exposed, per collective: bound by the smaller pass
                exposed = overlapped_tp_layer(*tp_sp_collectives(self.model, self.cluster, c, list(range(c.tp))),
                                              tp_overlap_gemms(self.model, self.cluster, c), c.tp)
                self._tp[key] = min(exposed.forward, exposed.backward_input) / 2
            elif measured is not None:  # the estimate charges each pass its own measured side: bound by the smaller
                self._tp[key] = min(measured[0].forward, measured[0].backward_input) / 2
            else:
                self._tp[key] = one
        return self._tp[key]

    def _comm(self, c: ParallelConfig, per_stage_layers: int) -> tuple[float, float, float, float]:
        """(P2P transfer, per-pass FSDP gather, once-per-step FSDP gather, gradient reduction) of one middle stage
        on the default mesh."""
        model, cluster = self.model, self.cluster
        p2p_key = (c.tp, c.cp, c.pp, c.dp, c.micro_batch_size, c.sequence_parallel, c.dtype, c.seq_len, c.seq_chunks)
        if p2p_key not in self._p2p:
            nbytes = p2p_bytes(model, c, self.execution)
            p2p = 0.0
            if c.pp > 1:
                # The cheapest hop between neighbouring pipeline ranks of the default mesh (wrap-around included).
                p2p = min(p2p_time(cluster, nbytes, pairs) for pairs in self._hop_pairs(c))
            self._p2p[p2p_key] = p2p
        dp_key = (c.tp, c.cp, c.pp, c.dp, per_stage_layers, c.dtype, c.zero_stage,
                  schedule_spec(c.schedule).fsdp_gather_per_chunk, c.offload_optimizer, c.ep, c.etp)
        if dp_key not in self._dp:
            params = self._fewest_block_params(c, per_stage_layers)
            # The default mesh's first weight group: every DP replica's CP ranks at TP position 0.
            self._dp[dp_key] = dp_collectives(cluster, c, params, np.arange(c.dp_cp) * c.tp,
                                              execution=self.execution)
            moe, experts = self._stage_experts(c, per_stage_layers)
            if experts:  # the routed experts over their expert-DP group, added as the estimate's `stage_plan` does
                group = expert_groups(RankGrid(default_mesh(c)), 0, c.ep, c.etp, "edp")[0]
                self._dp[dp_key] = tuple(a + b for a, b in zip(self._dp[dp_key], dp_collectives(
                    cluster, c, experts, group, units=moe, execution=self.execution)))
        return (self._p2p[p2p_key], *self._dp[dp_key])

    def _fewest_block_params(self, c: ParallelConfig, layers: int) -> float:
        """At most the parameters one rank holds of any `layers` blocks beside their routed experts: each block at
        `smallest_layer_params` with the fewest TP-replicated ones of any kind, split as `local_params` splits it
        (over tp: remembered by it and `layers`)."""
        key = (layers, c.tp)
        if key not in self._fewest_params:
            replicated = min(self.model.tp_replicated_params("moe" if kind else "dense")
                             for kind in layer_kinds(self.model))
            self._fewest_params[key] = local_params_of(c, layers * smallest_layer_params(self.model), 0.0,
                                                       layers * replicated)[0]
        return self._fewest_params[key]

    def _stage_experts(self, c: ParallelConfig, layers: int) -> tuple[int, float]:
        """(MoE blocks, routed-expert parameters one rank holds, split over ep x etp as `local_params` splits them)
        of the run of `layers` consecutive blocks with the fewest MoE blocks; (0, 0) for a dense model."""
        if self.model.moe is None:
            return 0, 0.0
        if layers not in self._fewest_moe:
            self._fewest_moe[layers] = min(moe_layers(self.model, first, first + layers)
                                           for first in range(self.model.num_layers - layers + 1))
        moe = self._fewest_moe[layers]
        return moe, local_params_of(c, 0.0, moe * layer_kind_params(self.model)[2])[1]

    def _hop_pairs(self, c: ParallelConfig) -> np.ndarray:
        """For each pipeline rank r of the default mesh (devices [r*w, (r+1)*w), w = dp*cp*tp), the pairs of its hop to
        rank r+1 (wrap-around included), as far as they can differ in time."""
        key = (c.pp, c.dp, c.cp, c.tp)
        if key not in self._pair_sets:
            width = c.dp * c.cp * c.tp
            src = np.arange(c.pp * width).reshape(c.pp, width)
            self._pair_sets[key] = distinct_pair_sets(self.cluster, np.stack([src, (src + width) % src.size],
                                                                              axis=-1))
        return self._pair_sets[key]

    def _rank_layers(self, c: ParallelConfig) -> tuple[float, ...]:
        """Transformer layers the default partition gives each pipeline rank per micro-batch: under two directions
        (dualpipe) the mean of its two copies' model stages, each passed by half the micro-batches."""
        directions = schedule_spec(c.schedule).directions
        key = (c.pp, c.vpp, schedule_spec(c.schedule).v_placement, directions)
        if key not in self._layers_of_rank:
            owner = self._stage_to_rank(c)
            parts = default_partition(self.model, c)
            layers = [0] * c.pp
            for st, r in enumerate(owner):
                first, end = parts[st % len(parts)]
                layers[r] += end - first
            self._layers_of_rank[key] = tuple(x / directions if directions > 1 else x for x in layers)
        return self._layers_of_rank[key]

    def _rank_recomputed(self, c: ParallelConfig) -> tuple[int, ...]:
        """Recomputed layers of each pipeline rank under `c.recompute_layers`."""
        key = (c.schedule, c.pp, c.vpp, c.recompute_layers)
        if key not in self._recomputed_of:
            out = [0] * c.pp
            directions = schedule_spec(c.schedule).directions
            for st, r in enumerate(self._stage_to_rank(c)):  # (dualpipe: each copy passed by half the micro-batches)
                out[r] += c.recompute_layers[st % len(c.recompute_layers)]
            self._recomputed_of[key] = tuple(x / directions if directions > 1 else x for x in out)
        return self._recomputed_of[key]

    def _rank_shapes(self, c: ParallelConfig) -> frozenset[tuple[int, int]]:
        """The distinct (layers, recomputed layers) of the pipeline ranks of the default partition under
        `c.recompute_layers`: ranks of the same shape do the same work."""
        key = (c.schedule, c.pp, c.vpp, c.recompute_layers)
        if key not in self._shapes:
            self._shapes[key] = frozenset(zip(self._rank_layers(c), self._rank_recomputed(c)))
        return self._shapes[key]

    def _hops(self, c: ParallelConfig) -> int:
        """How many times consecutive stages sit on different ranks."""
        key = (c.schedule, c.pp, c.vpp)
        if key not in self._hop_count:
            owner = self._stage_to_rank(c)  # (a micro-batch passes c.num_stages of them: dualpipe's one direction)
            self._hop_count[key] = sum(owner[s] != owner[s + 1] for s in range(len(owner) - 1)
                                       if (s + 1) % c.num_stages)
        return self._hop_count[key]

    def _step_comm(self, c: ParallelConfig) -> float:
        """The estimate's own step collectives (gradient norm, loss, tied embedding) on the default mesh."""
        owner = self._stage_to_rank(c)
        key = (c.tp, c.cp, c.pp, c.dp, c.zero_sharded, owner[0], owner[-1])
        if key not in self._step:
            self._step[key] = step_collectives(self.model, self.cluster, c, RankGrid(default_mesh(c)), owner)
        return self._step[key]

    def bounds(self, c: ParallelConfig) -> _Bounds:
        """Lower bounds on the simulated iteration time and on the peak memory (`time_bound`, `memory_bound`)."""
        return _Bounds(self.time_bound(c), self.memory_bound(c))

    def time_bound(self, c: ParallelConfig) -> float:
        """A lower bound on the simulated iteration time of the default partition.

        Time: a rank's work (at least ceil(L/pp) layers, each pass at least its FSDP gather; MoE blocks with their
        exposed token exchange, of a model with dense and MoE blocks as many as the dense ones leave:
        `_layers_sum`) for every micro-batch with the least recompute and the schedule's textbook bubble on the
        smallest stage, or alone the busiest rank's own work under per-stage counts or the work of the ranks holding
        the first and the last stage with the embedding and the head (whichever is longest), the P2P
        hops of the pipeline fill and drain, the gradient reduction of the first stage after rank 0's last backward,
        and the step's tail as the estimate adds it (the step collectives on the default mesh, the optimizer, the step
        overhead).
        """
        model = self.model
        one = self._tp_collective(c)
        S = c.num_stages
        per_stage_layers = self._smallest_stage(c)
        # Recomputed layers (`recompute_layers`, counted on the default partition): at least these many in the
        # smallest stage, on the rank recomputing least, and in all.
        n, rank_layers = S // c.pp, self._busiest_layers(c)
        stage_rc, rank_rc, total_rc = self._recomputed(c, per_stage_layers, rank_layers)
        p2p, gather, gather_once, reduce = self._comm(c, per_stage_layers)
        m = c.num_microbatches * c.seq_chunks  # units through the pipeline (seq1f1b: sequence chunks)
        overhead = self._overheads[0]
        run = self._blocks_work(c)

        chunk_fwd = run(per_stage_layers, 0, 2 * one) + overhead
        chunk_bwd = run(per_stage_layers, 1, 2 * one) + run(stage_rc, 3) + overhead
        chunk_w = run(per_stage_layers, 2)
        chunk_fwd, chunk_bwd = max(chunk_fwd, gather), max(chunk_bwd, gather)

        rank_work = self._rank_work(run, one, m, n * overhead, n * gather)
        busy = rank_work(rank_layers, rank_rc)
        # With per-stage counts each rank of the default partition does its own work; the busiest one's bounds the
        # step, but not together with the bubble: the ranks that recompute less run ahead, so the busiest waits
        # less than the textbook bubble (pp 2, 1F1B: 2(f1 + b1) - (f0 + b0), not f1 + b1). The bubble goes with the
        # least recompute's work: the step is no shorter than with every rank's work cut to that.
        busiest = busy if c.recompute_layers is None else max(
            rank_work(layers, recomputed) for layers, recomputed in self._rank_shapes(c))
        spec = schedule_spec(c.schedule)
        if spec.directions == 1:
            busiest = max(busiest, self._end_ranks_work(c, rank_work, m))
        bubble = spec.bubble(c.pp, chunk_fwd, chunk_bwd, chunk_w)
        hops = self._hops(c)
        # Fill and drain: the first forward and the last backward cross every rank boundary of a loop placement.
        fill_drain = 0.0 if spec.v_placement else 2 * (c.pp - 1) * p2p
        optimizer = self._optimizer(c)
        # The DP stream of rank 0 carries every gather and reduction of its stages one after another, and the
        # first gather precedes the first forward.
        stages_rank0 = S // c.pp
        comm_stream = stages_rank0 * (gather_once + reduce)
        # Some orders pay the fill/drain transfers on top of the textbook bubble; others can hide transfers in idle
        # time, so there only the larger of the two is certain.
        idle = bubble + fill_drain if spec.exposed_fill_drain else max(bubble, fill_drain)
        # Of rank 0's own gather and reduction, the execution's buckets leave at least these exposed.
        first_gather, last_reduce = exposed_dp(self.execution, gather_once, reduce,
                                               self._fewest_block_params(c, per_stage_layers)
                                               + self._stage_experts(c, per_stage_layers)[1],
                                               per_stage_layers, c.dp_cp)
        compute_path = first_gather + max(busy + idle, busiest) + last_reduce
        # Micro-batch 0 passes every stage forward and backward in turn, hopping ranks between stages.
        every = run(model.num_layers, 0, 2 * one) + run(model.num_layers, 1, 2 * one)
        chain = every + run(total_rc, 3) + 2 * S * overhead + 2 * hops * p2p
        return max(compute_path, comm_stream, chain) + self._step_comm(c) + optimizer + self._overheads[1]

    @staticmethod
    def _work_key(c: ParallelConfig) -> tuple:
        """At least what `_blocks_work` and `_end_pieces` read of `c` (`_WORK_FIELDS`, and the ZeRO sharding
        under a dynamic-scaling fp8 dtype: `_layer`'s note)."""
        return _WORK_FIELDS(c), c.zero_sharded if precision(c.dtype).dynamic_scaling else None

    def _blocks_work(self, c: ParallelConfig) -> Callable[..., float]:
        """run(layers, index, extra=0): a lower bound of term `index` of `_kind_layers` (0 forward, 1 input
        backward, 2 weight backward, 3 recompute) summed over any `layers` of the model's blocks, plus `extra` per
        block: MoE blocks with their exposed token exchange (`_exposed_exchange`); of a model with dense and MoE
        blocks, `_layers_sum`. Remembered by `_work_key`."""
        return _remembered(self._work, self._work_key(c), functools.partial(self._made_work, c))

    def _made_work(self, c: ParallelConfig) -> Callable[..., float]:
        """`_blocks_work`'s run, made afresh."""
        kinds, exchange = self._kind_layers(c), self._exposed_exchange(c)
        if len(kinds) > 1:
            def run(layers: float, index: int, extra: float = 0.0) -> float:
                return self._layers_sum(kinds, exchange, layers, index) + layers * extra
        else:
            ((moe, terms),) = kinds.items()
            per_block = tuple(t + (e if moe else 0.0) for t, e in zip(terms, exchange))

            def run(layers: float, index: int, extra: float = 0.0) -> float:
                return layers * (per_block[index] + extra)
        return run

    @staticmethod
    def _rank_work(run: Callable[..., float], one: float, units: float, overhead: float = 0.0,
                   gather: float = 0.0) -> Callable[[float, float], float]:
        """work(layers, recomputed): a rank's forward and backward over `layers` blocks (`run`, `_blocks_work`; two
        TP collectives `one` each per pass), `recomputed` of them recomputed, for each of `units`; each pass with the
        `overhead` of the rank's stages and at least their FSDP `gather`."""
        def work(layers: float, recomputed: float) -> float:
            return units * (max(run(layers, 0, 2 * one) + overhead, gather)
                            + max(run(layers, 1, 2 * one) + run(recomputed, 3) + overhead, gather)
                            + run(layers, 2))
        return work

    def _end_ranks_work(self, c: ParallelConfig, rank_work: Callable[[float, float], float], m: int) -> float:
        """The work of the default partition's ranks holding the first and the last stage (`rank_work` of their
        own layers and recomputed layers), the first also running the embedding and the last the head and the loss
        for each of the `m` units, as the estimate's `stage_plan` adds them: the longer of the two."""
        owner, layers = self._stage_to_rank(c), self._rank_layers(c)
        recomputed = layers if c.recompute_layers is None else self._rank_recomputed(c)
        embedding, head = self._end_pieces(c)
        ends = {owner[0]: 0.0, owner[-1]: 0.0}
        ends[owner[0]] += m * embedding
        ends[owner[-1]] += m * head
        return max(rank_work(layers[r], recomputed[r]) + extra for r, extra in ends.items())

    def _end_pieces(self, c: ParallelConfig) -> tuple[float, float]:
        """(embedding, head with its loss) seconds per unit of `c` (`_layer`'s pieces), remembered by `_work_key`,
        which holds every field `_layer` reads."""
        def made() -> tuple[float, float]:
            pieces = self._layer(c)
            return pieces.embedding.total, pieces.head.total
        return _remembered(self._ends, self._work_key(c), made)

    def busy_bound(self, c: ParallelConfig) -> float:
        """A lower bound on the step, cheaper than `time_bound` and below it: every micro-batch through the
        ceil(L/pp) layers of the busiest rank, forward and backward, with the least rank's recomputed layers, or
        through the first and the last stage's ranks with the embedding and the head (`time_bound`'s compute path
        holds both, with the passes' overheads and FSDP gathers that this leaves out). Remembered by what it reads
        (`_work_key`, and the per-stage recompute counts)."""
        return _remembered(self._busy, (self._work_key(c), c.recompute_layers), functools.partial(self._made_busy, c))

    def _made_busy(self, c: ParallelConfig) -> float:
        """`busy_bound`, worked out afresh."""
        run, one = self._blocks_work(c), self._tp_collective(c)
        units = c.num_microbatches * c.seq_chunks  # seq1f1b: sequence chunks
        rank_work = self._rank_work(run, one, units)
        rank_layers = self._busiest_layers(c)
        work = rank_work(rank_layers, self._recomputed(c, self._smallest_stage(c), rank_layers)[1])
        if schedule_spec(c.schedule).directions == 1:
            work = max(work, self._end_ranks_work(c, rank_work, units))
        return work

    def _busiest_layers(self, c: ParallelConfig) -> float:
        """Layers per micro-batch of the busiest rank: at least ceil(L/pp); under two directions (dualpipe), where a
        rank's are the mean of its two model stages', those of the default partition's busiest rank."""
        if schedule_spec(c.schedule).directions > 1:
            return max(self._rank_layers(c))
        return math.ceil(self.model.num_layers / c.pp)

    def _recomputed(self, c: ParallelConfig, stage_layers: int, rank_layers: int) -> tuple[int, int, int]:
        """(smallest stage's, least rank's, all) recomputed layers of `c`: with every layer recomputing, the
        default partition's smallest stage, the busiest rank's layers and every layer (the busiest rank holds at
        least `rank_layers`); with per-stage counts, read from them."""
        if c.recompute_layers is None:
            return stage_layers, rank_layers, self.model.num_layers
        counts = c.recompute_layers
        return min(counts), min(self._rank_recomputed(c)), sum(counts)

    def _layers_sum(self, kinds: dict, exchange: tuple, layers: float, index: int) -> float:
        """A lower bound of term `index` of `kinds` (`_kind_layers` of a model with dense and MoE blocks) summed
        over any `layers` of the model's blocks: at least layers - (dense blocks) of them are MoE blocks (plus the
        token `exchange` the estimate leaves on the compute stream, `_exposed_exchange`) and at least
        layers - (MoE blocks) dense; the rest at the smaller of the two."""
        n_moe = self._moe_blocks
        dense, moe = kinds[False][index], kinds[True][index] + exchange[index]
        at_least_moe = max(0.0, layers - (self.model.num_layers - n_moe))
        at_least_dense = max(0.0, layers - n_moe)
        return (at_least_moe * moe + at_least_dense * dense
                + (layers - at_least_moe - at_least_dense) * min(dense, moe))

    def _exposed_exchange(self, c: ParallelConfig) -> tuple[float, float, float, float]:
        """The MoE token exchange one MoE block adds to (forward, input backward, weight backward, recompute) on
        the compute stream, as the estimate adds it (`ep_comm_passes` on each pipeline rank's first EP and ETP
        groups of the default mesh; the least of the ranks): zeros where paired chunks may hide it
        (`overlaps_pairs`) or under seq1f1b (whose units the estimate splits afterwards)."""
        if self.model.moe is None or c.seq_chunks > 1 or overlaps_pairs(self.model, c, self.execution):
            return (0.0, 0.0, 0.0, 0.0)
        # What `ep_comm_passes` reads of the config (its tokens, dtype and etp; the mesh's degrees and expert
        # groups), so the candidates that differ elsewhere (schedule, recompute, ZeRO, ...) share one exchange.
        key = (c.tp, c.cp, c.pp, c.dp, c.ep, c.etp, c.micro_batch_size, c.dtype, c.seq_len)
        if key not in self._exchange:
            grid = RankGrid(default_mesh(c))
            passes = [ep_comm_passes(self.model, self.cluster, c, *(expert_groups(grid, rank, c.ep, c.etp, axis)[0]
                                                                    for axis in ("ep", "etp")), self.execution)
                      for rank in range(c.pp)]
            self._exchange[key] = (min(p[0] for p in passes), min(p[1] for p in passes))
        forward, backward = self._exchange[key]
        return (forward, backward, 0.0, forward if c.recompute == "full" else 0.0)

    def _kind_layers(self, c: ParallelConfig) -> dict[bool, tuple[float, float, float, float]]:
        """Per kind of block (`layer_kinds`: False dense, True MoE), (block forward, block input backward, block
        weight backward, recompute) per layer (the MoE token exchange left out), plus the estimate's own activation
        copies of offload_activations (on the compute stream) and exposed CP K/V exchange."""
        key = (c.tp, c.cp, c.cp_comm, c.micro_batch_size, c.sequence_parallel, c.dtype, c.attention, c.seq_len,
               c.recompute, c.ep, c.etp, c.offload_activations, c.selective_recompute, c.seq_chunks, c.compile,
               (c.zero_sharded, c.dp_cp) if precision(c.dtype).dynamic_scaling else None)  # (`_layer`'s note)
        if key not in self._layers:
            one = self._tp_collective(c)
            kinds = [self._layer(c).kind(moe) for moe in layer_kinds(self.model)]
            copies = [activation_copy_times(self.cluster, activation_copy_bytes(c, layer_activation_bytes(
                self.model, c, self.execution.memory_layout, self.cluster.device.kind,
                selective=selective_policy(c, self.execution), moe=moe, execution=self.execution)))
                for moe in layer_kinds(self.model)]
            cp = PassTimes(0.0, 0.0, 0.0)
            if c.cp > 1:  # the estimate's exposed K/V exchange, on the default mesh's first CP group
                cp = cp_attention_comm(self.model, self.cluster, c, np.arange(c.cp) * c.tp,
                                       self._layer(c).attention_core, self.execution)
            self._layers[key] = {moe: (p.block.forward + f + cp.forward, p.block.backward_input + b + cp.backward_input,
                                       p.block.backward_weight + cp.backward_weight,
                                       recompute_time(p, c, one, selective_matmul_share(self.model, c, self.execution,
                                                                                        moe),
                                                      selective_matmuls_only(c, self.execution))
                                       + (cp.forward if c.recompute == "full" else 0.0))
                                 for p, (f, b), moe in zip(kinds, copies, layer_kinds(self.model))}
        return self._layers[key]

    def _optimizer(self, c: ParallelConfig) -> float:
        """The optimizer step of pipeline rank 0 of the default partition (the estimate's slowest rank is no
        faster): the estimate's own `rank_optimizer_time` on the rank's parameters and routed-expert parameters
        (`stage_params`, `stage_expert_params` of its stages), with the execution's passes over the main-gradient
        buffer."""
        key = (c.pp, c.vpp, c.schedule, c.tp, c.dp, c.cp, c.zero_stage, c.ep, c.etp, c.offload_optimizer)
        if key not in self._optimizers:
            self._optimizers[key] = rank_optimizer_time(self.cluster, c, *self._rank0_parameters(c),
                                                        execution=self.execution)
        return self._optimizers[key]

    def _rank0_parameters(self, c: ParallelConfig) -> tuple[float, float, float]:
        """(parameters, routed-expert parameters, TP-replicated parameters) of pipeline rank 0's stages on the
        default partition, all TP and EP ranks together (`rank_params`)."""
        key = (c.pp, c.vpp, c.schedule)
        if key not in self._rank0_params:
            partition, owner = self._default_layout(c)
            stages = [st % len(partition) for st, r in enumerate(owner) if r == 0]  # (dualpipe: model stages)
            self._rank0_params[key] = rank_params(self.model, partition, stages)
        return self._rank0_params[key]

    def memory_bound(self, c: ParallelConfig) -> float:
        """The estimate's own memory of pipeline rank 0 (cost/memory.stage_memory on the default partition, with the
        in-flight counts the estimate reads off the schedule's order): the estimate's peak is the largest rank's."""
        return self.rank0_memory(c)["total"]

    def host_bound(self, c: ParallelConfig) -> float:
        """A lower bound on an offloading plan's host bytes per node (cost/offload.py's rule on pipeline rank 0;
        the estimate takes the busiest rank); 0 without offload."""
        return host_memory_per_node(self.cluster, [self.rank0_memory(c).get("host", 0.0)])

    def memory(self, c: ParallelConfig) -> list[dict]:
        """cost/memory.stage_memory of every pipeline rank on the default partition with the in-flight counts of the
        schedule's order: the estimate's own `memory_per_stage` of the default layout (the simulation counts the
        same in-flight micro-batches from the same order)."""
        partition, owner = self._default_layout(c)
        inflight = schedule_inflight(c.schedule, c.pp, c.vpp, c.num_microbatches, seq_chunks=c.seq_chunks)
        return stage_memory(self.model, self.cluster, c, partition, owner, inflight, self.execution.memory_layout,
                            selective=selective_policy(c, self.execution), execution=self.execution)

    def layout_memory(self, c: ParallelConfig) -> list[dict]:
        """The estimate's own `memory_per_stage` of the default layout, without simulating it: cost/memory's
        `stage_memory` of every pipeline rank on the estimate's partition (`default_partition`), with the in-flight
        counts of the order the estimate simulates (`schedule_inflight`, paired where `overlaps_pairs`), which are
        the simulated step's (tests/test_search.py checks the two equal). The walk asks it before simulating a
        candidate, so a layout that does not fit on some rank is never simulated."""
        inflight = schedule_inflight(c.schedule, c.pp, c.vpp, c.num_microbatches, seq_chunks=c.seq_chunks,
                                     overlap=overlaps_pairs(self.model, c, self.execution))
        return stage_memory(self.model, self.cluster, c, default_partition(self.model, c), self._stage_to_rank(c),
                            inflight, self.execution.memory_layout, selective=selective_policy(c, self.execution),
                            execution=self.execution)

    def layout_peak(self, c: ParallelConfig) -> float:
        """The busiest rank's bytes of `layout_memory`: the estimate's peak of the default layout."""
        return max(entry["total"] for entry in self.layout_memory(c))

    def _smallest_stage(self, c: ParallelConfig) -> int:
        """Layers of the smallest stage of the default partition (floor(L / stages) but with MTP modules, whose
        room on the last stage leaves it fewer)."""
        key = (c.pp, c.vpp, c.schedule)
        if key not in self._smallest:
            self._smallest[key] = min(end - first for first, end in self._default_layout(c)[0])
        return self._smallest[key]

    def _default_layout(self, c: ParallelConfig) -> tuple[list, tuple[int, ...]]:
        """(the estimate's default partition, stage-to-rank owner) of `c`'s pipeline: the uniform one, or with MTP
        modules the one that makes room for them on the last stage (bounding the uniform one instead overstated a V
        placement's rank 0, which holds the first and the last stage)."""
        key = (c.pp, c.vpp, c.schedule)
        if key not in self._layout:
            owner = self._stage_to_rank(c)
            self._layout[key] = (default_partition(self.model, c), owner)
        return self._layout[key]

    def state_bound(self, c: ParallelConfig) -> float:
        """A lower bound of `memory_bound`, without its per-config work (unit activations, in-flight counts, FSDP
        buffers): `stage_memory`'s entry of pipeline rank 0 on the default partition with its activations,
        temporaries, FSDP unit buffers and fp8 weight cache taken as 0 (each is at least 0). What is left is read
        from the same functions: the rank's parameters (`stage_params`, `stage_expert_params`, split by
        `local_params`) times every byte `state_bytes_per_param` holds per parameter, plus the fixed bytes (the
        device's runtime overhead and `pipeline_buffer_floor`). Where the estimate counts either the gradients or the
        activations (one micro-batch, torch layout), the activations and temporaries it keeps are at least the
        gradients it drops, so this holds there too (tests/test_search.py checks it below `memory_bound`)."""
        return (self._state_bytes(c) + self.cluster.device.memory_overhead_bytes
                + pipeline_buffer_floor(self.model, c, self.execution))

    def _state_bytes(self, c: ParallelConfig) -> float:
        """Rank 0's parameters on the default partition times every byte `state_bytes_per_param` holds per
        parameter (weights, gradients, optimizer states, master copy; experts by their own bytes), less what the
        estimate may leave out of them (`root_reduced_grad_bytes` of the whole model's root; the gradients where a
        looped-bfs rank's chunks hold theirs one after another)."""
        layout = self.execution.memory_layout
        params, experts = local_params_of(c, *self._rank0_parameters(c))
        dense_bytes = state_bytes_per_param(c, layout, execution=self.execution)
        expert_bytes = state_bytes_per_param(c, layout, experts=True, execution=self.execution) if experts else None
        state = params * sum(dense_bytes) + (experts * sum(expert_bytes) if experts else 0.0)
        if layout == "torch":  # (the whole model's root is the largest a stage can have)
            state -= root_reduced_grad_bytes(c, root_unit_params(self.model, c)[0])
            if c.pp > 1 and schedule_spec(c.schedule).fsdp_gather_per_chunk and holds_unsharded_grads(c):
                # a rank's chunks never hold their whole gradients at once (`memory.deferred_rank_grad_bytes`)
                state -= params * dense_bytes[1] + (experts * expert_bytes[1] if experts else 0.0)
        return state

    def offload_floor(self, c: ParallelConfig, activations: bool, optimizer: bool) -> float:
        """A lower bound of what stays on the device of rank 0's entry (`rank0_memory`) when an offloading twin
        moves its activations (`activations`) and its weights, gradients and optimizer states (`optimizer`) off, as
        `_offload_twins` reckons it: the entry's "other" bytes, plus its activations unless moved, plus
        `_state_bytes` (at most its params, grads and optimizer) unless moved. The activations and other bytes are
        `stage_memory`'s own, read once for the layouts that differ only in the ZeRO stage and grad_reduce (which
        move only the state bytes and FSDP buffers). Under the torch layout with one micro-batch the estimate drops
        either the gradients or the activations and temporaries, depending on the state: there only the device's
        runtime overhead is certain."""
        if self.execution.memory_layout == "torch" and c.num_microbatches == 1:
            return self.cluster.device.memory_overhead_bytes
        key = _RESIDENT_FIELDS(c)
        if key not in self._resident:
            self.rank0_memory(c)  # (which remembers its resident bytes)
        resident_activations, other = self._resident[key]
        return (other + (0.0 if activations else resident_activations)
                + (0.0 if optimizer else self._state_bytes(c)))

    def known_floor(self, c: ParallelConfig) -> float | None:
        """`offload_floor` without either lever (a lower bound of `memory_bound`: the entry's other bytes, its
        activations and `_state_bytes`) where it costs no `stage_memory` call, that is where a layout differing
        from `c` only in the ZeRO stage and grad_reduce has had its entry; else None."""
        if self.execution.memory_layout == "torch" and c.num_microbatches == 1:
            return None
        resident = self._resident.get(_RESIDENT_FIELDS(c))
        return None if resident is None else resident[0] + resident[1] + self._state_bytes(c)

    def rank0_memory(self, c: ParallelConfig) -> dict:
        """cost/memory.stage_memory of pipeline rank 0 on the default partition (what `memory_bound` totals); the
        last one is remembered (the walk reads it again for the same candidate)."""
        if self._last_memory[0] == c:
            return self._last_memory[1]
        partition, owner = self._default_layout(c)
        inflight = schedule_inflight(c.schedule, c.pp, c.vpp, c.num_microbatches, rank=0, seq_chunks=c.seq_chunks)
        entry = stage_memory(self.model, self.cluster, c, partition, owner, inflight, self.execution.memory_layout,
                             ranks=[0], selective=selective_policy(c, self.execution),
                             execution=self.execution)[0]
        self._last_memory = (c, entry)
        self._resident.setdefault(_RESIDENT_FIELDS(c), (entry["activations"], entry["other"]))
        return entry


# Candidates the search refines (CP-SAT partition and placement) at the least, whatever number of plans it returns.
REFINED_AT_LEAST = 5


def search(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int, dtype: str,
           attention: str = "flash", fixed: dict | None = None, top_k: int = 5,
           execution: Execution = Execution(), refine: bool = True, partition_time_s: float = 1.0,
           placement_time_s: float = 5.0, launchable_only: bool = True) -> SearchResult:
    """The best `top_k` plans that fit, fastest first, with search statistics. At least REFINED_AT_LEAST
    candidates are refined whatever `top_k` asks, so the plans returned are the first of the same ranking (CP-SAT's
    partition can move a candidate ahead of a faster-looking one: with fewer refined, #1 depended on `top_k`).

    With `launchable_only`, layouts the bundled executor refuses (spec/support.py) are left out and counted.
    """
    start = time.perf_counter()
    shown, top_k = top_k, max(top_k, REFINED_AT_LEAST)
    fixed = normalise_fixed(fixed or {})
    if model.context_problem(seq_len):
        raise UserError(model.context_problem(seq_len))
    limit = cluster.usable_memory_bytes
    cache = _BoundCache(model, cluster, execution)
    launchable = 0
    bound_of: dict[ParallelConfig, float] = {}
    bound_by_fields: dict[tuple, float] = {}
    seen = unlaunchable = 0
    refused = None  # why the executor refused the first layout it refused
    # The stages worth telling apart (the executor runs ZeRO-1 exactly as ZeRO-2: one of them is enough unless the
    # user pins it).
    zero_stages = execution.zero_searched
    # Unless the user pins the recompute mode, a selective or full candidate recomputes only the fewest layers of
    # each stage that fit (solve/recompute.py), found when the walk reaches it: until then it is bounded as if it
    # recomputed none, then put back with the bound of its counts.
    per_stage = "recompute" not in fixed
    # Selective candidates run the framework's own policy and, where it runs others, each of them (the per-op policy
    # saves more and recomputes less than the attention core, or the reverse: the estimate decides).
    others = [p for p in execution.selective_policies if p != execution.selective_recompute]
    policies = (None, *others)
    pinned_offload = any(fixed.get(name) is True for name in OFFLOADS)  # the space offloads only where --fix says
    # A family's bound is at most each member's: the least bound of its members without recompute, which is at most
    # the bound of their twins that recompute (bounded with no layer recomputed: the same time bound, plus each
    # rank's own layers where it reads per-stage counts; tests/test_search.py checks it). Not so where activations
    # are offloaded (their copies shrink with recompute): there every member counts; nor for a member whose
    # selective policy takes context-parallel attention off torch's ring (`bound_of_fields`' note).
    relaxed = per_stage and not fixed.get("offload_activations")
    families: dict[tuple, list] = {}  # family fields -> [bound, [(order, config) of its launchable members]]
    # What the user chose and the executor does not run, a pinned schedule (dualpipe) or a precision recipe of
    # another framework (--dtype fp8-deepseek), is costed all the same, its plans marked not launchable.
    chosen_unrun = {schedule_spec(fixed["schedule"]).executor_note if "schedule" in fixed else None,
                    dtype_unsupported_reason(fixed.get("dtype", dtype))} - {None}

    def bound_of_fields(config: ParallelConfig) -> float:
        """The time bound a candidate enters the walk with (shared by the twins it does not read)."""
        # The bound does not read grad_reduce (reducing every micro-batch only adds to the step), so a layout and
        # its twin that reduces every micro-batch share one. Nor, while no layer recomputes, the recompute mode or
        # policy: their recompute time enters only times a count of 0, and without offloaded activations (whose
        # copies the policy sizes) the twins in selective and full recompute share one bound.
        unfitted = per_stage and config.recompute != "none" and not config.offload_activations
        # (under cp the policy also decides whether the attention runs torch's ring: `cp_ring.torch_ring`)
        fields = ((True, _UNFITTED_FIELDS(config), torch_ring(model, config, execution)) if unfitted
                  else _BOUND_FIELDS(config))
        if fields not in bound_by_fields:
            bound_by_fields[fields] = cache.time_bound(_bounded(config, per_stage and config.recompute != "none"))
        return bound_by_fields[fields]

    for config in candidates(model, cluster.world_size, cluster.devices_per_domain, global_batch, seq_len, dtype,
                             attention, fixed, zero_stages, policies, tp_cp_domain(cluster), execution.grad_reductions):
        seen += 1
        if pinned_offload and config.offloads:  # refused in one line on a profile without host facts
            check_offload(cluster, config)
        family = families.setdefault(_FAMILY_FIELDS(config), [math.inf, []])
        # (launchable or not: the bound reads neither); a recompute member is bounded apart where its policy takes
        # context-parallel attention off torch's ring, which its twin without recompute runs
        if not relaxed or config.recompute == "none" or (config.cp > 1 and not torch_ring(model, config, execution)):
            family[0] = min(family[0], bound_of_fields(config))
        reason = unsupported_reason(config) if launchable_only else None
        if reason and reason not in chosen_unrun:
            unlaunchable += 1
            refused = refused or reason
            continue
        family[1].append((launchable, config))
        launchable += 1
    if not launchable:
        if refused:
            raise UserError(f"every legal layout is one the executor cannot run: {refused}")
        raise UserError(_no_candidate_message(model, cluster, global_batch, seq_len, fixed, dtype, attention,
                                              execution))
    # A family enters the walk with its bound, the shared part of its members' keys (a proper prefix: smaller than
    # each of them) and its first member's order, so it leaves the heap before any of its members would have: the
    # walk pops the candidates in the same order as if every one had been in the heap from the start.
    scored = [(bound, ranking_key(members[0][1])[:_KEY_HEAD], members[0][0], members, FAMILY)
              for bound, members in families.values() if members]
    heapq.heapify(scored)  # by bound, then key; a candidate put back after fitting its recompute keeps its key

    def entries(members: list) -> list:
        """The walk's entries of a family's members: (bound, key, order, config, how far fitted)."""
        return [(bound_of_fields(config), ranking_key(config), order, config,
                 UNFITTED if per_stage and config.recompute != "none" else FITTED) for order, config in members]

    best: list[tuple[float, tuple, ParallelConfig, dict]] = []  # the K best extrapolated times: a max-heap (negated)
    near: list[tuple[float, tuple, ParallelConfig, dict]] = []  # every fitting candidate, with its (extrapolated) time
    pruned_memory = pruned_time = simulated = 0
    # (bytes over the limit, whether exact, config) of every candidate that does not fit, in walk order: exact where
    # they are the layout's own peak (every rank's memory), else at most that (rank 0's `memory_bound`, or the cheap
    # `state_bound` below it), worked out if nothing fits.
    misses: list[tuple[float, bool, ParallelConfig]] = []
    # Reducing every micro-batch costs time and saves memory: it is only worth simulating where its twin that
    # reduces once per step (sorted just before it: same bound, smaller key) did not fit.
    fitting_once = set()
    # Offload costs time and saves memory: it is weighed after the walk, for the candidates that did not fit and
    # those that fit only by recomputing layers, which offloading may let recompute fewer (`_offload_parents`).
    parents: list[tuple[float, tuple, ParallelConfig, Callable[[], dict]]] = []
    levers = _offload_levers(cluster, fixed)
    offloading = plans_offload(cluster)
    twins = 0  # offloading twins that joined the walk
    weighed_twins = 0  # offloading twins of the parents that entered the second walk (`_candidates_of`)
    same = 0  # recompute candidates whose fewest counts are none: their twin without recompute

    def does_not_fit(over: float, time_bound: float, key: tuple, config: ParallelConfig,
                     memory: Callable[[], dict], exact: bool = True,
                     floor: Callable[[bool, bool], float] | None = None) -> None:
        """Records a candidate `over` bytes beyond the limit (its busiest rank's, or at least that many without
        `exact`): a miss (the closest is the advice when nothing fits) and, where the cluster plans offload, the
        parent of offloading twins with its memory entry (`memory()`, asked only for the parents `_offload_twins`
        weighs) and, where given, a lower bound of what stays of that entry under each lever
        (`floor(activations, optimizer)`). An offloading twin that does not fit is neither."""
        if config.offloads:
            return
        misses.append((over, exact, config))
        if offloading:
            parents.append((time_bound, key, config, memory, floor))

    def memory_pruned(time_bound: float, key: tuple, config: ParallelConfig) -> bool:
        """Whether rank 0 of `config` exceeds the device: the cheap `state_bound` and `known_floor` first,
        `memory_bound` where they do not decide; a candidate that exceeds is recorded (`does_not_fit`)."""
        nonlocal pruned_memory
        # Lower bounds that cost no `stage_memory` call, each asked only where the one before does not decide: the
        # state bound, then the floor a twin in ZeRO stage / grad_reduce left (None where none has an entry).
        for lower_bound in (cache.state_bound, cache.known_floor):
            floor = lower_bound(config)
            if floor is not None and floor > limit:
                pruned_memory += 1
                does_not_fit(floor - limit, time_bound, key, config, functools.partial(cache.rank0_memory, config),
                             exact=False, floor=functools.partial(cache.offload_floor, config))
                return True
        entry = cache.rank0_memory(config)  # `memory_bound`'s entry
        if entry["total"] > limit:
            pruned_memory += 1
            does_not_fit(entry["total"] - limit, time_bound, key, config, lambda: entry, exact=False)
            return True
        return False

    def consider(time_bound: float, key: tuple, config: ParallelConfig) -> None:
        """Memory bound, then the (extrapolated) simulation; the K best that fit are kept."""
        nonlocal pruned_memory, simulated
        if memory_pruned(time_bound, key, config):  # only for the candidates the walk reaches
            return
        if config.offloads and cache.host_bound(config) > cluster.host["memory_bytes"]:
            pruned_memory += 1
            return  # (an offloading twin is no miss: `does_not_fit` records nothing for it)
        # Every rank's memory, the simulation's own (`layout_memory`): a layout that does not fit is recorded as the
        # simulation would have recorded it, without simulating it.
        memory = cache.layout_memory(config)
        peak = max(entry["total"] for entry in memory)
        if peak > limit:
            pruned_memory += 1
            does_not_fit(peak - limit, time_bound, key, config,
                         functools.partial(max, memory, key=operator.itemgetter("total")))
            return
        p = predict(model, cluster, config, execution=execution, detail=False, extrapolate=True)[3]
        simulated += 1
        if not p["fits"]:
            does_not_fit(p["peak_memory_bytes"] - limit, time_bound, key, config,
                         functools.partial(max, p["memory_per_stage"], key=operator.itemgetter("total")))
            return
        if config.grad_reduce == "step":
            fitting_once.add(key[:-1])
        # Every fitting candidate may come back: one simulated in full can tie (to the last bit) with an
        # extrapolated one that the heap kept on its key and whose full time is that bit longer.
        near.append((p["iteration_time_s"], key, config, p))
        item = (-p["iteration_time_s"], _negated(key), config, p)
        if len(best) < top_k:
            heapq.heappush(best, item)
        elif item > best[0]:
            heapq.heapreplace(best, item)

    def walk(heap: list) -> None:
        """Pops (bound, key, order, config, fitted) in bound order and `consider`s each until the K-th best time is
        below the next bound. A recompute candidate not yet fitted (`fitted` < FITTED) first gets the fewest
        recomputed layers of pipeline rank 0 (solve/recompute.py: a rank's count reads its own memory only, so
        these are its final counts and a lower bound of the others), and goes back with the bound of those counts
        (RANK0_FITTED); then the fewest of every rank, and goes back with the bound of all its counts (FITTED)."""
        nonlocal pruned_time, pruned_memory, twins, weighed_twins, unlaunchable, same
        weighed_twins += sum(_candidates_of(e) for e in heap if e[4] == OFFLOAD_PARENT)
        while heap:
            time_bound, key, order, config, fitted = heapq.heappop(heap)
            # Extrapolated times are at or above the full simulation, so the K-th best of them is at or above the
            # K-th best full time: a bound beyond it rules a candidate out.
            if len(best) >= top_k and time_bound >= -best[0][0]:
                pruned_time += sum(_candidates_of(e) for e in [*heap, (time_bound, key, order, config, fitted)])
                break
            if fitted == FAMILY:
                for entry in entries(config):
                    heapq.heappush(heap, entry)
                continue
            if fitted == OFFLOAD_PARENT:
                skipped = {"time": 0, "memory": 0, "unlaunchable": 0}
                for entry in _offload_twins(cache, launchable_only, (time_bound, key, order, config, fitted), limit,
                                            -best[0][0] if len(best) >= top_k else math.inf, bound_of, skipped,
                                            per_stage):
                    heapq.heappush(heap, entry)
                    twins += 1
                pruned_time += skipped["time"]
                pruned_memory += skipped["memory"]
                unlaunchable += skipped["unlaunchable"]
                continue
            if config.grad_reduce != "step" and key[:-1] in fitting_once:
                pruned_time += 1
                continue
            if fitted == UNFITTED:
                if memory_pruned(time_bound, key, config):  # rank 0 recomputing every layer: then no count fits
                    continue
                rank0 = fewest_counts(model, cluster, config, default_partition(model, config), execution, [0])
                if rank0 is not None and any(rank0):
                    tighter = cache.time_bound(replaced(config, recompute_layers=rank0))
                    if tighter > time_bound:
                        heapq.heappush(heap, (tighter, key, order, config, RANK0_FITTED))
                        continue
            if fitted != FITTED:
                counted = fewest_recomputed(model, cluster, config, default_partition(model, config), execution)
                if counted is None:
                    # Some rank does not fit even recomputing every layer: the estimate's own memory of the layout
                    # (every rank, the in-flight counts of its order) says so without a simulation.
                    pruned_memory += 1
                    memory = cache.memory(config)
                    largest = max(memory, key=operator.itemgetter("total"))
                    does_not_fit(largest["total"] - limit, time_bound, key, config,
                                 functools.partial(max, memory, key=operator.itemgetter("total")))
                    continue
                if counted.recompute == "none":
                    same += 1
                    continue  # needs no recompute: the same layout as its twin without recompute
                if offloading and not config.offloads:  # fits by recomputing: its twins may recompute fewer layers
                    parents.append((bound_of_fields(config), key, config,
                                    functools.partial(cache.rank0_memory, config), None))
                config = counted
                tighter = cache.time_bound(config)
                if tighter > time_bound:
                    heapq.heappush(heap, (tighter, key, order, config, FITTED))
                    continue
            consider(time_bound, key, config)

    walk(scored)
    # Offload is weighed after the walk, for the candidates that did not fit or fit only by recomputing, so the walk
    # over the others is unchanged: a second walk over their offloading twins, each parent's asked only when the
    # walk reaches it.
    walk(_offload_parents(cache, levers, parents, -best[0][0] if len(best) >= top_k else math.inf, per_stage))
    chosen = _ranked_by_full_simulation(model, cluster, execution, best, near, top_k)
    search_seconds = time.perf_counter() - start
    if refine:
        ranked = [_refine(model, cluster, config, execution, partition_time_s, placement_time_s, full_time,
                          per_stage) for full_time, config in chosen]
        ranked.sort(key=lambda plan: (plan.prediction["iteration_time_s"], ranking_key(plan.config)))
        ranked = _distinct(ranked)
    else:
        ranked = [estimate(model, cluster, config, execution=execution) for _, config in chosen]
    closest = None  # the miss whose busiest rank is least over
    for over, exact, config in sorted(misses, key=operator.itemgetter(0)) if not ranked else ():
        if closest is not None and over >= closest[0]:
            break  # (an inexact miss is at least `over` bytes over, and so is every one after it)
        over = over if exact else cache.layout_peak(config) - limit
        if closest is None or over < closest[0]:
            closest = (over, config)
    stats = {"candidates": seen, "unlaunchable": unlaunchable, "pruned_memory": pruned_memory,
             "pruned_time": pruned_time, "simulated": simulated, "feasible": len(ranked),
             "seconds": round(time.perf_counter() - start, 3),
             "search_seconds": round(search_seconds, 3), **({"offload_candidates": twins} if twins else {}),
             **({"offload_weighed": weighed_twins} if weighed_twins else {}),
             **({"same_as_another": same} if same else {})}
    ranked = ranked[:shown]
    for plan in ranked:  # (`estimate` marks those the executor refuses, with the reason)
        plan.prediction.setdefault("launchable", True)
    if ranked and ranked[0].config.recompute_layers is not None:
        ranked[0].prediction["recompute_per_stage"] = every_layer_comparison(model, cluster, ranked[0], execution)
    return SearchResult(ranked, stats, closest if not ranked else None)


def _distinct(plans: list[Plan]) -> list[Plan]:
    """`plans` without any plan equal to an earlier one in config, partition and placement. Two candidates can refine
    to one plan: a layout recomputing every layer whose per-stage counts come out at zero is its twin without
    recompute. So a search may return fewer plans than asked for, each of them different."""
    seen, out = set(), []
    for plan in plans:
        key = json.dumps([plan.config.to_dict(), plan.partition, plan.placement], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(plan)
    return out


def every_layer_comparison(model: ModelSpec, cluster: ClusterProfile, plan: Plan, execution: Execution) -> dict:
    """What recomputing per stage bought the plan: its counts, and the step time and peak memory of the same layout
    recomputing every layer (all or nothing per layer, as before per-stage counts)."""
    c = plan.config
    every = dataclasses.replace(c, recompute_layers=None)
    p = predict(model, cluster, every, partition=plan.partition, mesh=np.asarray(plan.placement["mesh"]),
                execution=execution, detail=False)[3]
    return {"layers": list(c.recompute_layers), "every_layer_iteration_time_s": p["iteration_time_s"],
            "every_layer_peak_memory_bytes": p["peak_memory_bytes"]}


def _ranked_by_full_simulation(model: ModelSpec, cluster: ClusterProfile, execution: Execution, best: list,
                               near: list, top_k: int) -> list[tuple[float, ParallelConfig]]:
    """The K best (full time, config), fastest first, from the K best extrapolated candidates of the walk: each of them
    simulated in full, and so is every other candidate whose extrapolated time comes within EXTRAPOLATION_MARGIN of
    the K-th best full time (an extrapolation exceeds the full simulation by at most that margin, so no candidate
    outside can be faster). The result is the K best by the full simulation whatever K is."""
    def full(config: ParallelConfig, prediction: dict | None = None) -> tuple[float, ParallelConfig]:
        if prediction is None or prediction.get("extrapolated"):
            prediction = predict(model, cluster, config, execution=execution, detail=False)[3]
        return prediction["iteration_time_s"], config

    ranked = sorted((full(config, p) for _, _, config, p in best), key=lambda it: (it[0], ranking_key(it[1])))
    chosen = {ranking_key(config) for _, config in ranked}
    for extrapolated, key, config, prediction in sorted(near, key=lambda it: (it[0], it[1])):
        if len(ranked) >= top_k and extrapolated >= ranked[-1][0] * (1 + EXTRAPOLATION_MARGIN):
            break
        if key in chosen:
            continue
        ranked.append(full(config, prediction))
        ranked.sort(key=lambda it: (it[0], ranking_key(it[1])))
        del ranked[top_k:]
        chosen = {ranking_key(config) for _, config in ranked}
    return ranked


def ranking_key(config: ParallelConfig) -> tuple:
    """How plans of equal predicted time are ordered (the same in the search, validate and the tests)."""
    return (config.tp, config.pp, config.dp, config.vpp, config.micro_batch_size, config.schedule,
            config.zero_stage, config.recompute, config.selective_recompute or "", config.sequence_parallel, config.ep,
            config.etp, config.offload_activations, config.offload_optimizer, config.seq_chunks, config.seq_split,
            config.cp, config.cp_comm,
            config.grad_reduce != "step")  # grad_reduce last: the search finds a layout's twin by key[:-1]


# How many leading fields of `ranking_key` are family fields (`_FAMILY_FIELDS`): a family's entry in the walk carries
# this head of its members' keys.
_KEY_HEAD = 6


def _offload_levers(cluster: ClusterProfile, fixed: dict) -> list[tuple[bool, bool]]:
    """The (offload_activations, offload_optimizer) combinations the search weighs beside a layout's own (neither):
    those --fix leaves open, none where the cluster plans no offload (cost/offload.py `plans_offload`)."""
    if not plans_offload(cluster):
        return []
    activations = [fixed["offload_activations"]] if "offload_activations" in fixed else [False, True]
    optimizer = [fixed["offload_optimizer"]] if "offload_optimizer" in fixed else [False, True]
    return [(a, o) for a in activations for o in optimizer if a or o]


def _bounded(config: ParallelConfig, relaxed: bool) -> ParallelConfig:
    """The config a walk entry's time bound is taken of: its twin reducing once per step (the bound does not read
    grad_reduce: reducing every micro-batch only adds to the step) and, `relaxed`, recomputing no layer yet (a
    candidate whose per-stage counts the walk fits when it reaches it)."""
    changes = {"grad_reduce": "step"} if config.grad_reduce != "step" else {}
    if relaxed:
        changes["recompute_layers"] = (0,) * config.num_stages
    return replaced(config, **changes) if changes else config


def _offload_parents(cache: "_BoundCache", levers: list[tuple[bool, bool]], parents: list,
                     cutoff: float, per_stage: bool = False) -> list[tuple]:
    """The walk's entries of the candidates that did not fit or fit only by recomputing layers (`parents`, in walk
    order, each with its bound, recomputing no layer where it fits by recomputing, and a call giving its memory
    entry) whose own bound is below `cutoff` (the K-th best time of the first walk): one entry per
    parent, standing for its offloading twins (each lever combination of `levers` the layout allows:
    offload_optimizer needs FSDP) until the walk pops it (`_offload_twins`). It enters with its own work on its
    busiest rank (`busy_bound`: at most each twin's, which offload_optimizer does not change and offloaded
    activations only lengthen with their copies, and below each twin's time bound) and its own key (below each
    twin's: the same fields but the offload levers, all off), so it leaves the heap before any of its twins would
    have, and the walk pops the twins in the same order as if every one had been in the heap from the start; a
    parent the walk never pops costs no memory entry and no time bound. Under `per_stage` a recompute parent is
    bounded recomputing no layer, as its twins that keep their activations are before their counts are fitted
    (`_offload_twins`)."""
    out = []
    for index, record in enumerate(parents if levers else ()):
        parent_bound, key, config = record[:3]
        if parent_bound >= cutoff:
            continue
        refits = per_stage and config.recompute != "none"
        allowed = [(activations, optimizer) for activations, optimizer in levers
                   if config.zero_sharded or not optimizer]
        if allowed:
            out.append((cache.busy_bound(_bounded(config, refits)), key, index, (record, allowed), OFFLOAD_PARENT))
    heapq.heapify(out)
    return out


def _offload_twins(cache: "_BoundCache", launchable_only: bool, entry: tuple, limit: float, cutoff: float,
                   bound_of: dict, skipped: dict[str, int], per_stage: bool) -> list[tuple]:
    """The walk's entries (time bound, key, order, config, how far fitted) of a parent's offloading twins worth walking
    (`entry`: its `_offload_parents` entry): each lever combination the layout allows whose twin can move enough off
    the device (at most the activations, or the weights, gradients and optimizer states) and whose bound is below
    `cutoff` (the K-th best time of the walk so far: nothing at or beyond it can enter the K best). A twin's work on
    its busiest rank (`busy_bound`, below its time bound) is checked first, as it is cheaper, then the parent's floor
    of what stays on the device where it has one (`_BoundCache.offload_floor`); the parent's memory entry is asked
    only then. Each twin left out is counted in `skipped` by why: "time", "memory" or "unlaunchable". Under
    `per_stage` a twin that recomputes and keeps its activations on the device enters UNFITTED, bounded as
    recomputing no layer, so the walk fits its fewest recomputed layers as it does its parent's (the parent did not
    fit, or fit only by recomputing layers the twin may not need); one that offloads activations keeps every layer
    recomputed (its copies shrink with recompute, so no count's bound is below the others')."""
    parent_busy, _, index, ((_, _, config, parent_memory, floor), allowed), _ = entry
    out = []
    memory = None
    busy = {False: parent_busy}  # the twins' busy bound by offload_activations (it does not read offload_optimizer)
    for activations, optimizer in allowed:
        if activations not in busy:
            busy[activations] = cache.busy_bound(replaced(config, offload_activations=activations))
        if busy[activations] >= cutoff:
            skipped["time"] += 1
            continue
        twin = replaced(config, offload_activations=activations, offload_optimizer=optimizer)
        if memory is None:
            if floor is not None and floor(activations, optimizer) > limit:
                skipped["memory"] += 1
                continue  # what stays is at least the floor
            memory = parent_memory()
        movable = (memory["activations"] if activations else 0.0) + (
            memory["params"] + memory["grads"] + memory["optimizer"] if optimizer else 0.0)
        if memory["total"] - movable > limit:
            skipped["memory"] += 1
            continue
        if launchable_only and unsupported_reason(twin):
            skipped["unlaunchable"] += 1
            continue
        refit = per_stage and twin.recompute != "none" and not activations
        if refit:
            twin = replaced(twin, recompute_layers=None)
        once = _bounded(twin, refit)
        if once not in bound_of:
            bound_of[once] = cache.time_bound(once)
        if bound_of[once] < cutoff:
            out.append((bound_of[once], ranking_key(twin), index, twin, UNFITTED if refit else FITTED))
        else:
            skipped["time"] += 1
    return out


def _candidates_of(entry: tuple) -> int:
    """How many candidates a walk entry stands for: a family its members, an offload parent the twins its levers
    allow (`_offload_parents`), any other one."""
    if entry[4] == FAMILY:
        return len(entry[3])
    if entry[4] == OFFLOAD_PARENT:
        return len(entry[3][1])
    return 1


def _negated(key: tuple) -> tuple:
    """Reverses tuple order for the max-heap so that ties keep the smallest key."""
    return tuple(-x if isinstance(x, (int, float)) else tuple(-ord(ch) for ch in x) for x in key)


def _refine(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, execution: Execution,
            partition_time_s: float, placement_time_s: float, default_time: float, per_stage: bool = False) -> Plan:
    """The detailed estimate of `config` with the CP-SAT placement and partition, each kept only where the (fast)
    estimate predicts it faster than the default and the plan still fits. `default_time` is the fast estimate of the
    default layout (the search's full simulation of a fitting config). With `per_stage`, each partition tried
    recomputes the fewest layers per stage that fit it (`fewest_recomputed`)."""
    from autoconf.solve.refine import refined_mesh, refined_partition_by_estimate

    def fast(partition=None, mesh=None) -> float:
        p = predict(model, cluster, config, partition=partition, mesh=mesh, execution=execution, detail=False)[3]
        return p["iteration_time_s"] if p["fits"] else float("inf")

    best_time, best_mesh, best_partition = default_time, None, None
    mesh = refined_mesh(model, cluster, config, execution, time_limit_s=placement_time_s)
    launchable = mesh is not None and node_blocks(mesh.flatten().tolist(), cluster.gpus_per_node) is not None
    if launchable and not np.array_equal(mesh, default_mesh(config)):
        t = fast(mesh=mesh)
        if t < best_time:
            best_time, best_mesh = t, mesh
    # With several stages per rank CP-SAT rarely improves on its greedy hint after the first fraction of a second.
    limit = partition_time_s if config.vpp == 1 else min(partition_time_s, 0.3)
    every = dataclasses.replace(config, recompute_layers=None) if per_stage else config
    best_partition, best_time = refined_partition_by_estimate(model, cluster, every, execution, best_mesh,
                                                              best_time, time_limit_s=limit, per_stage=per_stage)
    if per_stage and best_partition is not None:
        config = fewest_recomputed(model, cluster, every, best_partition, execution)
    return estimate(model, cluster, config, partition=best_partition, mesh=best_mesh, execution=execution)


_DEVICE_DEGREES = ("tp", "pp", "dp", "cp", "ep", "etp")  # each a divisor of the devices (ep x etp of a pipeline rank's)


def _no_candidate_message(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int,
                          fixed: dict, dtype: str = "bf16", attention: str = "flash",
                          execution: Execution = Execution()) -> str:
    """Why no layout honours `fixed`: a pinned degree that cannot divide the devices, named with the degrees that
    can (cp: those that also split the sequence); a pinned cp that cannot split the sequence (`cp_split_problem`);
    a pin that no layout honouring the others can take (`_conflicting_pin`); else the pins and the global batch to
    change."""
    world = cluster.world_size
    pinned = {k: v for k, v in normalise_fixed(fixed).items() if k in _DEVICE_DEGREES and isinstance(v, int)}
    for name, value in pinned.items():
        if world % value:
            usable = ", ".join(str(d) for d in range(1, world + 1)
                               if world % d == 0 and (name != "cp" or not cp_split_problem(seq_len, d)))
            return f"--fix {name}={value}: {name} must divide the {world} devices (use {name} in {usable})"
    product = math.prod(pinned.get(k, 1) for k in ("tp", "pp", "dp", "cp"))
    if world % product:
        pins = " ".join(f"{k}={pinned[k]}" for k in ("tp", "pp", "dp", "cp") if k in pinned)
        return f"--fix {pins}: tp x pp x dp x cp = {product} must divide the {world} devices"
    split = cp_split_problem(seq_len, pinned.get("cp", 1), world)
    if split:
        return f"--fix cp={pinned['cp']}: {split}"
    conflict = _conflicting_pin(model, cluster, global_batch, seq_len, normalise_fixed(fixed), dtype, attention,
                                execution)
    if conflict:
        return conflict
    hints = []
    if fixed:
        hints.append("drop or change --fix " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    hints.append(f"use a global batch divisible by the data-parallel degrees the {cluster.world_size} devices allow")
    return (f"no legal layout of {model.name} on {cluster.world_size} devices with global batch {global_batch}"
            + (f" and {fixed}" if fixed else "") + "; " + "; or ".join(hints))


def _conflicting_pin(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int, fixed: dict,
                     dtype: str, attention: str, execution: Execution) -> str | None:
    """The first pin that no layout honouring the other pins can take, with the rule it breaks: the first such
    layout with the pin put back, and what `ParallelConfig.problems` (or the executor, or the framework) says of
    it. None when every pin alone is to blame for nothing (then the batch or several pins together are)."""
    if len(fixed) < 2:
        return None
    world = cluster.world_size
    for key, value in fixed.items():
        rest = {k: v for k, v in fixed.items() if k != key}
        try:
            witness = next(iter(candidates(model, world, cluster.devices_per_domain, global_batch, seq_len, dtype,
                                           attention, rest, execution.zero_searched,
                                           tp_cp_domain=tp_cp_domain(cluster),
                                           reductions=execution.grad_reductions)), None)
        except UserError:
            continue
        if witness is None:
            continue
        others = " ".join(f"{k}={v}" for k, v in rest.items())
        changes = {key: value}
        if key in ("tp", "pp", "cp") and "dp" not in fixed:  # the data-parallel degree fills the devices again
            rest_degrees = math.prod(value if k == key else getattr(witness, k) for k in ("tp", "pp", "cp"))
            if world % rest_degrees:
                continue
            changes["dp"] = world // rest_degrees
        if key == "schedule" and "vpp" not in fixed and value in SCHEDULES:  # the chunks per rank it runs with
            changes["vpp"] = schedule_spec(value).chunks[0]
        try:
            probe = dataclasses.replace(witness, **changes)
        except (TypeError, ValueError):
            return f"--fix {key}={value} cannot be taken together with --fix {others}; drop or change one of them"
        why = (probe.problems(model, world) or [unsupported_reason(probe, model) or execution.problem(probe)])[0]
        if why and "global batch" in why:
            return None  # the batch is to blame: the caller's line says so
        return (f"--fix {key}={value} cannot be taken together with --fix {others}"
                + (f": {why}" if why else "; drop or change one of them"))
    return None


def explain_infeasible(model: ModelSpec, cluster: ClusterProfile, result: SearchResult, global_batch: int,
                       seq_len: int, dtype: str, attention: str, fixed: dict,
                       execution: Execution = Execution()) -> str:
    """One line: the closest candidate's shortfall, and the smallest change that makes some layout fit."""
    fixed = normalise_fixed(fixed)
    if result.closest is None:  # (no candidate was weighed at all)
        pins = " ".join(f"--fix {k}={v}" for k, v in fixed.items())
        return (f"no legal layout of {model.name} on {cluster.world_size} devices honours {pins or 'the request'}; "
                f"drop or change a pin")
    over, config = result.closest
    plan = estimate(model, cluster, config, execution=execution, detail=False)
    memory = plan.prediction["memory_per_stage"]
    rank = max(range(len(memory)), key=lambda r: memory[r]["total"])
    over = memory[rank]["total"] - cluster.usable_memory_bytes
    need, limit, over = gib_figures(memory[rank]["total"], cluster.usable_memory_bytes, over)
    message = (f"no layout fits in {cluster.memory_limit_phrase(limit)}: the closest "
               f"({config.label(selective_policy(config, execution))}) needs {need} GiB on pipeline rank {rank}, "
               f"{over} GiB over")
    found = smallest_fitting_change(model, cluster, config, execution, allowed=lambda changes: not any(
        k in fixed and fixed[k] != v for k, v in changes.items() if v is not None))
    if found:  # (the levers of `estimate`'s advice, named as --fix keys)
        return message + "; it fits with " + " and ".join(f"{k}={v}" for k, v in found[1].items() if v is not None)
    for factor in (2, 4, 8, 16, 32, 64):
        bigger = cluster.resized(nodes=cluster.nodes * factor)
        cache = _BoundCache(model, bigger, execution)
        for config in candidates(model, bigger.world_size, bigger.devices_per_domain, global_batch, seq_len, dtype,
                                 attention, fixed, execution.zero_searched, tp_cp_domain=tp_cp_domain(bigger),
                                 reductions=execution.grad_reductions):
            if unsupported_reason(config) or execution.problem(config) or any(
                    bound(config) > bigger.usable_memory_bytes for bound in (cache.state_bound, cache.memory_bound,
                                                                            cache.layout_peak)):
                continue
            if estimate(model, bigger, config, execution=execution, detail=False).prediction["fits"]:
                layout = config.label(selective_policy(config, execution))
                return message + (f"; the smallest change that fits: {bigger.nodes} nodes "
                                  f"({bigger.world_size} devices), e.g. {layout}")
    return message + "; nothing tried fits (more devices up to 64x, full recompute, ZeRO-3): use a bigger device"
