"""One configuration in, one prediction out: iteration time as a sum of named terms, and memory per pipeline rank.

    stage costs  = per virtual stage: its layers' compute (+ recompute of its recomputed layers) + the TP collectives
                   inside each layer + what the CP exchange of keys and values leaves exposed (`cp_attention_comm`),
                   the embedding on the first stage, the head and loss on the last          (compute.py, comm.py)
    simulation   = the schedule's action lists run on those costs, with P2P transfers between the devices of
                   neighbouring stages and the DP/FSDP collectives on a separate stream    (schedules.py, simulate.py)
    iteration    = simulated makespan + the step's own collectives (gradient norm, loss, tied embedding)
                   + optimizer step + the profile's step_overhead_s
    memory       = per pipeline rank, with the in-flight micro-batches the simulation counted   (memory.py)

Where frameworks differ, an `Execution`'s flags decide (spec/frameworks.py): what the DP gather and reduction
overlap (whole, or bucket by bucket with the first forward and the last backward), whether TP communication hides
behind the GEMMs, the P2P scheme, the memory layout, what selective recompute redoes.

The time breakdown (compute, recompute, tp_comm, [cp_comm when cp > 1,] bubble, pp_comm, dp_comm, step_comm,
optimizer, framework) adds up to the iteration time: the terms after tp_comm (cp_comm) are what each extra ingredient
adds to the simulated makespan of the critical rank.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoconf.cost.comm import collective_time, p2p_time, slowest_collective_time
from autoconf.cost.cp_ring import dkv_bytes, sdpa_kv_bytes, torch_ring, transfers
from autoconf.cost.compute import (PassTimes, attention_gemms, causal_span_share, cpu_share, cpu_share_alone,
                                   gemms_time, layer_gemms, measured_tp_layer, model_pieces, rank_optimizer_time,
                                   replicated_tokens_split, seq_chunk_bounds, side_kernels_time)
from autoconf.cost.memory import (attention_matmuls, cp_kv_bytes, hidden_state_bytes, rank_params, reduced_grad_bytes,
                                  stage_block_activation_bytes, stage_expert_params, stage_memory, stage_params,
                                  stage_replicated_params)
from autoconf.cost.mtp import mtp_pass_times
from autoconf.cost.moe import ep_comm_passes, local_params, moe_layers, token_share_tp_comm
from autoconf.cost.offload import (activation_copy_bytes, activation_copy_times, check_host_memory, check_offload,
                                   gather_copy_time, host_memory_per_node, reduce_copy_time)
from autoconf.cost.simulate import (WEIGHT_GRAD_ACTIVATION_SHARE, StageCosts, Timeline, beside, busy_per_rank,
                                    order_peaks, rank_order_peaks, simulate)
from autoconf.errors import UserError
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import DTYPE_BYTES, check_dtype, gather_bytes, precision
from autoconf.spec.frameworks import (MLP_GEMMS, PRESETS, TP_OVERLAP_GEMMS, TP_OVERLAP_PAIRS, Execution,
                                      changed_flags, overlaps_pairs, selective_policy, tp_overlap_chunks)
from autoconf.spec.grid import RankGrid, expert_groups
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, Plan, recompute_layers_problem, recomputed_layers, uniform_partition
from autoconf.spec.schedules import build_schedule, rank_actions, schedule_spec, stage_to_rank
from autoconf.spec.support import plan_unsupported_reason

FRAMEWORKS = tuple(PRESETS)
# With `extrapolate`, schedules with more than this many micro-batches per pipeline rank are simulated at 2p and 3p
# micro-batches (or later pairs where the step settles late) and extended linearly (see _extrapolated_step).
EXTRAPOLATE_ABOVE = 4
# How far an extrapolated time may lie above the full simulation; it never lies below (tests/test_cost.py checks
# every schedule and the steps that settle late, and a DP stream falling behind the compute is simulated in full).
# The search simulates in full every candidate whose extrapolated time is within this margin of its K-th best, so it
# ranks by the full simulation. Measured 2026-12-06 by scripts/extrapolation_audit.py (seeds 0-29, 12,000 random
# layouts of four dense and MoE models on A100 and H100 nodes, every framework, schedule and ZeRO stage, both
# gradient reductions, some with context parallelism): never below, at most 0.083% above
# (2.6% above before samples past 3p were taken, 2026-12-06; up to 3.5% on pipelined steps reducing every
# micro-batch).
EXTRAPOLATION_MARGIN = 0.001
# `step_floor`'s relative slack: an extrapolated step's compute may end below the compute it extends by 1e-9 of a
# sample's span per sampled interval (`_extrapolated_step`'s tolerance), under 1e-8 of the step.
FLOOR_SLACK = 1e-6
# Below this a breakdown term is rounding left by subtracting two makespans (seconds).
BREAKDOWN_NOISE_S = 1e-9


def default_mesh(config: ParallelConfig) -> np.ndarray:
    return RankGrid.logical(config.dims).devices


def default_partition(model: ModelSpec, config: ParallelConfig) -> list[list[int]]:
    """The even split of the layers over the stages; with MTP modules (cost/mtp.py) the split of the layers and the
    modules together, the modules at the end of the last stage, so the last stage makes room for them (where that
    leaves a stage before the last without a layer, the plain split)."""
    stages = config.num_stages
    d = model.mtp_num_layers
    if d and 1 < stages <= model.num_layers:
        room = [[min(a, model.num_layers), min(b, model.num_layers)]
                for a, b in uniform_partition(model.num_layers + d, stages)]
        if all(b > a for a, b in room[:-1]):
            return room
    return uniform_partition(model.num_layers, stages)


@dataclass
class StagePlan:
    """Per virtual stage: time of one micro-batch (with the named parts), and the DP collectives."""

    costs: StageCosts
    compute: list[PassTimes]  # pure compute per stage
    recompute: list[float]
    tp_comm: list[PassTimes]
    pass_overhead: float  # framework seconds added to each forward and each backward(-input) pass
    allgather: list[float]  # once-per-step FSDP gathers
    reduce: list[float]
    buckets: list[int]  # gradient (and parameter-gather) buckets per stage: Execution.buckets
    # The reduce-scatters of every micro-batch but the last (grad_reduce "microbatch"); the last one is `reduce`.
    early_reduce: list[float] = dataclasses.field(default_factory=list)
    # The MoE token exchange (all-to-all over EP, gather/scatter over ETP) per stage and pass; empty when dense.
    ep_comm: list[PassTimes] = dataclasses.field(default_factory=list)
    # Per stage, the offload_activations copies on the compute stream (forward, input backward; cost/offload.py).
    offload: list[PassTimes] = dataclasses.field(default_factory=list)
    cp_comm: list[PassTimes] = dataclasses.field(default_factory=list)  # exposed CP K/V exchange per stage (cp > 1)
    # The profile's collective_sm_share, and per stage the share of `reduce` the simulation charges as contention
    # (`simulate`'s reduce_contending: the re-gathers folded into `reduce` are charged in the stage's costs).
    contention: float = 0.0
    reduce_contending: list[float] = dataclasses.field(default_factory=list)
    # Per stage, FSDP's hooks on its units in each forward and each backward(-input) pass (framework time).
    hooks: list[float] = dataclasses.field(default_factory=list)
    # Per stage under `blocking_p2p`, its sends to the next stage (forward) and the previous one (input backward),
    # which its passes hold; empty otherwise, where a transfer delays only the receiver.
    p2p_sends: list[PassTimes] = dataclasses.field(default_factory=list)
    # Per stage, the parameter gathers of every micro-batch's forward together (`regathers_every_forward`), which the
    # DP stream carries beside the reductions; empty where the parameters are gathered once per step or per pass.
    forward_gathers: list[float] = dataclasses.field(default_factory=list)

    def transfer_delay(self, p2p):
        """What a transfer adds between a pass and the pass on another rank that reads it (`simulate`'s p2p_time):
        nothing where the sender's pass held the send (`p2p_sends`), else `p2p`."""
        return 0.0 if self.p2p_sends else p2p


def dp_buffer_bytes(c: ParallelConfig, params: float, execution: Execution | None = None) -> tuple[float, float]:
    """(gradient reduction, parameter gather) buffers of a stage holding `params` parameters per TP rank, in the
    dtypes the memory model holds them in. The torch layout (FSDP2, the executor, torchtitan; also without
    `execution`): fp32 gradients, parameters at the dtype's gather width (fp8: torchao's float8 all-gather, every
    parameter at one byte, the bf16 embedding, norms and head too, a small undercount). The megatron layout: the
    gradient buffer's dtype (`Execution.grad_buffer_bytes`), bf16 parameters, or one byte under fp8 with
    `fp8_params` (Megatron's --fp8-param-gather)."""
    if execution is None or execution.memory_layout != "megatron":
        return params * 4, params * gather_bytes(c.dtype)
    fp8_gather = c.dtype == "fp8" and execution.fp8_params
    return params * execution.grad_buffer_bytes, params * (1 if fp8_gather else 2)


def tp_collective(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, devices: list[int]) -> float:
    """One of the two TP collectives per layer and direction: an all-reduce of the micro-batch's activation, or
    under sequence parallelism the all-gather before and the reduce-scatter after a TP region."""
    if c.sequence_parallel:
        return sum(tp_sp_collectives(model, cluster, c, devices))
    return collective_time(cluster, "all_reduce", hidden_state_bytes(model, c), devices)


def tp_overlap_gemm_flops(model: ModelSpec, c: ParallelConfig,
                          execution: Execution | None = None) -> dict[str, float]:
    """Forward FLOPs on one TP rank of each GEMM a TP collective can hide behind (`TP_OVERLAP_PAIRS`): "qkv" (with
    latent attention, every projection before the core), "proj", "fc1" (under SwiGLU the gate and up matrices as
    one GEMM, as Transformer Engine's LayerNormMLP runs them), "fc2"; under context parallelism on the rank's
    seq_len / cp tokens (latent attention's TP-replicated down-projections on the tokens the `execution` runs them
    on: `compute.replicated_tokens_split`). A GEMM's dgrad and wgrad have its forward's FLOPs."""
    tokens = (c.local_seq_len, c.micro_batch_size, c.tp)
    gemms = layer_gemms(model, *tokens)
    attention = attention_gemms(model, *tokens, replicated_tokens_split(c, execution))
    return {"qkv": sum(attention[:-1]), "proj": attention[-1], "fc1": sum(gemms[2:-1]), "fc2": gemms[-1]}


def tp_overlap_gemms(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                     execution: Execution | None = None) -> dict[str, float]:
    """Seconds of one forward of each GEMM of `tp_overlap_gemm_flops`, each at its own `matmul_rate`."""
    dtype = precision(c.dtype).gemm
    return {name: gemms_time(cluster, dtype, [flops])
            for name, flops in tp_overlap_gemm_flops(model, c, execution).items()}


def tp_overlap_split_time(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                          paired: tuple[str, ...] = TP_OVERLAP_GEMMS,
                          execution: Execution | None = None) -> PassTimes:
    """Seconds per layer, forward and backward, that `tp_comm_overlap` adds to the compute by cutting the paired
    GEMMs into chunks (`tp_overlap_chunks`: a ring exchange runs tp GEMMs of 1/tp of the tokens, a pipelined
    reduce-scatter TP_OVERLAP_SPLITS): each chunk at the `matmul_rate` of its own FLOPs, less the whole GEMM at its
    rate. Never negative; 0 where the profile's size curve is flat over the chunks' sizes (or states none), and
    for GEMMs that no split touches (the bulk pairs, the wgrad of the row-parallel layers). `paired`: only these
    GEMMs (`overlapped_tp_layer`'s)."""
    dtype, flops = precision(c.dtype).gemm, tp_overlap_gemm_flops(model, c, execution)
    chunks: dict[tuple[str, str], int] = {}
    for pass_, _collective, gemm_name, method in (pair for pair in TP_OVERLAP_PAIRS if pair[2] in paired):
        key = (pass_, gemm_name)
        chunks[key] = max(chunks.get(key, 1), tp_overlap_chunks(method, c.tp))
    extra = {"forward": 0.0, "backward": 0.0}
    for (pass_, gemm_name), n in chunks.items():
        f = flops[gemm_name]
        if n > 1 and f > 0:
            split, whole = gemms_time(cluster, dtype, [f / n] * n), gemms_time(cluster, dtype, [f])
            if split > whole * (1 + 1e-12):  # equal rates differ by rounding only
                extra[pass_] += split - whole
    return PassTimes(extra["forward"], extra["backward"], 0.0)


def overlapped_tp_layer(all_gather: float, reduce_scatter: float, gemms: dict[str, float], tp: int,
                        paired: tuple[str, ...] = TP_OVERLAP_GEMMS) -> PassTimes:
    """The TP seconds per layer that stay exposed under `tp_comm_overlap` (Megatron-Core's userbuffers), given one
    all-gather's and one reduce-scatter's time on the TP group and `tp_overlap_gemms`: every collective of
    `TP_OVERLAP_PAIRS` exposes what the GEMM beside it does not cover under its method (ring exchange: what its
    tp - 1 steps exceed the GEMM's chunks, max(0, comm - gemm x (tp - 1) / tp); pipeline: the last of its
    TP_OVERLAP_SPLITS chunks plus what the others exceed theirs; bulk: max(0, comm - gemm)). Forward and backward
    (the backward's with the sequence-parallel re-gathers and the wgrad GEMMs); the SMs the collectives take from
    the GEMMs beside them are not modelled. `paired`: only the pairs beside these GEMMs (the MLP's: MLP_GEMMS)."""
    comm = {"all_gather": all_gather, "reduce_scatter": reduce_scatter}
    exposed = {"forward": 0.0, "backward": 0.0}
    for pass_, collective, gemm_name, method in (pair for pair in TP_OVERLAP_PAIRS if pair[2] in paired):
        seconds, gemm = comm[collective], gemms[gemm_name]
        n = tp_overlap_chunks(method, tp)
        if method == "ring_exchange":
            exposed[pass_] += max(0.0, seconds - gemm * (n - 1) / n)
        elif method == "pipeline":
            exposed[pass_] += seconds / n + max(0.0, seconds - gemm) * (n - 1) / n
        else:
            exposed[pass_] += max(0.0, seconds - gemm)
    return PassTimes(exposed["forward"], exposed["backward"], 0.0)


def overlapped_tp_times(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, devices,
                        execution: Execution) -> tuple[PassTimes, PassTimes, PassTimes]:
    """Per layer under `tp_comm_overlap` on the TP group `devices`: (the collectives' exposed time, the split GEMMs'
    loss, the MLP's share of both)."""
    gathered, gemms = tp_sp_collectives(model, cluster, c, devices), tp_overlap_gemms(model, cluster, c, execution)
    return (overlapped_tp_layer(*gathered, gemms, c.tp),
            tp_overlap_split_time(model, cluster, c, TP_OVERLAP_GEMMS, execution),
            overlapped_tp_layer(*gathered, gemms, c.tp, MLP_GEMMS)
            + tp_overlap_split_time(model, cluster, c, MLP_GEMMS, execution))


def tp_sp_collectives(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, devices) -> tuple[float, float]:
    """(all-gather, reduce-scatter) of one micro-batch's activation on the TP group `devices`: the two halves of a
    sequence-parallel `tp_collective`."""
    nbytes = hidden_state_bytes(model, c)
    return (collective_time(cluster, "all_gather", nbytes, devices),
            collective_time(cluster, "reduce_scatter", nbytes, devices))


def sp_regather_time(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, devices: list[int],
                     execution: Execution) -> float:
    """Per layer, in the backward: the all-gathers that Megatron's sequence parallelism adds (Korthikanti et al.
    2022, Sec. 4.2.2). Its memory layout keeps only the rank's 1/tp sequence slice of the input of each
    column-parallel linear (QKV, first MLP matrix) and gathers it again for the weight gradient, two all-gathers of
    the micro-batch's activation per layer. The paper overlaps them with the input-gradient GEMM; its Table 4 shows
    the backward no faster with SP than without (11.8 vs 11.9 ms) although norms and dropouts run on 1/tp of the
    tokens, so they are charged in full. Zero without SP and for layouts that keep the gathered input (torch)."""
    if not c.sequence_parallel or c.tp == 1 or execution.memory_layout != "megatron":
        return 0.0
    nbytes = c.local_seq_len * c.micro_batch_size * model.hidden_size * DTYPE_BYTES[c.dtype]
    return 2 * collective_time(cluster, "all_gather", nbytes, devices)


def cp_attention_comm(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, devices,
                      core: PassTimes, execution: Execution | None = None) -> PassTimes:
    """Seconds per layer that context parallelism's exchange of keys and values leaves exposed, in the forward and
    in the input-gradient pass, on the CP group `devices` (one rank's share of the K/V is `memory.cp_kv_bytes`;
    `core` is the rank's attention core, `model_pieces`).

    "allgather" (Llama 3): the K/V of the whole sequence are all-gathered before the attention, not overlapped; the
    backward gathers them again and reduce-scatters their gradients. "ring": the cp - 1 transfers of a K/V block to
    the next rank of the ring each run beside the attention on the block before (the rank's own block first), so a
    step costs max(transfer, core / cp) and exposes what the transfer exceeds; the chunk pairing gives every step
    the same causal work. The backward passes the K/V and their gradients (twice the bytes) the same way. The ring
    sends the same bytes as the all-gather and hides behind the core, so it never exposes more than the all-gather
    on a ring of equal links. 0 without CP.

    Under torch's ring (`cp_ring.torch_ring`) the K/V travel at the width the kernel sees (`cp_ring.sdpa_kv_bytes`);
    "allgather" is issued before the rank's own step and awaited after it, so it exposes what exceeds that step
    (core / cp), in the forward and again in the backward; "ring" (torch's all-to-all rotation) as above, K/V only.
    The backward passes the fp32 dK/dV (`cp_ring.dkv_bytes`) to the next rank after every step: each transfer runs
    beside the next step, the last one is awaited after the loop. How many of each per pass: `cp_ring.transfers`."""
    if c.cp == 1:
        return PassTimes(0.0, 0.0, 0.0)
    kv = sdpa_kv_bytes(model, c, execution, cp_kv_bytes(model, c))
    group = np.asarray(devices).reshape(-1)
    pairs = np.stack([group, np.roll(group, -1)], axis=1)
    steps = c.cp - 1

    def over(step: float, transfer: float) -> float:
        """What a transfer beside one ring step adds to it (`simulate.beside`, the profile's collective share)."""
        return beside(step, transfer, cluster.collective_sm_share) - step

    if torch_ring(model, c, execution):
        count = transfers(c.cp, c.cp_comm)
        gather = collective_time(cluster, "all_gather", kv * c.cp, devices) if c.cp_comm == "allgather" else 0.0
        rotate = p2p_time(cluster, kv, pairs) if c.cp_comm != "allgather" else 0.0
        dkv = p2p_time(cluster, dkv_bytes(model, c, execution), pairs)

        def exposed(n: dict, step: float) -> float:
            """Each transfer beside one step of the ring (the last dK/dV awaited after the loop)."""
            hidden = (n["kv_gather"] * over(step, gather) + n["kv_rotate"] * over(step, rotate)
                      + max(0, n["dkv_rotate"] - 1) * over(step, dkv))
            return hidden + (dkv if n["dkv_rotate"] else 0.0)

        return PassTimes(exposed(count["forward"], core.forward / c.cp),
                         exposed(count["backward"], core.backward_input / c.cp), 0.0)
    if c.cp_comm == "allgather":
        gather = collective_time(cluster, "all_gather", kv * c.cp, devices)
        return PassTimes(gather, gather + collective_time(cluster, "reduce_scatter", kv * c.cp, devices), 0.0)
    forward = steps * over(core.forward / c.cp, p2p_time(cluster, kv, pairs))
    backward = steps * over(core.backward_input / c.cp, p2p_time(cluster, 2 * kv, pairs))
    return PassTimes(forward, backward, 0.0)


def cp_exchange_bytes(model: ModelSpec, c: ParallelConfig, execution: Execution | None = None) -> float:
    """Bytes one rank sends in its CP group per layer and micro-batch, forward and input-gradient pass together, in
    the transfers `cp_attention_comm` times: under torch's ring those `cp_ring.transfers` counts (an all-gather
    sends the rank's K/V block to the cp - 1 others, a rotation one block, a dK/dV rotation `cp_ring.dkv_bytes`);
    otherwise cp - 1 K/V blocks forward and twice that backward (all-gather, then all-gather and reduce-scatter; or
    the ring's blocks, then blocks with their gradients). 0 without CP."""
    if c.cp == 1:
        return 0.0
    kv = sdpa_kv_bytes(model, c, execution, cp_kv_bytes(model, c))
    if not torch_ring(model, c, execution):
        return 3 * (c.cp - 1) * kv
    dkv = dkv_bytes(model, c, execution)
    return sum(n["kv_gather"] * (c.cp - 1) * kv + n["kv_rotate"] * kv + n["dkv_rotate"] * dkv
               for n in transfers(c.cp, c.cp_comm).values())


def recompute_time(pieces, c: ParallelConfig, one_collective: float, matmul_share: float | None = None,
                   matmuls_only: bool = False, gather_share: float = 1.0) -> float:
    """Per layer: the forward that recompute repeats in the backward (the block with its TP collectives, or under
    selective recompute the attention core; with `matmul_share` (`selective_matmul_share`) instead that share of
    the block's matmul time, all of its element-wise time and, under TP, what it redoes of its two forward
    collectives, `gather_share` of them (`selective_gather_share`: the per-op policy saves the reduce-scatters'
    outputs but not the sequence-parallel all-gathers', nor the all-reduces' without SP); the matmul time being the
    weight-gradient pass's). `matmuls_only` (`selective_matmuls_only`): the share of the matmul time alone."""
    if c.recompute == "full":
        return pieces.block.forward + 2 * one_collective
    if c.recompute == "selective":
        if matmul_share is None:
            return pieces.attention_core.forward
        rest = pieces.block_rest
        if matmuls_only:
            return matmul_share * rest.backward_weight
        return (matmul_share * rest.backward_weight + max(0.0, rest.forward - rest.backward_weight)
                + (2 * one_collective * gather_share if c.tp > 1 else 0.0))
    return 0.0


def selective_gather_share(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, devices) -> float:
    """The share of a layer's TP collectives (`tp_collective` on the TP group `devices`) that the per-op selective
    policy redoes: under sequence parallelism the all-gathers' (it saves the reduce-scatters' outputs,
    execute/checkpoint_policy.py `SAVED_COLLECTIVES` as torchtitan's `_save_list`), else all (the all-reduces)."""
    if not c.sequence_parallel or c.tp == 1:
        return 1.0
    gather, scatter = tp_sp_collectives(model, cluster, c, devices)
    return gather / (gather + scatter) if gather + scatter > 0 else 0.5


def executed_flops(model: ModelSpec, c: ParallelConfig, partition: list, execution: Execution) -> float:
    """FLOPs one step executes (HFU's): `ModelSpec.hardware_flops_per_iteration`, whose selective recompute redoes
    the attention core, or under a policy that redoes a share of each block's matmuls (`selective_matmul_share`:
    the per-op policy, latent attention's up-projections) the model FLOPs and that share of every recomputed block's
    matmul FLOPs (of its kind: dense or MoE)."""
    recomputed = sum(recomputed_layers(c, partition))
    if c.recompute != "selective" or selective_matmul_share(model, c, execution) is None:
        return model.hardware_flops_per_iteration(c.seq_len, c.global_batch_size, c.recompute, recomputed)
    per_layer = sum(count * selective_matmul_share(model, c, execution, model.is_moe_layer(first))
                    * model.layer_matmul_flops(c.seq_len, 1, first) for first, count in model.layer_groups())
    return (model.model_flops_per_iteration(c.seq_len, c.global_batch_size)
            + per_layer * recomputed / model.num_layers * c.global_batch_size)


def selective_matmuls_only(c: ParallelConfig, execution: Execution) -> bool:
    """Whether `c`'s selective policy redoes matmuls alone ("mla_up_proj_mlp": the up-projections, and a dense
    layer's MLP, whose SwiGLU and, under TP, two collectives are not counted; RoPE's application neither)."""
    return selective_policy(c, execution) == "mla_up_proj_mlp"


def selective_matmul_share(model: ModelSpec, c: ParallelConfig, execution: Execution,
                           moe: bool = False) -> float | None:
    """The FLOP share of a block's matmuls (an MoE block's with `moe`) that selective recompute redoes under `c`'s
    policy (`selective_policy`), or None when it redoes the attention core. "alternate_matmuls": the 2nd, 4th, ...
    weight matmul in forward order (Llama's wq wk wv wo w1 w3 w2, GPT's wq wk wv wo fc1 fc2, latent attention's
    `memory.attention_matmuls` before the MLP's; an MoE block's attention and shared experts' w1 w3 w2, plus its
    router and routed experts, which the policy recomputes outside its count, execute/checkpoint_policy.py
    `uncounted_matmuls`); "norms_mla_swiglu":
    latent attention's up-projections (q_b_proj, kv_b_proj of the op table; 0 without them), its element-wise
    share being the norms' and SwiGLU's; "mla_up_proj_mlp": the same up-projections and, in a dense block, its MLP
    (gate_up_proj, down_proj)."""
    policy = selective_policy(c, execution)
    if policy in ("norms_mla_swiglu", "mla_up_proj_mlp"):
        redone = ("q_b_proj", "kv_b_proj") + (("gate_up_proj", "down_proj") if policy == "mla_up_proj_mlp" else ())
        first = next((f for f, _ in model.layer_groups() if model.is_moe_layer(f) == moe), 0)
        ops = [op for op in model.layer_ops(first) if op.kind in ("linear", "router", "experts")]
        matmuls = sum(op.flops for op in ops)
        return sum(op.flops for op in ops if op.name in redone) / matmuls
    if policy != "alternate_matmuls":
        return None
    h, f = model.hidden_size, model.ffn_hidden_size
    sizes = [n_in * n_out for n_in, n_out, _ in attention_matmuls(model)]  # the counted weight matmuls in order
    uncounted = 0.0  # recomputed outside the count: an MoE layer's router and routed experts
    if moe:
        m = model.moe
        shared = m.num_shared_experts * m.shared_expert_intermediate_size
        sizes += [h * shared, h * shared, shared * h] if shared else []
        sizes += [h] if shared and m.shared_expert_gate else []
        uncounted = h * m.num_experts + m.num_experts_per_tok * 3 * h * m.moe_intermediate_size
    else:
        sizes += [h * f, h * f, f * h] if model.arch == "llama" else [h * f, f * h]
    return (sum(sizes[1::2]) + uncounted) / (sum(sizes) + uncounted)


def dp_collectives(cluster: ClusterProfile, c: ParallelConfig, params: float, devices,
                   units: int = 1, execution: Execution | None = None) -> tuple[float, float, float]:
    """(gather per forward/backward pass, gather once per step, gradient reduction) of a stage holding `params`
    parameters per TP rank, on the `dp_buffer_bytes` of the execution's layout: ZeRO-0 all-reduces the gradients
    (the executor: one bucket per block and one per end, `execute/parallelize.GradReducer`); FSDP (ZeRO >= 1, one
    unit per block plus the stage's root) or Megatron's distributed optimizer reduce-scatters them (ZeRO-1 under
    `zero1_all_reduce` all-reduces them) and gathers the parameters once per step, or at ZeRO-3 again for every
    pass (reshard after forward) except under looped-bfs, where all micro-batches pass a chunk together. Each of
    the `units` (a bucket, an FSDP unit) is its own collective and pays the group's `collective_sync`.
    `devices` is the group holding the same weights (DP x CP; the expert-DP group for routed-expert
    parameters)."""
    # Under offload_optimizer each collective also copies its fp32 shard between host and device, on its stream;
    # a group of one rank (routed experts at edp 1: their state offloads all the same) pays the copies alone.
    group = len(devices)
    if group <= 1 and not (c.zero_stage and c.offload_optimizer):
        return 0.0, 0.0, 0.0
    grad_bytes, param_bytes = dp_buffer_bytes(c, params, execution)
    extra = (units - 1) * cluster.collective_sync(group)
    if c.zero_stage == 0:
        return 0.0, 0.0, collective_time(cluster, "all_reduce", grad_bytes, devices) + extra
    reduce, gather = reduce_copy_time(cluster, c, params, group), gather_copy_time(cluster, c, params, group)
    if group > 1:
        reduce_op = "all_reduce" if c.zero_stage == 1 and execution and execution.zero1_all_reduce else "reduce_scatter"
        reduce += collective_time(cluster, reduce_op, grad_bytes, devices) + extra
        gather += collective_time(cluster, "all_gather", param_bytes, devices) + extra
    if c.zero_stage == 3 and not schedule_spec(c.schedule).fsdp_gather_per_chunk:
        return gather, 0.0, reduce
    return 0.0, gather, reduce


def regathers_every_forward(c: ParallelConfig, execution: Execution | None) -> bool:
    """Whether ZeRO-1/2 gathers the parameters again in every micro-batch's forward, not once per step: FSDP2
    reshards them after each backward unless the loop turns that off between micro-batches, and a framework whose
    loop touches no FSDP state between them (`Execution.accumulation_sync`: torchtitan's `train_step` calls neither
    `set_requires_gradient_sync` nor `set_reshard_after_backward`) leaves it on; under a pipeline torch's stage
    keeps them unsharded through the step. autoconf's executor keeps them (execute/train.py)."""
    return (execution is not None and execution.accumulation_sync and execution.memory_layout != "megatron"
            and c.pp == 1 and c.zero_sharded and c.zero_stage < 3 and c.num_microbatches > 1)


def exposed_dp(execution: Execution, gather: float, reduce: float, params: float, layers: int,
               dp: int) -> tuple[float, float]:
    """Lower bounds on what a pipeline-rank-0 stage's once-per-step parameter gather leaves before its first forward
    and its gradient reduction after its last backward (`simulate`'s bucket rules: one bucket of an overlapped
    gather, one of a per-bucket reduction, otherwise all of it), given the gather and reduction times of `params`
    parameters in `layers` blocks or more: a stage holding more has larger buckets (per block) or a bucket share
    of at least size x P / (P + size) (ceil(P / size) buckets of a size)."""
    if execution.grad_reduce_start != "per_bucket":
        n = 1.0
    elif execution.bucket_params is None:
        n = layers + 1.0
    else:
        n = params / max(execution.bucket_params, 1e6 * dp) + 1.0
    return (gather / n if execution.param_gather_overlap else gather,
            reduce / n if execution.grad_reduce_start == "per_bucket" else reduce)


def step_collectives(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, grid: RankGrid,
                     stage_to_rank: tuple, execution: Execution | None = None) -> float:
    """Seconds of the collectives every step runs once after the pipeline flush, before the optimizer: the sum of
    the embedding's gradients between the first and the last stage where the last holds a copy (a tied head, the
    MTP modules' embedding: Megatron-Core's `_allreduce_word_embedding_grads` for either, the executor's
    `pipeline.EmbeddingSync`, which also sums an MTP copy's learned positions), when different pipeline ranks hold
    them: the rank's shard under FSDP; the whole gradient in the megatron layout, whose distributed optimizer keeps
    the whole buffer and all-reduces the embedding's `main_grad`, but Megatron-FSDP's ZeRO-3; the all-reduce of the
    gradient norm's square and the all-reduce of the loss, both over every rank. Every rank waits for them with
    nothing left to compute (`collective_time`'s `synced`)."""
    everyone = grid.devices.reshape(-1)
    seconds = (collective_time(cluster, "all_reduce", 8, everyone, synced=True)
               + collective_time(cluster, "all_reduce", 16, everyone, synced=True))
    last = stage_to_rank[-1]
    if (model.tied_embeddings or model.mtp_num_layers) and c.pp > 1 and last != stage_to_rank[0]:
        megatron = execution is not None and execution.memory_layout == "megatron"
        whole = megatron and not (execution.megatron_fsdp and c.zero_stage == 3)
        shard = c.dp_cp if c.zero_sharded and not whole else 1
        synced = (model.embedding_params() if model.mtp_num_layers and not megatron
                  else model.vocab_size * model.hidden_size)
        grad_bytes = synced / c.tp / shard * 4
        pairs = np.stack([grid.pipeline_rank(stage_to_rank[0]).reshape(-1), grid.pipeline_rank(last).reshape(-1)],
                         axis=1)
        seconds += slowest_collective_time(cluster, "all_reduce", grad_bytes, pairs, synced=True)
    return seconds


def mirror_pairs(pp: int) -> list[tuple[int, int]]:
    """The pipeline ranks that hold copies of the same two model stages under two directions (dualpipe): r and
    pp-1-r, each rank in one pair."""
    return [(r, pp - 1 - r) for r in range(pp // 2)]


def mirror_grad_sum(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, partition: list, grid: RankGrid,
                    schedule, execution: Execution) -> float:
    """Seconds of the step's sum of the two copies' gradients under two directions (0 under one): each pair of
    mirror ranks (`mirror_pairs`) all-reduces its gradients of both its model stages (`memory.reduced_grad_bytes`),
    after the pipeline flush and the DP reduction, before the optimizer, as deepseek-ai/DualPipe's example does
    after `DualPipe.step` (examples/example_dualpipe.py: each copy's gradient plus the mirror rank's other copy's).
    The pairs run at once; the slowest bounds the step."""
    if schedule.directions == 1:
        return 0.0
    seconds = 0.0
    for r, mirror in mirror_pairs(c.pp):
        nbytes = reduced_grad_bytes(model, c, partition, schedule.model_stages_of_rank(r), execution.memory_layout,
                                    execution)
        pairs = np.stack([grid.pipeline_rank(r).reshape(-1), grid.pipeline_rank(mirror).reshape(-1)], axis=1)
        seconds = max(seconds, slowest_collective_time(cluster, "all_reduce", nbytes, pairs, synced=True))
    return seconds


def stage_plan(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list,
               stage_to_rank: tuple, grid: RankGrid, execution: Execution, p2p=None,
               share: float | None = None) -> StagePlan:
    c = config
    pieces = model_pieces(model, cluster, c, share, execution)
    # A CPU profile states these overheads in CPU seconds, like its kernel tables (a GPU profile's share is 1): the
    # pass overhead, what the pipelining runtime adds per pass of a pipelined stage (per schedule) and what FSDP's
    # hooks add per pass and unit (sharded units under ZeRO sharding, else the executor's one-rank units).
    rank_share = cpu_share(cluster) if share is None else share
    table = cluster.compute or {}
    ours = execution.executor_overheads
    pass_overhead = cluster.overhead("pass_overhead_s")
    if c.pp > 1 and ours:
        pass_overhead += float((table.get("pipeline_action_s") or {}).get(c.schedule, 0.0))
    pass_overhead /= rank_share
    unit_key = "fsdp_pass_s_per_unit" if c.zero_sharded else "fsdp_solo_pass_s_per_unit"
    fsdp_unit_pass = float(table.get(unit_key) or 0.0) / rank_share if ours else 0.0
    last = len(partition) - 1
    measured_tp = measured_tp_layer(model, cluster, c) if ours else None
    overlap_tp = execution.tp_comm_overlap and c.sequence_parallel and c.tp > 1
    matmul_share = selective_matmul_share(model, c, execution)
    moe_share = selective_matmul_share(model, c, execution, moe=True) if model.moe is not None else None
    only = selective_matmuls_only(c, execution)
    offload_parts = []
    recomputed = recomputed_layers(c, partition)
    rewalks = weight_pass_rewalks(c, execution)
    forward, back_in, back_w = [], [], []
    compute_parts, recompute_parts, tp_parts, gathers, reduces, buckets, ep_parts = [], [], [], [], [], [], []
    exchange_back_parts = []  # per stage, the token exchange inside its input backward (a full recompute's too)
    reduce_contending = []
    cp_parts, hook_parts, sends, forward_gathers = [], [], [], []
    regathers = regathers_every_forward(c, execution)
    moe_pieces = pieces.kind(True) if model.moe is not None else None
    # The stages of one rank share its groups: their collectives are timed once per rank (and stage size).
    tp_of_rank, grow_of_rank, dp_of_stage, ep_of_rank, cp_of_rank = {}, {}, {}, {}, {}
    # The ranks holding the same weights reduce gradients together: a DP group, or every DP replica's CP ranks.
    weight_axes = ("dp", "cp") if c.cp > 1 else "dp"
    def exchange_of(rank: int) -> tuple[float, float]:
        """One MoE layer's token exchange (forward, input backward) on `rank`."""
        if rank not in ep_of_rank:
            ep_of_rank[rank] = ep_comm_passes(model, cluster, c, *(expert_groups(grid, rank, c.ep, c.etp, axis)[0]
                                                                   for axis in ("ep", "etp")), execution)
        return ep_of_rank[rank]

    for st, (first, end) in enumerate(partition):
        rank = stage_to_rank[st]
        layers = end - first
        n_moe = moe_layers(model, first, end)
        # Two TP collectives per layer in forward and two in backward, or what the profile measured TP layers add.
        if rank not in tp_of_rank:
            tp_group = grid.first_group_array("tp", rank)
            tp_of_rank[rank] = (tp_collective(model, cluster, c, tp_group),
                                sp_regather_time(model, cluster, c, tp_group, execution),
                                overlapped_tp_times(model, cluster, c, tp_group, execution) if overlap_tp else None,
                                token_share_tp_comm(model, cluster, c, tp_group, execution),
                                selective_gather_share(model, cluster, c, tp_group))
        one, regather_layer, overlapped, token_share, gather_share = tp_of_rank[rank]
        regather = regather_layer * layers
        tp = PassTimes(2 * one * layers, 2 * one * layers + regather, 0.0)
        layer_one = one  # a layer's forward TP time per collective, which full recompute repeats
        if overlap_tp:
            exposed, split, _ = overlapped  # the split GEMMs' loss is the layers' own, not the ends' collectives'
            tp = (exposed + split).scaled(layers)
            one, layer_one = exposed.forward / 2, (exposed + split).forward / 2
        elif measured_tp is not None:
            per_layer, read_at = measured_tp
            # Beyond the largest measured micro-batch the modelled collectives carry the growth.
            if rank not in grow_of_rank:
                at_read = dataclasses.replace(c, micro_batch_size=read_at)
                grow_of_rank[rank] = one - tp_collective(model, cluster, at_read, grid.first_group_array("tp", rank))
            grow = grow_of_rank[rank]
            one = (per_layer.forward + per_layer.backward_input) / 4 + grow
            layer_one = one
            tp = PassTimes((per_layer.forward + 2 * grow) * layers,
                           (per_layer.backward_input + 2 * grow) * layers + regather, 0.0)
        moe_tp = PassTimes(0.0, 0.0, 0.0)
        if n_moe and moe_attention_tp_only(model, execution):
            # the routed experts read the rank's sequence slice: no MLP collectives over TP (nor their re-gather)
            moe_tp = overlapped[2].scaled(-1.0) if overlap_tp else moe_tp_change(model, c, tp, layers, regather,
                                                                                (0.0, 0.0), mlp_kept=(0.0, 0.0))
        elif n_moe and not overlap_tp:
            moe_tp = moe_tp_change(model, c, tp, layers, regather, token_share)
        tp = tp + moe_tp.scaled(n_moe)
        copies = side_kernels_time(model, cluster, c, execution)  # FSDP2 copies, gradient hooks (not recomputed)
        dense_layer = pieces.block + copies
        compute = dense_layer.scaled(layers)
        recompute = recompute_time(pieces, c, layer_one, matmul_share, only, gather_share) * recomputed[st]
        ep = PassTimes(0.0, 0.0, 0.0)
        recompute_exchange = 0.0  # a full recompute's forward exchange again, in the backward
        r_moe, moe_layer = 0, None  # the recomputed MoE layers, an MoE layer's compute
        if n_moe:
            # MoE layers: their own block, and the token exchange in each pass (and in a full recompute's forward);
            # the first recomputed[st] layers of the stage recompute.
            exchange, exchange_back = exchange_of(rank)
            r_moe = moe_layers(model, first, first + recomputed[st])
            moe_layer = moe_pieces.block + side_kernels_time(model, cluster, c, execution, moe=True)
            compute = dense_layer.scaled(layers - n_moe) + moe_layer.scaled(n_moe)
            recompute_exchange = exchange * r_moe if c.recompute == "full" else 0.0
            recompute = (recompute_time(pieces, c, layer_one, matmul_share, only, gather_share)
                         * (recomputed[st] - r_moe)
                         + (recompute_time(moe_pieces, c, layer_one, moe_share, only, gather_share)
                            + (exchange + moe_tp.forward if c.recompute == "full" else 0.0)) * r_moe)
            ep = PassTimes(exchange * n_moe, exchange_back * n_moe, 0.0)
        if c.cp > 1:
            if rank not in cp_of_rank:
                cp_of_rank[rank] = cp_attention_comm(model, cluster, c, grid.first_group_array("cp", rank),
                                                     pieces.attention_core, execution)
            cp_layer = cp_of_rank[rank]
            if c.recompute == "full":  # the repeated forward exchanges the K/V again
                recompute += cp_layer.forward * recomputed[st]
            cp_parts.append(cp_layer.scaled(layers))
        if st == 0:
            compute = compute + pieces.embedding
            tp = tp + PassTimes(one, 0.0, 0.0)
        if st == last:
            compute = compute + pieces.head
            tp = tp + PassTimes(0.0, one, 0.0)
        if st == last and model.mtp_num_layers:
            compute, tp, ep, recompute, exposed = mtp_stage_costs(
                model, cluster, c, pieces, compute, tp, ep, recompute, one, layer_one, matmul_share, moe_share,
                exchange_of(rank) if model.mtp_block_is_moe() else None, only, gather_share)
            recompute_exchange += exposed
            if c.cp > 1:  # the MTP blocks' attention exchanges K/V as the stage's blocks do
                cp_parts[-1] = cp_parts[-1] + cp_layer.scaled(model.mtp_num_layers)
                if c.recompute == "full":
                    recompute += cp_layer.forward * model.mtp_num_layers
        exchange_back_parts.append(ep.backward_input + recompute_exchange)
        # DP / FSDP collectives of this stage's parameters (over DP x CP); routed experts over their expert-DP group.
        params, experts = local_params(c, stage_params(model, partition, st), stage_expert_params(model, partition, st),
                                       stage_replicated_params(model, partition, st))
        if (rank, params, experts, layers) not in dp_of_stage:
            dp_of_stage[rank, params, experts, layers] = dp_collectives(
                cluster, c, params, grid.first_group_array(weight_axes, rank), units=layers + 1, execution=execution)
            if experts:
                dp_of_stage[rank, params, experts, layers] = tuple(
                    a + b for a, b in zip(dp_of_stage[rank, params, experts, layers], dp_collectives(
                        cluster, c, experts, expert_groups(grid, rank, c.ep, c.etp, "edp")[0],
                        units=n_moe + (model.mtp_num_layers if st == last else 0),
                        execution=execution)))
        per_microbatch_gather, gather, reduce = dp_of_stage[rank, params, experts, layers]
        forward_gather = 0.0
        if regathers:  # (each micro-batch's forward gathers what the last backward resharded)
            forward_gather, gather = gather, 0.0
            forward_gathers.append(forward_gather * c.num_microbatches)
        offload = PassTimes(*activation_copy_times(cluster, activation_copy_bytes(c, stage_block_activation_bytes(
            model, c, first, end, recomputed[st], execution.memory_layout, cluster.device.kind,
            selective_policy(c, execution), execution) if c.offload_activations else 0.0)), 0.0)
        offload_parts.append(offload)
        fwd = compute.forward + tp.forward + ep.forward + pass_overhead + offload.forward
        bwd_in = (compute.backward_input + tp.backward_input + ep.backward_input + recompute + pass_overhead
                  + offload.backward_input)
        if c.cp > 1:
            fwd += cp_parts[-1].forward
            bwd_in += cp_parts[-1].backward_input
        # FSDP's hooks on every unit (each block, the stage's root, each MoE layer's experts)
        hook_parts.append(fsdp_unit_pass * (layers + 1 + n_moe))
        fwd += hook_parts[-1]
        bwd_in += hook_parts[-1]
        bwd_w = compute.backward_weight
        if rewalks and recomputed[st]:
            walk = dense_layer.backward_input * (recomputed[st] - r_moe)
            if r_moe:
                walk += moe_layer.backward_input * r_moe
            bwd_w += recompute + walk
        if per_microbatch_gather:
            # FSDP prefetches block by block, so a gather hides behind the compute of the previous block, taking the
            # profile's share of the device while it runs.
            fwd = beside(fwd, per_microbatch_gather, cluster.collective_sm_share)
            bwd_in = beside(bwd_in, per_microbatch_gather, cluster.collective_sm_share)
        if forward_gather:
            fwd = beside(fwd, forward_gather, cluster.collective_sm_share)
        if execution.blocking_p2p and p2p is not None:
            sends.append(PassTimes(p2p(st, st + 1) if st < last and stage_to_rank[st + 1] != rank else 0.0,
                                   p2p(st, st - 1) if st > 0 and stage_to_rank[st - 1] != rank else 0.0, 0.0))
            fwd += sends[-1].forward
            bwd_in += sends[-1].backward_input
        forward.append(fwd)
        back_in.append(bwd_in)
        back_w.append(bwd_w)
        compute_parts.append(compute)
        recompute_parts.append(recompute)
        tp_parts.append(tp)
        ep_parts.append(ep)
        gathers.append(gather)
        contending = 1.0
        if execution.grad_reduce_start == "per_bucket" and per_microbatch_gather:
            # The reduction's buckets go out during the last backward, on the DP link that also carries that
            # backward's parameter re-gathers (ZeRO-3): the stream holds both; the re-gathers' contention is in
            # bwd_in already.
            contending = reduce / (reduce + per_microbatch_gather)
            reduce += per_microbatch_gather
        reduces.append(reduce)
        reduce_contending.append(contending)
        buckets.append(execution.buckets(params + experts, layers, rank, c.dp_cp))
    early = [(c.num_microbatches - 1) * r for r in reduces] if c.reduces_every_microbatch else []
    costs = StageCosts(forward, back_in, back_w)
    if overlaps_pairs(model, c, execution):
        # Paired chunks (DualPipe's, Megatron's combined 1F1B): each pass's token exchange may hide behind the
        # paired pass's compute.
        costs = StageCosts(forward, back_in, back_w, [e.forward for e in ep_parts], exchange_back_parts,
                           exchange_sm_share(cluster, execution))
    if c.seq_chunks > 1:
        # (the last stage's MTP blocks attend over the earlier chunks as its layers do, recomputed under the mode)
        core_recomputed = c.recompute == "full" or (c.recompute == "selective" and matmul_share is None)
        mtp = [0] * last + [model.mtp_num_layers]
        blocks = [end - first + d for (first, end), d in zip(partition, mtp)]
        costs = seq_chunk_costs(costs, pieces.attention_core, blocks,
                                [n + d for n, d in zip(recomputed, mtp)] if core_recomputed else [0] * len(partition),
                                c.seq_chunks, seq_chunk_bounds(model, cluster, c, execution))
    return StagePlan(costs, compute_parts, recompute_parts, tp_parts, pass_overhead,
                     gathers, reduces, buckets, early, ep_comm=ep_parts if model.moe is not None else [],
                     offload=offload_parts, cp_comm=cp_parts, contention=cluster.collective_sm_share,
                     reduce_contending=reduce_contending, hooks=hook_parts, p2p_sends=sends,
                     forward_gathers=forward_gathers)


def weight_pass_rewalks(c: ParallelConfig, execution: Execution) -> bool:
    """Whether a split backward's weight pass recomputes each whole-recomputing block (full recompute, or the per-op
    policy over the whole block) and walks its backward again: torch's `stage_backward_weight` over the block's
    parameter groups merged into one (execute/pipeline.py `weight_pass_groups`: one call per block, which unpacks the
    checkpoint once and, to reach every parameter, runs the backward between the block's intermediates; measured on
    tiny-gpt's four blocks with full recompute, 69 ms against a 49 ms input pass and a 66 ms whole backward). The
    stage plan charges it on the weight pass (compute of the walk only, not its collectives again)."""
    whole = c.recompute == "full" or (c.recompute == "selective"
                                      and selective_policy(c, execution) == "alternate_matmuls")
    return whole and schedule_spec(c.schedule).split_backward and execution.pipeline_runtime == "torch"


def moe_attention_tp_only(model: ModelSpec, execution: Execution) -> bool:
    """Whether `model`'s MoE blocks run the attention's TP collectives only: a sequence-sharded dispatch
    (`Execution.moe_sequence_dispatch`) and no shared experts (which keep a dense MLP's). The one rule the estimate,
    the search's bounds and the partition's units read."""
    return model.moe is not None and execution.moe_sequence_dispatch and not model.moe.num_shared_experts


def moe_tp_change(model: ModelSpec, c: ParallelConfig, tp: PassTimes, layers: int, regather: float,
                  token_share: tuple[float, float], mlp_kept: tuple[float, float] | None = None) -> PassTimes:
    """What one MoE layer's TP collectives differ by from a dense layer's share of `tp` (the stage's `layers`
    layers' TP time, `regather` of it in the backward beyond the layers' two collectives each, so half a layer's is
    one collective: the attention's, or the MLP's all-reduce or sequence-parallel pair) when each TP rank routes a
    share of the tokens (`token_share`: `cost/moe.token_share_tp_comm`; (0, 0) otherwise, and then no change).
    The layer keeps the attention's collective; of the MLP's, the forward keeps the shared experts' (without them,
    under sequence parallelism, the MoE input's all-gather: half the pair), the backward the shared experts' input
    all-reduce (under sequence parallelism also their output's all-gather, half a pair more: the MoE input's
    gradient is whole on every rank, so the gather's backward is a slice); the token share's own collectives come
    on top (execute/parallelize.py `apply_tp`, execute/moe.py). With `mlp_kept` (Megatron's sequence-sharded
    dispatch, `Execution.moe_sequence_dispatch`: (0, 0) without shared experts) that share of the MLP's collectives
    is kept instead, in both passes, and of its re-gather (`sp_regather_time`, the MLP's input: half the layer's),
    with no token share's own."""
    extra_f, extra_b = token_share
    if not layers or not (extra_f or extra_b or mlp_kept is not None):
        return PassTimes(0.0, 0.0, 0.0)
    half_f, half_b = tp.forward / (2 * layers), (tp.backward_input - regather) / (2 * layers)
    if mlp_kept is not None:
        kept_f, kept_b = mlp_kept
        return PassTimes(-(1 - kept_f) * half_f, -(1 - kept_b) * (half_b + regather / (2 * layers)), 0.0)
    kept_f, kept_b = moe_mlp_collectives_kept(model, c)
    return PassTimes(extra_f - (1 - kept_f) * half_f, extra_b - (1 - kept_b) * half_b, 0.0)


def moe_mlp_collectives_kept(model: ModelSpec, c: ParallelConfig) -> tuple[float, float]:
    """(forward, backward): how much of a dense layer's MLP TP collective an MoE layer routing token shares still
    runs (`moe_tp_change`'s rule): with shared experts theirs (1; under sequence parallelism the backward also their
    output's all-gather, 1.5), without them the MoE input's all-gather under sequence parallelism (0.5, forward) or
    nothing."""
    if model.moe.num_shared_experts > 0:
        return 1.0, 1.5 if c.sequence_parallel else 1.0
    return (0.5 if c.sequence_parallel else 0.0), 0.0


def exchange_sm_share(cluster: ClusterProfile, execution: Execution) -> float:
    """The share of the device an MoE token exchange takes from the compute it runs beside: the framework's exchange
    kernels' own SMs where it states them (`Execution.overlap_comm_sm_share`, DeepEP's), else an NCCL collective's
    (the profile's `collective_sm_share`)."""
    return execution.overlap_comm_sm_share or cluster.collective_sm_share


def mtp_stage_costs(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, pieces, compute: PassTimes,
                    tp: PassTimes, ep: PassTimes, recompute: float, one: float, layer_one: float,
                    matmul_share: float | None, moe_share: float | None, exchange: tuple[float, float] | None,
                    matmuls_only: bool = False, gather_share: float = 1.0):
    """The last stage's (compute, TP, token exchange, recompute, recomputed exchange) with the MTP modules added
    (cost/mtp.py): each module's block under the same rules as the stage's blocks (two TP collectives per pass, its
    token exchange when it is an MoE block, recomputed under the plan's mode), its embedding's and head's TP
    collectives (forward, backward), and the module's own projection, norms, embedding lookup and head."""
    d = model.mtp_num_layers
    moe = exchange is not None
    block = pieces.kind(moe)
    compute = compute + mtp_pass_times(model, cluster, c, block)
    tp = tp + PassTimes(3 * one * d, 3 * one * d, 0.0)  # the block's two, the embedding's and the head's one
    redo = exchange[0] if moe and c.recompute == "full" else 0.0
    recompute += (recompute_time(block, c, layer_one, moe_share if moe else matmul_share, matmuls_only, gather_share)
                  + redo) * d
    if moe:
        ep = ep + PassTimes(exchange[0] * d, exchange[1] * d, 0.0)
    return compute, tp, ep, recompute, redo * d


def seq_chunk_costs(costs: StageCosts, core: PassTimes, layers: list[int], core_recomputed: list[int],
                    chunks: int, bounds: Sequence[int] | None = None) -> StageCosts:
    """Per stage and sequence chunk (seq1f1b; `StageCosts`' layout s * k + j), from the mean chunk's `costs`: chunk
    j, tokens [b_j, b_j+1) of the split `bounds` (`seq_chunk_bounds`; default even), does
    `causal_span_share(b_j, b_j+1)` times the mean chunk's attention core (`core`, per layer) in each of the
    stage's `layers` and, in its backward, again in the `core_recomputed` layers that redo the core; everything
    else grows with tokens, (b_j+1 - b_j) / (seq_len / k) times the mean chunk's (the same for every chunk of an
    even split). The chunks' mean is `costs`."""
    bounds = bounds or tuple(range(chunks + 1))
    seq = bounds[-1]
    shares = [(causal_span_share(a, b, seq, chunks), (b - a) * chunks / seq) for a, b in zip(bounds, bounds[1:])]
    out = ([], [], [])
    for s, (fwd, b_in, b_w) in enumerate(zip(costs.forward, costs.backward_input, costs.backward_weight)):
        core_f = layers[s] * core.forward
        core_b = layers[s] * core.backward_input + core_recomputed[s] * core.forward
        core_w = layers[s] * core.backward_weight
        for share, tokens in shares:
            out[0].append((fwd - core_f) * tokens + share * core_f)
            out[1].append((b_in - core_b) * tokens + share * core_b)
            out[2].append((b_w - core_w) * tokens + share * core_w)
    return StageCosts(*out)


def p2p_bytes(model: ModelSpec, c: ParallelConfig, execution: Execution) -> float:
    """Bytes each TP rank sends to the next stage per micro-batch: the activation, or its 1/tp slice under
    sequence parallelism and in Megatron's scatter/gather scheme."""
    nbytes = hidden_state_bytes(model, c)
    if execution.p2p_scatter_gather or c.sequence_parallel:
        nbytes /= c.tp
    return nbytes


def _p2p_function(cluster: ClusterProfile, config: ParallelConfig, model: ModelSpec, stage_to_rank: tuple,
                  grid: RankGrid, execution: Execution):
    c = config
    nbytes = p2p_bytes(model, c, execution)
    cache: dict[tuple[int, int], float] = {}

    def p2p(src_stage: int, dst_stage: int) -> float:
        key = (stage_to_rank[src_stage], stage_to_rank[dst_stage])
        if key not in cache:
            a, b = grid.pipeline_rank(key[0]), grid.pipeline_rank(key[1])
            cache[key] = p2p_time(cluster, nbytes, np.stack([a.reshape(-1), b.reshape(-1)], axis=1))
            if execution.p2p_scatter_gather and c.tp > 1 and not c.sequence_parallel:
                # Megatron's scatter/gather: the receiving TP group all-gathers the scattered activation.
                receivers = grid.first_group_array("tp", key[1])
                cache[key] += collective_time(cluster, "all_gather", nbytes * c.tp, receivers)
        return cache[key]

    return p2p


def estimate(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list | None = None,
             mesh: np.ndarray | None = None, execution: Execution = Execution(), detail: bool = True,
             extrapolate: bool = False) -> Plan:
    """Predicts one configuration as a Plan (see `predict`, which computes it)."""
    c, partition, grid, prediction, timeline = predict(model, cluster, config, partition, mesh, execution, detail,
                                                       extrapolate)
    check_host_memory(cluster, c, prediction.get("host_memory_per_node_bytes", 0.0))
    if c.offloads:
        prediction["offload_effect"] = offload_effect(model, cluster, c, partition, grid, prediction, execution)
    plan = Plan(model=model, cluster=_cluster_summary(cluster), config=c, partition=partition,
                placement={"mesh": grid.tolist()}, prediction=prediction,
                sequence_split=list(seq_chunk_bounds(model, cluster, c, execution)) if c.seq_chunks > 1 else None)
    reason = plan_unsupported_reason(plan)
    if reason:  # predicted for comparison, but `launch` refuses it (spec/support.py)
        prediction["launchable"] = False
        prediction["not_launchable_reason"] = reason
    plan.timeline = timeline
    return plan


def offload_effect(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list,
                   grid: RankGrid, prediction: dict, execution: Execution) -> dict:
    """What an offloading plan's offload buys against the same layout without it: the device memory saved on the
    busiest rank (bytes; the peak without offload less the peak with it), the step time it costs (seconds; may be
    negative if it were faster) and, where the prediction has a time breakdown, where that time sits (the terms
    that grew or shrank, seconds each: offload_optimizer's CPU step in "optimizer", its shard copies in "dp_comm"),
    and the host memory it takes per node."""
    without = dataclasses.replace(config, offload_activations=False, offload_optimizer=False)
    detail = "time_breakdown" in prediction
    base = predict(model, cluster, without, partition, grid.devices, execution, detail=detail)[3]
    effect = {"memory_saved_bytes": base["peak_memory_bytes"] - prediction["peak_memory_bytes"],
              "time_cost_s": prediction["iteration_time_s"] - base["iteration_time_s"],
              "host_memory_per_node_bytes": prediction["host_memory_per_node_bytes"],
              "without_fits": base["fits"]}
    if detail:
        terms, before = prediction["time_breakdown"], base["time_breakdown"]
        changes = {k: terms.get(k, 0.0) - before.get(k, 0.0) for k in {**before, **terms}}
        effect["time_cost_by_term_s"] = {k: v for k, v in sorted(changes.items(), key=lambda kv: -abs(kv[1]))
                                         if abs(v) >= BREAKDOWN_NOISE_S}
    return effect


def predict(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list | None = None,
            mesh: np.ndarray | None = None, execution: Execution = Execution(), detail: bool = True,
            extrapolate: bool = False) -> tuple[ParallelConfig, list, RankGrid, dict, Timeline | None]:
    """(checked config, partition, rank grid, prediction, timeline) of one configuration: `estimate` without the
    Plan, whose nested-list mesh costs more than the prediction on a cluster of many thousand devices (the search
    ranks with this). Raises UserError when the config is impossible for the model or the cluster.

    With `detail`, the breakdown is measured by re-simulating without P2P and DP communication (three simulations);
    without it only the total is computed (one simulation). With `extrapolate` and without `detail`, a step of many
    micro-batches is simulated at 2p and 3p of them and extended linearly (`prediction["extrapolated"]`): never
    below the full simulation and above it by at most EXTRAPOLATION_MARGIN but in the cases that constant names
    (tested); the search prunes with it.
    Unless extrapolated, `plan.timeline` is the simulated step the prediction was read from: its makespan plus the
    step's tail (collectives, optimizer, step overhead) is `iteration_time_s`.
    """
    c, partition, grid = _checked(model, cluster, config, partition, mesh, execution)
    extrapolate = extrapolate and not detail and _extrapolates(c)

    overlap = overlaps_pairs(model, c, execution)
    schedule = _first_schedule(c, overlap, extrapolate)
    # (the stages' placement, all the P2P times and the stage plan read, is the same at every micro-batch count)
    p2p = _p2p_function(cluster, c, model, schedule.stage_to_rank, grid, execution)

    def run(share: float):
        nonlocal extrapolate, schedule
        sp = stage_plan(model, cluster, c, partition, schedule.stage_to_rank, grid, execution, p2p, share)
        if extrapolate:
            stepped = _extrapolated_step(c, sp, p2p, execution)
            if stepped is not None:
                return (sp, *stepped)
            extrapolate = False  # (no settled pair of samples below m: simulated in full)
            schedule = _schedule(c.schedule, c.pp, c.num_microbatches, c.vpp, c.seq_chunks, overlap)
        return (sp, *_simulate_step(schedule, sp, p2p, execution))

    share = cpu_share(cluster)
    sp, full, makespan = run(share)
    makespan = full.makespan = max(makespan, comm_stream_bound(sp, schedule))
    if share < 1.0:
        # CPU ranks share cores: `cpu_share` is each rank's share while all compute. Ranks waiting in a pipeline
        # bubble or on a peer sleep, so the busy ones get more, up to what one rank gets alone (`cpu_share_alone`,
        # below 1 under a CPU quota): re-simulate at the share the first pass's average number of busy ranks leaves
        # them (a mean-field view of the OS's processor sharing).
        ranks_per_node = cluster.gpus_per_node
        busy = sum(full.compute_time_per_rank) / (c.pp * makespan) * ranks_per_node
        if busy > 0:
            relaxed = min(cpu_share_alone(cluster), share * ranks_per_node / busy)
            if relaxed > share:
                sp, full, makespan = run(relaxed)
                makespan = full.makespan = max(makespan, comm_stream_bound(sp, schedule))

    step_comm, optimizer, step_overhead = _after_makespan(model, cluster, c, partition, grid, schedule, execution)
    iteration = makespan + step_comm + optimizer + step_overhead

    memory = _memory(model, cluster, c, partition, schedule, full, execution)
    peak = max(m["total"] for m in memory)
    limit = cluster.usable_memory_bytes
    tokens = c.global_batch_size * c.seq_len
    model_flops = model.model_flops_per_iteration(c.seq_len, c.global_batch_size)
    hardware_flops = executed_flops(model, c, partition, execution)
    peak_flops = cluster.device.peak(precision(c.dtype).element)  # fp8: MFU at the bf16 peak (torchtitan reports none)
    prediction = {
        "iteration_time_s": iteration,
        "tokens_per_s": tokens / iteration,
        "tflops_per_gpu": model_flops / iteration / c.world_size / 1e12,
        "mfu": model_flops / iteration / c.world_size / peak_flops,
        "hfu": hardware_flops / iteration / c.world_size / peak_flops,
        "peak_memory_bytes": peak,
        "memory_limit_bytes": limit,
        "fits": peak <= limit,
        "memory_per_stage": memory,
        **_host_prediction(cluster, c, memory),
        "bubble_fraction": full.bubble_fraction,
        "compute_source": model_pieces(model, cluster, c).source,
        "framework": execution.name,
    }
    if changed_flags(execution):
        prediction["framework_flags"] = changed_flags(execution)
    if "host_memory_per_node_bytes" in prediction:
        prediction["fits"] = peak <= limit and prediction["host_memory_per_node_bytes"] <= cluster.host["memory_bytes"]
    if extrapolate:
        prediction["extrapolated"] = True
    if detail:
        prediction["time_breakdown"] = _breakdown(schedule, sp, p2p, makespan, step_comm, optimizer, step_overhead,
                                                  c.offload_activations)
    return c, partition, grid, prediction, None if extrapolate else full


def _checked(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list | None,
             mesh: np.ndarray | None, execution: Execution) -> tuple[ParallelConfig, list, RankGrid]:
    """(checked config, partition as lists, rank grid) of one configuration, the default partition and mesh where
    none is given. Raises UserError when the config is impossible for the model, the cluster or the framework."""
    c = config.check(model, cluster.world_size)
    execution.check(c, model)
    check_dtype(c.dtype, cluster.device.peak_flops, cluster.device.name)
    check_offload(cluster, c.offload_levers)
    partition = [list(p) for p in (partition or default_partition(model, c))]
    if recompute_layers_problem(c, partition):
        raise UserError(recompute_layers_problem(c, partition))
    return c, partition, RankGrid(default_mesh(c) if mesh is None else mesh)


def _extrapolates(c: ParallelConfig) -> bool:
    """An extrapolating prediction of `c` simulates fewer micro-batches than its step (`_extrapolated_step`)."""
    return c.num_microbatches > EXTRAPOLATE_ABOVE * c.pp


def _first_schedule(c: ParallelConfig, overlap: bool, extrapolate: bool):
    """The schedule `predict` builds first: the step's, or where it extrapolates that of its second sample (3p
    micro-batches, `_extrapolated_step`)."""
    return _schedule(c.schedule, c.pp, 3 * c.pp if extrapolate else c.num_microbatches, c.vpp, c.seq_chunks, overlap)


def _after_makespan(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, partition: list, grid: RankGrid,
                    schedule, execution: Execution) -> tuple[float, float, float]:
    """(step collectives, optimizer, step overhead): the seconds a step lasts past its simulated makespan (module
    docstring). The optimizer is AdamW over each rank's (ZeRO-sharded) parameters, the slowest rank's."""
    optimizer = max(rank_optimizer_time(cluster, c, *rank_params(model, partition, schedule.model_stages_of_rank(r),
                                                                 execution.memory_layout), execution=execution)
                    for r in range(c.pp))
    step_comm = (step_collectives(model, cluster, c, grid, schedule.stage_to_rank, execution)
                 + mirror_grad_sum(model, cluster, c, partition, grid, schedule, execution))
    return step_comm, optimizer, cluster.overhead("step_overhead_s")


def step_floor(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, partition: list | None = None,
               mesh: np.ndarray | None = None, execution: Execution = Execution()) -> float:
    """A lower bound of `predict`'s iteration_time_s for the same arguments, extrapolated or not, at the cost of its
    stage plan (no simulation): the busiest rank's compute over the step (`simulate.busy_per_rank`: no rank computes
    two passes at once) or, where it is longer, its DP comm stream under grad_reduce "microbatch"
    (`comm_stream_bound`, which `predict` holds the makespan to), and the seconds after the makespan, less
    FLOOR_SLACK. 0 where the compute is not the sum of its passes: overlapped pairs (a pair runs shorter than its
    parts) and CPU ranks sharing cores (whose costs the prediction relaxes). Raises UserError as `predict` does."""
    c, partition, grid = _checked(model, cluster, config, partition, mesh, execution)
    share = cpu_share(cluster)
    overlap = overlaps_pairs(model, c, execution)
    if share < 1.0 or overlap:
        return 0.0
    schedule = _first_schedule(c, overlap, _extrapolates(c))  # (`predict`'s: any count has the same stages)
    p2p = _p2p_function(cluster, c, model, schedule.stage_to_rank, grid, execution)
    sp = stage_plan(model, cluster, c, partition, schedule.stage_to_rank, grid, execution, p2p, share)
    busiest = max(*busy_per_rank(schedule, sp.costs, c.num_microbatches), comm_stream_bound(sp, schedule))
    return (busiest + sum(_after_makespan(model, cluster, c, partition, grid, schedule, execution))) * (1 - FLOOR_SLACK)


def _host_prediction(cluster: ClusterProfile, c: ParallelConfig, memory: list[dict]) -> dict:
    """An offloading plan's host side: the bytes each node holds in host memory and the node's host memory."""
    if not c.offloads:
        return {}
    return {"host_memory_per_node_bytes": host_memory_per_node(cluster, [m["host"] for m in memory]),
            "host_memory_limit_bytes": float(cluster.host["memory_bytes"])}


def comm_stream_bound(sp: StagePlan, schedule) -> float:
    """With grad_reduce "microbatch": the step lasts at least as long as the busiest rank's DP comm stream, which
    carries its stages' gathers (every forward's, `forward_gathers`) and every micro-batch's reduce-scatter (0
    without them). The simulation places each after its micro-batch's backward; this bound also holds the step
    extrapolated from fewer micro-batches (`_extrapolated_step`), whose stream grows by a reduction per micro-batch
    where the compute grows less."""
    if not sp.early_reduce:
        return 0.0
    forward = sp.forward_gathers or [0.0] * len(sp.reduce)
    return max(sum(sp.allgather[s] + forward[s] + sp.early_reduce[s] + sp.reduce[s]
                   for s in schedule.model_stages_of_rank(r))
               for r in range(schedule.pp))


@functools.lru_cache(maxsize=64)
def _schedule(name: str, pp: int, num_microbatches: int, vpp: int, seq_chunks: int, overlap: bool):
    """build_schedule, remembered: the search asks for the same schedule for many configs. Every argument is
    required, so every caller makes the same cache key for the same schedule."""
    return build_schedule(name, pp, num_microbatches, vpp, seq_chunks, overlap)


def _simulate_step(schedule, sp: StagePlan, p2p, execution: Execution) -> tuple[Timeline, float]:
    """The simulated timeline and the step's makespan, with the execution's DP overlap: the once-per-step parameter
    gathers whole before a stage's first forward or bucket by bucket during it (`param_gather_overlap`); the
    gradient reductions after each stage's last backward (with grad_reduce "microbatch" after every micro-batch's),
    bucket by bucket during it, or (without overlap) every rank's reductions one after another once the whole
    pipeline has flushed, on its comm stream."""
    gather_buckets = sp.buckets if execution.param_gather_overlap else None
    p2p = sp.transfer_delay(p2p)
    if execution.grad_reduce_start != "after_flush":
        reduce_buckets = sp.buckets if execution.grad_reduce_start == "per_bucket" else None
        timeline = simulate(schedule, sp.costs, p2p, sp.allgather, sp.reduce, gather_buckets, reduce_buckets,
                            reduce_every_microbatch=bool(sp.early_reduce), contention=sp.contention,
                            reduce_contending=sp.reduce_contending)
        return timeline, timeline.makespan
    timeline = simulate(schedule, sp.costs, p2p, sp.allgather, gather_buckets=gather_buckets,
                        contention=sp.contention)
    flushed = timeline.makespan
    for r in range(schedule.pp):
        t = flushed
        for s in schedule.stages_of_rank(r):
            seconds = sp.reduce[schedule.model_stage(s)]
            timeline.comm_events[r].append(("reduce", s, t, t + seconds))
            t += seconds
        timeline.makespan = max(timeline.makespan, t)
    return timeline, timeline.makespan


def _extrapolated_step(c: ParallelConfig, sp: StagePlan, p2p, execution: Execution) -> tuple[Timeline, float] | None:
    """For many micro-batches: the step extended linearly to m from two simulated counts at which it has settled;
    None where no such pair below m is found (the caller simulates in full).

    Past the fill, every schedule here repeats the same per-micro-batch pattern: once a step has settled, each
    rank's compute time and the end of its last compute are affine in m, so is the compute each rank loses to its
    DP collectives (`Timeline.contention_per_rank`: constant, or growing where they reduce every micro-batch's
    gradients), the DP collectives end the step a fixed time after the last compute (or with it), and the in-flight
    peaks are constant (1F1B-like) or grow linearly (GPipe-like). The end of the compute is extended along the
    last rank's end and along each rank's own, the later of them: a rank that loses more compute per micro-batch to
    its collectives overtakes the one that ended last at few, while a rank waiting on another keeps its pace.

    The samples are taken at 2p and 3p micro-batches, then 4p, 8p, 16p, ... until, between the last two of them,
    - no rank's idle time shrank: it does only before the rank settles (V placement, with the embedding and the
      head on rank 0, may take more than 3p micro-batches);
    - no rank's lost compute changed or, with a reduction per micro-batch, it grew per micro-batch as between the
      two samples before (or the rank ends before the step even if it grew as fast as any rank's from then on):
      how much of a collective the compute beside it hides changes with m until it settles;
    - the tail after the compute did not shrink: a DP stream that started behind the compute catches up with it
      (a reduce-scatter per micro-batch, grad_reduce "microbatch"), the tail reaching its final value later.
    Where the tail grew, the DP stream falls behind the compute by a pace the samples do not settle (extended, a
    1F1B step read up to 4% long, and kept at the sample, 26% short under GPipe): None.
    """
    m = c.num_microbatches
    if weight_pass_rewalks(c, execution):
        return None  # weight passes that outlast the rest: extended, such steps read up to 0.24% short
    overlap = sp.costs.forward_comm is not None  # the stage plan states the exchange only when pairs overlap

    def sample(count: int) -> tuple[Timeline, float, list[float], float]:
        timeline, span = _simulate_step(_schedule(c.schedule, c.pp, count, c.vpp, c.seq_chunks, overlap), sp, p2p,
                                        execution)
        ends = timeline.compute_end_per_rank
        return timeline, span, ends, span - max(ends)

    def lost(timeline: Timeline) -> list[float]:
        return timeline.contention_per_rank or [0.0] * c.pp

    def lost_pace() -> list[float]:
        return [(b - a) / (m2 - m1) for a, b in zip(lost(t1), lost(t2))]

    def settled(previous_lost_pace: list[float] | None) -> bool:
        if tail1 - tail2 > scale or any(e2 - e1 < w2 - w1 - scale for e1, e2, w1, w2 in zip(
                ends1, ends2, t1.compute_time_per_rank, t2.compute_time_per_rank)):
            return False
        per_microbatch = scale / (m2 - m1)
        pace = lost_pace()
        if not sp.early_reduce:
            return all(abs(g) <= per_microbatch for g in pace)
        # with a reduction per micro-batch: a rank whose loss grew as between the samples before is settled; any
        # other must end before the step even if its loss grew from now on as fast as any rank's grows now
        unsettled = [r for r in range(c.pp) if previous_lost_pace is None
                     or abs(previous_lost_pace[r] - pace[r]) > per_microbatch]
        step_end = compute_end()
        return all(ends2[r] + ((ends2[r] - ends1[r]) / (m2 - m1) - pace[r] + max(pace)) * (m - m2)
                   <= step_end - scale for r in unsettled)

    def extend(a: float, b: float) -> float:
        return b + (b - a) * (m - m2) / (m2 - m1)

    def compute_end() -> float:
        return max(extend(max(ends1), max(ends2)), *(extend(a, b) for a, b in zip(ends1, ends2)))

    m1, m2 = 2 * c.pp, 3 * c.pp
    (t1, _, ends1, tail1), (t2, span2, ends2, tail2) = sample(m1), sample(m2)
    previous = None
    while True:
        scale = 1e-9 * span2
        if tail2 > tail1 + scale:
            return None
        if settled(previous):
            break
        following = m2 + c.pp if m2 == 3 * c.pp else 2 * m2
        if following >= m:
            return None
        previous = lost_pace()
        m1, m2, t1, ends1, tail1 = m2, following, t2, ends2, tail2
        t2, span2, ends2, tail2 = sample(m2)

    makespan = compute_end() + tail2
    compute = [extend(a, b) for a, b in zip(t1.compute_time_per_rank, t2.compute_time_per_rank)]
    peak, peak_weight, peak_rank, peak_joint = _extended_peaks(
        (t1.peak_inflight, t1.peak_inflight_weight, t1.peak_inflight_rank, t1.peak_inflight_joint),
        (t2.peak_inflight, t2.peak_inflight_weight, t2.peak_inflight_rank, t2.peak_inflight_joint), m1, m2, m,
        c.vpp, c.seq_chunks)
    timeline = Timeline(
        events=[], comm_events=[], makespan=makespan, compute_time_per_rank=compute,
        bubble_fraction=1 - sum(compute) / (c.pp * makespan), peak_inflight=peak, peak_inflight_weight=peak_weight,
        peak_inflight_rank=peak_rank, peak_inflight_joint=peak_joint)
    return timeline, makespan


def _extended_peaks(first, second, m1: int, m2: int, m: int, vpp: int, seq_chunks: int = 1) -> list[list]:
    """The in-flight counts (per stage, per stage for W, per rank, per rank jointly with W's share) of m
    micro-batches from those of m1 and m2 (past the fill): constant or growing by the same step per micro-batch, at
    most every micro-batch (of every chunk; under seq1f1b counted in sequence chunks)."""
    caps = (m * seq_chunks, m * seq_chunks, m * vpp * seq_chunks, m * vpp * seq_chunks)
    step = (m - m2) / (m2 - m1)
    counts = [[min(cap, int(round(b + (b - a) * step))) for a, b in zip(xs, ys)]
              for xs, ys, cap in zip(first[:3], second[:3], caps)]
    joint = [min(caps[3], round(b + (b - a) * step, 9)) for a, b in zip(first[3], second[3])]
    return [*counts, joint]


def _cluster_summary(cluster: ClusterProfile) -> dict:
    """The plan's `cluster` object; "profile" is the profile file's path when it is not a bundled one,
    "profile_sha256" its content's digest (`ClusterProfile.content_sha256`, where it was read from a file), and what
    the command line set in place of the profile's values is recorded beside them (`command_line_overrides`)."""
    summary = {"name": cluster.name, "nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node,
               "backend": cluster.backend, "device": cluster.device.name, **cluster.command_line_overrides}
    if cluster.path:
        summary["profile"] = cluster.path
    if cluster.content_sha256:
        summary["profile_sha256"] = cluster.content_sha256
    return summary


def _memory(model, cluster, c, partition, schedule, timeline: Timeline, execution: Execution) -> list[dict]:
    inflight = stage_inflight(schedule.stage_to_rank, timeline.peak_inflight, timeline.peak_inflight_weight,
                              timeline.peak_inflight_joint)
    return stage_memory(model, cluster, c, partition, schedule.stage_to_rank, inflight, execution.memory_layout,
                        selective=selective_policy(c, execution), execution=execution)


def stage_inflight(stage_to_rank, peak, peak_weight, peak_joint) -> list[float]:
    """Micro-batches of activations each virtual stage holds at its rank's peak, from a step's in-flight counts
    (`Timeline`): those between forward and input-gradient backward, plus the weight-gradient share of those
    waiting for W. A rank's stages sum to exactly its joint peak (`Timeline.peak_inflight_joint`: both kinds
    counted at the same instant of its order), shared among its stages in proportion to their own peaks; a stage
    alone on its rank holds the joint peak. Schedules without W hold their rank's peak in flight."""
    inflight = [p + WEIGHT_GRAD_ACTIVATION_SHARE * w for p, w in zip(peak, peak_weight)]
    stages_of: dict[int, list[int]] = {}
    for s, r in enumerate(stage_to_rank):
        stages_of.setdefault(r, []).append(s)
    for rank, cap in enumerate(peak_joint):
        stages = stages_of.get(rank, [])
        total = sum(inflight[s] for s in stages)
        if total > cap > 0:  # a stage's own peaks are at least its share of the rank's: total >= cap
            for s in stages:
                inflight[s] *= cap / total
    return inflight


@functools.lru_cache(maxsize=4096)
def schedule_inflight(name: str, pp: int, vpp: int, num_microbatches: int,
                      rank: int | None = None, seq_chunks: int = 1, overlap: bool = False) -> tuple[float, ...]:
    """`stage_inflight` of a schedule from its order alone (the counts do not depend on costs); above
    EXTRAPOLATE_ABOVE x pp micro-batches counted at 2p and 3p and extended as `_extrapolated_step` does. With
    `rank`, from that pipeline rank's own list only: its stages' counts are the same, the other stages read 0.
    Under seq1f1b (`seq_chunks` > 1) the counts are of sequence chunks. With `overlap` (`overlaps_pairs`), of the
    order the schedule runs when its pairs overlap, the one the estimate simulates then (it may hold more: the
    combined interleaved order one more micro-batch per rank)."""
    m = num_microbatches
    owner = stage_to_rank(name, pp, vpp)
    if m <= EXTRAPOLATE_ABOVE * pp:
        peak, peak_weight, _, peak_joint = _order_peaks(name, pp, m, vpp, rank, seq_chunks, overlap)
    else:
        first, second = (_order_peaks(name, pp, k * pp, vpp, rank, seq_chunks, overlap) for k in (2, 3))
        peak, peak_weight, _, peak_joint = _extended_peaks(first, second, 2 * pp, 3 * pp, m, vpp, seq_chunks)
    return tuple(stage_inflight(owner, peak, peak_weight, peak_joint))


@functools.lru_cache(maxsize=4096)
def _order_peaks(name: str, pp: int, num_microbatches: int, vpp: int, rank: int | None,
                 seq_chunks: int = 1, overlap: bool = False) -> tuple:
    """`order_peaks` of a schedule (of one rank's list with `rank`; of the paired order with `overlap`),
    remembered: the 2p and 3p samples serve every larger count."""
    if rank is None:
        return order_peaks(_schedule(name, pp, num_microbatches, vpp, seq_chunks, overlap))
    return rank_order_peaks(schedule_spec(name).num_stages(pp, vpp),
                            {rank: rank_actions(name, pp, num_microbatches, vpp, rank, seq_chunks, overlap)}, pp)


def _breakdown(schedule, sp: StagePlan, p2p, makespan: float, step_comm: float, optimizer: float,
               step_overhead: float, activation_copies: bool = False) -> dict:
    """Named terms that add up to the iteration time, read off the critical (busiest) rank. With
    `activation_copies` (offload_activations) an "offload" term holds its copies on the compute stream;
    offload_optimizer has no term of its own: its CPU step is in "optimizer", its shard copies in "dp_comm"
    (`offload_effect` says by how much each grew)."""
    bare = simulate(schedule, sp.costs, 0.0)
    with_p2p = simulate(schedule, sp.costs, sp.transfer_delay(p2p))
    busiest = max(range(schedule.pp), key=lambda r: bare.compute_time_per_rank[r])
    compute = recompute = tp = cp = overhead = ep = offload = sent = 0.0
    for action, _, _ in bare.events[busiest]:
        if action.kind != "W":
            overhead += sp.pass_overhead
        s = schedule.model_stage(action.stage)  # the stage plan's entry (dualpipe: each copy's model stage)
        if action.kind != "W" and sp.hooks:
            overhead += sp.hooks[s]
        parts = sp.compute[s]
        tp_parts = sp.tp_comm[s]
        exchange = sp.ep_comm[s] if sp.ep_comm else None
        cp_parts = sp.cp_comm[s] if sp.cp_comm else PassTimes(0.0, 0.0, 0.0)
        if action.kind == "F":
            compute += parts.forward
            tp += tp_parts.forward
            cp += cp_parts.forward
            ep += exchange.forward if exchange else 0.0
            offload += sp.offload[s].forward
            sent += sp.p2p_sends[s].forward if sp.p2p_sends else 0.0
        elif action.kind in ("B", "I"):
            compute += parts.backward_input + (parts.backward_weight if action.kind == "B" else 0.0)
            tp += tp_parts.backward_input
            cp += cp_parts.backward_input
            ep += exchange.backward_input if exchange else 0.0
            recompute += sp.recompute[s]
            offload += sp.offload[s].backward_input
            sent += sp.p2p_sends[s].backward_input if sp.p2p_sends else 0.0
        else:
            compute += parts.backward_weight
    busy = bare.compute_time_per_rank[busiest]
    if bare.overlap_saved_per_rank:  # DualPipe's pairs: the exchange they hid is no longer on the rank's time
        ep -= bare.overlap_saved_per_rank[busiest]
    # Gather waits hidden in max(compute, gather) show up as compute time of the stage: attribute them to dp_comm.
    fsdp_wait = max(0.0, busy - (compute + recompute + tp + cp + ep + overhead + offload + sent))  # float noise: none
    terms = {
        **({"offload": offload} if activation_copies else {}),
        "compute": compute,
        "recompute": recompute,
        "tp_comm": tp,
        **({"cp_comm": cp} if sp.cp_comm else {}),
        "bubble": bare.makespan - busy,
        "pp_comm": with_p2p.makespan - bare.makespan + sent,
        "dp_comm": makespan - with_p2p.makespan + fsdp_wait,
        "step_comm": step_comm,
        "optimizer": optimizer,
        "framework": overhead + step_overhead,
    }
    if sp.ep_comm:  # MoE: the token exchange, after the TP collectives
        terms = {**{k: v for k, v in terms.items() if k in ("compute", "recompute", "tp_comm")}, "ep_comm": ep,
                 **{k: v for k, v in terms.items() if k not in ("compute", "recompute", "tp_comm")}}
    # differences of equal makespans reached by different sums leave float noise (3.6e-15 s of dp_comm at dp 1)
    return {k: 0.0 if abs(v) < BREAKDOWN_NOISE_S else v for k, v in terms.items()}
