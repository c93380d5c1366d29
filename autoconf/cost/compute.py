"""Compute time of the model's pieces for one micro-batch on one TP rank: forward, backward-for-inputs (I) and
backward-for-weights (W).

Two sources, in this order of preference:
1. the cluster profile's measured compute tables (`autoconf profile`), when they were measured for a model of the same
   shape and dtype and for the TP width asked: times are interpolated linearly in tokens (micro_batch x seq_len),
   the attention core in micro_batch x seq_len^2 (`_measured_attention`), and divided by the profile's `cpu_share`
   (the share of a core a CPU rank gets while all ranks compute);
2. the specification model: each weight GEMM at `matmul_rate` (`peak x efficiency["matmul"]`, times the profile's
   `matmul_size_curve` read at the GEMM's FLOPs: small GEMMs run below the large-GEMM plateau), the flash attention
   core at the kernel's speed over sequence length (`attention_efficiency`: the profile's `attention_curves`, else
   `efficiency["attention"]`; the standard path at the flat value), element-wise traffic at
   `HBM bandwidth x efficiency["memory"]`. The peak is the dtype's (`autoconf.spec.dtypes.precision`): under `fp8`
   the block's linear layers run at the `fp8` peak on the same size curve and pay the casts of `cost/fp8.py`;
   attention, norms, embedding and head stay at `bf16`.

Communication is not in here (see comm.py); recomputation is applied by `stage_plan` in estimate.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from autoconf.cost.interpolate import CLAMP, EXTRAPOLATE, interpolate, interpolate_many
from autoconf.spec.cluster import ClusterProfile
from autoconf.cost.cp_ring import merge_bytes
from autoconf.cost.fp8 import cast_seconds, mlp_cast_elements, scaling_time
from autoconf.cost.offload import cpu_optimizer_time
from autoconf.spec.dtypes import DTYPE_BYTES, precision
from autoconf.spec.frameworks import ADAM_KERNELS, GRAD_BUFFER_PASSES, Execution, compiled_ops, loss_compiled
from autoconf.spec.model import SINK_WIDTH, ModelSpec, executor_window_work, window_pair_share
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.profile_checks import ATTENTION_CURVE_PASSES, BLOCKS, MOE_BLOCKS, timed_at

SHAPE_KEYS = ("arch", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size")
# The MoE fields that shape the "moe" and "experts" blocks' work (besides whether a load-balancing loss is computed).
MOE_SHAPE_KEYS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "num_shared_experts",
                  "shared_expert_intermediate_size", "shared_expert_gate", "scoring_func", "router_bias", "n_group",
                  "topk_group", "expert_bias")
# Bytes read and written per parameter by one fused AdamW step with fp32 master weights, gradients and moments.
ADAM_BYTES_PER_PARAM = ADAM_KERNELS["fused"]


@dataclass(frozen=True)
class PassTimes:
    """Seconds of forward, backward-for-inputs and backward-for-weights of one piece for one micro-batch."""

    forward: float
    backward_input: float
    backward_weight: float

    def __add__(self, other: "PassTimes") -> "PassTimes":
        return PassTimes(self.forward + other.forward, self.backward_input + other.backward_input,
                         self.backward_weight + other.backward_weight)

    def scaled(self, k: float) -> "PassTimes":
        return PassTimes(self.forward * k, self.backward_input * k, self.backward_weight * k)

    @property
    def total(self) -> float:
        return self.forward + self.backward_input + self.backward_weight


@dataclass(frozen=True)
class ModelPieces:
    """Times of the attention core, the rest of a block, the embedding and the head, on one TP rank."""

    attention_core: PassTimes  # the part selective recompute redoes
    block_rest: PassTimes  # the rest of a transformer block (matmuls, norms, element-wise)
    embedding: PassTimes
    head: PassTimes  # final norm, LM head and loss
    source: str  # "measured" or "specification"
    # The rest of an MoE block (attention projections, router, shared and routed experts, element-wise) on one
    # rank; None for a dense model. `block_rest` is then a dense block's.
    moe_rest: PassTimes | None = None

    @property
    def block(self) -> PassTimes:
        return self.attention_core + self.block_rest

    def kind(self, moe: bool) -> "ModelPieces":
        """These pieces with the block of an MoE layer (`moe`) or of a dense layer as `block_rest`."""
        if not moe:
            return self
        assert self.moe_rest is not None, "an MoE block of a model without MoE layers"
        return dataclasses.replace(self, block_rest=self.moe_rest)


def model_pieces(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig,
                 share: float | None = None, execution: Execution | None = None) -> ModelPieces:
    """The pieces' times on one TP (and CP) rank; measured kernel times are divided by `share` (default: the
    profile's `cpu_share`). The specification model reads the `execution`'s kernels (`eager_ops`,
    `attention_kernel`; default: the executor's).

    Under context parallelism a rank holds seq_len / cp tokens of every sequence in two load-balanced chunks (the
    i-th and (2cp-1-i)-th of 2cp), so every piece that grows with tokens (projections, MLP, norms, embedding, head)
    is read at seq_len / cp, and the attention core, whose causal work grows with seq_len^2, is the core at the
    whole sequence divided by cp: the chunk pairing gives each rank the same share of the causal triangle. A
    measured table reads that core at the full length in micro_batch x seq_len^2 (`profile --seq-len` times it
    there). The blockwise kernels' lower efficiency on 1/cp-long blocks is not modelled. Under torch's ring
    (`execution.cp_attention` "torch") the core adds its eager merges and fp32 accumulations
    (`cp_ring.merge_bytes`) at the profile's element-wise rate.

    Under seq1f1b (`seq_chunks` k > 1) the pieces are those of the mean pipeline unit, a chunk of seq_len / k
    tokens: the attention core is the mean chunk's, the whole sequence's core / k; chunk j of an even split does
    `causal_chunk_share(j, k)` times it, of any split `causal_span_share` of its tokens (`seq_chunk_bounds`)."""
    if config.cp > 1 or config.seq_chunks > 1:
        local = _pieces(model, cluster, rank_view(config), share, execution)
        whole = _pieces(model, cluster, dataclasses.replace(config, cp=1, seq_chunks=1), share, execution)
        merge_f, merge_b = merge_bytes(model, config, execution)
        rate = cluster.device.memory_bandwidth_Bps * cluster.eff("memory")
        return dataclasses.replace(local, attention_core=whole.attention_core.scaled(
            1 / (config.cp * config.seq_chunks)) + PassTimes(merge_f / rate, merge_b / rate, 0.0))
    return _pieces(model, cluster, config, share, execution)


def causal_chunk_share(chunk: int, chunks: int) -> float:
    """The causal attention work of chunk j of a sequence split into k equal chunks, in units of the mean chunk's
    (the whole core / k): its queries meet the j earlier chunks' keys in full and its own keys causally,
    (j + 1/2) blocks of the k^2 / 2 of the whole triangle, so (2j + 1) / k."""
    return causal_span_share(chunk, chunk + 1, chunks, chunks)


def causal_span_share(start: float, end: float, seq_len: float, chunks: int) -> float:
    """The causal attention work of the queries at tokens [start, end) of a sequence of seq_len, in units of the
    mean chunk's of k = `chunks` (the whole core / k): they meet every key before them, (end^2 - start^2) / 2 of
    the seq_len^2 / 2 query-key pairs of the triangle, so k (end^2 - start^2) / seq_len^2."""
    return chunks * (end * end - start * start) / (seq_len * seq_len)


def seq_chunk_bounds(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig,
                     execution: Execution | None = None) -> tuple[int, ...]:
    """The token boundaries [0, b_1, ..., seq_len] of the config's seq_chunks chunks under its `seq_split`: even,
    or (split "work", Seq1F1B's computation-wise partition) `equal_work_bounds` of one transformer layer's forward
    as this model reads it for the mean chunk: the rest of the block (linear in tokens) and the attention core
    (`model_pieces`). Every view of a seq1f1b plan reads this: the stage costs (`estimate.seq_chunk_costs`), the
    memory (`memory.seq_chunk_scale`) and, through `Plan.sequence_split`, the executor."""
    c = config
    k = c.seq_chunks
    if c.seq_split == "even" or k == 1:
        return tuple(j * c.seq_len // k for j in range(k + 1))
    pieces = model_pieces(model, cluster, c, execution=execution)
    return equal_work_bounds(pieces.block_rest.forward, pieces.attention_core.forward, c.seq_len, k,
                             c.seq_split_multiple)


def equal_work_bounds(linear: float, core: float, seq_len: int, chunks: int, step: int) -> tuple[int, ...]:
    """Boundaries [0, b_1, ..., seq_len] on multiples of `step` that give k = `chunks` chunks the same time, each
    chunk costing `linear` x its tokens / (seq_len / k) plus `core` x `causal_span_share` (`linear` and `core`: the
    mean chunk's seconds of the work that grows with tokens and of the causal attention core). The work before
    token t is W(x) = linear x + core x^2 (x = t / seq_len, in units of k chunks), so b_j solves
    W(b_j / seq_len) = (j / k) W(1); each is then rounded to the nearest multiple of `step`, keeping at least one
    step per chunk. A chunk's time is off the mean by at most `step` tokens' worth of the last token's marginal
    cost."""
    k = chunks
    bounds = [0]
    for j in range(1, k):
        target = j / k * (linear + core)
        x = j / k if core <= 0 else (-linear + math.sqrt(linear * linear + 4 * core * target)) / (2 * core)
        b = round(x * seq_len / step) * step
        bounds.append(min(max(b, bounds[-1] + step), seq_len - (k - j) * step))
    bounds.append(seq_len)
    return tuple(bounds)


def rank_view(config: ParallelConfig) -> ParallelConfig:
    """The config as one CP rank sees its tokens in one pipeline unit: a sequence of seq_len / cp (/ seq_chunks)
    and no context parallelism (what everything but the attention core and the K/V exchange costs)."""
    return dataclasses.replace(config, seq_len=config.local_seq_len, cp=1, seq_chunks=1)


def _pieces(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, share: float | None,
            execution: Execution | None) -> ModelPieces:
    measured = _measured_pieces(model, cluster, config, cpu_share(cluster) if share is None else share)
    return measured if measured is not None else _spec_pieces(model, cluster, config, execution)


def measured_tp_layer(model: ModelSpec, cluster: ClusterProfile,
                      config: ParallelConfig) -> tuple[PassTimes, int] | None:
    """Wall seconds a TP layer spends beyond its local compute (collectives, waiting for the group, DTensor
    dispatch), per forward and per backward pass, from the profile's in-place `tp_layers` measurements for this TP
    width, sequence parallelism and model shape, interpolated in tokens up to the largest measured micro-batch;
    returned with the micro-batch size it was read at (the config's, or that largest one: the caller extends
    beyond it). None when not measured. The backward's share is `backward_input`: the collectives belong to the
    activation-gradient pass."""
    table = cluster.compute
    c = rank_view(config)
    if (c.tp == 1 or not table or not table.get("tp_layers") or not _shape_matches(table, model, c.dtype)
            or not _dense_attention(model)):
        return None
    rows, points = _in_place_points([e for e in table["tp_layers"] if e.get("tp") == c.tp and
                                     bool(e.get("sequence_parallel")) == c.sequence_parallel], c.seq_len)
    if not rows:
        return None
    largest = max(rows, key=lambda e: e["micro_batch"] * e["seq_len"])
    read_at = c.micro_batch_size
    if c.micro_batch_size * c.seq_len > largest["micro_batch"] * largest["seq_len"]:
        read_at = max(1, largest["micro_batch"] * largest["seq_len"] // c.seq_len)
    return _interpolate(points, read_at * c.seq_len), read_at


def measured_ep_layer(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig) -> PassTimes | None:
    """Wall seconds an MoE layer's token exchange adds per forward and per backward pass (as `backward_input`),
    from the profile's in-place `ep_layers` measurements at the layout's ep (profile/ep_layers.py), read in tokens
    through the shared interpolation rule; entries at the layout's sequence length where there are some. None when
    not measured there, and for layouts with TP or expert TP, which those measurements do not run."""
    table = cluster.compute
    c = rank_view(config)
    if (c.ep == 1 or c.tp > 1 or c.etp > 1 or not table or not table.get("ep_layers")
            or not _shape_matches(table, model, c.dtype) or model.moe is None):
        return None
    rows, points = _in_place_points([e for e in table["ep_layers"] if e.get("ep") == c.ep], c.seq_len)
    if not rows:
        return None
    return _interpolate(points, c.micro_batch_size * c.seq_len)


def _in_place_points(rows: list[dict], seq_len: int) -> tuple[list[dict], list[tuple[int, PassTimes]]]:
    """Of an in-place measurement's `rows` (tp_layers, ep_layers) those at `seq_len` where there are some, and
    their (tokens, PassTimes(forward_s, backward_s as backward_input, 0)) points to interpolate in tokens."""
    rows = [e for e in rows if e.get("seq_len") == seq_len] or rows
    return rows, [(e["micro_batch"] * e["seq_len"], PassTimes(float(e["forward_s"]), float(e["backward_s"]), 0.0))
                  for e in rows]


def cpu_share(cluster: ClusterProfile) -> float:
    """The share of a core a CPU rank gets while every rank computes (profile entry `cpu_share`; 1 when not
    stated)."""
    entry = cluster.efficiency.get("cpu_share")
    return float(entry["value"]) if entry else 1.0


def cpu_share_alone(cluster: ClusterProfile) -> float:
    """The share of a core a CPU rank gets while the other ranks of its node idle (profile entry `cpu_share_alone`;
    1 when not stated, i.e. an idle peer's core is free to take). Never below `cpu_share`."""
    entry = cluster.efficiency.get("cpu_share_alone")
    return max(min(float(entry["value"]), 1.0) if entry else 1.0, cpu_share(cluster))


def optimizer_step_time(local_params: float, cluster: ClusterProfile, dtensor_params: float | None = None,
                        bytes_per_param: float = ADAM_BYTES_PER_PARAM) -> float:
    """AdamW over `local_params` parameters: memory-bound at `bytes_per_param` (its kernels', ADAM_KERNELS), or as
    measured per parameter by the profiler.

    `dtensor_params`: when the executor holds the rank's parameters as DTensors (TP, or FSDP at ZeRO >= 1), their
    count before any sharding; a profile's measured DTensor rate (per unsharded parameter, mostly DTensor dispatch,
    which sharding does not shrink) then bounds the time from below."""
    table = cluster.compute or {}
    if table.get("optimizer_s_per_param"):
        seconds = float(table["optimizer_s_per_param"]) * local_params / cpu_share(cluster)
    else:
        seconds = local_params * bytes_per_param / (cluster.device.memory_bandwidth_Bps * cluster.eff("memory"))
    if dtensor_params is not None and table.get("optimizer_dtensor_s_per_param"):
        seconds = max(seconds, float(table["optimizer_dtensor_s_per_param"]) * dtensor_params / cpu_share(cluster))
    return seconds


def rank_optimizer_time(cluster: ClusterProfile, c: ParallelConfig, rank_params: float,
                        expert_params: float = 0.0, replicated_params: float = 0.0,
                        execution: Execution | None = None) -> float:
    """The optimizer step of a pipeline rank holding `rank_params` parameters (all its stages, before TP and ZeRO
    sharding), of which `expert_params` are routed experts and `replicated_params` TP-replicated (`rank_params`'
    triple): its slice of the rest as `local_params` splits it (and, when ZeRO shards, its DP x CP shard of that),
    its EP x ETP (and expert-DP) slice of the experts; DTensor parameters (TP, or FSDP) also pay the profile's
    DTensor rate on the unsharded count. With an `execution`, AdamW runs its `adam_kernels`, plus its once-per-step
    passes over the main-gradient buffer (`grad_buffer_pass_time`); without one, the fused kernel (the fewest bytes)
    and no passes: what the search's bound reads."""
    from autoconf.cost.moe import expert_state_shard, local_params

    shard = c.dp_cp if c.zero_sharded else 1
    # (without an execution the widest sharding: the search's bound stays below the estimate)
    expert_shard = expert_state_shard(c, execution.memory_layout if execution else "megatron")
    dtensor = c.tp > 1 or c.zero_sharded
    dense, experts = local_params(c, rank_params, expert_params, replicated_params)
    unsharded = dense + experts
    local = dense / shard + experts / expert_shard
    passes = grad_buffer_pass_time(cluster, unsharded, execution)
    if c.offload_optimizer:  # FSDP2 CPUOffloadPolicy: the step runs on the host CPU (cost/offload.py)
        return cpu_optimizer_time(cluster, local) + passes
    kernel_bytes = (ADAM_KERNELS[execution.adam_kernels] + execution.grad_norm_bytes
                    + main_param_copy_bytes(c, execution) if execution else min(ADAM_KERNELS.values()))
    return optimizer_step_time(local, cluster, rank_params if dtensor else None, kernel_bytes) + passes


def main_param_copy_bytes(c: ParallelConfig, execution: Execution) -> float:
    """HBM bytes per local parameter of Megatron's copy of its fp32 main parameters into the model's after AdamW
    (`_copy_main_params_to_model_params`, the distributed optimizer's and the plain one's): the fp32 read and the
    write in the model's dtype (2; an fp8 parameter 1, `fp8_params`). 0 in fp32 (the main parameters are the
    model's), under apex's optimizer (its kernel writes the bf16 parameters and their remainders) and in the torch
    layout (FSDP2 keeps the fp32 shard and casts as it gathers)."""
    if execution.memory_layout != "megatron" or execution.optimizer != "megatron" or c.dtype == "fp32":
        return 0.0
    return 4.0 + (1.0 if execution.fp8_params and c.dtype == "fp8" else 2.0)


def grad_buffer_pass_time(cluster: ClusterProfile, params: float, execution: Execution | None) -> float:
    """Seconds of the execution's `grad_buffer_passes` over a main-gradient buffer of `params` parameters (the
    rank's, not ZeRO-sharded: Megatron's buffer holds every gradient of the rank) at the profile's element-wise
    rate: each pass reads or writes the buffer as `autoconf.spec.frameworks.GRAD_BUFFER_PASSES` counts."""
    if execution is None or not execution.grad_buffer_passes:
        return 0.0
    touches = sum(GRAD_BUFFER_PASSES[name] for name in execution.grad_buffer_passes)
    return touches * params * execution.grad_buffer_bytes / (
        cluster.device.memory_bandwidth_Bps * cluster.eff("memory"))


# ---- specification model ------------------------------------------------------------------------------------------
def matmul_size_factor(cluster: ClusterProfile, flops: float) -> float:
    """The profile's `matmul_size_curve` at a GEMM of `flops` FLOPs: a fraction of `efficiency["matmul"]`,
    piecewise-linear in GFLOP through the curve's points and held at the nearest end beyond them (the CLAMP rule of
    `autoconf.cost.interpolate`); 1 when the profile states no curve."""
    points = cluster.matmul_size_points
    return _size_factor(points, flops / 1e9) if points else 1.0


@functools.lru_cache(maxsize=65536)  # (the search times the same GEMMs for many layouts)
def _size_factor(points: tuple[tuple[float, float], ...], gflop: float) -> float:
    return interpolate(list(points), gflop, CLAMP)


def matmul_rate(cluster: ClusterProfile, dtype: str, flops: float) -> float:
    """FLOP/s of one GEMM of `flops` FLOPs: `peak x efficiency["matmul"] x matmul_size_factor`."""
    return cluster.device.peak(dtype) * cluster.eff("matmul") * matmul_size_factor(cluster, flops)


def gemms_time(cluster: ClusterProfile, dtype: str, gemms: list[float]) -> float:
    """Seconds of GEMMs of the given FLOPs, run one after another, each at its own `matmul_rate`."""
    return sum(f / matmul_rate(cluster, dtype, f) for f in gemms if f > 0)


def attention_gemms(model: ModelSpec, seq_len: int, micro_batch: int, tp: int,
                    replicated_split: int = 1) -> list[float]:
    """Forward FLOPs of each weight GEMM of a block's attention on one TP rank: QKV and the output projection, or
    the projections of latent attention (the op table's linear ops, each split over tp unless `tp_replicated`; those
    run on 1/`replicated_split` of the tokens: `replicated_tokens_split`)."""
    tokens = seq_len * micro_batch
    if model.mla is None:
        h, q, kv = model.hidden_size, model.q_dim, model.kv_dim
        return [2.0 * tokens * w / tp for w in [h * (q + 2 * kv), q * h]]
    from autoconf.spec.layers import attention_ops

    return [tokens * op.flops / (replicated_split if op.tp_replicated else tp) for op in attention_ops(model)
            if op.kind == "linear"]


def replicated_tokens_split(c: ParallelConfig, execution: Execution | None) -> int:
    """Over how many ranks a TP group's TP-replicated GEMMs (latent attention's down-projections) split the tokens:
    under sequence parallelism in the megatron layout, tp (Megatron-Core's `_qkv_down_projection` runs them on the
    rank's s/tp slice and gathers the latents after); 1 where every TP rank runs them on the whole sequence (the
    executor's replicated modules)."""
    megatron = execution is not None and execution.memory_layout == "megatron"
    return c.tp if megatron and c.sequence_parallel else 1


def layer_gemms(model: ModelSpec, seq_len: int, micro_batch: int, tp: int) -> list[float]:
    """Forward FLOPs of each weight GEMM of one block on one TP rank: QKV, output projection, and the MLP's
    matrices (GeLU: up, down; SwiGLU: gate, up, down). Each backward GEMM (input and weight gradient) has the same
    FLOPs as its forward one."""
    tokens = seq_len * micro_batch
    h, f, q, kv = model.hidden_size, model.ffn_hidden_size, model.q_dim, model.kv_dim
    mlp = [h * f, f * h] if model.arch == "gpt" else [h * f, h * f, f * h]
    return [2.0 * tokens * w / tp for w in [h * (q + 2 * kv), q * h, *mlp]]


def _layer_matmul_time(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                       execution: Execution | None = None) -> float:
    """One forward of a dense block's weight GEMMs on one TP rank: the model's matmul FLOPs at the size-weighted
    rate of the block's GEMMs (`layer_gemms`); with latent attention or MoE layers, each GEMM at its own rate."""
    if model.moe is not None or model.mla is not None:
        tokens = (c.seq_len, c.micro_batch_size, c.tp)
        gemms = (attention_gemms(model, *tokens, replicated_tokens_split(c, execution))
                 + layer_gemms(model, *tokens)[2:])
        return gemms_time(cluster, precision(c.dtype).gemm, gemms)
    gemms = layer_gemms(model, c.seq_len, c.micro_batch_size, c.tp)
    seconds_per_flop = gemms_time(cluster, precision(c.dtype).gemm, gemms) / sum(gemms)
    return model.layer_matmul_flops(c.seq_len, c.micro_batch_size) / c.tp * seconds_per_flop


ATTENTION_PASSES = ATTENTION_CURVE_PASSES  # the passes an attention curve states (spec/profile_checks.py)


def attention_efficiency(cluster: ClusterProfile, execution: Execution | None, seq_len: int,
                         head_dim: int) -> tuple[float, float]:
    """(forward, backward) fractions of the peak that the execution's flash attention kernel (`attention_kernel`;
    default the executor's, "fused") reaches on causal sequences of `seq_len` with heads of `head_dim`, in the
    FLOP count of `_spec_pieces` (causal forward: half the square; backward: 2.5x the forward).

    From the profile's `attention_curves` entry for the kernel: each pass's curve is read at `seq_len` for every
    head dim it states, then at `head_dim` across those (`autoconf.cost.interpolate`, edges "clamp" both times: below
    the shortest and beyond the longest published sequence, and outside the published head dims, the nearest end's
    value holds). A profile without a curve for the kernel: its flat efficiency for both passes, "fa2" reading
    `attention_fa2` where stated, every kernel else `attention`."""
    kernel = execution.attention_kernel if execution is not None else "fused"
    curves = (cluster.attention_curves or {}).get("kernels", {}).get(kernel)
    if curves is None:
        name = "attention_fa2" if kernel == "fa2" and "attention_fa2" in cluster.efficiency else "attention"
        return cluster.eff(name), cluster.eff(name)
    forward, backward = (interpolate([(int(dim), interpolate([(p[0], p[1]) for p in points], seq_len, CLAMP))
                                      for dim, points in curves[name].items()], head_dim, CLAMP)
                         for name in ATTENTION_PASSES)
    return forward, backward


def flash_core_seconds(model: ModelSpec, cluster: ClusterProfile, execution: Execution | None, seq_len: int,
                       micro_batch: int, tp: int, peak: float) -> tuple[float, float]:
    """(forward, backward) seconds of the mean block's flash attention core on one TP rank at `peak` FLOP/s: the
    causal half of the square forward, 2.5 times that backward (the backward recomputes the scores: 5 matmuls to
    2), each pass at the kernel's speed (`attention_efficiency`). A sliding layer does its window's share of the
    pairs (`window_pair_share`: a kernel that skips the tiles outside the band) at the speed of a causal sequence
    of twice the window, whose rows see as many keys on average; the mean over the model's layers is the block's
    (`ModelSpec.attention_work_share` reads the same shares). Where the framework hands windows and sinks to SDPA
    as masks and extra keys (`Execution.masked_attention`: autoconf's executor), a sliding layer scores what
    `executor_window_work` counts (the whole square under one mask, or the band's blocks) and the sink key widens
    the query-key and the probability-value products by SINK_WIDTH columns each (the memory-efficient kernel's own
    speed is not in the profiles: the curve's is taken)."""
    square = model.layer_attention_flops(seq_len, micro_batch, windowed=False) / tp
    sliding = model.sliding_layer_count
    masked = (execution or Execution()).masked_attention
    kinds = [(model.num_layers - sliding, 1.0, seq_len)]
    if sliding and masked:
        kinds.append((sliding, *executor_window_work(seq_len, model.sliding_window)))
    elif sliding:
        w = model.sliding_window
        kinds.append((sliding, window_pair_share(seq_len, w), min(seq_len, 2 * w)))
    if masked and model.attention_sinks:
        qk, v = attention_head_dim(model), model.head_dim if model.mla is None else model.mla.v_head_dim
        square *= (qk + v + 2 * SINK_WIDTH) / (qk + v)
    forward = backward = 0.0
    for layers, share, length in kinds:
        eff_f, eff_b = attention_efficiency(cluster, execution, length, attention_head_dim(model))
        work = layers / model.num_layers * share * 0.5 * square / peak
        forward, backward = forward + work / eff_f, backward + 2.5 * work / eff_b
    return forward, backward


def attention_head_dim(model: ModelSpec) -> int:
    """The width of one head's query-key product, which sets an attention kernel's tile shape: `head_dim`, or under
    latent attention the query-key head width (nope + rope)."""
    if model.mla is not None:
        return model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim
    return model.head_dim


def eager_elementwise_bytes(model: ModelSpec, c: ParallelConfig, ops: tuple[str, ...],
                            moe: bool = False) -> tuple[float, float]:
    """Bytes one block (an MoE block with `moe`) moves for one micro-batch on one TP rank beyond the fused count of
    `_spec_pieces`, in the forward and in the backward, when `ops` (`autoconf.spec.frameworks.EAGER_OPS`) run as
    torchtitan's Llama code (or autoconf's executor, its own ops) runs them without torch.compile: each torch op one
    kernel that reads its inputs and writes its output in full, autograd's backward op by op (tests/
    test_eager_bytes.py counts the executor's ops so, on CPU). Per element (e: the compute dtype's bytes; fused: one
    read and one write per forward, twice that per backward):

      rmsnorm    forward x.float(), pow, mean, x * rsqrt, type_as, * weight: 28 + 4e (fused 2e); backward
                 (weight product and its reduction, the casts, both products of x * rsqrt and their sum, pow and
                 mean): 68 + 8e (fused 4e); two norms per block, on the sequence-parallel share
      rotary     forward float, complex product, type_as: 16 + 2e (fused 2e); backward the same (fused 4e);
                 on Q and K
      rotate_half  forward x * cos, -x2, cat, * sin, the sum: 10e (fused 2e); backward g * sin, the negation,
                 g * cos, two slice backwards and the two sums of x's gradients: 14e (fused 4e); on Q and K
      swiglu     forward silu, product: 5e (fused 3e); backward both products and silu's: 9e (fused 6e); on the
                 ffn width (of an MoE block: every routed row's expert width and the shared experts')
      repeat_kv  grouped K and V copied to every query head: read kv, write q per token each; backward the sum
                 back; nothing when every head has its own K and V (the fused count has no copy at all)

    Recompute repeats the forward's bytes where the execution's selective policy recomputes element-wise ops."""
    if not ops or model.arch != "llama":
        return 0.0, 0.0
    e = DTYPE_BYTES[c.dtype]
    tokens = c.seq_len * c.micro_batch_size
    t = c.tp
    split = t if c.sequence_parallel else 1
    h, f, q, kv = model.hidden_size, model.ffn_hidden_size, model.q_dim, model.kv_dim
    forward = backward = 0.0
    if "rmsnorm" in ops:
        n = 2 * tokens * h / split
        forward += (28 + 2 * e) * n
        backward += (68 + 4 * e) * n
    if "rotary" in ops:
        n = tokens * (q + kv) / t
        forward += 16 * n
        backward += (16 - 2 * e) * n
    if "rotate_half" in ops:
        n = tokens * (q + kv) / t
        forward += 8 * e * n
        backward += 10 * e * n
    if "swiglu" in ops:
        n = moe_swiglu_elements(model, c) if moe else tokens * f / t
        forward += 2 * e * n
        backward += 3 * e * n
    if "repeat_kv" in ops and kv < q:
        copies = 2 * tokens * (q + kv) / t * e  # K and V
        forward += copies
        backward += copies
    return forward, backward


def moe_swiglu_elements(model: ModelSpec, c: ParallelConfig) -> float:
    """Elements of an MoE layer's SwiGLU products on one rank for one micro-batch: every routed row at its expert's
    width, and the shared experts' width over the rank's tokens."""
    from autoconf.cost.moe import tokens_per_rank

    m = model.moe
    return (tokens_per_rank(c) * m.num_experts_per_tok * m.moe_intermediate_size
            + c.seq_len * c.micro_batch_size * m.num_shared_experts * m.shared_expert_intermediate_size / c.tp)


def loss_bytes_per_logit(ops: tuple[str, ...], e: int) -> tuple[float, float]:
    """Bytes the loss moves per logit on one TP rank (logits in the compute dtype of `e` bytes), forward and
    backward. The fused count is 16 and 16 (an fp32 read and write in each pass); eager `ops`
    (`autoconf.spec.frameworks.EAGER_OPS`) count each kernel's reads and writes in full:

      vocab_parallel_ce  Megatron's: forward .float() (e + 4), max (4), in-place subtract (8), exp (8), sum (4),
                         divide (8); backward the in-place scale (8) and autograd's cast of the fp32 gradient to
                         the logits' dtype (4 + e)
      cross_entropy      torch's eager fp32 loss: forward .float() (e + 4), log_softmax over rows too long for one
                         pass (max, sum of exp, write: 16), nll_loss (a gather); backward nll_loss's zero-filled
                         gradient (4), log_softmax's backward (sum, then read both and write: 16) and the cast back
                         (4 + e)
      executor_ce        autoconf's executor's (execute/loss.py): forward max (e), per chunk the fp32 copy (e + 4)
                         shifted in place (8), exp in place (8) and summed (4); backward the copy (e + 4), in-place
                         subtract, exp and scale (24), copied back into the logits (4 + e). fp32 logits need no
                         copy: forward max, an out-of-place shift, exp and sum (24), backward the three in place (24)
    """
    if "vocab_parallel_ce" in ops:
        return 36.0 + e, 12.0 + e
    if "cross_entropy" in ops:
        return 20.0 + e, 24.0 + e
    if "executor_ce" in ops:
        return (24.0, 24.0) if e == 4 else (24.0 + 2 * e, 32.0 + 2 * e)
    return 16.0, 16.0


def embedding_grad_bytes(model: ModelSpec, c: ParallelConfig, execution: Execution | None) -> float:
    """Bytes the input embedding's weight gradient moves per micro-batch on one TP rank beyond the scattered rows:
    torch's dense embedding backward (`embedding_dense_backward`, what nn.Embedding and Megatron's
    VocabParallelEmbedding run) zero-fills a gradient of the rank's whole vocabulary slice (vocab / tp x hidden, in
    the compute dtype) before it scatters the tokens' rows in; under the megatron memory layout the parameter's
    gradient hook then adds that tensor into the main-gradient buffer (`param.main_grad.add_(param.grad)`, in
    Megatron-Core's distributed/param_and_grad_buffer hooks: a read of it, a read and a write of the buffer), every
    micro-batch."""
    e = DTYPE_BYTES[c.dtype]
    weights = model.vocab_size / c.tp * model.hidden_size
    per_weight = e
    if execution is not None and execution.memory_layout == "megatron":
        per_weight += e + 2 * execution.grad_buffer_bytes
    return weights * per_weight


def fsdp_copy_bytes(model: ModelSpec, c: ParallelConfig, execution: Execution | None,
                    moe: bool = False) -> tuple[float, float]:
    """Bytes FSDP2's copy kernels move per block and micro-batch on one rank, averaged over the step's micro-batches,
    forward and backward, when the execution's `fsdp_copies` is on and ZeRO shards over dp > 1 (torch's
    `_fsdp_collectives.py`): each all-gather's copy-out of the block's low-precision parameters into their
    unsharded tensors (`split_with_sizes_copy`: a read and a write of e bytes per parameter; at ZeRO 3 before every
    forward and every backward, else once per step), and each reduce-scatter's copy-in (`_chunk_cat` of the e-byte
    gradients into the fp32 reduce-scatter input, casting as it copies: e + 4 bytes per parameter; once per step,
    or every micro-batch under grad_reduce "microbatch"). With `moe`, of an MoE block (its routed experts split over
    ep x etp)."""
    if execution is None or not execution.fsdp_copies or not c.zero_sharded or execution.memory_layout != "torch":
        return 0.0, 0.0
    from autoconf.cost.moe import block_local_params

    e = DTYPE_BYTES[c.dtype]
    params = sum(block_local_params(model, c, moe))
    m = c.num_microbatches
    gather = 2 * e * params * (1.0 if c.zero_stage == 3 else 1.0 / m)
    reduce = (e + 4) * params * (1.0 if c.reduces_every_microbatch else 1.0 / m)
    return gather, (gather if c.zero_stage == 3 else 0.0) + reduce


def grad_accumulation_bytes(model: ModelSpec, c: ParallelConfig, execution: Execution | None,
                            moe: bool = False) -> float:
    """Bytes the gradient accumulation moves per block (an MoE block with `moe`) and micro-batch on one rank. The
    megatron layout without gradient accumulation fusion: every parameter's gradient, written by its GEMM in the
    compute dtype, added into the main-gradient buffer (`param.main_grad.add_(param.grad)`: a read of it, a read
    and a write of the buffer); 0 with the fusion, whose GEMMs accumulate in place (their epilogue, inside the GEMM
    time). The torch layout where FSDP2 holds the unsharded gradient over several micro-batches
    (`memory.holds_unsharded_grads`): the first micro-batch's gradient cast to the fp32 reduce dtype (a read, a
    write) and every later one added to it (torch's `accumulate_unsharded_grad_if_needed`: a read of it, a read and
    a write of the fp32 buffer), averaged over the step's micro-batches."""
    from autoconf.cost.moe import block_local_params

    e = DTYPE_BYTES[c.dtype]
    if execution is not None and execution.memory_layout == "megatron":
        if execution.grad_accumulation_fusion:
            return 0.0
        per_param = e + 2 * execution.grad_buffer_bytes
    elif accumulates_unsharded_grads(c, execution):
        per_param = e + 8 - 4 / c.num_microbatches
    else:
        return 0.0
    return per_param * sum(block_local_params(model, c, moe))


def accumulates_unsharded_grads(c: ParallelConfig, execution: Execution | None) -> bool:
    """Whether the torch layout sums every micro-batch's whole gradient into FSDP2's fp32 unsharded buffer
    (`grad_accumulation_bytes`): several micro-batches whose gradients it holds unsharded
    (`memory.holds_unsharded_grads`). The search reads it: reducing every micro-batch instead skips that work, so
    such a twin may be the faster one even where its twin reducing once per step fits."""
    from autoconf.cost.memory import holds_unsharded_grads

    torch_layout = execution is None or execution.memory_layout != "megatron"
    return torch_layout and c.num_microbatches > 1 and holds_unsharded_grads(c)


def side_kernels_time(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                      execution: Execution | None, moe: bool = False) -> PassTimes:
    """Seconds of the per-block kernels beside a block's own, per micro-batch at the profile's element-wise rate:
    `fsdp_copy_bytes` in the forward and in the input-gradient pass, `grad_accumulation_bytes` in the
    weight-gradient pass (an MoE block with `moe`). Not part of the pieces: recompute repeats none of it."""
    forward, backward = fsdp_copy_bytes(model, c, execution, moe)
    rate = cluster.device.memory_bandwidth_Bps * cluster.eff("memory")
    return PassTimes(forward / rate, backward / rate, grad_accumulation_bytes(model, c, execution, moe) / rate)


def _spec_pieces(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                 execution: Execution | None = None) -> ModelPieces:
    """The specification model's pieces. The execution's eager ops are those it runs without torch.compile; under
    the plan's `compile` on a GPU only those torch.compile leaves eager count (`compiled_ops`), and in MoE blocks all
    of them where the framework leaves those blocks uncompiled (`Execution.compiles_moe_blocks`). Whether the blocks
    compile is the plan's one rule (`ParallelConfig.compiles_blocks`: never under offload_activations)."""
    ex = execution if execution is not None else Execution()  # None: autoconf's executor
    ops = moe_ops = ex.eager_ops
    if c.compiles_blocks(cluster.device.kind):
        ops = compiled_ops(ops, loss_compiled(c, ex, cluster.device.kind))
        moe_ops = ops if ex.compiles_moe_blocks else moe_ops
    peak = cluster.device.peak(precision(c.dtype).element)
    mem_rate = cluster.device.memory_bandwidth_Bps * cluster.eff("memory")
    e = DTYPE_BYTES[c.dtype]
    t, s, b = c.tp, c.seq_len, c.micro_batch_size
    h, f, kv, a = model.hidden_size, model.ffn_hidden_size, model.kv_dim, model.num_heads
    sbh = s * b * h
    replicated_div = t if c.sequence_parallel else 1

    # Attention core. Flash kernels skip the masked upper triangle of the causal square (and what lies outside a
    # sliding window: `flash_core_seconds`); the standard path computes the whole square at the flat
    # efficiency["attention"] and streams the scores through memory (write, softmax read+write, dropout, read by AV).
    if c.attention == "flash":
        core_f, core_b = flash_core_seconds(model, cluster, ex, s, b, t, peak)
    else:
        att_flops = model.layer_attention_flops(s, b, windowed=False) / t
        att_rate = peak * cluster.eff("attention")
        score_bytes = a * s * s * b / t * (6 * e + (1 if model.dropout > 0 else 0))
        core_f = att_flops / att_rate + score_bytes / mem_rate
        core_b = 2 * att_flops / att_rate + 1.5 * score_bytes / mem_rate
    attention_core = PassTimes(core_f, core_b, 0.0)

    # Weight matmuls: forward M, backward-for-inputs M, backward-for-weights M.
    mm = _layer_matmul_time(model, cluster, c, execution)
    # Element-wise traffic: two norms, two residual adds (and dropouts) on the replicated stream; activation functions
    # (and rotary embeddings) on the TP-sharded part. Backward moves about twice the forward bytes.
    replicated_bytes = (2 * 2 + 2 * 3 + (2 * 2 if model.dropout > 0 else 0)) * sbh * e / replicated_div
    if model.arch == "gpt":
        sharded_bytes = 2 * s * b * f * e / t + 2 * s * b * (model.q_dim + 2 * kv) * e / t  # GeLU; QKV bias adds
    else:  # SwiGLU product; rotary on Q and K (Q at the heads' width, q_dim)
        sharded_bytes = 3 * s * b * f * e / t + 2 * s * b * (model.q_dim + kv) * e / t
    elementwise = (replicated_bytes + sharded_bytes) / mem_rate
    eager_f, eager_b = eager_elementwise_bytes(model, c, ops)
    scaling = PassTimes(*scaling_time(model, cluster, c))
    eager = PassTimes(eager_f / mem_rate, eager_b / mem_rate, 0.0)
    block_rest = PassTimes(mm + elementwise, mm + 2 * elementwise, mm) + eager + scaling
    moe_rest = None
    if model.moe is not None:
        routed_fp8 = ex.moe_fp8_routed_experts
        moe_mm, moe_elementwise = _moe_ffn_time(model, cluster, c, mem_rate, routed_fp8)
        mm = mm - gemms_time(cluster, precision(c.dtype).gemm, layer_gemms(model, s, b, t)[2:]) + moe_mm
        elementwise += moe_elementwise - 3 * s * b * f * e / t / mem_rate  # the dense MLP's SwiGLU product goes
        from autoconf.cost.moe import expert_cast_elements, routed_copy_bytes

        copies = routed_copy_bytes(model, c, ex.moe_fp8_padding) / mem_rate
        experts_scaling = PassTimes(*cast_seconds(cluster, c, *expert_cast_elements(model, c, routed_fp8)))
        mlp_scaling = PassTimes(*cast_seconds(cluster, c, *mlp_cast_elements(model, c)))
        moe_eager = PassTimes(*(b / mem_rate for b in eager_elementwise_bytes(model, c, moe_ops, moe=True)), 0.0)
        moe_rest = (PassTimes(mm + elementwise + copies, mm + 2 * elementwise + copies, mm) + moe_eager + scaling
                    + experts_scaling + mlp_scaling.scaled(-1))

    # Embedding: a gather of s*b rows (and learned positions); the weight backward scatters them into the dense
    # gradient of the whole table (`embedding_grad_bytes`).
    emb = (2 if model.learned_positions else 1) * sbh * e / replicated_div / mem_rate
    embedding = PassTimes(emb, 0.0, 2 * emb + embedding_grad_bytes(model, c, execution) / mem_rate)

    # Head: final norm, the vocab-parallel projection, and the fp32 cross-entropy over the logits.
    head_mm = gemms_time(cluster, precision(c.dtype).element, [model.head_forward_flops(s, b) / t])
    logits = s * b * model.vocab_size / t
    loss_f, loss_b = loss_bytes_per_logit(ops, e)
    norm = 2 * sbh * e / replicated_div / mem_rate
    head = PassTimes(head_mm + norm + logits * loss_f / mem_rate, head_mm + 2 * norm + logits * loss_b / mem_rate,
                     head_mm)
    return ModelPieces(attention_core, block_rest, embedding, head, "specification", moe_rest)


def _moe_ffn_time(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, mem_rate: float,
                  routed_fp8: bool = True) -> tuple[float, float]:
    """(one forward of the GEMMs, the element-wise seconds) of an MoE layer's FFN part on one rank: the router and
    shared experts, and every local expert's GEMMs at its own shape (`cost/moe.expert_gemms`: the size curve
    prices the small GEMMs of many experts), slowed by the load imbalance, at the dtype's GEMM peak, or without
    `routed_fp8` (`Execution.moe_fp8_routed_experts`) the routed ones at the compute dtype's; element-wise,
    SwiGLU's product on the routed rows (and the shared experts'), and the permutation that orders the routed tokens
    by expert and back."""
    from autoconf.cost.moe import expert_gemms, load_imbalance, tokens_per_rank

    p = precision(c.dtype)
    gemm = p.gemm
    dense, routed, experts = expert_gemms(model, c)
    routed_s = experts * gemms_time(cluster, gemm if routed_fp8 else p.element, routed)
    seconds = gemms_time(cluster, gemm, dense) + routed_s * load_imbalance(cluster, model)
    e = DTYPE_BYTES[c.dtype]
    routed_tokens = tokens_per_rank(c) * model.moe.num_experts_per_tok
    nbytes = 3 * moe_swiglu_elements(model, c) * e + 4 * routed_tokens * model.hidden_size * e
    return seconds, nbytes / mem_rate


# ---- measured tables ----------------------------------------------------------------------------------------------
def _shape_matches(table: dict, model: ModelSpec, dtype: str) -> bool:
    """Whether the profile's tables were timed on blocks of `model`'s shape in `dtype`: the SHAPE_KEYS, and of an
    MoE model the MOE_SHAPE_KEYS of the model the tables were timed on (a table of a dense model, or of an MoE
    profile from before the MoE blocks were timed, has none: Mixtral has Mistral-7B's shape keys). Never for
    latent attention, which the profiler does not build."""
    timed = table.get("model") or {}
    if table.get("dtype") != dtype or model.mla is not None or any(timed.get(k) != getattr(model, k)
                                                                     for k in SHAPE_KEYS):
        return False
    if model.moe is None:
        return True
    timed_moe = timed.get("moe") or {}
    return all(timed_moe.get(k) == getattr(model.moe, k) for k in MOE_SHAPE_KEYS) and (
        bool(timed_moe.get("router_aux_loss_coef")) == bool(model.moe.router_aux_loss_coef))


def _dense_attention(model: ModelSpec) -> bool:
    """Whether the profile's in-place TP layers (timed on the executor's dense layers) describe the model's
    layers: not for MoE layers or latent attention."""
    return model.moe is None and model.mla is None


def _interpolate(points: list[tuple[float, PassTimes]], x: float) -> PassTimes:
    """Piecewise-linear in x through the measured points; linear extrapolation through the end points, clipped at
    zero; one point: proportional to x (`autoconf.cost.interpolate`, edges="extrapolate")."""
    return PassTimes(*interpolate_many([(px, (t.forward, t.backward_input, t.backward_weight)) for px, t in points],
                                       x, EXTRAPOLATE))


def chain_scale(table: dict, entry: dict) -> float:
    """How much longer a block of `entry` takes in training than timed alone, from the profile's GPU `chain_scales`
    (1 without them): the layer scale for attention, MLP and norms, the ends scale for embedding and head, read at the
    entry's tokens per TP rank (a TP shard's kernels are as small as those of 1/tp of the tokens unsharded: what
    decides how much of the launches the device hides), interpolated linearly, held at the nearest measured size
    beyond them."""
    rows = sorted(table.get("chain_scales") or [], key=lambda r: r["micro_batch"] * r["seq_len"])
    if not rows:
        return 1.0
    key = "ends_scale" if entry["block"] in ("embedding", "head") else "layer_scale"
    tokens = entry["micro_batch"] * entry["seq_len"] / entry.get("tp", 1)
    return interpolate([(r["micro_batch"] * r["seq_len"], float(r[key])) for r in rows], tokens, CLAMP)


def _attention_core_shares(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, micro_batch: int,
                           seq_len: int) -> tuple[float, float]:
    """The attention core's share of the attention block's forward and input-gradient pass at (micro_batch,
    seq_len), from the specification model: the core's kernels against the QKV and output projections. The measured
    block times both together; this splits them."""
    at = dataclasses.replace(c, micro_batch_size=micro_batch, seq_len=seq_len)
    full = dataclasses.replace(model, sliding_window=None, full_attention_layers=())  # (the timed block's)
    core = _spec_pieces(full, cluster, at).attention_core
    projections = gemms_time(cluster, precision(c.dtype).gemm, layer_gemms(model, seq_len, micro_batch, c.tp)[:2])
    return core.forward / (core.forward + projections), core.backward_input / (core.backward_input + projections)


def _measured_attention(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                        timed: list[tuple[dict, PassTimes]]) -> tuple[PassTimes, PassTimes]:
    """(core, projections) of the attention block at the config's micro-batch and sequence, from its timed entries.

    Each timed entry is split into its core (`_attention_core_shares`) and its projections; the core's work grows
    with micro_batch x seq_len^2 (the score matrix), the projections' with micro_batch x seq_len (tokens), so each
    part is read through the shared interpolation rule (`_interpolate`) on its own size: a table timed at one
    sequence length still predicts a longer one with the s^2 term, and at a timed length the two reads agree with
    plain interpolation in tokens. The profiler times full causal attention; under sliding windows the core is
    read at the model's mean share of its pairs (`ModelSpec.attention_work_share`)."""
    cores, projections = [], []
    for entry, times in timed:
        b, s = entry["micro_batch"], entry["seq_len"]
        forward_share, backward_share = _attention_core_shares(model, cluster, c, b, s)
        core = PassTimes(times.forward * forward_share, times.backward_input * backward_share, 0.0)
        cores.append((b * s * s, core))
        projections.append((b * s, PassTimes(times.forward - core.forward, times.backward_input - core.backward_input,
                                             times.backward_weight)))
    b, s = c.micro_batch_size, c.seq_len
    return _interpolate(cores, b * s * s).scaled(model.attention_work_share(s)), _interpolate(projections, b * s)


def _measured_pieces(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                     share: float) -> ModelPieces | None:
    """Pieces from the profile's block tables for the config's TP width: per block, the entries timed at the
    config's sequence length, or (none there) all of that block's entries; read at the config's micro-batch and
    sequence (attention: `_measured_attention`; the other blocks linearly in tokens). An MoE layer is its attention,
    two norms, the "moe" block and the routed experts: the "experts" entries of the config's ep and etp (timed with
    every token of a micro-batch on one rank) read at the tokens one TP rank routes (`moe.tokens_per_rank`), under
    the profile's load imbalance (the busiest rank's routed rows over the even share they were timed at). None
    when the table lacks a block the model needs at this layout."""
    from autoconf.cost.moe import load_imbalance, tokens_per_rank

    table = cluster.compute
    if not table or not _shape_matches(table, model, c.dtype):
        return None
    chained = float(cluster.efficiency.get("model_compute_scale", {}).get("value", 1.0))
    timed: dict[str, list[tuple[dict, PassTimes]]] = {}
    for entry in table.get("entries", []):
        if not timed_at(entry, c.tp, c.ep, c.etp):
            continue
        times = PassTimes(float(entry["forward_s"]), float(entry["backward_input_s"]),
                          float(entry["backward_weight_s"])).scaled(chained * chain_scale(table, entry) / share)
        timed.setdefault(entry["block"], []).append((entry, times))
    if not all(k in timed for k in BLOCKS + (MOE_BLOCKS if model.moe is not None else ())):
        return None
    for block, rows in timed.items():
        same_seq = [row for row in rows if row[0]["seq_len"] == c.seq_len]
        timed[block] = rows if block == "experts" else same_seq or rows
    tokens = c.micro_batch_size * c.seq_len

    def read(block: str, at: float = tokens) -> PassTimes:
        return _interpolate([(e["micro_batch"] * e["seq_len"], t) for e, t in timed[block]], at)

    core, projections = _measured_attention(model, cluster, c, timed["attention"])
    around = read("norm").scaled(2) + projections
    moe_rest = None
    if model.moe is not None:
        routed = read("experts", tokens_per_rank(c)).scaled(load_imbalance(cluster, model))
        moe_rest = around + read("moe") + routed
    return ModelPieces(core, around + read("mlp"), read("embedding"), read("head"), "measured", moe_rest)
