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
recompute, P2P send/receive buffers, FSDP gather buffers. With one micro-batch per step the executor's gradients
only come into existence as the activations go, so the larger of the two counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import DTYPE_BYTES
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig

LAYOUTS = ("torch", "megatron")


def layer_activation_bytes(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str,
                           recompute: str | None = None) -> float:
    """Bytes one block keeps from its forward until its backward for one micro-batch on one TP rank: Megatron-LM's
    accounting (`ModelSpec.layer_activation_bytes`) for the "megatron" layout, the executor's own on a `device_kind`
    ("gpu" or "cpu") device for "torch"."""
    c = config
    recompute = c.recompute if recompute is None else recompute
    if layout == "megatron":
        return model.layer_activation_bytes(c.seq_len, c.micro_batch_size, c.tp, c.sequence_parallel, recompute,
                                            c.attention, DTYPE_BYTES[c.dtype])
    return executor_layer_activation_bytes(model, c, recompute, device_kind)


def norm_saved_bytes(model: ModelSpec, config: ParallelConfig, device_kind: str) -> float:
    """Bytes one norm of the executor keeps per element of its input: LayerNorm its input; RMSNorm its input on CUDA
    (a fused kernel) and, on CPU (composite, computed in fp32), the fp32 upcast of its input and its fp32
    normalised input."""
    if model.arch == "llama" and device_kind == "cpu":
        return 8.0
    return float(DTYPE_BYTES[config.dtype])


def executor_layer_activation_bytes(model: ModelSpec, config: ParallelConfig, recompute: str,
                                    device_kind: str = "gpu") -> float:
    """What autoconf's executor block saves for its backward (tests/test_memory_saved.py counts it with autograd's
    saved-tensor hooks), for one micro-batch on one TP rank.

    FSDP2's mixed precision runs every block on compute copies of its parameters in the plan's dtype (e bytes), so
    every activation, the residual stream included, is in that dtype, and the linear layers that read one tensor
    save it once (the Q, K, V input; the first MLP input). Norms keep `norm_saved_bytes`. Flash attention keeps Q,
    K and V (grouped K and V unrepeated), its output (which is the output projection's input) and a fp32
    log-sum-exp per row; the standard kernel keeps K and V repeated to every query head and the fp32 softmax and its
    low-precision copy. Selective recompute keeps the attention core's inputs Q, K, V (unrepeated) and its output,
    and recomputes SwiGLU's silu (its inputs stay, the silu output goes). Torch tensor parallelism saves the gathered
    (full-sequence) input of its column-parallel layers also with sequence parallelism. Full recompute keeps the
    block input only. Dropout masks take a byte per element (CUDA's fused kernel).
    """
    c = config
    s, b, h, f = c.seq_len, c.micro_batch_size, model.hidden_size, model.ffn_hidden_size
    t, e = c.tp, DTYPE_BYTES[c.dtype]
    sbh = s * b * h
    split = t if c.sequence_parallel else 1
    if recompute == "full":
        return e * sbh / split
    dropout_masks = 2 * sbh if model.dropout > 0 else 0
    norms = 2 * norm_saved_bytes(model, c, device_kind) * sbh / split + dropout_masks / split
    linear_inputs = 2 * e * sbh
    qkv = e * s * b * (h + 2 * model.kv_dim) / t
    attention = qkv + e * sbh / t  # Q, K, V and the output projection's input
    if recompute != "selective":
        if c.attention == "flash":
            attention += 4 * model.num_heads * s * b / t
        else:
            scores = model.num_heads * s * s * b / t
            softmax = 4 + (e if e < 4 else 0)  # fp32 softmax, and its low-precision copy
            attention += e * s * b * 2 * (h - model.kv_dim) / t  # K and V repeated to every head
            attention += softmax * scores + ((1 + e) * scores if model.dropout > 0 else 0)
    if model.arch == "gpt":
        mlp_tensors = 2  # GeLU input and output
    else:
        mlp_tensors = 3 if recompute == "selective" else 4  # gate, up, (silu,) their product
    mlp = mlp_tensors * e * s * b * f / t
    return norms + linear_inputs + attention + mlp


def logits_temporary_bytes(model: ModelSpec, config: ParallelConfig, layout: str) -> float:
    """Peak bytes of the loss on the last stage for one micro-batch: the logits, their fp32 copy and gradient
    (Megatron); in the executor, the fp32 log-softmax the loss keeps and the two fp32 gradients of its backward."""
    c = config
    logits = c.seq_len * c.micro_batch_size * model.vocab_size / c.tp
    return logits * (DTYPE_BYTES[c.dtype] + 8 if layout == "megatron" else 12)


def head_input_bytes(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str = "gpu") -> float:
    """Bytes the last stage keeps per micro-batch beyond its layers: the final norm's input and the head's input
    (in the executor the head's column-parallel input is gathered to the full sequence under SP)."""
    c = config
    e = DTYPE_BYTES[c.dtype]
    sbh = c.seq_len * c.micro_batch_size * model.hidden_size
    split = c.tp if c.sequence_parallel else 1
    if layout == "torch":
        return (norm_saved_bytes(model, c, device_kind) / split + e) * sbh
    return 2 * sbh * e / split


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


def state_bytes_per_param(config: ParallelConfig, layout: str) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer, unsharded compute copy) bytes per local parameter after ZeRO division; the
    compute copy is held for every parameter of the rank except under FSDP resharding (see `gather_buffer_bytes`)."""
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
    # holds an unsharded compute copy (at stage 3 only of the blocks in use: the gather buffer).
    if z == 0:
        return 4.0, 4.0, 8.0, (compute if compute != 4 else 0.0)
    if z >= 3:
        return 4.0 / dp, 4.0 / dp, 8.0 / dp, 0.0
    return 4.0 / dp, 4.0 / dp, 8.0 / dp, compute


def gather_buffer_bytes(model: ModelSpec, config: ParallelConfig, layout: str) -> float:
    """The unsharded copy FSDP keeps of the blocks in use when it reshards after forward (ZeRO-3 in the torch
    layout): the current and the prefetched block."""
    c = config
    if c.zero_sharded and c.zero_stage >= 3 and layout == "torch":
        return 2 * model.layer_params() / c.tp * DTYPE_BYTES[c.dtype]
    return 0.0


def p2p_buffer_bytes(model: ModelSpec, config: ParallelConfig) -> float:
    """Pipeline send and receive buffers, forward and backward: four activations of one micro-batch."""
    c = config
    if c.pp == 1:
        return 0.0
    split = c.tp if c.sequence_parallel else 1
    return 4 * c.seq_len * c.micro_batch_size * model.hidden_size * DTYPE_BYTES[c.dtype] / split


def unit_activation_bytes(model: ModelSpec, config: ParallelConfig, layout: str,
                          device_kind: str) -> tuple[float, float, float]:
    """Bytes one micro-batch keeps until its backward in (the embedding, one transformer layer, the head): the
    embedding's dropout mask, the layer's saved tensors, the head's inputs. The partition units of the solver."""
    c = config
    split = c.tp if c.sequence_parallel else 1
    sbh = c.seq_len * c.micro_batch_size * model.hidden_size
    embedding = sbh / split if model.dropout > 0 else 0.0
    return (embedding, layer_activation_bytes(model, c, layout, device_kind),
            head_input_bytes(model, c, layout, device_kind))


def stage_memory(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig,
                 partition: Sequence[Sequence[int]], stage_to_rank: Sequence[int], inflight: Sequence[float],
                 layout: str = "torch", ranks: Sequence[int] | None = None) -> list[dict]:
    """Peak bytes per pipeline rank (of `ranks`, default all), as {"params", "grads", "optimizer", "activations",
    "other", "total"}; `inflight[s]` is the micro-batches stage s keeps at the rank's peak."""
    assert layout in LAYOUTS, layout
    c = config
    w_b, g_b, o_b, copy_b = state_bytes_per_param(c, layout)
    embed_act, layer_act, head_act = unit_activation_bytes(model, c, layout, cluster.device.kind)
    fixed = (cluster.device.memory_overhead_bytes + gather_buffer_bytes(model, c, layout)
             + p2p_buffer_bytes(model, c))
    last = len(partition) - 1
    out = []
    for rank in (range(c.pp) if ranks is None else ranks):
        stages = [st for st, r in enumerate(stage_to_rank) if r == rank]
        local_params = sum(stage_params(model, partition, st) for st in stages) / c.tp
        activations = 0.0
        for st in stages:
            first, end = partition[st]
            per_mb = (end - first) * layer_act + (embed_act if st == 0 else 0.0) + (head_act if st == last else 0.0)
            activations += per_mb * inflight[st]
        # Temporaries that exist one at a time: the largest of them counts.
        temporaries = [0.0]
        if last in stages:
            temporaries.append(logits_temporary_bytes(model, c, layout))
        if c.recompute == "full":
            temporaries.append(layer_activation_bytes(model, c, layout, cluster.device.kind, "none"))
        grads = local_params * g_b
        if layout == "torch" and c.num_microbatches == 1:
            # The gradients come into existence during the only backward while the activations go: the peak is at
            # the loss without them, or at the end of the backward with them and without the activations.
            if activations + max(temporaries) >= grads:
                grads = 0.0
            else:
                activations, temporaries = 0.0, [0.0]
        other = fixed + max(temporaries) + local_params * copy_b
        entry = {"params": local_params * w_b, "grads": grads, "optimizer": local_params * o_b,
                 "activations": activations, "other": other}
        entry["total"] = sum(entry.values())
        out.append(entry)
    return out
