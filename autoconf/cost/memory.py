"""Peak memory per pipeline rank: weights, gradients, optimizer states, activations, temporaries, runtime.

Two mixed-precision layouts are described (bytes per parameter on one rank, before ZeRO division):

  layout     weights            gradients        optimizer (AdamW)
  "torch"    fp32 master 4      fp32 4           fp32 moments 8         what autoconf's executor keeps (FSDP2 keeps
             + compute copy*                                            fp32 sharded parameters and casts a bf16
                                                                        copy for compute when the dtype is bf16)
  "megatron" bf16 2             fp32 4           fp32 master 4 + 8      Megatron-LM mixed precision (18 bytes)

ZeRO in the "megatron" layout: stage 1 divides the optimizer states by DP, stage 2 also the gradients, stage 3
also the weights. In the "torch" layout stages 1-3 are FSDP2, which shards fp32 weights, gradients and optimizer
states together (so ZeRO-1 runs exactly as ZeRO-2), with an unsharded compute copy of the rank's parameters held
for the whole step at stages 1-2 (reshard_after_forward=False) and of two blocks at a time at stage 3.
* With bf16 compute on an unsharded (ZeRO-0) rank, the bf16 copy of every weight exists during the step (2 bytes).

Activations: each virtual stage keeps `inflight[s]` micro-batches (counted by the schedule simulation), each
worth its layers' `layer_activation_bytes` plus the embedding dropout mask (first stage) and the head inputs (last
stage). Temporaries: the logits with their fp32 loss copy and gradient, one layer's recomputed activations under full
recompute, P2P send/receive buffers, FSDP gather buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoconf.spec.cluster import DTYPE_BYTES, ClusterProfile
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig

LAYOUTS = ("torch", "megatron")


def stage_params(model: ModelSpec, partition: Sequence[Sequence[int]], stage: int) -> float:
    """Parameters of one virtual stage (all TP ranks together): its layers, the embedding on the first stage, the
    head on the last (a tied embedding is held by both ends when they are different stages)."""
    first, end = partition[stage]
    params = (end - first) * model.layer_params()
    last = len(partition) - 1
    if stage == 0:
        params += model.embedding_params()
    if stage == last:
        params += model.head_params()
        if model.tied_embeddings and last != 0:
            params += model.vocab_size * model.hidden_size
    return params


def _state_bytes_per_param(config: ParallelConfig, layout: str) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer, unsharded compute copy) bytes per local parameter after ZeRO division."""
    dp = config.dp
    z = config.zero_stage if config.zero_sharded else 0
    compute = DTYPE_BYTES[config.dtype]
    if layout == "megatron":
        weights, grads, optim = 2.0, 4.0, 12.0
        if z >= 1:
            optim /= dp
        if z >= 2:
            grads /= dp
        if z >= 3:
            weights /= dp
        return weights, grads, optim, 0.0
    # torch layout: FSDP2 shards weights, gradients and optimizer states together at every ZeRO stage >= 1 and
    # holds an unsharded compute copy (for stage 3 only of the blocks in use, which the caller adds).
    if z == 0:
        return 4.0, 4.0, 8.0, (compute if compute != 4 else 0.0)
    return 4.0 / dp, 4.0 / dp, 8.0 / dp, compute


def stage_memory(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig,
                 partition: Sequence[Sequence[int]], stage_to_rank: Sequence[int], inflight: Sequence[int],
                 layout: str = "torch") -> list[dict]:
    """Peak bytes per pipeline rank, as {"params", "grads", "optimizer", "activations", "other", "total"}."""
    assert layout in LAYOUTS, layout
    c = config
    t, s, b = c.tp, c.seq_len, c.micro_batch_size
    e = DTYPE_BYTES[c.dtype]
    sbh = s * b * model.hidden_size
    layer_act = model.layer_activation_bytes(s, b, t, c.sequence_parallel, c.recompute, c.attention, e)
    w_b, g_b, o_b, copy_b = _state_bytes_per_param(c, layout)
    split = t if c.sequence_parallel else 1
    last = len(partition) - 1
    ranks = []
    for rank in range(c.pp):
        stages = [st for st, r in enumerate(stage_to_rank) if r == rank]
        local_params = sum(stage_params(model, partition, st) for st in stages) / t
        activations = 0.0
        for st in stages:
            first, end = partition[st]
            per_mb = (end - first) * layer_act
            if st == 0 and model.dropout > 0:
                per_mb += sbh / split  # embedding dropout mask
            if st == last:
                per_mb += 2 * sbh * e / split  # final norm input and head input
            activations += per_mb * inflight[st]
        # Temporaries that exist one at a time: the largest of them counts.
        temporaries = [0.0]
        if last in stages:
            logits = s * b * model.vocab_size / t
            temporaries.append(logits * (e + 4 + 4))  # logits, fp32 copy for the loss, its gradient
        if c.recompute == "full":
            temporaries.append(model.layer_activation_bytes(s, b, t, c.sequence_parallel, "none", c.attention, e))
        gather = 0.0
        if c.zero_sharded and c.zero_stage >= 3 and layout == "torch":
            gather = 2 * model.layer_params() / t * DTYPE_BYTES[c.dtype]  # current and prefetched block
            copy = 0.0
        else:
            copy = local_params * copy_b
        p2p = (4 if c.pp > 1 else 0) * sbh * e / split
        other = cluster.device.memory_overhead_bytes + max(temporaries) + gather + p2p + copy
        entry = {"params": local_params * w_b, "grads": local_params * g_b, "optimizer": local_params * o_b,
                 "activations": activations, "other": other}
        entry["total"] = sum(entry.values())
        ranks.append(entry)
    return ranks
