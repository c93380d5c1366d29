"""Multi-token prediction (DeepSeek-V3 report sec. 2.2; Megatron-Core `--mtp-num-layers`): what the MTP modules
add to the last pipeline stage, where Megatron-Core places them.

Each module takes the model's final hidden states (after its final norm; a second module the first one's) and the
embedding of the token one further ahead, normalises both (enorm, hnorm), projects their concatenation 2h -> h
(eh_proj), runs one transformer block like the model's last one, a final norm, and the model's own output head and
loss. The embedding and the head are shared with the main model: on a single-stage model they are the same weights;
under pipelining the last stage holds a copy of the embedding (Megatron-Core's `mtp` embedding on the last stage),
unless the rank also holds the first stage (V placements), where in the megatron layout the one embedding serves
both (DeepSeek's DualPipe shares it) and in the torch layout each chunk, an FSDP root of its own, holds its own
(`copy_per_chunk`, the executor's).

Counted: weights, gradients and optimizer states of the modules (and of the embedding copy); per pass one block (its
token exchange when it is an MoE block, its TP collectives, its K/V exchange under CP), the projection GEMM, the
norms, one more embedding lookup and one more head with its loss; the activations the module keeps until its
backward (the block's, under the plan's recompute mode, the head's inputs and its loss's, the projection's input),
and where a schedule defers the head's weight gradient (W) their logits gradients with the main one's. The estimate
(`estimate.stage_plan`, `memory.stage_memory`) and the partition's units (`solve/refine.partition_problem`) read
these. Not counted: the MTP loss's own reduction across ranks (one scalar), the modules' FLOPs in the model FLOPs of
MFU.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoconf.cost.compute import ModelPieces, PassTimes, gemms_time
from autoconf.cost.moe import layer_kind_params
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import DTYPE_BYTES, precision
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig


def copy_per_chunk(layout: str) -> bool:
    """Whether the last stage's chunk keeps its MTP embedding copy on a rank that also holds the first stage: in
    the torch layout (the executor's chunks are separate FSDP roots; pipeline.EmbeddingSync sums the two on the
    rank), not in the megatron layout (one embedding serves both, as DeepSeek's DualPipe shares it)."""
    return layout == "torch"


def mtp_embedding_copy(partition: Sequence[Sequence[int]], stages: Sequence[int], layout: str) -> bool:
    """Whether the rank holding model stages `stages` keeps its own copy of the embedding for the MTP modules under
    memory `layout`: it holds the last stage, and not the first unless each chunk keeps its own
    (`copy_per_chunk`)."""
    last = len(partition) - 1
    return last in stages and (copy_per_chunk(layout) or 0 not in stages)


def embedding_copy_params(model: ModelSpec) -> int:
    """Parameters the MTP modules' embedding copy adds to a last stage that holds one: the embedding, less a tied
    head's weight, which is the copy's (one copy on the stage, as in Megatron-Core and the executor;
    `memory.stage_outer_params` counts the tied head)."""
    return model.embedding_params() - (model.vocab_size * model.hidden_size if model.tied_embeddings else 0)


def mtp_stage_params(model: ModelSpec, embedding_copy: bool) -> tuple[float, float, float]:
    """(all parameters, routed-expert parameters, TP-replicated parameters) the MTP modules add to the last stage,
    over all ranks; with `embedding_copy` the embedding copy the last stage holds for them (`mtp_embedding_copy`,
    `embedding_copy_params`). The TP-replicated ones: `ModelSpec.mtp_tp_replicated_params` of each module, and the
    copy's (learned positions)."""
    if not model.mtp_num_layers:
        return 0.0, 0.0, 0.0
    experts = layer_kind_params(model)[2] if model.mtp_block_is_moe() else 0
    params = model.mtp_params() + (embedding_copy_params(model) if embedding_copy else 0)
    return (float(params), float(model.mtp_num_layers * experts),
            float(model.mtp_num_layers * model.mtp_tp_replicated_params()
                  + (model.tp_replicated_params("embedding") if embedding_copy else 0)))


def mtp_projection_time(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig) -> float:
    """Seconds of one module's 2h -> h projection GEMM on one TP rank for one micro-batch (forward; each backward
    pass repeats its FLOPs)."""
    h = model.hidden_size
    flops = 2.0 * c.local_seq_len * c.micro_batch_size * 2 * h * h / c.tp
    return gemms_time(cluster, precision(c.dtype).gemm, [flops])


def mtp_pass_times(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, pieces: ModelPieces) -> PassTimes:
    """Compute the MTP modules add to one micro-batch of the last stage: per module a block (`pieces` of its kind),
    the projection, two norms over h and 2h inputs, an embedding lookup with its backward (the last stage's copy of
    the embedding takes its gradient as the first stage's does) and the head with its loss. Collectives, the token
    exchange and recompute are the caller's (the block's own rules)."""
    if not model.mtp_num_layers:
        return PassTimes(0.0, 0.0, 0.0)
    proj = mtp_projection_time(model, cluster, c)
    mem_rate = cluster.device.memory_bandwidth_Bps * cluster.eff("memory")
    split = c.tp if c.sequence_parallel else 1
    norms = 2 * 2 * c.local_seq_len * c.micro_batch_size * model.hidden_size * DTYPE_BYTES[c.dtype] / split / mem_rate
    one = (pieces.block + pieces.head + pieces.embedding
           + PassTimes(proj + norms, proj + 2 * norms, proj))
    return one.scaled(model.mtp_num_layers)


def mtp_activation_bytes(model: ModelSpec, block_bytes: float, head_bytes: float, loss_bytes: float,
                         own_bytes: float) -> float:
    """Bytes the MTP modules keep per micro-batch on the last stage: per module its block's (`block_bytes`, under
    the plan's recompute mode), its head's inputs (`head_bytes`, as the main head's), its loss's (`loss_bytes`, as
    the main loss keeps from its forward to its backward: Megatron-Core attaches each MTP loss to the hidden states,
    `MTPLossAutoScaler`, so its graph lives until the backward, also while the main loss is computed) and its own
    (`own_bytes`: the projection's 2h input and the two norms' inputs as the layout keeps them,
    `memory.mtp_own_bytes`)."""
    if not model.mtp_num_layers:
        return 0.0
    return model.mtp_num_layers * (block_bytes + head_bytes + loss_bytes + own_bytes)
