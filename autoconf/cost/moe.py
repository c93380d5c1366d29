"""Mixture-of-experts rules of the cost model, each written once: which layers are MoE layers, how the parameters
of a stage split into what attention's layout shards (over tp, ZeRO over dp) and what the experts' layout shards
(routed experts over ep x etp, ZeRO over edp), the tokens each rank's experts see, the expert GEMMs, the
all-to-all traffic, the routed activations and the all-to-all buffers.

The layout is Megatron-Core's "MoE parallel folding" (spec/grid.py `expert_grid`): the ranks of one pipeline rank
run attention as dp x tp and the MoE layers as edp x ep x etp. Each rank enters an MoE layer with
T = seq x micro-batch / tp tokens (its sequence-parallel share: Megatron-Core's MoE layers take the token-split input,
and the TP collectives the block already pays rebuild the full sequence). Its router sends each token to top-k
experts; the all-to-all over the EP group (dispatch) carries T x k hidden vectors per rank, the ETP group
all-gathers them, so each rank holds num_experts / ep experts of width moe_intermediate_size / etp and each local
expert runs its GEMMs on R = T x k x ep x etp / num_experts rows (`rows_per_expert`); a reduce-scatter over ETP and
the reverse all-to-all (combine) bring the results back. The backward repeats both with the gradients.

Under a framework whose dispatch sends a token once per node it reaches (`Execution.dispatch_per_node`, DeepEP's), a
group-limited router bounds the nodes a token reaches (`dispatch_nodes_bound`), and so the cross-node bytes
(`dispatch_shares`).
"""

from __future__ import annotations

import functools

import numpy as np

from autoconf.cost.comm import collective_time
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import DTYPE_BYTES, STORAGE_BYTES, precision
from autoconf.spec.frameworks import Execution
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig

# Without a measured value in the profile (efficiency entry `moe_load_imbalance`: the busiest rank's routed tokens
# over the mean), routing is taken as balanced: dropless routing with a balancing loss or DeepSeek's bias
# balancing keeps the global load close to even (docs/moe.md), and autoconf has no measured ratio to state.
DEFAULT_LOAD_IMBALANCE = 1.0
# Router-score tensors of T x experts fp32 an MoE layer keeps per token it routes, by memory layout: the executor
# ("torch", execute/moe.py) keeps the softmax or sigmoid output its backward reads; Megatron's accounting ("megatron")
# keeps the logits and the probabilities.
ROUTER_SCORE_TENSORS = {"torch": 1, "megatron": 2}


@functools.lru_cache(maxsize=256)
def _moe_prefix(model: ModelSpec) -> tuple[int, ...]:
    counts = [0]
    for layer in range(model.num_layers):
        counts.append(counts[-1] + int(model.is_moe_layer(layer)))
    return tuple(counts)


def moe_layers(model: ModelSpec, first: int, end: int) -> int:
    """How many of blocks [first, end) are MoE layers (0 for a dense model)."""
    if model.moe is None or end <= first:
        return 0
    prefix = _moe_prefix(model)
    return prefix[end] - prefix[first]


@functools.lru_cache(maxsize=256)
def layer_kind_params(model: ModelSpec) -> tuple[int, int, int]:
    """(params of a dense block, of an MoE block, of the routed experts of an MoE block); 0 where the model has no
    block of that kind."""
    dense = moe = experts = 0
    for first, _ in model.layer_groups():
        if model.is_moe_layer(first):
            moe = model.layer_params(first)
            experts = sum(op.params for op in model.layer_ops(first) if op.kind == "experts")
        else:
            dense = model.layer_params(first)
    return dense, moe, experts


def blocks_params(model: ModelSpec, first: int, end: int) -> tuple[float, float, float]:
    """(all parameters, routed-expert parameters, TP-replicated parameters) of blocks [first, end), over all ranks;
    the last two are parts of the first (`ModelSpec.tp_replicated_params`: what every TP rank holds whole)."""
    if model.moe is None:
        return (float((end - first) * model.layer_params()), 0.0,
                float((end - first) * model.tp_replicated_params("dense")))
    n_moe = moe_layers(model, first, end)
    dense, moe, experts = layer_kind_params(model)
    replicated = (end - first - n_moe) * model.tp_replicated_params("dense") + n_moe * model.tp_replicated_params("moe")
    return float((end - first - n_moe) * dense + n_moe * moe), float(n_moe * experts), float(replicated)


def local_params(c: ParallelConfig, params: float, expert_params: float,
                 replicated_params: float = 0.0) -> tuple[float, float]:
    """(attention-layout params, expert params) one rank holds of a stage's `params`, of which `expert_params` are
    routed experts and `replicated_params` TP-replicated (`ModelSpec.tp_replicated_params`): the rest split over tp
    with the replicated ones whole, the routed experts over ep x etp."""
    return ((params - expert_params - replicated_params) / c.tp + replicated_params,
            expert_params / (c.ep * c.etp))


def expert_state_shard(c: ParallelConfig, layout: str = "torch") -> int:
    """Ranks a routed expert's ZeRO-sharded state (and reduced gradient) is split over: the expert-data-parallel
    degree edp under ZeRO >= 1, in the megatron layout (Megatron-Core's distributed optimizer over the expert-DP
    group) and in the torch layout where FSDP shards at all (`zero_sharded`; otherwise the executor's experts are
    one-rank units, execute/parallelize.py `apply_data_parallel`); 1 otherwise."""
    if c.zero_stage >= 1 and (layout == "megatron" or c.zero_sharded):
        return c.edp
    return 1


def block_local_params(model: ModelSpec, c: ParallelConfig, moe: bool) -> tuple[float, float]:
    """`local_params` of one dense block, or with `moe` of one MoE block: (what the attention layout splits, with
    the block's TP-replicated parameters whole; its routed experts over ep x etp). (0, 0) for a kind the model
    lacks."""
    dense, moe_params, experts = layer_kind_params(model)
    if moe:
        return local_params(c, moe_params, experts, model.tp_replicated_params("moe"))
    return local_params(c, dense, 0.0, model.tp_replicated_params("dense"))


def tokens_per_rank(c: ParallelConfig) -> float:
    """Tokens of one micro-batch a rank routes in an MoE layer: its 1/tp share of the sequence."""
    return c.local_seq_len * c.micro_batch_size / c.tp


def rows_per_expert(model: ModelSpec, c: ParallelConfig) -> float:
    """Average rows of each local expert's GEMMs: the ep x etp ranks' T x k routed tokens spread over the experts."""
    return tokens_per_rank(c) * model.moe.num_experts_per_tok * c.ep * c.etp / model.moe.num_experts


def load_imbalance(cluster: ClusterProfile, model: ModelSpec) -> float:
    """The busiest rank's routed tokens over the mean, which scales the routed experts' GEMMs and the all-to-all
    bytes: the profile's efficiency `moe_load_imbalance` (else DEFAULT_LOAD_IMBALANCE), at most the model's
    `capacity_factor` where it routes with one (an expert takes at most that many times its even share of the
    tokens and drops the rest: Megatron's --moe-expert-capacity-factor without padding to capacity)."""
    entry = cluster.efficiency.get("moe_load_imbalance")
    measured = max(1.0, float(entry["value"])) if entry else DEFAULT_LOAD_IMBALANCE
    capacity = model.moe.capacity_factor if model.moe is not None else None
    return measured if capacity is None else min(measured, capacity)


def expert_gemms(model: ModelSpec, c: ParallelConfig) -> tuple[list[float], list[float], int]:
    """Forward FLOPs of each GEMM of one MoE layer's FFN part on one rank: (the router and the shared experts, as
    shaped by the attention layout: router on the rank's T tokens, shared experts TP-split like a dense MLP;
    gate, up and down of one local routed expert at its `rows_per_expert`; the local experts, each running those
    three: a count, so that a model of many experts costs no more to price than one of few). Each backward GEMM has
    the FLOPs of its forward one."""
    m, h = model.moe, model.hidden_size
    tokens = c.local_seq_len * c.micro_batch_size
    dense = [2.0 * tokens_per_rank(c) * h * m.num_experts]
    if m.num_shared_experts:
        width = m.num_shared_experts * m.shared_expert_intermediate_size
        dense += [2.0 * tokens * h * width / c.tp] * 3
    rows, width = rows_per_expert(model, c), m.moe_intermediate_size / c.etp
    return dense, [2.0 * rows * h * width] * 3, m.num_experts // c.ep


def routed_rows(model: ModelSpec, c: ParallelConfig) -> float:
    """Rows of routed tokens one rank's local experts run on average in one MoE layer and micro-batch: the T x k
    tokens of its EP group's ranks that reach its experts, times etp (the ETP group all-gathers them):
    `rows_per_expert` times the local experts."""
    return tokens_per_rank(c) * model.moe.num_experts_per_tok * c.etp


def routed_copy_bytes(model: ModelSpec, c: ParallelConfig, fp8_padding: bool) -> float:
    """Bytes one MoE layer moves on one rank per pass (forward; the backward moves the same for the gradients)
    copying its routed rows beyond the permutation that sorts them by destination and its inverse (counted in
    `cost/compute._moe_ffn_time`), each copy a read and a write of `routed_rows` x hidden in the compute dtype:
    - with ep x etp > 1 and more than one local expert, the rows a rank receives arrive grouped by source rank and
      are sorted by local expert before the experts, and unsorted before the combine (Megatron-Core's alltoall
      dispatcher, moe/token_dispatcher.py `sort_chunks_by_idxs` in dispatch_postprocess and combine_preprocess,
      core_v0.15.0; autoconf's executor, execute/moe.py, indexes them by expert and back; Megatron-Core also runs the
      sort, in identity order, on a single EP rank, which is not counted);
    - `fp8_padding` (`Execution.moe_fp8_padding`) under a dynamic-scaling fp8 dtype: each local expert's rows are
      padded to the fp8 GEMM's multiple before the grouped GEMM and the output unpadded after it (Megatron-Core's
      TEGroupedMLP with Transformer Engine's Fp8Padding / Fp8Unpadding, core_v0.15.0 moe/experts.py; TE copies
      unless every expert's row count is already a multiple of 16, which routed counts almost never are)."""
    m = model.moe
    copies = 0
    if c.ep * c.etp > 1 and m.num_experts // c.ep > 1:
        copies += 2
    if fp8_padding and precision(c.dtype).dynamic_scaling:
        copies += 2
    return copies * 2 * routed_rows(model, c) * model.hidden_size * DTYPE_BYTES[c.dtype]


def expert_cast_elements(model: ModelSpec, c: ParallelConfig,
                         routed: bool = True) -> tuple[float, float, float, float]:
    """Elements one MoE layer's experts cast to fp8 per micro-batch on one rank under the rule of `cost/fp8.py`, as
    `cost/fp8.cast_seconds` takes them (forward inputs, outputs, inputs re-cast in the weight-gradient pass,
    weights): with `routed` (`Execution.moe_fp8_routed_experts`) the routed experts' two GEMMs on `routed_rows`
    (the gate and up projections as one, `linear_fc1` of Megatron-Core's grouped experts; the down projection) and
    every local expert's weights; the shared experts as one such pair on the rank's tokens, TP-split. The router
    stays in the compute dtype."""
    m, h = model.moe, model.hidden_size
    inputs = outputs = weights = 0.0
    if routed:
        rows, width = routed_rows(model, c), m.moe_intermediate_size / c.etp
        inputs = rows * (h + width)
        outputs = rows * (2 * width + h)
        weights = (m.num_experts // c.ep) * 3 * h * width
    if m.num_shared_experts:
        tokens = c.local_seq_len * c.micro_batch_size
        shared = m.num_shared_experts * m.shared_expert_intermediate_size / c.tp
        inputs += tokens * (h / (c.tp if c.sequence_parallel else 1) + shared)
        outputs += tokens * (2 * shared + h)
        weights += 3 * h * shared
    return inputs, outputs, inputs, weights


def dispatch_bytes(model: ModelSpec, c: ParallelConfig, dtype: str | None = None) -> float:
    """Bytes one rank sends in one dispatch (and one combine) all-to-all: T x k hidden vectors in the compute dtype
    (or storage dtype `dtype`)."""
    nbytes = DTYPE_BYTES[c.dtype] if dtype is None else STORAGE_BYTES[dtype]
    return tokens_per_rank(c) * model.moe.num_experts_per_tok * model.hidden_size * nbytes


def _ep_nodes(cluster: ClusterProfile, ep_group) -> int | None:
    """How many nodes the EP group spans when its ranks, in EP order, fill them in equal consecutive runs (so the
    routed experts, in order over the EP ranks, fill them in equal consecutive runs too); None otherwise."""
    nodes = np.array([cluster.domain_of(int(d)) for d in np.asarray(ep_group).reshape(-1)])
    n = len(np.unique(nodes))
    if len(nodes) % n:
        return None
    runs = nodes.reshape(n, -1)
    return n if (runs == runs[:, :1]).all() and len(np.unique(runs[:, 0])) == n else None


def dispatch_nodes_bound(model: ModelSpec, cluster: ClusterProfile, ep_group) -> int | None:
    """The most nodes one token's routed experts can lie on over `ep_group`, or None where the routing bounds
    nothing on this layout. Group-limited routing (`MoESpec.n_group` groups of consecutive experts, a token using
    `topk_group` of them) bounds the nodes when the groups fall on whole nodes: the EP ranks hold the experts in
    order and fill the n nodes in equal runs (`_ep_nodes`), so a node holds num_experts / n consecutive experts;
    when that is a whole number of groups a group lies on one node, when a group is a whole number of nodes' experts
    it spans that many. DeepSeek-V3 at ep 64 over 8 nodes: 8 groups of 32 experts, one per node, topk_group 4: 4
    nodes, the report's M (arXiv 2412.19437, Sec. 2.1.2 and 4.2)."""
    m = model.moe
    n = _ep_nodes(cluster, ep_group)
    if m.n_group <= 1 or n is None:
        return None
    per_node, group = m.num_experts // n, m.num_experts // m.n_group
    if per_node % group == 0:
        return min(n, m.topk_group)
    if group % per_node == 0:
        return min(n, m.topk_group * (group // per_node))
    return None


def dispatch_shares(model: ModelSpec, cluster: ClusterProfile, ep_group,
                    execution: Execution | None) -> tuple[float, float]:
    """The intra-node and cross-node bytes one dispatch (and one combine) over `ep_group` moves, as multiples of an
    all-to-all's (`cost/comm.all_to_all_time`): (1, 1) unless the framework sends a token once per node it reaches
    and forwards it there (`Execution.dispatch_per_node`) and the group spans n > 1 nodes in equal runs of
    l = ep / n ranks. Per token of top-k, an all-to-all sends k (l - 1) / ep copies inside the node and
    k (n - 1) / n across. Per node instead: at most min(k, M, n) nodes are reached (M `dispatch_nodes_bound`, or
    n), each the token's own with chance 1/n on balanced routing, so min(k, M, n) (n - 1) / n copies cross; and
    every copy whose GPU is not the receiving one of its node, k (l - 1) / l, is forwarded over NVLink. Shares
    (n, min(k, M, n) / k). DeepSeek-V3 at ep 64 on 8 nodes: (8, 4 / 8) (arXiv 2412.19437, Sec. 3.2.2).
    Combine: the same paths back, one summed vector per node."""
    n = _ep_nodes(cluster, ep_group)
    if execution is None or not execution.dispatch_per_node or n is None or n <= 1:
        return 1.0, 1.0
    k = model.moe.num_experts_per_tok
    bound = dispatch_nodes_bound(model, cluster, ep_group)
    return float(n), min(k, n, bound or n) / k


def ep_comm_passes(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, ep_group,
                   etp_group, execution: Execution | None = None) -> tuple[float, float]:
    """Seconds of one MoE layer's token exchange in the (forward, backward) pass: a dispatch and a combine
    all-to-all over `ep_group`, and with etp > 1 an all-gather and a reduce-scatter of the routed tokens over
    `etp_group`; the busiest rank's bytes (`load_imbalance`). What travels towards the experts (the forward
    dispatch, and in the backward the gradient before the experts' down projections) is in the precision's
    `dispatch_dtype` (fp8 under fp8-deepseek), what comes back (the combine and its backward twin) in the compute
    dtype. Each exchange moves `dispatch_shares` of an all-to-all's intra- and cross-node bytes under `execution`.
    For the executor (`Execution.executor_overheads`), a profile's in-place measurement of the exchange at this
    layout (`compute.measured_ep_layer`) replaces all of it."""
    if (execution or Execution()).executor_overheads:
        from autoconf.cost.compute import measured_ep_layer

        measured = measured_ep_layer(model, cluster, c)
        if measured is not None:
            return measured.forward, measured.backward_input
    p = precision(c.dtype)
    imbalance = load_imbalance(cluster, model)
    nbytes = dispatch_bytes(model, c) * imbalance
    shares = dispatch_shares(model, cluster, ep_group, execution)
    all_to_all = collective_time(cluster, "all_to_all", nbytes, ep_group, shares)
    dispatch = all_to_all
    if p.dispatch_dtype != p.element:
        dispatch = collective_time(cluster, "all_to_all", dispatch_bytes(model, c, p.dispatch_dtype) * imbalance,
                                   ep_group, shares)
    etp = 0.0
    if c.etp > 1:
        etp = (collective_time(cluster, "all_gather", nbytes * c.etp, etp_group)
               + collective_time(cluster, "reduce_scatter", nbytes * c.etp, etp_group))
    return dispatch + all_to_all + etp, dispatch + all_to_all + etp


def token_share_tp_comm(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, tp_group,
                        execution: Execution | None = None) -> tuple[float, float]:
    """Seconds of the collectives over `tp_group` that one MoE layer adds in its (forward, backward) pass when each
    TP rank routes 1/tp of the layer's tokens (`Execution.moe_tp_token_share`, execute/moe.py `MoE.forward`),
    beside the attention's and the shared experts' TP collectives: in the forward the all-gather of the routed
    outputs (`_GatherShares`: the micro-batch's T x hidden values) and, with a load-balancing loss, the all-reduce of
    its statistics (`_SumOver`: 2 x experts + 1 fp32 values); in the backward the all-gather of the input gradients
    (`_TakeShare`), under sequence parallelism another of the output gradients (the rank's sequence share of the
    gathered output is a slice, whose backward gathers), and the all-reduce of the router's gradients (`_SumGrad`:
    experts x hidden weights and the bias, in the compute dtype). (0, 0) at tp 1, for dense models and for other
    frameworks."""
    if model.moe is None or c.tp == 1 or not (execution or Execution()).moe_tp_token_share:
        return 0.0, 0.0
    m = model.moe
    element = DTYPE_BYTES[c.dtype]
    tokens = c.local_seq_len * c.micro_batch_size * model.hidden_size * element
    gather = collective_time(cluster, "all_gather", tokens, tp_group)
    router = m.num_experts * (model.hidden_size + (1 if m.router_bias else 0)) * element
    forward = gather
    if m.router_aux_loss_coef > 0:
        forward += collective_time(cluster, "all_reduce", (2 * m.num_experts + 1) * 4, tp_group)
    backward = gather * (2 if c.sequence_parallel else 1) + collective_time(cluster, "all_reduce", router, tp_group)
    return forward, backward


def swiglu_tensors(layout: str, recompute: str, fused: bool = False) -> int:
    """Tensors of its width per token a SwiGLU FFN (a dense MLP or an expert) keeps for its backward in memory
    layout `layout`: gate, up, silu and their product (4); 3 where the silu output is not kept, because the
    executor's selective recompute redoes it (the torch layout) or the kernel is `fused` (`memory.fused_swiglu`);
    full recompute keeps none."""
    if recompute == "full":
        return 0
    return 3 if fused or (recompute == "selective" and layout == "torch") else 4


def routed_activation_bytes(model: ModelSpec, c: ParallelConfig, layout: str, recompute: str,
                            keeps_outputs: bool = True, fused_swiglu: bool = False) -> float:
    """Bytes one MoE layer's FFN part keeps for its backward on one rank, one micro-batch, in place of a dense MLP's,
    in memory layout `layout`: the router's fp32 scores (`ROUTER_SCORE_TENSORS[layout]` tensors of T x experts); the
    T x k x etp routed tokens the local experts read; per routed row the SwiGLU tensors of width
    moe_intermediate_size / etp (`swiglu_tensors`: gate, up, their product, and the silu output unless the executor's
    selective recompute redoes it or `fused_swiglu`: Megatron-Core's experts run `weighted_bias_swiglu_impl` /
    `bias_swiglu_impl`, which save their input and recompute the activation, the second linear saving the product;
    DeepSeek's own kernels the same);
    with `keeps_outputs` (`Execution.moe_combine_keeps_outputs`) the T x k expert outputs the combine weighs (the
    gradient of the routing probabilities reads them); the shared experts' SwiGLU tensors like a dense MLP's
    (TP-split). Full recompute keeps none of it (the block input only)."""
    if recompute == "full":
        return 0.0
    m, h, e = model.moe, model.hidden_size, DTYPE_BYTES[c.dtype]
    tensors = swiglu_tensors(layout, recompute, fused_swiglu)
    t = tokens_per_rank(c)
    routed_rows = t * m.num_experts_per_tok * c.etp
    out = 4 * ROUTER_SCORE_TENSORS[layout] * t * m.num_experts
    out += e * routed_rows * h + tensors * e * routed_rows * m.moe_intermediate_size / c.etp
    out += e * t * m.num_experts_per_tok * h if keeps_outputs else 0.0
    if m.num_shared_experts:
        width = m.num_shared_experts * m.shared_expert_intermediate_size
        out += tensors * e * c.local_seq_len * c.micro_batch_size * width / c.tp
    return out


def all_to_all_buffer_bytes(model: ModelSpec, c: ParallelConfig) -> float:
    """The largest temporary of an MoE layer beside its saved tensors: the permuted send buffer and the receive
    buffer of one all-to-all (with etp > 1 the gathered copy, etp times larger)."""
    return dispatch_bytes(model, c) * (1 + c.etp)


def smallest_layer_params(model: ModelSpec) -> int:
    """The fewest parameters a block of the model has beside its routed experts (which split over ep x etp): what
    a lower bound may take for every block."""
    if model.moe is None:
        return model.layer_params()
    dense, moe, experts = layer_kind_params(model)
    kinds = [moe - experts] + ([dense] if moe_layers(model, 0, model.num_layers) < model.num_layers else [])
    return min(kinds)


def layer_kinds(model: ModelSpec) -> tuple[bool, ...]:
    """The kinds of block the model has, as `is_moe_layer` values: (False,) for a dense model."""
    return tuple(sorted({model.is_moe_layer(first) for first, _ in model.layer_groups()}))
