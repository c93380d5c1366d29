"""The search's closed-form lower bounds of a candidate's step time and memory (`BoundCache`), each read from the
estimate's own functions (cost/*) on the default partition and mesh, with the pieces they share remembered by the
fields they read, so the millions of candidates of a large search cost each piece once.

A bound is at or below what the estimate predicts for the same config (tests/test_search.py checks it over every
schedule, model kind and lever); `solve/search.py` walks the candidates in the order of these bounds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from autoconf.cost.comm import distinct_pair_sets, p2p_time
from autoconf.cost.cp_ring import torch_ring
from autoconf.cost.compute import PassTimes, measured_tp_layer, model_pieces, rank_optimizer_time
from autoconf.cost.estimate import (Execution, cp_attention_comm, default_mesh, default_partition, dp_collectives,
                                    exposed_dp, moe_attention_tp_only, moe_mlp_collectives_kept, overlapped_tp_layer,
                                    p2p_bytes, recompute_time, regathers_every_forward, schedule_inflight,
                                    selective_gather_share, selective_matmul_share, selective_matmuls_only,
                                    step_collectives, tp_collective, tp_overlap_gemms, tp_sp_collectives)
from autoconf.cost.memory import (holds_unsharded_grads, layer_activation_bytes, pipeline_buffer_floor, rank_params,
                                  root_reduced_grad_bytes, root_unit_params, stage_memory, state_bytes_per_param)
from autoconf.cost.moe import ep_comm_passes, layer_kind_params, layer_kinds, moe_layers, smallest_layer_params
from autoconf.cost.moe import local_params as local_params_of
from autoconf.cost.offload import activation_copy_bytes, activation_copy_times, host_memory_per_node, host_state_bytes
from autoconf.solve.space import replaced
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import precision
from autoconf.spec.frameworks import ATTENTION_GEMMS, TP_OVERLAP_GEMMS, overlaps_pairs, selective_policy
from autoconf.spec.grid import RankGrid, expert_groups
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.schedules import schedule_spec, stage_to_rank

# Every config field but the ZeRO stage and grad_reduce: what rank 0's activations and other bytes read
# (`BoundCache.offload_floor` shares them between the layouts that differ only there; `_resident_key` adds the ZeRO
# stage under a dynamic-scaling fp8 dtype).
RESIDENT_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ParallelConfig)
                                        if f.name not in ("grad_reduce", "zero_stage")))
# Every config field but grad_reduce, the optimizer's offload, the ZeRO stage and the per-stage recompute counts: at
# least what `BoundCache._blocks_work` and `_end_pieces` read (the ZeRO sharding only through a dynamic-scaling fp8
# dtype's weight casts, which `_work_key` adds), so twins that differ only there share one.
WORK_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ParallelConfig)
                                    if f.name not in ("grad_reduce", "offload_optimizer", "zero_stage",
                                                      "recompute_layers")))
# The most entries each memo by `BoundCache._work_key` keeps (`_blocks_work`, `_end_pieces`, `busy_bound`): twins
# that share one are met close together (a family's members in turn, an offloading parent's twins at once), so a memo
# starts again when full instead of holding every key of a search of millions of candidates (GPT-OSS-120B at 128k on
# 64 GPUs peaked 300 MiB higher without a limit).
MEMO_ENTRIES = 1 << 15


def remembered(memo: dict, key, make: Callable[[], object]):
    """memo[key], made by `make()` where it is missing; a memo holding MEMO_ENTRIES starts again first."""
    if key not in memo:
        if len(memo) >= MEMO_ENTRIES:
            memo.clear()
        memo[key] = make()
    return memo[key]


@dataclass(frozen=True)
class Bounds:
    time_s: float
    memory_bytes: float


class BoundCache:
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
               c.seq_chunks, c.compiles_blocks(self.cluster.device.kind), torch_ring(self.model, c, self.execution),
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
            # MoE layers of a sequence-sharded dispatch without shared experts run the attention's collectives only
            routed_only = moe_attention_tp_only(self.model, self.execution)
            overlap = self.execution.tp_comm_overlap and c.sequence_parallel and c.tp > 1
            if overlap:
                # what the GEMMs leave exposed, per collective: bound by the smaller pass
                exposed = overlapped_tp_layer(*tp_sp_collectives(self.model, self.cluster, c, list(range(c.tp))),
                                              tp_overlap_gemms(self.model, self.cluster, c, self.execution), c.tp,
                                              ATTENTION_GEMMS if routed_only else TP_OVERLAP_GEMMS)
                self._tp[key] = min(exposed.forward, exposed.backward_input) / 2
            elif measured is not None:  # the estimate charges each pass its own measured side: bound by the smaller
                self._tp[key] = min(measured[0].forward, measured[0].backward_input) / 2
            else:
                self._tp[key] = one / (2 if routed_only else 1)
            if self.model.moe is not None and c.tp > 1 and self.execution.moe_tp_token_share:
                # MoE layers routing token shares may run less of the MLP's collective (`estimate.moe_tp_change`):
                # bound every block by the attention's and the least the MoE layers keep.
                self._tp[key] *= (1 + min(moe_mlp_collectives_kept(self.model, c))) / 2
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
        key = (c.tp, c.cp, c.pp, c.dp, c.zero_sharded, c.zero_stage, owner[0], owner[-1])
        if key not in self._step:
            self._step[key] = step_collectives(self.model, self.cluster, c, RankGrid(default_mesh(c)), owner,
                                               self.execution)
        return self._step[key]

    def bounds(self, c: ParallelConfig) -> Bounds:
        """Lower bounds on the simulated iteration time and on the peak memory (`time_bound`, `memory_bound`)."""
        return Bounds(self.time_bound(c), self.memory_bound(c))

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
            busiest = max(busiest, self._end_ranks_work(c, rank_work))
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
        # Of rank 0's own gather and reduction, the execution's buckets leave at least these exposed (a gather in
        # every forward instead, `regathers_every_forward`, runs beside it and exposes none for certain).
        first_gather, last_reduce = exposed_dp(self.execution,
                                               0.0 if regathers_every_forward(c, self.execution) else gather_once,
                                               reduce,
                                               self._fewest_block_params(c, per_stage_layers)
                                               + self._stage_experts(c, per_stage_layers)[1],
                                               per_stage_layers, c.dp_cp)
        compute_path = first_gather + max(busy + idle, busiest) + last_reduce
        # Micro-batch 0 passes every stage forward and backward in turn, hopping ranks between stages.
        every = run(model.num_layers, 0, 2 * one) + run(model.num_layers, 1, 2 * one)
        chain = every + run(total_rc, 3) + 2 * S * overhead + 2 * hops * p2p
        return max(compute_path, comm_stream, chain) + self._step_comm(c) + optimizer + self._overheads[1]

    def _work_key(self, c: ParallelConfig) -> tuple:
        """At least what `_blocks_work` and `_end_pieces` read of `c` (`WORK_FIELDS`, the ZeRO sharding under a
        dynamic-scaling fp8 dtype: `_layer`'s note, and which CP attention the blocks run: `_attention_mode`)."""
        return (WORK_FIELDS(c), c.zero_sharded if precision(c.dtype).dynamic_scaling else None,
                self._attention_mode(c))

    def _attention_mode(self, c: ParallelConfig) -> bool | str:
        """Whether `c`'s blocks run torch's context-parallel ring (`cp_ring.torch_ring`), or "either" for per-stage
        counts of 0 where any count above 0 would take the attention off the ring (the executor's per-op policy
        runs its own CP attention in a block that recomputes, `frameworks.executor_torch_cp`): the search bounds a
        candidate whose counts it has not fitted yet with counts of 0 (`search._bounded`), so the blocks' times are
        then the lesser of the two attentions', a lower bound whichever counts come."""
        ring = torch_ring(self.model, c, self.execution)
        if (ring and c.cp > 1 and c.recompute_layers is not None and not any(c.recompute_layers)
                and not torch_ring(self.model, replaced(c, recompute_layers=None), self.execution)):
            return "either"
        return ring

    def _blocks_work(self, c: ParallelConfig) -> Callable[..., float]:
        """run(layers, index, extra=0): a lower bound of term `index` of `_kind_layers` (0 forward, 1 input
        backward, 2 weight backward, 3 recompute) summed over any `layers` of the model's blocks, plus `extra` per
        block: MoE blocks with their exposed token exchange (`_exposed_exchange`); of a model with dense and MoE
        blocks, `_layers_sum`. Remembered by `_work_key`."""
        return remembered(self._work, self._work_key(c), functools.partial(self._made_work, c))

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
                   gather: float = 0.0) -> Callable[..., float]:
        """work(layers, recomputed, ends): a rank's forward and backward over `layers` blocks (`run`, `_blocks_work`;
        two TP collectives `one` each per pass), `recomputed` of them recomputed, and the embedding or head pieces
        `ends` (forward, input backward, weight backward) it runs beside them, for each of `units`; each pass with
        the `overhead` of the rank's stages and at least their FSDP `gather`, which hides behind the pass's blocks
        and end pieces together (the estimate's `stage_plan`: `beside(pass, gather)`)."""
        def work(layers: float, recomputed: float, ends: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> float:
            forward, backward, weight = ends
            return units * (max(run(layers, 0, 2 * one) + overhead + forward, gather)
                            + max(run(layers, 1, 2 * one) + run(recomputed, 3) + overhead + backward, gather)
                            + run(layers, 2) + weight)
        return work

    def _end_ranks_work(self, c: ParallelConfig, rank_work: Callable[..., float]) -> float:
        """The work of the default partition's ranks holding the first and the last stage (`rank_work` of their
        own layers and recomputed layers), the first also running the embedding and the last the head and the loss
        in each unit's passes, as the estimate's `stage_plan` adds them: the longer of the two."""
        owner, layers = self._stage_to_rank(c), self._rank_layers(c)
        recomputed = layers if c.recompute_layers is None else self._rank_recomputed(c)
        embedding, head = self._end_pieces(c)
        first, last = owner[0], owner[-1]
        if first == last:
            return rank_work(layers[first], recomputed[first], tuple(e + h for e, h in zip(embedding, head)))
        return max(rank_work(layers[first], recomputed[first], embedding),
                   rank_work(layers[last], recomputed[last], head))

    def _end_pieces(self, c: ParallelConfig) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(embedding, head with its loss) seconds per unit of `c` (`_layer`'s pieces) as (forward, input backward,
        weight backward), remembered by `_work_key`, which holds every field `_layer` reads."""
        def made() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
            pieces = self._layer(c)
            return tuple((p.forward, p.backward_input, p.backward_weight) for p in (pieces.embedding, pieces.head))
        return remembered(self._ends, self._work_key(c), made)

    def busy_bound(self, c: ParallelConfig, recomputing_none: bool = False) -> float:
        """A lower bound on the step, cheaper than `time_bound` and below it: every micro-batch through the
        ceil(L/pp) layers of the busiest rank, forward and backward, with the least rank's recomputed layers, or
        through the first and the last stage's ranks with the embedding and the head (`time_bound`'s compute path
        holds both, with the passes' overheads and FSDP gathers that this leaves out). With `recomputing_none`, of
        `c` recomputing no layer (per-stage counts of 0). Remembered by what it reads (`_work_key`, and the
        per-stage recompute counts), so a twin that differs elsewhere (grad_reduce, the ZeRO stage) shares it."""
        counts = (0,) * c.num_stages if recomputing_none else c.recompute_layers
        target = replaced(c, recompute_layers=counts) if counts != c.recompute_layers else c
        return remembered(self._busy, (self._work_key(target), counts), lambda: self._made_busy(target))

    def _made_busy(self, c: ParallelConfig) -> float:
        """`busy_bound`, worked out afresh."""
        run, one = self._blocks_work(c), self._tp_collective(c)
        units = c.num_microbatches * c.seq_chunks  # seq1f1b: sequence chunks
        rank_work = self._rank_work(run, one, units)
        rank_layers = self._busiest_layers(c)
        work = rank_work(rank_layers, self._recomputed(c, self._smallest_stage(c), rank_layers)[1])
        if schedule_spec(c.schedule).directions == 1:
            work = max(work, self._end_ranks_work(c, rank_work))
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
        copies of offload_activations (on the compute stream; of a layer's bytes under the recompute mode or
        without recompute, whichever is fewer: per-stage counts leave some layers unrecomputed, and a policy may
        keep more than no recompute, as torchtitan's per-op one does on Qwen3-30B-A3B's MoE blocks at 512 tokens,
        tests/test_moe_cost.py) and exposed CP K/V exchange."""
        key = (c.tp, c.cp, c.cp_comm, c.micro_batch_size, c.sequence_parallel, c.dtype, c.attention, c.seq_len,
               c.recompute, c.ep, c.etp, c.offload_activations, c.selective_recompute, c.seq_chunks, c.compile,
               (c.zero_sharded, c.dp_cp) if precision(c.dtype).dynamic_scaling else None,  # (`_layer`'s note)
               self._attention_mode(c))
        if key in self._layers:
            return self._layers[key]
        if self._attention_mode(c) == "either":  # the lesser of torch's ring and the executor's own attention
            ring, own = self._layer_terms(c), self._kind_layers(replaced(c, recompute_layers=None))
            self._layers[key] = {moe: tuple(map(min, ring[moe], own[moe])) for moe in ring}
        else:
            self._layers[key] = self._layer_terms(c)
        return self._layers[key]

    def _layer_terms(self, c: ParallelConfig) -> dict[bool, tuple[float, float, float, float]]:
        """`_kind_layers` of `c`, worked out afresh with the attention `c` itself runs."""
        one = self._tp_collective(c)
        gathers = selective_gather_share(self.model, self.cluster, c, list(range(c.tp)))
        kinds = [self._layer(c).kind(moe) for moe in layer_kinds(self.model)]
        plain = dataclasses.replace(c, recompute="none", recompute_layers=None)
        copies = [activation_copy_times(self.cluster, activation_copy_bytes(c, min(layer_activation_bytes(
            self.model, kept, self.execution.memory_layout, self.cluster.device.kind,
            selective=selective_policy(kept, self.execution), moe=moe, execution=self.execution)
            for kept in (c, plain)))) for moe in layer_kinds(self.model)]
        cp = PassTimes(0.0, 0.0, 0.0)
        if c.cp > 1:  # the estimate's exposed K/V exchange, on the default mesh's first CP group
            cp = cp_attention_comm(self.model, self.cluster, c, np.arange(c.cp) * c.tp,
                                   self._layer(c).attention_core, self.execution)
        return {moe: (p.block.forward + f + cp.forward, p.block.backward_input + b + cp.backward_input,
                      p.block.backward_weight + cp.backward_weight,
                      recompute_time(p, c, one, selective_matmul_share(self.model, c, self.execution, moe),
                                     selective_matmuls_only(c, self.execution), gathers)
                      + (cp.forward if c.recompute == "full" else 0.0))
                for p, (f, b), moe in zip(kinds, copies, layer_kinds(self.model))}

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
            self._rank0_params[key] = rank_params(self.model, partition, stages, self.execution.memory_layout)
        return self._rank0_params[key]

    def memory_bound(self, c: ParallelConfig) -> float:
        """The estimate's own memory of pipeline rank 0 (cost/memory.stage_memory on the default partition, with the
        in-flight counts the estimate reads off the schedule's order): the estimate's peak is the largest rank's."""
        return self.rank0_memory(c)["total"]

    def host_bound(self, c: ParallelConfig) -> float:
        """A lower bound on an offloading plan's host bytes per node (cost/offload.py's rule on pipeline rank 0;
        the estimate takes the busiest rank); 0 without offload."""
        return host_memory_per_node(self.cluster, [self.rank0_memory(c).get("host", 0.0)])

    def host_floor(self, c: ParallelConfig) -> float:
        """A lower bound of `host_bound` without its `stage_memory` call: the host state bytes of pipeline rank 0's
        parameters (`host_state_bytes` of the rank's `local_params`, as `stage_memory` counts them), its
        offloaded activations taken as 0; 0 without offload."""
        if not c.offloads:
            return 0.0
        state = host_state_bytes(c, self.execution.memory_layout, self.execution,
                                 *local_params_of(c, *self._rank0_parameters(c)))
        return host_memory_per_node(self.cluster, [state])

    def beyond_host(self, c: ParallelConfig, every_rank: bool = False) -> bool:
        """Whether an offloading layout needs more host memory per node than its node has: by rank 0's host bytes
        (`host_bound`) or, with `every_rank`, by the busiest rank's (`layout_host`, the estimate's own), the cheap
        `host_floor` asked first; False without offload."""
        limit = self.cluster.host["memory_bytes"] if c.offloads else None
        return c.offloads and (self.host_floor(c) > limit
                               or (self.layout_host(c) if every_rank else self.host_bound(c)) > limit)

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

    def layout_host(self, c: ParallelConfig) -> float:
        """An offloading layout's host bytes per node of `layout_memory`: the estimate's own
        `host_memory_per_node_bytes` of the default layout, without simulating it; 0 without offload."""
        if not c.offloads:
            return 0.0
        return host_memory_per_node(self.cluster, [entry["host"] for entry in self.layout_memory(c)])

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
        key = self._resident_key(c)
        if key not in self._resident:
            self.rank0_memory(c)  # (which remembers its resident bytes)
        resident_activations, other = self._resident[key]
        return (other + (0.0 if activations else resident_activations)
                + (0.0 if optimizer else self._state_bytes(c)))

    @staticmethod
    def _resident_key(c: ParallelConfig) -> tuple:
        """What rank 0's activations and other bytes read of `c`: `RESIDENT_FIELDS`, and under a dynamic-scaling fp8
        dtype the ZeRO stage too (its weight casts' buffers depend on the sharding: an audit found a ZeRO-1 entry's
        other bytes 70 MB above its ZeRO-0 twin's under seq1f1b, which `known_floor` then charged the twin)."""
        return RESIDENT_FIELDS(c), c.zero_stage if precision(c.dtype).dynamic_scaling else None

    def known_floor(self, c: ParallelConfig) -> float | None:
        """`offload_floor` without either lever (a lower bound of `memory_bound`: the entry's other bytes, its
        activations and `_state_bytes`) where it costs no `stage_memory` call, that is where a layout differing
        from `c` only in the ZeRO stage and grad_reduce has had its entry; else None."""
        if self.execution.memory_layout == "torch" and c.num_microbatches == 1:
            return None
        resident = self._resident.get(self._resident_key(c))
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
        self._resident.setdefault(self._resident_key(c), (entry["activations"], entry["other"]))
        return entry


