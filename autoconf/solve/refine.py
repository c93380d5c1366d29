"""Turns one config into the inputs of the CP-SAT partition and placement solvers, and their answers back.

Partition units are the embedding, each transformer layer, and the head with the loss; each is costed with the same
pieces the estimate uses (compute, the TP collectives inside it, recompute), so the stages that hold the vocabulary
layers get fewer transformer layers when that balances time or memory.
"""

from __future__ import annotations

import numpy as np

from autoconf.cost.compute import model_pieces, seq_chunk_bounds, side_kernels_time
from autoconf.cost.comm import collective_time
from autoconf.cost.estimate import (Execution, cp_attention_comm, cp_exchange_bytes, default_mesh, dp_buffer_bytes,
                                    moe_attention_tp_only, p2p_bytes, recompute_time, schedule_inflight,
                                    selective_gather_share,
                                    selective_matmul_share, selective_matmuls_only, tp_collective)
from autoconf.cost.memory import (Temporary, fp8_weight_cache_bytes, hidden_state_bytes, holds_word_embedding,
                                  layer_activation_bytes, megatron_fsdp_runs, mtp_kept_bytes, pipeline_buffer_bytes,
                                  root_unit_params, seq_chunk_kv_bytes, seq_chunk_scales, state_bytes_per_param,
                                  temporary_terms, unit_activation_bytes, unsharded_buffer_bytes, vocab_grad_early)
from autoconf.cost.moe import (block_local_params, blocks_params, dispatch_bytes, dispatch_shares, ep_comm_passes,
                               local_params, moe_layers)
from autoconf.cost.mtp import mtp_embedding_copy, mtp_pass_times, mtp_stage_params
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.frameworks import selective_policy
from autoconf.spec.grid import RankGrid, expert_groups
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, min_stage_layers
from autoconf.spec.schedules import schedule_spec, stage_to_rank


def partition_problem(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution):
    """The partition units with the estimate's own costs: time from the same pieces, bytes from cost/memory.py's
    functions, term by term as `memory.stage_memory` adds them: state bytes per parameter (offloaded optimizer
    state excluded, `state_bytes_per_param`), activations per unit (none of the blocks' on the device under
    offload_activations: they are in host memory), the in-flight counts of the schedule's order
    (`estimate.schedule_inflight`, fractional as the estimate's), the temporaries with the facts under which a rank
    holds them (`memory.temporary_terms`: the logits, the CP K/V buffer, a recomputed block rebuilt, the MoE
    all-to-all buffers, an offloaded block copied back; `PartitionProblem.temporaries`), and off each rank's limit
    the runtime overhead, the pipeline buffers and the FSDP gather buffers of its stages. Recompute is charged per
    stage as the plan's `recompute_layers` say (every layer when None): a layer's time and activations without
    recompute, and what recomputing it adds and saves. Under seq1f1b (`seq_chunks` > 1) each layer also keeps the
    earlier chunks' K/V per chunk in flight (what recomputing the layer frees of them with the rest) and their
    gradients (`memory.seq_chunk_kv_bytes`), and the split's
    `memory.seq_chunk_scales` weigh each rank's in-flight activations (`activation_scale`; the torch layout's K/V
    copies unweighed, as the estimate's) and the temporaries.

    With one micro-batch per step in the torch layout the gradients come into existence as the activations go:
    the rank's peak counts the larger of its gradients and its activations plus temporary
    (`PartitionProblem.unit_gradient_bytes`, as `stage_memory`).

    So a rank's bytes under a partition (`partition.evaluate_partition`, plus what its limit leaves out) are
    `stage_memory`'s "total" for the same in-flight counts, to float rounding (tests/test_partition_memory.py),
    except in two rules, where they are an upper bound: a stage's FSDP buffers are counted as those of a stage of
    two or more blocks whose last block is of the kind with the larger buffer (`unsharded_buffer_bytes`: a chunk
    of one block holds less; ZeRO-1/2 keep the all-gather output of the chunk's last unit; a rank of several chunks
    whose reductions torch's runtime defers holds the whole gradient of each, `memory.deferred_rank_grad_bytes`
    less), and under one backward with seq1f1b's work split the estimate weighs the gradients against the mean
    chunk's temporary but counts the longest chunk's."""
    from autoconf.solve.partition import PartitionProblem

    layout, kind, policy = execution.memory_layout, cluster.device.kind, selective_policy(c, execution)
    pieces = model_pieces(model, cluster, c, execution=execution)
    one = tp_collective(model, cluster, c, list(range(c.tp)))
    share = selective_matmul_share(model, c, execution)
    only = selective_matmuls_only(c, execution)
    gathers = selective_gather_share(model, cluster, c, list(range(c.tp)))
    # (each block's side kernels too: FSDP2's copies, the gradient accumulation; `estimate.stage_plan`'s)
    layer_time = pieces.block.total + side_kernels_time(model, cluster, c, execution).total + 4 * one
    layer_rc = recompute_time(pieces, c, one, share, only, gathers)
    cp_time = cp_rc = 0.0
    if c.cp > 1:  # every block's attention exchanges K/V over the CP group (again in a full recompute's forward)
        cp = cp_attention_comm(model, cluster, c, np.arange(c.cp) * c.tp, pieces.attention_core, execution)
        cp_time, cp_rc = cp.total, (cp.forward if c.recompute == "full" else 0.0)
        layer_time, layer_rc = layer_time + cp_time, layer_rc + cp_rc
    per_param = sum(state_bytes_per_param(c, layout, execution=execution))
    offloaded = c.offload_activations  # the blocks' saved activations live in host memory
    block_per_param = per_param + fp8_weight_cache_bytes(c, execution)
    head_params = model.head_params() + (model.vocab_size * model.hidden_size if model.tied_embeddings else 0)
    embedding, layer, head = unit_activation_bytes(model, c, layout, kind, policy, execution)
    layer_plain = layer_activation_bytes(model, c, layout, kind, "none", policy, execution=execution)
    # One rank's parameters of a dense block, of the embedding, of the head (and a tied embedding's copy there).
    dense_part = block_local_params(model, c, moe=False)[0]
    embedding_part = local_params(c, model.embedding_params(), 0.0, model.tp_replicated_params("embedding"))[0]
    head_part = local_params(c, head_params, 0.0, model.tp_replicated_params("head"))[0]
    layer_static = dense_part * block_per_param if model.moe is None else 0.0
    n = model.num_layers
    bounds = seq_chunk_bounds(model, cluster, c, execution) if c.seq_chunks > 1 else None
    kv_cache, kv_grads = seq_chunk_kv_bytes(model, c, layout, bounds, selective=policy)
    kv_saved = kv_cache - seq_chunk_kv_bytes(model, c, layout, bounds, True, policy)[0]  # what recomputing frees
    scales = [seq_chunk_scales(c, bounds, layout, r) if bounds else (1.0, 1.0) for r in range(c.pp)]
    temp_scale = max(t for _, t in scales)  # one chunk's temporaries: the longest chunk's on every rank
    if layout == "torch":  # the executor's K/V terms count their tokens, whatever the rank's activation scale
        kv_cache, kv_saved = kv_cache / scales[0][0], kv_saved / scales[0][0]  # (the same on every rank: the longest)
    layers_time, layers_static = [layer_time] * n, [layer_static + kv_grads] * n
    layers_act = [(0.0 if offloaded else layer_plain) + kv_cache] * n
    layers_rc, layers_saved = [layer_rc] * n, [(0.0 if offloaded else layer_plain - layer) + kv_saved] * n
    if model.moe is not None:
        # Dense and MoE blocks differ: each costed as the estimate costs it on pipeline rank 0 of the default grid.
        grid = RankGrid.logical(c.dims)
        exchange, exchange_back = ep_comm_passes(model, cluster, c, *(expert_groups(grid, 0, c.ep, c.etp, axis)[0]
                                                                      for axis in ("ep", "etp")), execution)
        moe_pieces = pieces.kind(True)
        routed_only = moe_attention_tp_only(model, execution)  # (the attention's TP collectives only)
        moe_time = (moe_pieces.block.total + side_kernels_time(model, cluster, c, execution, moe=True).total
                    + (2 if routed_only else 4) * one + exchange + exchange_back + cp_time)
        moe_rc = (recompute_time(moe_pieces, c, one, selective_matmul_share(model, c, execution, moe=True), only,
                                 gathers)
                  + (exchange - (one if routed_only else 0.0) if c.recompute == "full" else 0.0) + cp_rc)
        attention_part, expert_part = block_local_params(model, c, moe=True)
        expert_per_param = (sum(state_bytes_per_param(c, layout, experts=True, execution=execution))
                            + fp8_weight_cache_bytes(c, execution))
        moe_static = attention_part * block_per_param + expert_part * expert_per_param
        moe_act = layer_activation_bytes(model, c, layout, kind, selective=policy, moe=True, execution=execution)
        moe_plain = layer_activation_bytes(model, c, layout, kind, "none", policy, moe=True, execution=execution)
        for i in range(n):
            if model.is_moe_layer(i):
                layers_time[i], layers_static[i] = moe_time, moe_static + kv_grads
                layers_act[i] = (0.0 if offloaded else moe_plain) + kv_cache
                layers_rc[i], layers_saved[i] = moe_rc, (0.0 if offloaded else moe_plain - moe_act) + kv_saved
            else:
                layers_static[i] = dense_part * block_per_param + kv_grads
    unit_time = [pieces.embedding.total + one] + layers_time + [pieces.head.total + one]
    unit_static = [embedding_part * per_param] + layers_static + [head_part * per_param]
    unit_act = [embedding] + layers_act + [head]
    owner = stage_to_rank(c.schedule, c.pp, c.vpp)
    head_grad = head_part
    mtp_moe = model.mtp_num_layers and model.mtp_block_is_moe()
    if model.mtp_num_layers:
        # The MTP modules ride with the head on the last stage (cost/mtp.py), as the estimate costs them: their
        # blocks (recomputed under the plan's mode), TP collectives and token exchange, their own compute; their
        # weights with the embedding copy a last stage on its own rank holds; their activations.
        d, block = model.mtp_num_layers, pieces.kind(bool(mtp_moe))
        block_share = selective_matmul_share(model, c, execution, moe=bool(mtp_moe))
        unit_time[-1] += (mtp_pass_times(model, cluster, c, block).total + 6 * one * d
                          + (recompute_time(block, c, one, block_share, only, gathers) + cp_time + cp_rc) * d)
        if mtp_moe:
            unit_time[-1] += (exchange + exchange_back + (exchange if c.recompute == "full" else 0.0)) * d
        copy = mtp_embedding_copy(owner, [st for st, rank in enumerate(owner) if rank == owner[-1]], layout)
        mtp_params, mtp_experts = local_params(c, *mtp_stage_params(model, embedding_copy=copy))
        unit_static[-1] += mtp_params * per_param + mtp_experts * sum(
            state_bytes_per_param(c, layout, experts=True, execution=execution))
        # (under seq1f1b their blocks keep the earlier chunks' K/V and gradients as a layer does, recomputed under
        # the plan's mode whatever the counts)
        unit_act[-1] += (mtp_kept_bytes(model, c, layout, kind, policy, execution, head)
                         + (kv_cache - (kv_saved if c.recompute != "none" else 0.0)) * d)
        unit_static[-1] += kv_grads * d
        head_grad += mtp_params  # (expert gradients below)
    recompute = {}
    if c.recompute != "none":
        recompute = dict(unit_recompute_time=(0.0, *layers_rc, 0.0),
                         unit_recompute_saved_bytes=(0.0, *layers_saved, 0.0), recompute_counts=c.recompute_layers)
    inflight = schedule_inflight(c.schedule, c.pp, c.vpp, c.num_microbatches, seq_chunks=c.seq_chunks)
    temporaries = tuple(Temporary(temp_scale * t.bytes, t.when)
                        for t in temporary_terms(model, c, layout, kind, policy, execution))
    reserved = reserved_bytes(model, cluster, c, layout, owner, inflight, temp_scale, execution)
    one_backward = {}
    if layout == "torch" and c.num_microbatches == 1:  # the gradients exist only as the activations go
        grad = state_bytes_per_param(c, layout, execution=execution)[1]
        if model.moe is None:
            layers_grad = [dense_part * grad] * n
        else:  # (layer_params needs a layer when dense and MoE blocks differ)
            expert_grad = state_bytes_per_param(c, layout, experts=True, execution=execution)[1]
            layers_grad = [attention_part * grad + expert_part * expert_grad if model.is_moe_layer(i)
                           else dense_part * grad for i in range(n)]
        if model.mtp_num_layers:
            head_grad = head_grad * grad + mtp_experts * state_bytes_per_param(
                c, layout, experts=True, execution=execution)[1]
        else:
            head_grad *= grad
        one_backward = dict(unit_gradient_bytes=(embedding_part * grad, *layers_grad, head_grad),
                            rank_gradient_bytes=tuple(g for g, _ in reserved))
    limits = tuple(cluster.usable_memory_bytes - rest - (0.0 if one_backward else g) for g, rest in reserved)
    return PartitionProblem(unit_time=tuple(unit_time), unit_static_bytes=tuple(unit_static),
                            unit_activation_bytes=tuple(unit_act), stage_to_rank=owner, inflight=tuple(inflight),
                            memory_limit_bytes=limits, num_microbatches=c.num_microbatches,
                            activation_scale=tuple(a for a, _ in scales) if bounds else None,
                            temporaries=temporaries,
                            moe_units=tuple(1 + i for i in range(n) if model.is_moe_layer(i))
                            + ((n + 1,) if mtp_moe else ()),
                            **recompute, **one_backward)


def reserved_bytes(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, layout: str,
                   owner: tuple[int, ...], inflight: tuple[float, ...], temp_scale: float = 1.0,
                   execution: Execution | None = None) -> tuple[tuple[float, float], ...]:
    """Per pipeline rank (`owner`: the rank of each virtual stage), the bytes `memory.stage_memory` counts whatever
    the partition, which `partition_problem` takes off its limit, as (gradient buffers, the rest): the runtime's
    overhead, the pipeline's buffers (`memory.pipeline_buffer_bytes` of its stages at the schedule's in-flight
    counts `inflight`, at `temp_scale`: seq1f1b's longest chunk against the mean) and the FSDP gather buffers of its stages
    (`memory.unsharded_buffer_bytes`, the largest parameter and the largest gradient buffer of its stages), each
    stage's root unit (embedding, head) known by its place and its blocks counted as two or more (a stage of one
    block holds less: an upper bound there)."""
    fixed = [cluster.device.memory_overhead_bytes + pipeline_buffer_bytes(
        model, c, execution, [st for st in range(len(owner)) if owner[st] == r], inflight, temp_scale,
        cluster.device.kind) for r in range(c.pp)]
    if layout != "torch" and not megatron_fsdp_runs(c, execution):
        return tuple((0.0, f) for f in fixed)
    places = [[0, 0]] * len(owner)  # a stage's root unit depends on its place only (its blocks cancel out)
    buffers = [unsharded_buffer_bytes(model, c, layout, root_unit_params(model, c, places, st),
                                      embedding=holds_word_embedding(model, st, len(owner)), execution=execution,
                                      vocab_early=vocab_grad_early(model, st, len(owner)))
               for st in range(len(owner))]
    return tuple((max(buffers[st][1] for st in range(len(owner)) if owner[st] == r),
                  fixed[r] + max(buffers[st][0] for st in range(len(owner)) if owner[st] == r)) for r in range(c.pp))


def refined_partition(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution,
                      time_limit_s: float = 2.0, seed: int = 0) -> list[list[int]] | None:
    """CP-SAT's stage partition for `c`, or None when it finds none (the caller keeps the uniform split)."""
    from autoconf.solve.partition import solve_partition

    if c.num_stages == 1 or schedule_spec(c.schedule).directions > 1:
        # (Its problem places each stage on one rank; dualpipe's two copies of a model stage sit on two ranks, so
        # dualpipe keeps the uniform split and the polish below, which scores with the estimate.)
        return None
    result = solve_partition(partition_problem(model, cluster, c, execution), time_limit_s=time_limit_s, seed=seed)
    return None if result is None else [list(r) for r in result.layer_ranges()]


# Models of more layers than this keep the uniform split: CP-SAT's partition model grows with layers x stages and the
# polish tries moves of every size, together minutes at a few thousand layers (3,000: 26 s of refinement for a 0.4 s
# search; 100,000 did not end), where published models have at most a few hundred (Llama 3.1 405B: 126).
REFINE_MAX_LAYERS = 1024
# Pipelines of up to this many virtual stages get the local-search polish of their partition: a sweep scores every
# one-layer move between two stages, S * (S - 1) estimates.
POLISH_MAX_STAGES = 8


def polished_partition(score, partition: list[list[int]], time_s: float) -> tuple[list[list[int]], float]:
    """Best-improvement local search from `partition` (whose score is `time_s`) under `score` ((partition, bar) ->
    seconds, inf when it does not fit; any number at or above `bar` where the seconds are, so it may stop at a
    bound): each step takes the best move of k = 1, 2, ... layers from one stage to any other (the stages between
    them shift, each keeps its size), smallest k first; it stops when no move of any size lowers the score; a move
    may empty the first or the last stage (`min_stage_layers`). Deterministic: moves are tried in a fixed order and
    only a strictly lower score is taken, so the result is the same whatever `score` returns at or above `bar`."""
    bounds = [first for first, _ in partition] + [partition[-1][1]]
    stages = len(partition)
    least = sum(min_stage_layers(s, stages) for s in range(stages))
    while True:
        best = None
        for k in range(1, bounds[-1] - least + 1):
            for a in range(stages):
                for b in range(stages):
                    if a == b:
                        continue
                    moved = _moved(bounds, a, b, k)
                    if moved is None:
                        continue
                    bar = time_s if best is None else best[0]
                    t = score([[moved[s], moved[s + 1]] for s in range(stages)], bar)
                    if t < bar:
                        best = (t, moved)
            if best is not None:
                break
        if best is None:
            return [[bounds[s], bounds[s + 1]] for s in range(stages)], time_s
        time_s, bounds = best


def _moved(bounds: list[int], a: int, b: int, k: int) -> list[int] | None:
    """The stage bounds with k layers moved from stage a to stage b, or None when stage a would be left with fewer
    layers than `min_stage_layers` allows."""
    if bounds[a + 1] - bounds[a] - k < min_stage_layers(a, len(bounds) - 1):
        return None
    moved = list(bounds)
    if a < b:  # stage a gives up its last k layers; the boundaries up to stage b move k layers earlier
        for s in range(a + 1, b + 1):
            moved[s] -= k
    else:  # stage a gives up its first k layers; the boundaries from stage b + 1 move k layers later
        for s in range(b + 1, a + 1):
            moved[s] += k
    return moved


def refined_partition_by_estimate(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                                  execution: Execution, mesh: np.ndarray | None = None,
                                  default_time: float | None = None, time_limit_s: float = 1.0,
                                  seed: int = 0, per_stage: bool = False) -> tuple[list[list[int]] | None, float]:
    """(partition, fast estimate) of the fastest partition found for `c` on `mesh`, or (None, the default's time)
    when none beats the uniform split: CP-SAT's partition (`refined_partition`, on the linear model of
    `partition_problem`), then, for pipelines of at most POLISH_MAX_STAGES stages, the local-search polish
    (`polished_partition`) of the better of the two scored by the estimate itself. `default_time` is the uniform
    split's fast estimate on `mesh` when the caller has it; a model of more than REFINE_MAX_LAYERS layers keeps the
    uniform split. With `per_stage`, `c` recomputes every layer in the
    CP-SAT model reads the fewest recomputed layers per stage that fit the uniform split, and each partition is
    scored with the fewest that fit it (solve/recompute.py)."""
    from autoconf.cost.estimate import default_partition, predict, step_floor
    from autoconf.solve.recompute import fewest_recomputed

    uniform = default_partition(model, c)

    def score(partition, bar: float = float("inf")) -> float:
        config = c
        if per_stage:
            config = fewest_recomputed(model, cluster, c, partition or uniform, execution)
            if config is None:
                return float("inf")
        floor = step_floor(model, cluster, config, partition=partition, mesh=mesh, execution=execution)
        if floor >= bar:  # (most moves of a polish: a stage gains a layer and outlasts the best step)
            return floor
        # Extrapolated (the search's estimate: never below the full simulation), so a partition that scores below
        # the default's full time is faster in full too.
        p = predict(model, cluster, config, partition=partition, mesh=mesh, execution=execution, detail=False,
                    extrapolate=True)[3]
        return p["iteration_time_s"] if p["fits"] else float("inf")

    best_time = score(None) if default_time is None else default_time
    best = None
    if model.num_layers > REFINE_MAX_LAYERS:
        return best, best_time
    counted = fewest_recomputed(model, cluster, c, uniform, execution) if per_stage else None
    solved = refined_partition(model, cluster, counted or c, execution, time_limit_s=time_limit_s, seed=seed)
    if solved is not None and solved != uniform:
        t = score(solved, best_time)
        if t < best_time:
            best_time, best = t, solved
    if 1 < c.num_stages <= POLISH_MAX_STAGES:
        polished, t = polished_partition(score, best or uniform, best_time)
        if t < best_time:
            best_time, best = t, polished
    return best, best_time


def traffic(model: ModelSpec, c: ParallelConfig, execution: Execution = Execution(),
            cluster: ClusterProfile | None = None) -> tuple[float, float, float, float]:
    """Bytes per step each rank moves in its TP group, to its pipeline neighbour, in its DP group and in its CP
    group, from the estimate's own buffers: two TP collectives per layer and direction on `hidden_state_bytes`, the
    estimate's `p2p_bytes` per micro-batch and direction (a 1/tp slice under sequence parallelism), the gradient
    reduction buffers of `dp_buffer_bytes` for the rank's share of the parameters (`rank_share_of_params`: the
    attention layout's over dp x cp, the routed experts' over their expert-DP group), and per layer and
    micro-batch the bytes the estimate's CP exchange sends (`cp_exchange_bytes`), as the buffer whose ring
    all-reduce moves as many (its bytes x cp / (2 (cp - 1))): the placement's rings charge all-reduces.

    MoE: the dispatch and combine all-to-all of every MoE layer in both passes (`dispatch_bytes`) go on the axis
    their EP group lies along in the folded grid (spec/grid.py `expert_grid`): inside a TP group when
    ep x etp <= tp, else across consecutive DP replicas; ETP's gathers and scatters stay inside the TP group. With
    `cluster`, an exchange over DP replicas counts as the estimate times it (`exchange_scale`: a framework that
    dispatches once per node moves fewer bytes across nodes and forwards more inside them)."""
    layers_per_rank = model.num_layers / c.pp
    tp_bytes = 4 * layers_per_rank * hidden_state_bytes(model, c) * c.num_microbatches if c.tp > 1 else 0.0
    pp_bytes = 2 * c.vpp * p2p_bytes(model, c, execution) * c.num_microbatches if c.pp > 1 else 0.0
    dense, experts = rank_share_of_params(model, c)
    dp_bytes = ((dp_buffer_bytes(c, dense, execution)[0] if c.dp_cp > 1 else 0.0)
                + (dp_buffer_bytes(c, experts, execution)[0] if c.edp > 1 else 0.0))
    cp_bytes = (cp_exchange_bytes(model, c, execution) * c.cp / (2 * (c.cp - 1)) * layers_per_rank
                * c.num_microbatches if c.cp > 1 else 0.0)
    if model.moe is not None and c.ep * c.etp > 1:
        exchange = 4 * moe_layers(model, 0, model.num_layers) / c.pp * dispatch_bytes(model, c) * c.num_microbatches
        if c.ep > 1 and c.ep * c.etp <= c.tp:
            tp_bytes += exchange
        elif c.ep > 1:
            dp_bytes += exchange * (exchange_scale(model, cluster, c, execution) if cluster is not None else 1.0)
        if c.etp > 1:
            tp_bytes += exchange * c.etp
    return tp_bytes, pp_bytes, dp_bytes, cp_bytes


def rank_share_of_params(model: ModelSpec, c: ParallelConfig) -> tuple[float, float]:
    """(attention-layout, routed-expert) parameters one rank holds, the model spread evenly over the pipeline
    ranks (`local_params`: the TP-replicated ones whole, the experts over ep x etp): a placement weight, which
    `traffic` reads before any partition is known."""
    _, experts, replicated = blocks_params(model, 0, model.num_layers)
    replicated += model.tp_replicated_params("embedding") + model.tp_replicated_params("head")
    return local_params(c, model.total_params() / c.pp, experts / c.pp, replicated / c.pp)


def exchange_scale(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution) -> float:
    """The seconds of one token exchange over the default mesh's first EP group as the estimate times it (the
    bytes `cost/moe.dispatch_shares` sends under `execution`) over those of a plain all-to-all of the same buffer:
    1 unless the framework dispatches once per node and the group spans nodes. The placement's rings charge bytes on
    their slowest link, so the exchange enters them as its bytes times this."""
    group = expert_groups(RankGrid(default_mesh(c)), 0, c.ep, c.etp, "ep")[0]
    shares = dispatch_shares(model, cluster, group, execution)
    if shares == (1.0, 1.0):
        return 1.0
    nbytes = dispatch_bytes(model, c)
    return collective_time(cluster, "all_to_all", nbytes, group, shares) / collective_time(
        cluster, "all_to_all", nbytes, group)


def refined_mesh(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution = Execution(),
                 time_limit_s: float = 5.0, seed: int = 0) -> np.ndarray | None:
    """The placement solver's [pp][dp][cp][tp] mesh for `c` on `cluster`'s links."""
    from autoconf.solve.placement import solve_placement

    if c.world_size == 1:
        return None
    tp_bytes, pp_bytes, dp_bytes, cp_bytes = traffic(model, c, execution, cluster)
    return np.asarray(solve_placement(c.pp, c.dp, c.tp, cluster, tp_bytes, pp_bytes, dp_bytes,
                                      time_limit_s=time_limit_s, seed=seed, cp=c.cp, cp_bytes=cp_bytes))
