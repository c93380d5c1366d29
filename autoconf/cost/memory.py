"""Peak memory per pipeline rank: weights, gradients, optimizer states, activations, temporaries, runtime.

Parameter, gradient and optimizer-state bytes per parameter of one rank (after TP; d = dp x cp, the ranks holding the
same weights), by layout:

  "megatron"  Megatron-LM mixed precision: bf16 weights 2, fp32 main gradients 4 in one contiguous buffer, fp32
              master weights and Adam moments 12. Its distributed optimizer (`--use-distributed-optimizer`, zero
              stage 1 here) shards the 12 optimizer bytes only: the gradient buffer holds every gradient of the
              rank through the accumulation and is reduce-scattered in place, so 6 + 12/d (Megatron-LM
              docs/source/api-guide/dist_optimizer.md: "[no] distribute model gradients", bf16 param + fp32 grads:
              18 bytes, or 6 + 12/d distributed). Stages 2 and 3 describe ZeRO as published (Rajbhandari et al.
              2020): the gradients, then the weights, divided by d as well. The execution's flags
              (spec/frameworks.py) say how Megatron-Core and its recipes differ, read here only:
              - grad_buffer_dtype "bf16": the gradient buffer holds 2 bytes per parameter, not 4;
              - optimizer "apex" (NeMo 1.x's DistributedFusedAdam with a bf16 model): the sharded state is the
                16-bit remainders of the fp32 master weights, the fp32 moments and the reduced gradients' shard in
                the buffer's dtype, (2 + 8 + g) / d instead of 12 / d;
              - transformer_engine under fp8 without fp8_params: each block's linear layers keep an fp8 copy of
                their weight and of its transpose (TE's weight workspace, cast on the first micro-batch and reused
                by the others: `is_first_microbatch`), 2 more bytes per block parameter (`fp8_weight_cache_bytes`).
  "torch"     autoconf's executor (and torchtitan 0.3.0, which puts FSDP2 on every rank too). Without sharding
              (ZeRO-0, or d = 1): fp32 weights 4, fp32 gradients 4, fp32 moments 8, in one-rank FSDP units, which
              copy a unit's weights when it runs, in the compute dtype (in fp32 too: FSDP2 copies whatever the
              dtype), and free the copy after its forward without a pipeline (the root unit and the block
              computing are held) or keep every copy under one; each micro-batch's backward passes every unit's
              gradient through FSDP's reduction (`reducing_grad_bytes`). With FSDP2 (ZeRO >= 1 over d > 1) the
              fp32 weights and the moments are sharded, 4/d + 8/d, at every stage, and what else a rank holds
              follows how FSDP2 runs under gradient accumulation and pipelining (torch 2.13, read in
              torch/distributed/fsdp/_fully_shard and torch/distributed/pipelining/stage.py, measured by
              tests/test_memory_fsdp.py):
              - gradients, grad_reduce "step": every micro-batch but the last runs with
                `set_requires_gradient_sync(False)` (the executor's loop; torch's pipelining stage does the same
                for every backward and reduces after the stage's last one), so FSDP2 accumulates the *unsharded*
                gradient of every parameter of the rank in the reduce dtype (fp32): 4 bytes per parameter, not
                4/d, from the first backward until the reduce-scatter. Only with pp == 1 and one micro-batch is
                each unit reduced during the backward.
              - gradients, grad_reduce "microbatch": each backward reduce-scatters (sharded gradients 4/d) at the
                price of one reduce-scatter per micro-batch; meanwhile the unsharded gradients of the units being
                reduced exist (`unsharded_buffer_bytes`).
              - parameters: the compute-dtype unsharded copy. ZeRO-1 and ZeRO-2 keep it for the whole step
                (`reshard_after_forward=False`, and the executor keeps it between micro-batches). ZeRO-3 gathers
                the blocks in use (the current and the prefetched one) and the chunk's root unit (embedding,
                final norm, head: FSDP2 never reshards the root after forward); but under pipelining with
                grad_reduce "step" torch's stage sets `reshard_after_backward(False)`, so every unit gathered for
                a backward stays gathered until the stage's reduction, and the rank holds the whole copy. The
                runtime schedules (interleaved-1f1b, looped-bfs, the zero-bubble family) gather whole chunks
                themselves (UNSHARD/RESHARD actions); measured, every chunk of the rank was gathered at once, with
                either gradient reduction.
              FSDP2 has no mode that shards the optimizer state alone: ZeRO-1 runs as ZeRO-2.

Activations: each virtual stage keeps `inflight[s]` micro-batches (counted by the schedule simulation), each worth
its layers' `layer_activation_bytes` (its first `recomputed_layers` under the plan's recompute mode, the others
without recompute) plus the embedding dropout mask (first stage) and the head inputs (last stage), all over the
rank's seq_len / cp tokens under context parallelism. Under seq1f1b the units in flight are sequence chunks of
seq_len / k tokens on average, each also keeping earlier chunks' keys and values, and a rank holds the K/V gradients
of up to k - 1 earlier chunks per layer (`seq_chunk_kv_bytes`, by layout and recompute mode); under the equal-work
split the chunks' lengths differ (`seq_chunk_scales`: the executor pads each to the longest). Temporaries: the
logits with their fp32 loss copy and gradient, one layer's recomputed activations under full recompute (on a rank
that recomputes a layer), the K/V buffer of context-parallel attention (`cp_buffer_bytes`). The pipeline's
receive buffers and kept stage outputs (`pipeline_buffer_bytes`, by the framework's runtime) sit in "other". With
one micro-batch per step the executor's gradients only come into existence as the activations go, so the larger of
the two counts.

Mixture of experts (cost/moe.py): the routed experts of a rank's MoE layers are split over ep x etp instead of tp,
and ZeRO shards their state over the expert-data-parallel degree edp instead of dp (Megatron-Core's distributed
optimizer over the expert-DP group; FSDP over the expert mesh); an MoE layer keeps its routed activations
(`routed_activation_bytes`) in place of a dense MLP's, and its all-to-all buffers are a temporary.

Offload (cost/offload.py states what moves and why): under offload_activations the blocks' saved tensors live in
host memory and the device keeps one block's worth as a temporary (the block whose backward runs); under
offload_optimizer the sharded fp32 weights, gradients and optimizer states live in host memory. An offloading plan's
entries carry "host": the bytes that rank keeps in host memory (not part of "total").
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from autoconf.cost.compute import seq_chunk_bounds
from autoconf.cost.cp_ring import buffer_bytes as torch_ring_buffer_bytes, torch_ring
from autoconf.cost.moe import (all_to_all_buffer_bytes, block_local_params, blocks_params, dispatch_bytes,
                               expert_state_shard, layer_kinds, moe_layers, routed_activation_bytes,
                               swiglu_tensors)
from autoconf.cost.moe import local_params as local_params_of
from autoconf.cost.saved import MLA_UP_PROJ_MLP, NORMS_MLA_SWIGLU, saved_bytes
from autoconf.cost.mtp import embedding_copy_params, mtp_activation_bytes, mtp_embedding_copy, mtp_stage_params
from autoconf.cost.offload import activation_copy_bytes, host_state_bytes
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import DTYPE_BYTES, precision
from autoconf.spec.frameworks import (EXECUTOR_LOSS_CHUNKS, EXECUTOR_LOSS_ROW_BYTES, EXECUTOR_LOSS_SAVED_ROW_BYTES,
                                      Execution, loss_compiled, overlaps_pairs)
from autoconf.spec.layers import attention_ops
from autoconf.spec.model import SINK_WIDTH, ModelSpec, window_band
from autoconf.spec.plan import ParallelConfig, recomputed_layers
from autoconf.spec.schedules import held_loss_states, rank_actions, schedule_spec, stage_to_rank

LAYOUTS = ("torch", "megatron")
TOKEN_ID_BYTES = 8  # a token id as torch's embedding lookup keeps it for its backward (int64)


# The fields of a config one block's saved activations read (tests/test_memory_saved.py checks that
# `layer_activation_bytes` reads no other): configs that differ only elsewhere (pipeline, data parallelism, ZeRO,
# which layers recompute) share one remembered count.
LAYER_ACTIVATION_FIELDS = ("tp", "cp", "ep", "etp", "dtype", "attention", "micro_batch_size", "seq_len",
                           "seq_chunks", "sequence_parallel", "recompute", "selective_recompute", "compile",
                           "offload_activations")
_layer_activation_key = operator.attrgetter(*LAYER_ACTIVATION_FIELDS)
_layer_activations: dict[tuple, float] = {}


def layer_activation_bytes(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str,
                           recompute: str | None = None, selective: str = "attention_core", moe: bool = False,
                           execution: Execution | None = None) -> float:
    """Bytes one block keeps from its forward until its backward for one micro-batch on one TP rank: Megatron-LM's
    accounting (`ModelSpec.layer_activation_bytes`) for the "megatron" layout, with Transformer Engine's blocks
    where the `execution` says so (`te_activation_delta`), the executor's own on a `device_kind` ("gpu" or "cpu")
    device for "torch"; under selective recompute by the "alternate_matmuls" policy (`Execution.selective_recompute`),
    what that policy saves (`op_policy_layer_activation_bytes`); with `moe`, an MoE block's (the dense MLP's tensors
    replaced by the routed ones; Megatron's accounting without the TE changes). Remembered by the
    `LAYER_ACTIVATION_FIELDS` of `config` (the search asks for the same blocks many times over)."""
    key = (model, layout, device_kind, recompute, selective, moe, execution, _layer_activation_key(config))
    known = _layer_activations.get(key)
    if known is None:
        if len(_layer_activations) >= 1 << 16:
            _layer_activations.clear()
        known = _layer_activations[key] = _layer_activation_bytes(model, config, layout, device_kind, recompute,
                                                                  selective, moe, execution)
    return known


def _layer_activation_bytes(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str,
                            recompute: str | None, selective: str, moe: bool, execution: Execution | None) -> float:
    c = config
    recompute = c.recompute if recompute is None else recompute
    keeps_outputs = (execution or Execution()).moe_combine_keeps_outputs
    counted_policy = (recompute == "selective" and selective in (NORMS_MLA_SWIGLU, MLA_UP_PROJ_MLP)
                      and model.arch == "llama")
    if layout == "megatron" and (model.mla is not None or precision(c.dtype).cached or counted_policy) and not (
            recompute == "selective" and selective == "alternate_matmuls"):
        # the closed formula spelled out, tensor by tensor (the only count of those policies)
        return saved_bytes(model, c, recompute, selective, moe, keeps_outputs, fused_swiglu(layout, execution))
    if recompute == "selective" and selective == "alternate_matmuls":
        compiled = layout == "torch" and c.compiles_blocks(device_kind)  # (an MoE block runs eagerly either way)
        return op_policy_layer_activation_bytes(model, c, moe, compiled,
                                                (execution or Execution()).attention_saved_whole)
    if moe:
        # The dense MLP's tensors (`swiglu_tensors` of ffn_hidden_size, as Megatron-LM's accounting and the
        # executor's count them) give way to the routed ones.
        dense_mlp = (swiglu_tensors(layout, recompute) * DTYPE_BYTES[c.dtype] * c.local_seq_len
                     * c.micro_batch_size)
        dense = (layer_activation_bytes(model, c, layout, device_kind, recompute, selective) if layout == "megatron"
                 else executor_layer_activation_bytes(model, c, recompute, device_kind))  # MoE blocks run eagerly
        return (dense - dense_mlp * model.ffn_hidden_size / c.tp
                + routed_activation_bytes(model, c, layout, recompute, keeps_outputs,
                                          fused_swiglu(layout, execution)))
    if layout == "megatron":
        return (model.layer_activation_bytes(c.local_seq_len, c.micro_batch_size, c.tp, c.sequence_parallel,
                                             recompute, c.attention, DTYPE_BYTES[c.dtype])
                + te_activation_delta(model, c, recompute, execution))
    return executor_layer_activation_bytes(model, c, recompute, device_kind, c.compiles_blocks(device_kind))


def fused_swiglu(layout: str, execution: Execution | None) -> bool:
    """Whether the SwiGLUs of a block in memory layout `layout` keep no silu output (`Execution.fused_swiglu`, a
    megatron-layout flag): the one reading of the dense MLP's and the experts' tensor counts."""
    return layout == "megatron" and execution is not None and execution.fused_swiglu


def te_activation_delta(model: ModelSpec, config: ParallelConfig, recompute: str,
                        execution: Execution | None) -> float:
    """What Megatron-Core's blocks (its fused SwiGLU, Transformer Engine's layer spec) keep beyond Megatron-LM's
    accounting (`ModelSpec.layer_activation_bytes`) for one micro-batch on one TP rank; 0 without `execution`, and
    under full recompute (the block input only either way).

    - With `fused_swiglu` SwiGLU is Megatron-Core's fused kernel (bias_swiglu, megatron/core/fusions/
      fused_bias_swiglu.py): it saves its input (the gate and up projections) and recomputes silu and the product in
      the backward, whose output the second MLP linear saves: three tensors of the FFN width, not four (gate, silu,
      up, product).
    - With `transformer_engine` under fp8 every linear layer of the block saves its input cast to fp8 (1 byte) for
      the weight-gradient GEMM (TE's Linear / LayerNormLinear; under sequence parallelism the local shard, gathered
      again in the backward): the QKV and first-MLP inputs (the norms' outputs) and the second MLP linear's input
      take 1 byte instead of 2; the output projection's input is the attention output, which the attention kernel
      keeps in bf16 for its own backward, so the projection's fp8 copy is one more byte beside it, or, under
      selective recompute (the attention core is recomputed, its output not kept), 1 byte instead of 2."""
    c = config
    if execution is None or recompute == "full":
        return 0.0
    s, b, h, f, t = c.local_seq_len, c.micro_batch_size, model.hidden_size, model.ffn_hidden_size, c.tp
    e = DTYPE_BYTES[c.dtype]
    split = t if c.sequence_parallel else 1
    delta = -e * s * b * f / t if model.arch == "llama" and execution.fused_swiglu else 0.0
    if c.dtype == "fp8" and execution.transformer_engine:
        fp8 = 1.0
        delta -= 2 * (e - fp8) * s * b * h / split  # the norms' outputs, the QKV and first-MLP linear inputs
        delta -= (e - fp8) * s * b * f / t  # the second MLP linear's input
        delta += (-(e - fp8) if recompute == "selective" else fp8) * s * b * model.q_dim / t  # output projection
    return delta


def fp8_weight_cache_bytes(config: ParallelConfig, execution: Execution | None) -> float:
    """Bytes per block parameter (of its linear layers; the blocks' norms are counted with them) that Transformer
    Engine keeps beside the weights under fp8: the fp8 weight and its transpose, cast on the step's first
    micro-batch and reused by the others (TE's weight workspace); 0 without TE or in bf16; with fp8 parameters 0, or
    under Megatron-FSDP with `keep_fp8_transpose` the cached transpose, 1 byte."""
    if execution is None or not execution.transformer_engine or config.dtype != "fp8":
        return 0.0
    if execution.fp8_params:
        return 1.0 if execution.keep_fp8_transpose and megatron_fsdp_runs(config, execution) else 0.0
    return 2.0


def megatron_fsdp_runs(config: ParallelConfig, execution: Execution | None) -> bool:
    """Whether `config` runs as Megatron-FSDP under `execution` (`Execution.megatron_fsdp`: ZeRO-3 over dp x cp > 1
    in the megatron layout)."""
    return bool(execution and execution.megatron_fsdp and execution.memory_layout == "megatron"
                and config.zero_stage == 3 and config.zero_sharded)


def fp8_parameters(config: ParallelConfig, execution: Execution | None) -> bool:
    """Whether the blocks' linear weights are fp8 parameters (Megatron's --fp8-param-gather under fp8)."""
    return bool(execution and execution.fp8_params and config.dtype == "fp8")


def norm_saved_bytes(model: ModelSpec, config: ParallelConfig, device_kind: str) -> float:
    """Bytes one norm of the executor keeps per element of its input: LayerNorm its input; RMSNorm its input on CUDA
    (a fused kernel) and, on CPU (composite, computed in fp32), the fp32 upcast of its input and its fp32
    normalised input."""
    if model.arch == "llama" and device_kind == "cpu":
        return 8.0
    return float(DTYPE_BYTES[config.dtype])


def norm_keeps_input(model: ModelSpec, config: ParallelConfig, device_kind: str) -> bool:
    """Whether what an executor norm keeps (`norm_saved_bytes`) includes its input tensor itself, so that another
    op keeping the same input shares it: not RMSNorm on CPU in a low precision (it keeps an fp32 upcast instead)."""
    return not (model.arch == "llama" and device_kind == "cpu" and config.dtype != "fp32")


def executor_latent_attention_bytes(model: ModelSpec, config: ParallelConfig, device_kind: str = "gpu") -> float:
    """What the executor's latent attention (execute/mla.py) keeps beyond its input, before the attention kernel's
    own statistics, for one micro-batch on one TP rank: on every TP rank the whole latents (the query latent as its
    norm's input and as the up-projection's input, the key-value projection's output, latent and rotary key, which
    its norm keeps a view of, and the normed latent), also under sequence parallelism (the attention reads the
    gathered sequence); per head Q, K, V and the output projection's input (cost/saved.py's rows, tests/test_mla.py
    measures them)."""
    m, c = model.mla, config
    tokens, t, e = c.local_seq_len * c.micro_batch_size, c.tp, DTYPE_BYTES[c.dtype]
    norm = norm_saved_bytes(model, c, device_kind)
    latents = (norm + e) * (m.q_lora_rank or 0) + (norm + e) * m.kv_lora_rank + e * m.qk_rope_head_dim
    heads = model.num_heads * (2 * (m.qk_nope_head_dim + m.qk_rope_head_dim) + 2 * m.v_head_dim)
    return tokens * (latents + e * heads / t)


def executor_layer_activation_bytes(model: ModelSpec, config: ParallelConfig, recompute: str,
                                    device_kind: str = "gpu", compiled: bool = False) -> float:
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
    block input only. Dropout masks take a byte per element (CUDA's fused kernel). Latent attention: its own count
    (`executor_latent_attention_bytes`); qk-norm adds its norms' inputs.

    `compiled`: the block under torch.compile (`ParallelConfig.compiles_blocks`), whose forward and backward
    inductor partitions by a min cut, recomputing cheap element-wise ops rather than keeping their outputs
    (`compiled_block_delta_bytes`).
    """
    c = config
    s, b, h, f = c.local_seq_len, c.micro_batch_size, model.hidden_size, model.ffn_hidden_size
    t, e = c.tp, DTYPE_BYTES[c.dtype]
    sbh = s * b * h
    split = t if c.sequence_parallel else 1
    if recompute == "full":
        return e * sbh / split
    dropout_masks = 2 * sbh if model.dropout > 0 else 0
    norms = 2 * norm_saved_bytes(model, c, device_kind) * sbh / split + dropout_masks / split
    linear_inputs = 2 * e * sbh
    if model.mla is not None:
        attention = executor_latent_attention_bytes(model, c, device_kind)
    else:
        qkv = e * s * b * (model.q_dim + 2 * model.kv_dim) / t
        attention = qkv + e * s * b * model.q_dim / t  # Q, K, V and the output projection's input
        if model.qk_norm:  # the norms' inputs, the Q and K projections' outputs
            attention += norm_saved_bytes(model, c, device_kind) * s * b * (model.q_dim + model.kv_dim) / t
    if recompute != "selective":
        if c.attention == "flash":
            attention += 4 * model.num_heads * s * b / t
            if model.mla is None and c.cp == 1 and c.seq_chunks == 1:
                attention += executor_masked_core_extra_bytes(model, c)
        else:
            scores = model.num_heads * s * s * b / t
            softmax = 4 + (e if e < 4 else 0)  # fp32 softmax, and its low-precision copy
            if model.mla is None:
                attention += e * s * b * 2 * (h - model.kv_dim) / t  # K and V repeated to every head
            attention += softmax * scores + ((1 + e) * scores if model.dropout > 0 else 0)
    if model.arch == "gpt":
        mlp_tensors = 2  # GeLU input and output
    else:
        mlp_tensors = swiglu_tensors("torch", recompute)
    mlp = mlp_tensors * e * s * b * f / t
    delta = compiled_block_delta_bytes(model, c, recompute) if compiled else 0.0
    return norms + linear_inputs + attention + mlp + delta


def executor_core_bytes(model: ModelSpec, c: ParallelConfig, window: int | None, sinks: bool) -> float:
    """What autoconf's executor's flash attention core keeps for one layer (sliding `window`, or None; attention
    `sinks` or not), one micro-batch of whole sequences on one TP rank, without recompute: SDPA's Q, K, V, output and
    fp32 log-sum-exp as execute/window_attention.py and `AttentionCore.attend` hand them over
    (tests/test_memory_saved.py counts them with autograd's saved-tensor hooks):
    - plain causal attention: Q, K, V and the output (which the output projection reads as it is);
    - attention sinks (`with_sink_key`): Q, K and V SINK_WIDTH columns wider, one key more, and under the causal
      kernel one query more; the output as wide, and the output projection's input a copy of its real part;
    - a window under one mask (keys < 2 window): the mask in the compute dtype (SDPA converts it), once for the
      micro-batch;
    - a window in the band (`window_band`): queries padded to whole blocks, each block's 2 window - 1 keys (plus
      the sink key; with one sequence per micro-batch and no sinks the blocks are overlapping views of the keys
      padded by window - 1 rows before and the queries' padding after, not copies), one mask per block and
      sequence, and the output projection's input a copy."""
    s, b, e = c.local_seq_len, c.micro_batch_size, DTYPE_BYTES[c.dtype]
    heads, kv, d = model.num_heads / c.tp, model.num_kv_heads / c.tp, model.head_dim
    sink = 1 if sinks else 0
    width = d + SINK_WIDTH * sink
    block = window_band(s, window)
    if block is not None:
        blocks, span = -(-s // block), block + window - 1 + sink  # each block's keys
        rows = blocks * block
        keys = rows + window - 1 if b == 1 and not sink else blocks * span
        per_sequence = e * (2 * heads * rows * width + 2 * kv * keys * width + rows * span) + 4 * heads * rows
        return b * per_sequence + e * b * s * heads * d
    masked = window is not None and s > window
    queries, keys = s + (sink and not masked), s + sink
    core = b * (e * (2 * heads * queries * width + 2 * kv * keys * width) + 4 * heads * queries)
    return core + (e * s * keys if masked else 0) + (e * b * s * heads * d if sink else 0)


def executor_masked_core_extra_bytes(model: ModelSpec, c: ParallelConfig) -> float:
    """What the executor's attention core keeps beyond plain causal attention's, for the mean layer (the model's
    sliding and full layers weighed by their counts, as the compute cost reads them): `executor_core_bytes`' sinks,
    masks and bands. Counted on the plain path (no CP, no seq1f1b chunks); those paths' masks are not."""
    sliding = model.sliding_layer_count
    if not sliding and not model.attention_sinks:
        return 0.0
    sinks = model.attention_sinks
    plain = executor_core_bytes(model, c, None, sinks=False)
    layers = executor_core_bytes(model, c, None, sinks) * (model.num_layers - sliding)
    if sliding:
        layers += executor_core_bytes(model, c, model.sliding_window, sinks) * sliding
    return layers / model.num_layers - plain


def compiled_block_delta_bytes(model: ModelSpec, config: ParallelConfig, recompute: str) -> float:
    """What a compiled block keeps beyond (negative: short of) the eager count of `executor_layer_activation_bytes`
    for one micro-batch on one TP rank, as torch.compile's min-cut partition of the joint forward and backward
    graph decides it (torch 2.13; tests/test_memory_compiled.py traces the executor's block with the
    `aot_eager_decomp_partition` backend, inductor's decompositions and partitioner with eager kernels, and counts
    what it saves). For the llama architecture's blocks with flash attention, no dropout and no latent attention,
    under no recompute or selective recompute of the attention core:

    - RMSNorm: the block keeps its input and both norms' outputs (the QKV and MLP inputs) with an fp32 statistic
      per row and norm, not the second norm's input (the residual between the norms): one hidden-wide tensor fewer;
      under TP without sequence parallelism h/tp fewer per token, not h (the partition keeps the attention's
      all-reduced output, a collective it does not recompute: traced on 2 and 4 gloo ranks without recompute);
      qk-norm keeps an fp32 statistic per token and head beside its input;
    - SwiGLU: the gate and up projections, and without recompute their product, the down projection's input; silu's
      output (eager: kept) and under selective recompute the product (eager: kept by the down projection) are
      recomputed: one FFN-wide tensor fewer;
    - without recompute the attention output is kept twice: as the flash kernel's output and, copied, as the output
      projection's input (eager: one storage).

    Every other case is 0: full recompute keeps the block input alone either way; dropout, the standard attention
    path, latent attention and GPT blocks are counted as eager blocks keep them (a compiled GPT block keeps the same
    without recompute and one hidden-wide tensor fewer under selective recompute: over-counted by that). The per-op
    policy is counted apart (`op_policy_layer_activation_bytes` with `compiled`). Under TP the other terms divide as
    the eager ones do: without recompute the count equals the traced TP block (FSDP2-wrapped, as the executor runs
    it, tests/test_memory_compiled.py) with and without sequence parallelism; under selective recompute TP was not
    traced (torch 2.13 on CPU did not compile the DTensor block with the attention core recomputed: an assertion on
    its saved values)."""
    c = config
    if (model.arch != "llama" or model.mla is not None or model.dropout > 0 or c.attention != "flash"
            or recompute not in ("none", "selective")):
        return 0.0
    s, b, e, t = c.local_seq_len, c.micro_batch_size, DTYPE_BYTES[c.dtype], c.tp
    split = t if c.sequence_parallel else 1
    norms = -e * model.hidden_size / t + 2 * 4 / split
    if model.qk_norm:
        norms += 4 * (model.num_heads + model.num_kv_heads) / t
    ffn = -e * model.ffn_hidden_size / t
    attention_output = e * model.q_dim / t if recompute == "none" else 0.0
    return s * b * (norms + ffn + attention_output)


def attention_matmuls(model: ModelSpec) -> list[tuple[int, int, bool]]:
    """(input width, output width, split over TP) of a block's attention weight matmuls in the executor's forward
    order: wq wk wv wo, or latent attention's wq_a wq_b (or one wq) wkv_a wkv_b wo (execute/mla.py; its
    down-projections are the op table's `tp_replicated` ones). Split: column-parallel, the output 1/tp wide; the
    output projection (row-parallel) and replicated ones give the whole width."""
    h = model.hidden_size
    if model.mla is None:
        q, kv = model.q_dim, model.kv_dim
        return [(h, q, True), (h, kv, True), (h, kv, True), (q, h, False)]
    split = {op.name: not op.tp_replicated for op in attention_ops(model)}
    m, a = model.mla, model.num_heads
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    query = [(h, a * qk, True)] if m.q_lora_rank is None else [(h, m.q_lora_rank, split["q_a_proj"]),
                                                               (m.q_lora_rank, a * qk, split["q_b_proj"])]
    return query + [(h, m.kv_lora_rank + m.qk_rope_head_dim, split["kv_a_proj"]),
                    (m.kv_lora_rank, a * (m.qk_nope_head_dim + m.v_head_dim), split["kv_b_proj"]),
                    (a * m.v_head_dim, h, False)]


def op_policy_layer_activation_bytes(model: ModelSpec, config: ParallelConfig, moe: bool = False,
                                     compiled: bool = False, attention_saved_whole: bool = False) -> float:
    """Bytes one block keeps under torchtitan's selective "op" policy, for one micro-batch on one TP rank.

    The policy (torchtitan `_apply_ac_to_transformer_block` and its `_save_list` from 2024-04, `SelectiveAC` in
    0.3.0; the executor's execute/checkpoint_policy.py) wraps each block in a non-reentrant checkpoint whose
    dispatch mode saves the outputs of the weight matmuls except every second one in forward order, of the fused
    attention kernel and of the TP reduce-scatters, and recomputes everything else; the checkpoint keeps the block
    input. Kept: the block input; the outputs of the 1st, 3rd, ... weight matmul (Llama's wq, wv, w1, w2 of wq wk
    wv wo w1 w3 w2; GPT's wq, wv, fc1 of wq wk wv wo fc1 fc2), a column-parallel output being 1/tp wide and a
    row-parallel one the full partial sum; the attention output with its fp32 log-sum-exp per query row; under
    sequence parallelism the two reduce-scatter outputs (1/tp of the sequence). With `moe` (an MoE block): the
    router and the routed experts are recomputed outside the count; the shared experts' linears (w1 w3 w2, then
    Qwen2-MoE's gate) continue it, split over TP like a dense MLP's (execute/parallelize.py `mlp_tp_plan`), their
    down projection's reduce-scatter the block's second under sequence parallelism (without shared experts the
    block has one: the MoE layer's input is gathered, recomputed, and its routed output this rank's slice); the
    outputs of the token exchange's all-to-alls are kept (`moe_exchange_saved_bytes`). The TP share taking and
    giving back, the gathers of the counts are recomputed. tests/test_memory_op_policy.py and
    tests/test_moe_policy.py count what the executor's block keeps under it. Latent attention: its five (or four)
    matmuls (`attention_matmuls`) lead the count, its attention output is v_head_dim wide per head.

    `compiled`: a dense block under torch.compile (`ParallelConfig.compiles_blocks`), whose min-cut partition keeps
    only what the backward reads (`compiled_op_policy_delta_bytes`). `attention_saved_whole`
    (`Execution.attention_saved_whole`): an eager block's attention is a compiled region saved whole, so its inputs
    stay too (`saved_attention_input_widths`)."""
    c = config
    s, b, h, f = c.local_seq_len, c.micro_batch_size, model.hidden_size, model.ffn_hidden_size
    t, e = c.tp, DTYPE_BYTES[c.dtype]
    split = t if c.sequence_parallel else 1
    # (output width, TP split) in forward order: column-parallel outputs 1/tp wide, row-parallel and replicated
    # ones whole
    matmuls = [(width, t if column else 1) for _, width, column in attention_matmuls(model)]
    exchange = 0.0
    mlp = True
    if moe:
        m = model.moe
        shared = m.num_shared_experts * m.shared_expert_intermediate_size
        mlp = shared > 0
        matmuls += [(shared, t), (shared, t), (h, 1)] if shared else []
        matmuls += [(1, 1)] if shared and m.shared_expert_gate else []
        exchange = moe_exchange_saved_bytes(model, c)
    else:
        matmuls += [(f, t), (h, 1)] if model.arch == "gpt" else [(f, t), (f, t), (h, 1)]
    saved = sum(width / split_by for width, split_by in matmuls[0::2])
    out = model.q_dim if model.mla is None else model.num_heads * model.mla.v_head_dim
    attention = out / t + 4 / e * model.num_heads / t  # output, fp32 log-sum-exp per head and row
    reduce_scatters = (1 + mlp) * h / t if c.sequence_parallel and t > 1 else 0.0
    compiled = compiled and not moe  # (an MoE block runs eagerly either way)
    if attention_saved_whole and not compiled:
        attention += saved_attention_input_widths(model) / t
    delta = compiled_op_policy_delta_bytes(model, c, len(matmuls)) if compiled else 0.0
    return e * s * b * (h / split + saved + attention + reduce_scatters) + exchange + delta


def saved_attention_input_widths(model: ModelSpec) -> float:
    """Per token, over every TP rank, the widths of the attention inputs that a block keeps when its attention is
    saved whole under the per-op policy (`Execution.attention_saved_whole`) beyond what the policy saves anyway: Q
    and K, new tensors (after RoPE; latent attention's concatenations of the rope and no-rope parts, num_heads x
    (qk_nope + qk_rope) each), and the matmul output V views (GQA's wv, latent attention's wkv_b, whose output
    holds the no-rope keys and V), unless that matmul is an odd one of the count the policy saves anyway
    (`attention_matmuls`: GQA's wv is the third)."""
    matmuls = attention_matmuls(model)
    if model.mla is None:
        q, k, v_index = model.q_dim, model.kv_dim, 2
    else:
        q = k = model.num_heads * (model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim)
        v_index = len(matmuls) - 2  # wkv_b, before the output projection
    v_base = matmuls[v_index][1] if v_index % 2 else 0.0
    return q + k + v_base


def compiled_op_policy_delta_bytes(model: ModelSpec, config: ParallelConfig, matmul_count: int) -> float:
    """What a compiled dense block keeps under the per-op policy beyond (negative: short of) the eager count of
    `op_policy_layer_activation_bytes`, for one micro-batch on one TP rank, given the block's `matmul_count` weight
    matmuls. The policy marks outputs to save; the min-cut partition saves only those the backward reads. Two of
    them it reads nowhere: the block's last matmul (the down projection into the residual stream, whole width,
    saved when it is an odd one of the count: Llama's w2, not GPT's fc2) and, under sequence parallelism, the
    block's second reduce-scatter (its MLP output, 1/tp of the sequence). Without sequence parallelism at tp > 1 the
    down projection's output, which the all-reduce reads, stays (traced, not explained): 0.

    tests/test_memory_compiled.py traces the executor's block under the policy with `aot_eager_decomp_partition`
    (torch 2.13: inductor's decompositions and partitioner) at tp 1 and on 2 gloo ranks with and without sequence
    parallelism, Llama with and without qk-norm and GPT, and counts what it saves: equal to this per token. Latent
    attention and dropout are counted as the eager block keeps them (0), as in `compiled_block_delta_bytes`."""
    c = config
    if model.mla is not None or model.dropout > 0:
        return 0.0
    sequence_parallel = c.sequence_parallel and c.tp > 1
    if c.tp > 1 and not sequence_parallel:
        return 0.0
    h = model.hidden_size
    unread = (h if matmul_count % 2 else 0.0) + (h / c.tp if sequence_parallel else 0.0)
    return -DTYPE_BYTES[c.dtype] * c.local_seq_len * c.micro_batch_size * unread


def moe_exchange_saved_bytes(model: ModelSpec, config: ParallelConfig) -> float:
    """Bytes of an MoE layer's token exchange that the per-op policy keeps (it saves every all-to-all output), per
    rank and micro-batch, on balanced routing (summed over the ranks, exact whatever the routing): with ep > 1 the
    exchanged per-expert counts (int64) and the dispatch and combine outputs, T x k rows each (`dispatch_bytes`);
    with etp > 1 the expert-TP all-gather and reduce-scatter, each an all-to-all whose output holds the rows of the
    etp ranks of the group, etp times the dispatch's (execute/moe.py `_local_experts`)."""
    c = config
    kept = 0.0
    if c.ep > 1:
        kept += 2 * dispatch_bytes(model, c) + 8 * model.moe.num_experts
    if c.etp > 1:
        kept += 2 * c.etp * dispatch_bytes(model, c)
    return kept


LOSS_BYTES_PER_LOGIT = {"copy": 8, "inplace": 4, "fused": 0}  # beyond the logits (spec.frameworks.LOSS_MEMORY)


def loss_kind(layout: str, execution: Execution | None) -> str:
    """The loss the execution runs (`Execution.loss_memory`, spec.frameworks.LOSS_MEMORY); without an execution
    Megatron 2022's in the megatron layout, the executor's in the torch layout."""
    return execution.loss_memory if execution else ("copy" if layout == "megatron" else Execution().loss_memory)


def logits_temporary_bytes(model: ModelSpec, config: ParallelConfig, layout: str,
                           execution: Execution | None = None, device_kind: str = "gpu") -> float:
    """Peak bytes of the loss on the last stage for one micro-batch, by the execution's loss (`Execution.loss_memory`,
    spec.frameworks.LOSS_MEMORY; without an execution Megatron 2022's in the megatron layout, the executor's in the
    torch layout): the logits and what the cross entropy holds beside them, over the rank's vocabulary slice. The
    executor's (execute/loss.py) holds one of `EXECUTOR_LOSS_CHUNKS` row chunks' fp32 temporary at a time and
    `EXECUTOR_LOSS_ROW_BYTES` per row; torch's compiled (`loss_compiled`) the logits and their gradient."""
    c = config
    kind = loss_kind(layout, execution)
    vocab = model.vocab_size / c.tp
    rows = c.local_seq_len * c.micro_batch_size
    e = DTYPE_BYTES[c.dtype]
    if kind == "torch":
        return rows * vocab * (2 * e if loss_compiled(c, execution, device_kind) else 12)
    if kind == "executor":
        chunk_rows = math.ceil(rows / min(EXECUTOR_LOSS_CHUNKS, rows))
        return rows * vocab * e + chunk_rows * vocab * 4 + EXECUTOR_LOSS_ROW_BYTES * rows
    return rows * vocab * (e + LOSS_BYTES_PER_LOGIT[kind])


def loss_kept_bytes(model: ModelSpec, config: ParallelConfig, layout: str, execution: Execution | None = None,
                    device_kind: str = "gpu") -> float:
    """Bytes one micro-batch's loss keeps on the last stage from its forward until its backward, over the rank's
    vocabulary slice (`logits_temporary_bytes`' peak less what goes before the forward ends): the executor's the
    logits and `EXECUTOR_LOSS_SAVED_ROW_BYTES` per row; torch's the logits (which torch's pipeline stage also keeps
    as the stage's output) and, uncompiled, the fp32 log-softmax its NLL backward reads; the megatron layout's
    cross entropy its fp32 softmax (Megatron's vocab-parallel cross entropy saves the exponentiated logits)."""
    c = config
    kind = loss_kind(layout, execution)
    vocab, rows, e = model.vocab_size / c.tp, c.local_seq_len * c.micro_batch_size, DTYPE_BYTES[c.dtype]
    if kind == "executor":
        return rows * vocab * e + EXECUTOR_LOSS_SAVED_ROW_BYTES * rows
    if kind == "torch":
        return rows * vocab * (e if loss_compiled(c, execution, device_kind) else e + 4)
    return rows * vocab * 4


def mtp_kept_bytes(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str, selective: str,
                   execution: Execution | None, head_bytes: float) -> float:
    """What the MTP modules keep per micro-batch on the last stage (`mtp.mtp_activation_bytes`): their blocks under
    the plan's recompute mode, their heads' inputs (`head_bytes`, the main head's) and their losses'
    (`loss_kept_bytes`); 0 without MTP modules. The estimate and the partition's units read it."""
    c = config
    if not model.mtp_num_layers:
        return 0.0
    block = stage_layer_activation_bytes(model, c, 1, int(c.recompute != "none"), layout, device_kind, selective,
                                         model.mtp_block_is_moe(), execution)
    return mtp_activation_bytes(model, block, head_bytes, loss_kept_bytes(model, c, layout, execution, device_kind),
                                mtp_own_bytes(model, c, layout, device_kind))


def mtp_own_bytes(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str) -> float:
    """What one MTP module keeps per micro-batch beside its block, head and loss: its projection's 2h input and its
    two norms' inputs (enorm, hnorm), on one TP rank. Megatron-Core: each in the compute dtype, sequence-parallel
    ranks keeping their share (its column-parallel projection gathers the sequence again in the backward). The
    executor (measured on CPU, tests/test_mtp_execute.py): each norm `norm_saved_bytes`, less the hidden norm's input
    where that is the previous depth's (or the main) head's input, kept there already (`norm_keeps_input`, and not
    under sequence parallelism, where the head keeps the gathered sequence instead); the projection's input whole
    under sequence parallelism (DTensor's column-parallel linear keeps its gathered input); the embedding lookup's
    token ids (int64, whole on every TP rank). Megatron-Core's heads keep chunks of a concatenation of every depth's
    hidden states (MultiTokenPredictionBlock): nothing shared."""
    c = config
    e = DTYPE_BYTES[c.dtype]
    tokens = c.local_seq_len * c.micro_batch_size
    sbh = tokens * model.hidden_size
    split = c.tp if c.sequence_parallel else 1
    if layout != "torch":
        return (2 + 2) * e * sbh / split
    shared = e if norm_keeps_input(model, c, device_kind) and split == 1 else 0.0
    return 2 * e * sbh + (2 * norm_saved_bytes(model, c, device_kind) - shared) * sbh / split + TOKEN_ID_BYTES * tokens


def head_gradient_bytes(model: ModelSpec, config: ParallelConfig) -> float:
    """Bytes of one micro-batch's logits gradient over the rank's vocabulary slice, in the compute dtype: what the
    head's weight-gradient step W reads where a schedule defers it past the input-gradient step I."""
    c = config
    return c.local_seq_len * c.micro_batch_size * model.vocab_size / c.tp * DTYPE_BYTES[c.dtype]


def head_input_bytes(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str = "gpu") -> float:
    """Bytes the last stage keeps per micro-batch beyond its layers: the final norm's input and the head's input
    (in the executor the head's column-parallel input is gathered to the full sequence under SP)."""
    c = config
    e = DTYPE_BYTES[c.dtype]
    sbh = c.local_seq_len * c.micro_batch_size * model.hidden_size
    split = c.tp if c.sequence_parallel else 1
    if layout == "torch":
        return (norm_saved_bytes(model, c, device_kind) / split + e) * sbh
    return 2 * sbh * e / split


def stage_params(model: ModelSpec, partition: Sequence[Sequence[int]], stage: int) -> float:
    """Parameters of one virtual stage (all TP ranks together): its layers, the embedding on the first stage, the
    head on the last (a tied embedding is held by both ends when they are different stages), and on the last the
    MTP modules with their embedding copy when it is not the first stage (cost/mtp.py; `rank_params` drops that
    copy on a rank that also holds the first stage)."""
    first, end = partition[stage]
    return blocks_params(model, first, end)[0] + stage_outer_params(model, stage == 0, stage == len(partition) - 1)


def stage_outer_params(model: ModelSpec, first_stage: bool, last_stage: bool) -> float:
    """What `stage_params` counts beside a stage's blocks: the embedding on the first stage; on the last the head,
    its own tied embedding where it is not also the first, and the MTP modules with their embedding copy (of which
    a tied head's weight is part: `mtp.embedding_copy_params`)."""
    params = float(model.embedding_params()) if first_stage else 0.0
    if last_stage:
        params += model.head_params() + mtp_stage_params(model, embedding_copy=not first_stage)[0]
        if model.tied_embeddings and not first_stage:
            params += model.vocab_size * model.hidden_size
    return params


def stage_expert_params(model: ModelSpec, partition: Sequence[Sequence[int]], stage: int) -> float:
    """Routed-expert parameters of one virtual stage (all EP x ETP ranks together), the MTP modules' on the last;
    0 for a dense model."""
    if model.moe is None:
        return 0.0
    first, end = partition[stage]
    mtp = mtp_stage_params(model, False)[1] if stage == len(partition) - 1 else 0.0
    return blocks_params(model, first, end)[1] + mtp


def stage_replicated_params(model: ModelSpec, partition: Sequence[Sequence[int]], stage: int) -> float:
    """Of one virtual stage's `stage_params`, those every TP rank holds whole (`ModelSpec.tp_replicated_params`):
    its blocks', the embedding's on the first stage, the head's and the MTP modules' on the last."""
    first, end = partition[stage]
    replicated = blocks_params(model, first, end)[2]
    if stage == 0:
        replicated += model.tp_replicated_params("embedding")
    if stage == len(partition) - 1:
        replicated += model.tp_replicated_params("head") + mtp_stage_params(model, False)[2]
    return replicated


def rank_params(model: ModelSpec, partition: Sequence[Sequence[int]], stages: Sequence[int],
                layout: str) -> tuple[float, float, float]:
    """(parameters, routed-expert parameters, TP-replicated parameters) of the model stages `stages` one pipeline
    rank holds, all TP and EP ranks together: their `stage_params`, `stage_expert_params` and
    `stage_replicated_params`, the MTP modules' embedding once (a rank holding the first and the last stage uses the
    first's) unless each chunk keeps its own (`mtp.copy_per_chunk` of the memory `layout`). `local_params` splits
    the triple into what one rank holds."""
    return _rank_params(model, partition_key(partition), tuple(stages), layout)


def rank_block_params(model: ModelSpec, partition: Sequence[Sequence[int]],
                      stages: Sequence[int]) -> tuple[float, float, float]:
    """`blocks_params` summed over the transformer blocks of the model stages `stages` (no embedding, head or MTP
    modules): what the fp8 weight cache holds, before `local_params` splits it."""
    return _rank_block_params(model, partition_key(partition), tuple(stages))


@functools.lru_cache(maxsize=4096)
def _rank_block_params(model: ModelSpec, partition: tuple[tuple[int, int], ...],
                       stages: tuple[int, ...]) -> tuple[float, ...]:
    per_stage = [blocks_params(model, *partition[st]) for st in stages]
    return tuple(sum(p[i] for p in per_stage) for i in range(3))


def partition_key(partition: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """`partition` as a hashable key of the caches below."""
    return tuple(map(tuple, partition))


@functools.lru_cache(maxsize=4096)  # (the search's recompute bisection asks for the same ranks many times)
def _rank_params(model: ModelSpec, partition: tuple[tuple[int, int], ...], stages: tuple[int, ...],
                 layout: str) -> tuple[float, float, float]:
    params = sum(stage_params(model, partition, st) for st in stages)
    last = len(partition) - 1
    if model.mtp_num_layers and last != 0 and last in stages and not mtp_embedding_copy(partition, stages, layout):
        params -= embedding_copy_params(model)  # (the copy `stage_params` counted on the last stage)
    return (params, sum(stage_expert_params(model, partition, st) for st in stages),
            sum(stage_replicated_params(model, partition, st) for st in stages))


def reduced_grad_bytes(model: ModelSpec, config: ParallelConfig, partition: Sequence[Sequence[int]],
                       stages: Sequence[int], layout: str, execution: Execution | None = None) -> float:
    """Bytes of a pipeline rank's gradients of its model stages `stages` (`rank_params`) once the step's
    data-parallel reduction is done: its TP slice and EP x ETP slice of the experts and, where ZeRO shards, only its
    DP x CP (expert-DP) shard, in the layout's gradient dtype (fp32; the megatron layout's buffer dtype). What a
    dualpipe rank sums with its mirror rank's copies of the same stages (`estimate.mirror_grad_sum`)."""
    c = config
    dense, experts = local_params_of(c, *rank_params(model, partition, stages, layout))
    grad = float(execution.grad_buffer_bytes) if layout == "megatron" and execution else 4.0
    return grad * (dense / dense_grad_shard(c) + experts / expert_state_shard(c, layout))


def holds_unsharded_grads(config: ParallelConfig) -> bool:
    """Whether FSDP holds the rank's whole unsharded gradient until the step's reduce-scatter (see the module
    docstring): sharded, grad_reduce "step", and gradients accumulated over several micro-batches or pipelined; or
    one-rank units (ZeRO-0) that torch's pipeline stage defers, those of the split-backward schedules (the executor
    leaves their chunks to the stage: execute/pipeline.py `_stage_kind`)."""
    c = config
    if not c.zero_sharded:
        return c.pp > 1 and schedule_spec(c.schedule).split_backward
    return not c.reduces_every_microbatch and (c.num_microbatches > 1 or c.pp > 1)


def holds_unsharded_params(config: ParallelConfig) -> bool:
    """Whether a sharded rank holds the unsharded compute copy of all its parameters at its peak: ZeRO-1/2; ZeRO-3
    under torch's single-stage pipeline schedules with grad_reduce "step" (the stage keeps every unit gathered
    after its backward); ZeRO-3 under torch's runtime schedules (`fsdp_gathers_chunks`), which gather whole
    chunks themselves: measured with two and with four chunks per rank, every chunk was gathered at once."""
    c = config
    if not c.zero_sharded:
        return False
    if c.zero_stage < 3:
        return True
    return c.pp > 1 and (schedule_spec(c.schedule).fsdp_gathers_chunks or not c.reduces_every_microbatch)


def state_bytes_per_param(config: ParallelConfig, layout: str, experts: bool = False,
                          execution: Execution | None = None) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer, unsharded compute copy) bytes per local parameter held through the step, as
    the module docstring lays out; what is held of only the units in use is `unsharded_buffer_bytes`. With
    `experts`, of a routed-expert parameter: ZeRO shards over edp instead of dp x cp. `execution`: the megatron
    layout's gradient buffer dtype and optimizer (Megatron-LM's fp32 buffer and distributed optimizer without)."""
    dp = expert_state_shard(config, layout) if experts else config.dp_cp
    # FSDP shards over the group (`dp` > 1); optimizer offload moves the experts' state to the host even where edp
    # is 1 (their unit offloads with the rest: the host counts them, cost/offload.py)
    offloaded = experts and config.offload_optimizer and config.zero_sharded
    z = config.zero_stage if config.zero_stage >= 1 and (dp > 1 or offloaded) else 0
    compute = DTYPE_BYTES[config.dtype]
    if layout == "megatron":
        # fp32 master weights (apex: their 16-bit remainders), two Adam moments in the framework's dtype or the
        # recipe's `moments` dtype (fp32: 8 bytes) and the gradient buffer in its dtype
        grads = float(execution.grad_buffer_bytes) if execution else 4.0
        moments = (execution or Execution()).moment_bytes(config.dtype)
        optim = 2.0 + moments + grads if execution and execution.optimizer == "apex" else 4.0 + moments
        # bf16 weights; fp8 parameters hold the fp8 weight and its transpose, or under Megatron-FSDP the fp8 shard
        # alone (its transpose, cached or not, is `fp8_weight_cache_bytes` / the gathered unit's)
        weights = 1.0 if megatron_fsdp_runs(config, execution) and fp8_parameters(config, execution) else 2.0
        if config.offload_optimizer:
            optim = 0.0
        if z >= 1:
            optim /= dp
        if z >= 2:
            grads /= dp
        if z >= 3:
            weights /= dp
        return weights, grads, optim, 0.0
    if z == 0:  # one-rank FSDP units copy their parameters (in any dtype) when they run
        whole = holds_unsharded_params(config) if config.zero_sharded else not config.reshard_after_forward
        return 4.0, 4.0, 8.0, (compute if whole else 0.0)
    grads = 4.0 if holds_unsharded_grads(config) else 4.0 / dp
    copy = compute if holds_unsharded_params(config) else 0.0
    if config.offload_optimizer:  # the sharded fp32 state is in host memory; the unsharded gradients stay
        return 0.0, (4.0 if holds_unsharded_grads(config) else 0.0), 0.0, copy
    return 4.0 / dp, grads, 8.0 / dp, copy


def root_unit_params(model: ModelSpec, c: ParallelConfig, partition: Sequence[Sequence[int]] | None = None,
                     stage: int | None = None) -> tuple[float, float]:
    """(all, early) parameters one TP rank holds of a chunk's FSDP root unit, what the chunk holds beside its
    blocks: all of them (embedding, final norm, head), and those whose gradients the backward computes first (all
    but the embedding); the TP-replicated ones (the final norm, a learned position embedding) whole, the rest over
    tp (`local_params`). Without a stage: the root of the whole model (pp == 1), the largest any chunk can have."""
    whole = partition is None or stage is None
    root, early, replicated, early_replicated = _root_unit_totals(
        model, whole, whole or stage == 0, whole or stage == len(partition) - 1)
    return local_params_of(c, root, 0, replicated)[0], local_params_of(c, early, 0, early_replicated)[0]


@functools.lru_cache(maxsize=1024)  # (the search asks for the same few roots millions of times)
def _root_unit_totals(model: ModelSpec, whole: bool, first_stage: bool,
                      last_stage: bool) -> tuple[float, float, float, float]:
    """`root_unit_params` over all TP ranks, before `local_params` splits it: (all, early, their TP-replicated
    parts) of the root of the `whole` model or of a stage, the first and / or the last or neither."""
    # The MTP modules' blocks are units of their own; their projections and norms (and a last stage's embedding
    # copy) are the root's.
    mtp_blocks = model.mtp_num_layers * model.layer_params(model.mtp_block_layer) if model.mtp_num_layers else 0
    if whole:
        root = model.total_params_with_mtp() - blocks_params(model, 0, model.num_layers)[0] - mtp_blocks
    else:
        root = stage_outer_params(model, first_stage, last_stage) - (mtp_blocks if last_stage else 0)
    embedding = model.embedding_params() if first_stage else 0
    embedding_replicated = model.tp_replicated_params("embedding") if first_stage else 0
    mtp_replicated = model.mtp_num_layers * model.mtp_norm_params() + (
        model.tp_replicated_params("embedding") if model.mtp_num_layers and not first_stage else 0)
    replicated = embedding_replicated + (model.tp_replicated_params("head") + mtp_replicated if last_stage else 0)
    return root, root - embedding, replicated, replicated - embedding_replicated


def unsharded_buffer_bytes(model: ModelSpec, config: ParallelConfig, layout: str,
                           root: tuple[float, float] | None = None, layers: tuple[int, int] | None = None,
                           embedding: bool = True, execution: Execution | None = None,
                           vocab_early: bool | None = None) -> tuple[float, float]:
    """(parameter, gradient) bytes of one TP rank that FSDP holds for the units in use only, in the torch layout
    (tests/test_memory_fsdp.py measures them; the megatron layout's under Megatron-FSDP:
    `megatron_fsdp_buffer_bytes`), for a chunk of blocks `layers` = (first, end) (None: any chunk of two
    or more blocks, the largest). Units are `fsdp_units`'; one with an all-gather buffer is a unit sharded over more
    than one rank (`FsdpUnits.gathered`). `root` is `root_unit_params`' pair, one TP rank's (default: the whole
    model's); `embedding`: whether the root holds the word embedding (the first stage, or the MTP modules' copy on
    the last), whose gradient under TP is the whole vocabulary's (`full_vocab_rows`, counted here), and
    `vocab_early` whether that gradient comes at the start of the backward (`vocab_grad_early`; None: the whole
    model's).

    Parameters: at ZeRO-3 (unless the whole copy is held) the chunk's root unit (never resharded after forward)
    and two blocks in the compute dtype (the one computing and the next unit's all-gather output: prefetched in the
    backward, the previous one's kept until the next gathers in the forward); beside the whole copy of ZeRO-1/2,
    the all-gather output of the chunk's last unit in forward order. Unsharded (one-rank units: ZeRO-0, or nothing
    to shard over) FSDP copies a unit's parameters when it runs, in any dtype, with no all-gather buffer and nothing
    prefetched: the root and the block computing, unless the whole copy is held
    (`ParallelConfig.reshard_after_forward`).
    Gradients, while every unit is reduced during the backward (one-rank units; sharded ones with grad_reduce
    "microbatch" or one micro-batch): `reducing_grad_bytes`. Beside a whole unsharded gradient
    (`holds_unsharded_grads`), the embedding's whole-vocabulary part, and in bf16/fp16 the block's new
    low-precision gradient before FSDP adds it to the fp32 sum; then the reduction: without a pipeline the last
    micro-batch's backward reduces unit by unit, one unit's sharded gradient more; under one torch's stage reduces
    after the last backward in FSDP's order, the root first (its shard beside its reduce input), then the blocks in
    forward order (a block's shard, the root's reduced by then). Under optimizer offload a reduced shard goes to the
    host (cost/offload.py counts it there)."""
    c = config
    if layout != "torch":
        return megatron_fsdp_buffer_bytes(model, c, root, layers, execution)
    early = vocab_grad_early(model) if vocab_early is None else vocab_early
    key = (model, _BUFFER_FIELDS(c), min(c.num_microbatches, 2), root, layers, embedding, early)
    if key not in _buffers:
        _buffers[key] = _torch_buffer_bytes(model, c, root, layers, embedding, early)
    return _buffers[key]


# The fields of a config `_torch_buffer_bytes` reads (with the micro-batch count as 1 or more): configs that differ
# only elsewhere share its answer (the search asks for it for every stage of tens of thousands of candidates).
_BUFFER_FIELDS = operator.attrgetter("tp", "ep", "etp", "dp", "cp", "pp", "dtype", "zero_stage", "schedule",
                                     "grad_reduce", "offload_optimizer")
_buffers: dict[tuple, tuple[float, float]] = {}


def _torch_buffer_bytes(model: ModelSpec, c: ParallelConfig, root: tuple[float, float] | None,
                        layers: tuple[int, int] | None, embedding: bool, vocab_early: bool) -> tuple[float, float]:
    """`unsharded_buffer_bytes` in the torch layout."""
    e = DTYPE_BYTES[c.dtype]
    root_all, root_early = root_unit_params(model, c) if root is None else root
    u = fsdp_units(model, c)
    pairs = chunk_pairs(model, layers)
    block = u.largest_block(pairs)
    if not c.zero_sharded:
        params = (root_all + block) * e if c.reshard_after_forward else 0.0
    elif holds_unsharded_params(c):
        # ZeRO-1/2 gather the whole copy unit by unit in the forward, each unit's all-gather output kept until the
        # next one gathers; ZeRO-3 under a pipeline completes it in the backward, where nothing is kept.
        params = u.tail_gather(pairs, c.edp) * e if c.zero_stage < 3 else 0.0
    else:  # (an MoE block's routed experts are a unit of their own inside it: a block and one more unit)
        params = (root_all + block + u.gathered(pairs, c.edp)) * e
    if not holds_unsharded_grads(c):
        return params, reducing_grad_bytes(model, c, root_all, root_early, layers, embedding, vocab_early)
    written, reducing = held_grad_terms(model, c, root_all, block, embedding)
    return params, written + reducing if c.pp == 1 else max(written, reducing)


def held_grad_terms(model: ModelSpec, c: ParallelConfig, root_all: float, block: float,
                    embedding: bool) -> tuple[float, float]:
    """(while written, while reduced) gradient bytes beside a chunk's whole unsharded gradient where FSDP holds it
    (`holds_unsharded_grads`; torch layout): the embedding's whole-vocabulary part and in bf16/fp16 the block's new
    low-precision gradient; then, without a pipeline (the last micro-batch's backward reducing unit by unit) one
    unit's reduced shard, under one (torch's stage, after the last backward, root first) the root's shard or a
    block's with the root's unsharded gradient freed. None of the shards under optimizer offload (on the host)."""
    e = DTYPE_BYTES[c.dtype]
    written = 4.0 * full_vocab_rows(model, c, embedding) + (block * e if e != 4 else 0.0)
    shard = 0.0 if c.offload_optimizer else unit_grad_shard_bytes(model, c)
    if c.pp == 1:
        return written, shard
    root_shard = 0.0 if c.offload_optimizer else 4.0 * root_all / dense_grad_shard(c)
    return written, max(root_shard, shard - 4.0 * root_all + root_shard)


def deferred_rank_grad_bytes(c: ParallelConfig, chunks: Sequence[tuple[float, float, float, float]]) -> float:
    """Gradient bytes of a pipeline rank of several chunks whose reduction torch's runtime defers to each chunk's
    last backward (`holds_unsharded_grads` under a pipeline), from each chunk's (local dense parameters, local expert
    parameters, `held_grad_terms`' two) in model order. The chunks reduce in the order their backwards end, the last
    model stage first; one that has reduced keeps only its shard. Where all micro-batches pass a chunk together
    (looped-bfs, `fsdp_gather_per_chunk`) a chunk's gradient comes into existence only with its own backwards, so
    the chunks never hold their whole gradients at once; otherwise (interleaved) they all do until they reduce.
    Measured on CPU at pp 2 x dp 2 with two chunks per rank (tests/test_memory_fsdp.py)."""
    dense_shard, expert_shard = dense_grad_shard(c), expert_state_shard(c)
    whole = [4.0 * (dense + experts) for dense, experts, _, _ in chunks]
    kept = [0.0 if c.offload_optimizer else 4.0 * (dense / dense_shard + experts / expert_shard)
            for dense, experts, _, _ in chunks]
    order = list(range(len(chunks)))[::-1]
    if schedule_spec(c.schedule).fsdp_gather_per_chunk:  # each chunk at its backward, after the ones before it
        peaks, reduced = [], 0
        for k in order:
            peaks.append(whole[k] + reduced + max(chunks[k][2:]))
            reduced += kept[k]
        return max(peaks)
    freed = 0.0
    peak = max(chunk[2] for chunk in chunks)
    for k in order:
        peak = max(peak, chunks[k][3] - freed)
        freed += whole[k] - kept[k]
    return sum(whole) + peak


def megatron_fsdp_buffer_bytes(model: ModelSpec, c: ParallelConfig, root: tuple[float, float] | None,
                               layers: tuple[int, int] | None, execution: Execution | None) -> tuple[float, float]:
    """(parameter, gradient) bytes of one TP rank that Megatron-FSDP holds for the units in use only
    (`Execution.megatron_fsdp`; 0 otherwise), as its recipes run it (--fsdp-double-buffer): the chunk's root
    modules (embedding, head: not TransformerLayer units, taken as gathered through the step) and two units
    gathered at once (the one computing and the next, prefetched) in the gather dtype (fp8 parameters: 1 byte, plus
    the transpose of the unit computing unless cached), and their unsharded gradients in the gradient buffer's
    dtype before the reduce-scatter. Stated from megatron/core/distributed/fsdp at core_v0.16.1, not measured."""
    if not megatron_fsdp_runs(c, execution):
        return 0.0, 0.0
    root_all = (root_unit_params(model, c) if root is None else root)[0]
    block = fsdp_units(model, c).largest_block(chunk_pairs(model, layers))
    fp8 = fp8_parameters(c, execution)
    gathered = root_all * (1 if fp8 else 2) + 2 * block * (1 if fp8 else 2)
    if fp8 and not execution.keep_fp8_transpose:
        gathered += block
    return gathered, (root_all + 2 * block) * execution.grad_buffer_bytes


@dataclass(frozen=True)
class FsdpUnits:
    """Parameters one rank holds of each kind of FSDP unit of the executor (execute/parallelize.py), 0 for a kind
    the model lacks: a dense block; an MoE block without its routed experts (`moe_rest`: attention, norms, router,
    shared experts) and its routed experts (a unit of their own); of the rest, the shared experts and their gate
    (`before_experts`), whose gradients exist when the routed experts' unit reduces: autograd runs the backward of
    what the forward made last first, and execute/moe.py runs them after the routed experts, the router before
    (measured on CPU: the router's gradient comes later). The methods read a chunk's `chunk_pairs`."""

    dense: float
    moe_rest: float
    experts: float
    before_experts: float

    def rest(self, moe: bool) -> float:
        """The unit of a block that is not its routed experts (a dense block whole)."""
        return self.moe_rest if moe else self.dense

    def largest_block(self, pairs: frozenset) -> float:
        """A chunk's largest block, its routed experts included."""
        return max((self.rest(moe) + (self.experts if moe else 0.0) for moe, _ in pairs), default=0.0)

    def gathered(self, pairs: frozenset, edp: int) -> float:
        """A chunk's largest unit with an all-gather buffer under ZeRO sharding: every unit but the routed experts
        where edp is 1 (one-rank units copy, they gather nothing)."""
        return max((max(self.rest(moe), self.experts if moe and edp > 1 else 0.0) for moe, _ in pairs), default=0.0)

    def tail_gather(self, pairs: frozenset, edp: int) -> float:
        """The all-gather output still held when ZeRO-1/2 have gathered a chunk's whole copy: its last unit's in
        forward order, a dense block or an MoE block's routed experts; where those are one-rank units (edp 1) the
        buffer of the block's rest, held while the experts are not yet copied, by what it exceeds them."""
        last = [moe for moe, after in pairs if after is None]
        if not any(last):
            return self.dense if last else 0.0
        moe_tail = self.experts if edp > 1 else max(0.0, self.moe_rest - self.experts)
        return max(moe_tail if moe else self.dense for moe in last)


_fsdp_units: dict[tuple, FsdpUnits] = {}


def fsdp_units(model: ModelSpec, c: ParallelConfig) -> FsdpUnits:
    """`FsdpUnits` of `model` under `c`'s tp, ep and etp (remembered by those three)."""
    key = (model, c.tp, c.ep, c.etp)
    if key not in _fsdp_units:
        dense = block_local_params(model, c, False)[0]
        rest, experts = block_local_params(model, c, True)
        before = 0.0
        if model.moe is not None:
            first_moe = next(i for i in range(model.num_layers) if model.is_moe_layer(i))
            shared = [op for op in model.layer_ops(first_moe) if op.name in ("shared_experts", "shared_expert_gate")]
            before = sum(local_params_of(c, op.params, 0.0, op.tp_replicated_params)[0] for op in shared)
        _fsdp_units[key] = FsdpUnits(dense, rest, experts, before)
    return _fsdp_units[key]


@functools.lru_cache(maxsize=4096)
def chunk_pairs(model: ModelSpec, layers: tuple[int, int] | None) -> frozenset:
    """(is block i an MoE block, is block i + 1; None after the chunk's last) for the blocks of a chunk `layers` =
    (first, end), empty for a chunk of no block (the embedding or the head alone); None: every pair any chunk of two
    or more blocks can have (the model's, each block also last)."""
    first, end = (0, model.num_layers) if layers is None else layers
    kinds = [model.is_moe_layer(i) for i in range(first, end)] if model.moe is not None else [False] * (end - first)
    pairs = set(zip(kinds, kinds[1:] + [None]))
    if layers is None:
        pairs |= {(moe, None) for moe in kinds}
    return frozenset(pairs)


def largest_block_bytes(model: ModelSpec, c: ParallelConfig) -> float:
    """Parameters one rank holds of its largest block: a dense block's over tp, an MoE block's with its routed
    experts over ep x etp (each block's TP-replicated parameters whole, `local_params`)."""
    return fsdp_units(model, c).largest_block(chunk_pairs(model, None))


def holds_word_embedding(model: ModelSpec, stage: int, stages: int) -> bool:
    """Whether model stage `stage` of `stages` holds a word embedding of its own (what `full_vocab_rows` reads): the
    first stage, and with MTP modules the last (their copy, `mtp.mtp_stage_params`)."""
    return stage == 0 or vocab_grad_early(model, stage, stages)


def vocab_grad_early(model: ModelSpec, stage: int | None = None, stages: int | None = None) -> bool:
    """Whether the word embedding's gradient of model stage `stage` of `stages` (None: the whole model) comes at the
    start of its backward, not at its end: the MTP modules' embedding (the last stage's copy, or the embedding
    itself on one stage), whose backward runs before the blocks'; its whole-vocabulary gradient under TP then lives
    beside every block's reduction (`reducing_grad_bytes`; measured at tp 2 x pp 2, ZeRO-0)."""
    return model.mtp_num_layers > 0 and (stage is None or stage == stages - 1)


def full_vocab_rows(model: ModelSpec, c: ParallelConfig, embedding: bool = True) -> float:
    """Elements beyond its 1/tp share in the gradient of the word embedding of a chunk (`embedding`: it holds it)
    under TP: the executor's backward returns the whole vocabulary's table on every TP rank (measured on CPU,
    2026-12-04: V h (1 - 1/tp) more at tp 2), held at that size while FSDP accumulates unsharded gradients and
    reduced at it (`reducing_grad_bytes`). Tied embeddings are the head's weight and do not hold it."""
    if not embedding or c.tp == 1 or model.tied_embeddings:
        return 0.0
    return model.vocab_size * model.hidden_size * (1 - 1 / c.tp)


def reducing_grad_bytes(model: ModelSpec, c: ParallelConfig, root_all: float, root_early: float,
                        layers: tuple[int, int] | None = None, embedding: bool = True,
                        vocab_early: bool = False) -> float:
    """Gradient bytes one rank holds beside its reduced gradients while FSDP reduces every unit during the backward
    (the torch layout) of a chunk of blocks `layers` (`chunk_pairs`): the root unit's early gradients (head, final
    norm; held until the backward ends) and the unit reducing in the compute dtype, with the fp32 reduce-scatter
    input of the unit reduced before it (kept until the next unit reduces: the next block's rest); at an MoE block
    either its routed experts with the gradients already computed beside them (`FsdpUnits.before_experts`), or its
    rest with the experts' input; at the end the whole root's (the word embedding's for the whole vocabulary under
    TP, `full_vocab_rows`; from the start where `vocab_early`, the MTP modules' embedding) with the first block's
    rest's input. With one micro-batch per step a unit's reduced
    gradient only exists once it has reduced, so the root's and the dense block's reducing are taken off (negative
    where they exceed it). Measured on CPU to the byte (tests/test_memory_fsdp.py; one micro-batch an upper bound
    at an MoE block)."""
    e = DTYPE_BYTES[c.dtype]
    u = fsdp_units(model, c)
    pairs = chunk_pairs(model, layers)
    once = c.num_microbatches == 1  # (each unit's reduced gradient appears when it reduces)
    shard = dense_grad_shard(c)

    def before(next_moe: bool | None) -> float:
        return u.rest(next_moe) * 4 if next_moe is not None else 0.0

    during = 0.0
    for moe, next_moe in pairs:
        if moe:
            during = max(during, (u.experts + u.before_experts) * e + before(next_moe), u.moe_rest * e + u.experts * 4)
        else:
            during = max(during, u.dense * e + before(next_moe) - (u.dense * 4 / shard if once else 0.0))
    first_rest = max((u.rest(moe) for moe, _ in pairs), default=0.0)
    vocab = full_vocab_rows(model, c, embedding)
    return (max((root_all + vocab) * e + first_rest * 4, (root_early + (vocab if vocab_early else 0.0)) * e + during)
            - root_reduced_grad_bytes(c, root_all))


def dense_grad_shard(c: ParallelConfig) -> int:
    """Ranks a (non-expert) FSDP unit's reduced gradient is split over: dp x cp under ZeRO sharding, else 1."""
    return c.dp_cp if c.zero_sharded else 1


def root_reduced_grad_bytes(c: ParallelConfig, root_all: float) -> float:
    """fp32 bytes of the reduced gradient of a root unit of `root_all` parameters on one rank, which with one
    micro-batch per step and every unit reduced during the backward exists only once the root reduces, at the
    backward's end (`reducing_grad_bytes` takes it off); 0 otherwise."""
    if c.num_microbatches != 1 or holds_unsharded_grads(c):
        return 0.0
    return root_all * 4 / dense_grad_shard(c)


def unit_grad_shard_bytes(model: ModelSpec, c: ParallelConfig) -> float:
    """fp32 bytes of the largest FSDP unit's reduced gradient on one rank (`fsdp_units`): a block's over
    `dense_grad_shard` ranks, an MoE block's routed experts over `expert_state_shard` (their own unit and group);
    a whole unit's on one-rank units."""
    u = fsdp_units(model, c)
    return max(4 * max(u.rest(moe) / dense_grad_shard(c), (u.experts if moe else 0.0) / expert_state_shard(c))
               for moe, _ in chunk_pairs(model, None))


def boundary_activation_bytes(model: ModelSpec, config: ParallelConfig) -> float:
    """One pipeline unit's activation at a stage boundary on one rank (its 1/tp slice under sequence parallelism):
    the size of every buffer `pipeline_buffer_bytes` counts."""
    c = config
    return hidden_state_bytes(model, c) / (c.tp if c.sequence_parallel else 1)


def hidden_state_bytes(model: ModelSpec, c: ParallelConfig) -> float:
    """One micro-batch's hidden states on one rank (seq / cp x micro-batch x hidden, compute dtype): the buffer of a
    TP collective and, unsplit, of a P2P transfer."""
    return c.local_seq_len * c.micro_batch_size * model.hidden_size * DTYPE_BYTES[c.dtype]


def pipeline_buffer_bytes(model: ModelSpec, config: ParallelConfig, execution: Execution | None,
                          stages: Sequence[int], inflight: Sequence[float], scale: float = 1.0,
                          device_kind: str = "gpu") -> float:
    """What a pipeline rank holding schedule stages `stages` keeps to pass activations and gradients, beyond the
    activations its stages save (`inflight[s]` units in flight at its peak), in boundary activations
    (`boundary_activation_bytes`, times `scale`: seq1f1b's longest chunk against the mean), by the framework's
    `Execution.pipeline_buffers`. 0 without a pipeline. With n = num_microbatches x seq_chunks units per step:

    - "per_transfer": four.
    - "per_microbatch" (torch's PipelineStage): each stage but the first n activation receive buffers, of which the
      `inflight[s]` in flight are its first block's saved input and so already counted; each stage but the last n
      gradient receive buffers and its `inflight[s]` outputs. A rank of one middle stage holds 2n + 1.
    - "just_in_time" (autoconf's executor): each stage but the first one receive posted ahead (its inputs in flight
      are counted); each stage but the last the gradient its running backward received and its `inflight[s]`
      outputs.

    Under both torch runtimes a rank with a stage but the first also holds one input gradient being sent (it sends
    one at a time). Under two directions (dualpipe) each direction's chain of stages passes half the units.

    Under every runtime a rank holding a last stage keeps each unit's loss until its backward (`loss_kept_bytes`,
    times `scale`): of those it holds at once (`schedules.held_loss_states`: 1 under 1F1B, every unit under gpipe
    and looped-bfs) the one being computed is the last stage's temporary, the others are held here; where the
    backward splits (the zero-bubble schedules) it also keeps each unit's logits gradient from I until W
    (`head_gradient_bytes`), at the joint peak of the two counts."""
    c = config
    if c.pp == 1:
        return 0.0
    unit = boundary_activation_bytes(model, c) * scale
    ex = execution or Execution()
    kind = ex.pipeline_buffers
    kept = 0.0
    if any(s % c.num_stages == c.num_stages - 1 for s in stages):
        rank = stage_to_rank(c.schedule, c.pp, c.vpp)[stages[0]]
        loss = loss_kept_bytes(model, c, ex.memory_layout, ex, device_kind)
        gradient = head_gradient_bytes(model, c) * (1 + model.mtp_num_layers)  # the MTP heads' too
        kept = max(max(0, losses - 1) * loss + gradients * gradient
                   for losses, gradients in held_loss_states(c.schedule, c.pp, c.vpp, c.num_microbatches, rank,
                                                             c.seq_chunks, overlaps_pairs(model, c, ex))) * scale
    if kind == "per_transfer":
        return 4 * unit + kept
    directions = schedule_spec(c.schedule).directions  # each direction's chain of num_stages stages
    n, last = c.num_microbatches * c.seq_chunks / directions, c.num_stages - 1
    receives = [s for s in stages if s % c.num_stages != 0]
    held = float(bool(receives))  # the input gradient being sent
    for s in stages:
        if s in receives:
            held += n - inflight[s] if kind == "per_microbatch" else 1.0
        if s % c.num_stages != last:
            held += (n if kind == "per_microbatch" else 1.0) + inflight[s]
    return held * unit + kept


def pipeline_buffer_floor(model: ModelSpec, config: ParallelConfig, execution: Execution | None) -> float:
    """A lower bound of `pipeline_buffer_bytes` on pipeline rank 0, whatever is in flight: rank 0 holds stage 0,
    and every stage adds a non-negative count that grows with its units in flight, so stage 0 alone with none in
    flight (under "per_microbatch" its n gradient receive buffers, under "just_in_time" one)."""
    return pipeline_buffer_bytes(model, config, execution, (0,), (0.0,))


def cp_kv_bytes(model: ModelSpec, config: ParallelConfig) -> float:
    """The keys and values of one rank's share of one sequence for one layer on one TP rank: seq_len / cp tokens of
    the layer's K and V heads (grouped, unrepeated; latent attention's per-head K and V of their own widths,
    `ModelSpec.attention_kv_dim`), in the compute dtype. The unit of context-parallel traffic."""
    c = config
    return c.local_seq_len * c.micro_batch_size * model.attention_kv_dim / c.tp * DTYPE_BYTES[c.dtype]


def cp_buffer_bytes(model: ModelSpec, config: ParallelConfig, execution: Execution | None = None) -> float:
    """The K/V buffer context-parallel attention holds while one layer computes (a temporary: the backward gathers
    or receives them again; the saved activations are the rank's own Q, K, V): under "allgather" the gathered K/V
    of the whole sequence and, in the backward, their gradients before the reduce-scatter (2 x cp blocks); under
    "ring" the block being computed on and the one arriving, and in the backward their gradients travelling with
    them (4 blocks). Under torch's ring (`execution.cp_attention` "torch") what `cp_ring.buffer_bytes` says. 0
    without CP."""
    c = config
    if c.cp == 1:
        return 0.0
    if torch_ring(model, c, execution):
        return torch_ring_buffer_bytes(model, c, execution)
    blocks = 2 * c.cp if c.cp_comm == "allgather" else 4
    return blocks * cp_kv_bytes(model, c)


def seq_chunk_kv_bytes(model: ModelSpec, config: ParallelConfig, layout: str = "torch",
                       bounds: Sequence[int] | None = None, recomputed: bool = False,
                       selective: str = "attention_core") -> tuple[float, float]:
    """Per layer, what sequence-level pipelining (seq1f1b, `seq_chunks` k > 1) keeps beyond each chunk's own
    activations: (the earlier chunks' keys and values per chunk in flight, the K/V gradients a rank holds for the
    earlier chunks). A mean chunk's K/V is `cp_kv_bytes` (its seq_len / k tokens); `bounds`: the split
    (`compute.seq_chunk_bounds`; default even), chunk j starting at token a_j, the longest chunk L tokens;
    `recomputed`: whether the layer runs the plan's recompute mode (`selective`: its policy).

    K/V of earlier chunks: the authors' implementation ("megatron" layout; MayDomine/Seq1F1B,
    megatron/model/transformer.py) appends every forwarded chunk's K/V to its micro-batch's cache, which each
    chunk's backward shrinks again: one K/V copy per chunk in flight, of that chunk's own length (the caller weighs
    it with the activations, `seq_chunk_scales`). The executor (execute/seq_chunks.py) hands chunks 0..k-2's K/V on
    as leaves sharing the storage of the chunk's own K/V (padded to L), kept until the micro-batch's chunk 0 runs
    its backward; chunk j's attention concatenates them with its own K/V and, where it keeps its inputs, keeps the
    concatenation (`_executor_kv_tokens` says what that leaves per micro-batch in each case). K/V gradients: a
    micro-batch's later chunks' backwards accumulate them for its earlier chunks' until those run, at most the
    a_(k-1) tokens before the last chunk (k - 1 chunks' worth when even). (0, 0) without sequence chunks."""
    k = config.seq_chunks
    if k == 1:
        return 0.0, 0.0
    kv = cp_kv_bytes(model, config)
    bounds = [j * config.seq_len / k for j in range(k + 1)] if bounds is None else list(bounds)
    mean = config.seq_len / k
    grads = bounds[-2] / mean * kv
    if layout == "megatron":
        return kv, grads
    offloaded = config.offload_activations
    tokens = _executor_kv_tokens(bounds, "leaves" if offloaded or (recomputed and config.recompute == "full") else
                                 "none" if not recomputed else selective)
    return tokens / k / mean * kv, grads


def _executor_kv_tokens(bounds: Sequence[float], kept: str) -> float:
    """Tokens of K/V the executor's seq1f1b keeps per micro-batch in one layer beyond what the layer's own saved
    tensors count (`kept`: "none", the layer keeps its tensors; a selective policy; "leaves", the layer's saved
    tensors are recomputed or in host memory). Without recompute the attention keeps each chunk j's concatenation
    (a_j tokens beyond its own), and the leaves of chunks 1..k-2 keep their own K/V, which the concatenation
    replaced (chunk 0 keeps its own: a_0 = 0 needs none); under "attention_core" the recomputed core's inputs are
    the chunk's own K/V, which the leaves share: nothing more; otherwise only the leaves, k - 1 chunks of L tokens.
    Counted on CPU for each case, even and uneven splits (tests/test_seq1f1b.py)."""
    k, starts = len(bounds) - 1, bounds[:-1]
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    if kept == "none":
        return sum(starts) + (k - 2) * longest
    if kept == "attention_core":
        return 0.0
    return (k - 1) * longest


def seq_chunk_scales(config: ParallelConfig, bounds: Sequence[int], layout: str, rank: int) -> tuple[float, float]:
    """(activations, temporaries) of a seq1f1b pipeline rank under the split `bounds`, against those of the mean
    chunk of seq_len / k tokens that the per-unit sizes are computed at. Temporaries (the logits and loss, a
    recomputed layer, the pipeline buffers) are one chunk's: the longest. Activations: the executor ("torch" layout)
    pads every chunk to the longest, since torch's pipeline runtime keeps one buffer shape per stage
    (execute/seq_chunks.py), so the longest again; the authors' implementation ("megatron") holds each chunk at its
    own length, so the rank's peak of tokens in flight over its order (`_inflight_tokens`) per unit in flight.
    (1, 1) for the even split."""
    lengths = tuple(b - a for a, b in zip(bounds, bounds[1:]))
    mean = config.seq_len / config.seq_chunks
    longest = max(lengths) / mean
    if layout == "torch" or longest == 1:
        return longest, longest
    c = config
    # The order repeats per micro-batch once every rank is past its warm-up of pp + k - 2 chunks at most.
    m = min(c.num_microbatches, -(-(c.pp + c.seq_chunks) // c.seq_chunks) + 2)
    return _inflight_tokens(c.schedule, c.pp, m, rank, lengths) / mean, longest


@functools.lru_cache(maxsize=1024)
def _inflight_tokens(schedule: str, pp: int, m: int, rank: int, lengths: tuple[int, ...]) -> float:
    """Tokens per unit in flight at the rank's peak of held tokens: each forward of unit u holds
    lengths[u % k] until its backward. The peak of tokens / the peak of units."""
    k = len(lengths)
    held = count = peak = peak_count = 0
    for kind, _, unit in rank_actions(schedule, pp, m, 1, rank, k):
        sign = 1 if kind == 0 else -1
        held += sign * lengths[unit % k]
        count += sign
        peak, peak_count = max(peak, held), max(peak_count, count)
    return peak / peak_count


def unit_activation_bytes(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str,
                          selective: str = "attention_core",
                          execution: Execution | None = None) -> tuple[float, float, float]:
    """Bytes one micro-batch keeps until its backward in (the embedding, one transformer layer, the head): the
    embedding's dropout mask, the layer's saved tensors (`selective`: the execution's selective policy), the head's
    inputs. The partition units of the solver."""
    c = config
    split = c.tp if c.sequence_parallel else 1
    sbh = c.local_seq_len * c.micro_batch_size * model.hidden_size
    embedding = sbh / split if model.dropout > 0 else 0.0
    return (embedding, layer_activation_bytes(model, c, layout, device_kind, selective=selective, execution=execution),
            head_input_bytes(model, c, layout, device_kind))


def block_activation_pair(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str,
                          selective: str = "attention_core", moe: bool = False,
                          execution: Execution | None = None) -> tuple[float, float]:
    """(bytes a block recomputed under the plan's mode keeps, bytes a block without recompute keeps) per
    micro-batch (MoE blocks with `moe`): `layer_activation_bytes` in both modes."""
    act = layer_activation_bytes(model, config, layout, device_kind, selective=selective, moe=moe, execution=execution)
    plain = (act if config.recompute == "none"
             else layer_activation_bytes(model, config, layout, device_kind, "none", selective, moe, execution))
    return act, plain


def stage_layer_activation_bytes(model: ModelSpec, config: ParallelConfig, layers: int, recomputed: int,
                                 layout: str, device_kind: str, selective: str = "attention_core",
                                 moe: bool = False, execution: Execution | None = None,
                                 pair: tuple[float, float] | None = None) -> float:
    """Bytes `layers` transformer layers of one stage (MoE blocks with `moe`) keep per micro-batch: `recomputed` of
    them under the plan's recompute mode (the `selective` policy's layout), the others without recompute
    (`recomputed_layers`). `pair`: `block_activation_pair` of these arguments, when the caller has it."""
    if not layers:
        return 0.0
    act, plain = pair or block_activation_pair(model, config, layout, device_kind, selective, moe, execution)
    return recomputed * act + (layers - recomputed) * plain


def stage_block_activation_bytes(model: ModelSpec, config: ParallelConfig, first: int, end: int, recomputed: int,
                                 layout: str, device_kind: str, selective: str = "attention_core",
                                 execution: Execution | None = None,
                                 pairs: dict[bool, tuple[float, float]] | None = None) -> float:
    """Bytes the transformer layers [first, end) of one stage keep per micro-batch, of which the first `recomputed`
    recompute (`recomputed_layers`): dense and MoE blocks each at their own size (before any offload). `pairs`:
    `block_activation_pair` of the dense (False) and MoE (True) blocks, when the caller has them."""
    pairs = pairs or {}
    n_moe, r_moe = moe_layers(model, first, end), moe_layers(model, first, first + recomputed)
    return (stage_layer_activation_bytes(model, config, end - first - n_moe, recomputed - r_moe, layout, device_kind,
                                         selective, execution=execution, pair=pairs.get(False))
            + stage_layer_activation_bytes(model, config, n_moe, r_moe, layout, device_kind, selective, moe=True,
                                           execution=execution, pair=pairs.get(True)))


TEMPORARY_FACTS = ("last", "moe", "recomputes", "keeps")


@dataclass(frozen=True)
class Temporary:
    """A temporary a pipeline rank holds at some moment of its step when every fact named in `when` holds on it
    (a leading "!" negates one; none: always). The facts (TEMPORARY_FACTS) of a rank under a partition: "last", it
    holds the last stage; "moe", it holds an MoE layer; "recomputes", it recomputes a layer; "keeps", it holds a
    layer it does not recompute."""
    bytes: float
    when: tuple[str, ...] = ()

    def holds(self, facts: dict[str, bool]) -> bool:
        return all(not facts[w[1:]] if w.startswith("!") else facts[w] for w in self.when)


def temporary_terms(model: ModelSpec, config: ParallelConfig, layout: str, device_kind: str,
                    selective: str = "attention_core", execution: Execution | None = None) -> tuple[Temporary, ...]:
    """The temporaries `stage_memory` weighs, one micro-batch's (of the mean seq1f1b chunk), each with the facts
    under which a rank holds it. They exist one at a time: a rank's peak counts the largest whose facts hold. The
    logits with the loss's copies (last stage); the K/V buffer of context-parallel attention; a whole block's
    activations rebuilt in its backward under full recompute or the per-op policy (a recomputing rank); an MoE
    layer's all-to-all buffers, with the MoE block rebuilt under full recompute (and without the buffers under the
    per-op policy, which saved the exchange); under offload_activations one
    block's saved activations copied back for its backward (a recomputed block's when the rank recomputes every
    layer it holds), with the block rebuilt when it recomputes."""
    c = config
    terms = [Temporary(logits_temporary_bytes(model, c, layout, execution, device_kind), ("last",)),
             Temporary(cp_buffer_bytes(model, c, execution))]
    whole_block = c.recompute == "full" or (c.recompute == "selective" and selective == "alternate_matmuls")
    if whole_block:
        terms.append(Temporary(layer_activation_bytes(model, c, layout, device_kind, "none", execution=execution),
                               ("recomputes",)))
    if model.moe is not None:
        exchange = all_to_all_buffer_bytes(model, c)
        terms.append(Temporary(exchange, ("moe",)))
        if whole_block:  # the per-op policy saved the exchange's outputs: its recompute does not exchange
            terms.append(Temporary((exchange if c.recompute == "full" else 0.0)
                                   + layer_activation_bytes(model, c, layout, device_kind, "none", moe=True,
                                                            execution=execution), ("moe", "recomputes")))
    if c.offload_activations:
        moe = (False, True) if model.moe is not None else (False,)
        recomputed = max(layer_activation_bytes(model, c, layout, device_kind, selective=selective, moe=m,
                                                execution=execution) for m in moe)
        plain = max(stage_layer_activation_bytes(model, c, 1, 0, layout, device_kind, selective, m, execution)
                    for m in moe)
        rebuilt = (layer_activation_bytes(model, c, layout, device_kind, "none", execution=execution)
                   if whole_block else 0.0)
        terms += [Temporary(recomputed, ("!keeps",)), Temporary(plain, ("keeps",))]
        if rebuilt:
            terms += [Temporary(recomputed + rebuilt, ("!keeps", "recomputes")),
                      Temporary(plain + rebuilt, ("keeps", "recomputes"))]
    return tuple(terms)


@functools.lru_cache(maxsize=256)
def _stages_of_ranks(stage_to_rank: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    """Each pipeline rank's virtual stages, in stage order (remembered: the search asks about the same pipelines
    many times, one rank at a time)."""
    stages_of: dict[int, list[int]] = {}
    for st, r in enumerate(stage_to_rank):
        stages_of.setdefault(r, []).append(st)
    return {r: tuple(stages) for r, stages in stages_of.items()}


def stage_memory(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig,
                 partition: Sequence[Sequence[int]], stage_to_rank: Sequence[int], inflight: Sequence[float],
                 layout: str = "torch", ranks: Sequence[int] | None = None,
                 selective: str = "attention_core", execution: Execution | None = None) -> list[dict]:
    """Peak bytes per pipeline rank (of `ranks`, default all), as {"params", "grads", "optimizer", "activations",
    "other", "total"}; `inflight[s]` is the micro-batches stage s keeps at the rank's peak. "params" and "grads"
    include the unsharded copies FSDP holds (the whole copy, or the units in use); "other" is the runtime's
    overhead, the largest temporary and the pipeline buffers (`pipeline_buffer_bytes`). `selective`: the
    execution's selective recompute policy (`Execution.selective_recompute`). `execution`: the megatron layout's
    framework flags (Megatron-LM's defaults without; see `state_bytes_per_param`, `te_activation_delta`,
    `logits_temporary_bytes`). Where `stage_to_rank` has more stages than `partition` (dualpipe's two directions),
    stage s runs model stage s % len(partition) with a copy of its own (weights, gradients and optimizer states;
    `Schedule.model_stage`), and keeps `inflight[s]`. Layers beyond a stage's recomputed ones keep every activation
    (`recomputed_layers`)."""
    return RankMemory(model, cluster, config, partition, stage_to_rank, inflight, layout, selective,
                      execution).of(recomputed_layers(config, partition), ranks)


class RankMemory:
    """`stage_memory` of one layout, worked out once for any recomputed-layer counts: everything but which
    layers of each stage recompute (`config.recompute_layers`, which no other term reads) is set up here, so the
    recompute search (solve/recompute.py) asks about many counts of one layout for the price of one set-up."""

    def __init__(self, model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig,
                 partition: Sequence[Sequence[int]], stage_to_rank: Sequence[int], inflight: Sequence[float],
                 layout: str = "torch", selective: str = "attention_core", execution: Execution | None = None):
        assert layout in LAYOUTS, layout
        c = config
        self.model, self.c, self.partition, self.inflight = model, c, partition, inflight
        self.layout, self.selective, self.execution = layout, selective, execution
        self.device_kind = cluster.device.kind
        self.state = state_bytes_per_param(c, layout, execution=execution)
        self.expert_state = (state_bytes_per_param(c, layout, experts=True, execution=execution) if model.moe
                             else (0.0, 0.0, 0.0, 0.0))
        self.fp8_cache = fp8_weight_cache_bytes(c, execution)
        self.embed_act, _, self.head_act = unit_activation_bytes(model, c, layout, cluster.device.kind, selective,
                                                                 execution)
        self.temporaries = temporary_terms(model, c, layout, cluster.device.kind, selective, execution)
        self.fixed = cluster.device.memory_overhead_bytes
        self.bounds = seq_chunk_bounds(model, cluster, c, execution) if c.seq_chunks > 1 else None
        self.kv_cache, self.kv_grads = seq_chunk_kv_bytes(model, c, layout, self.bounds, selective=selective)
        self.kv_recomputed, _ = seq_chunk_kv_bytes(model, c, layout, self.bounds, True, selective)
        # The MTP modules' saved activations on the last stage, their blocks under the plan's recompute mode.
        self.mtp_act = mtp_kept_bytes(model, c, layout, cluster.device.kind, selective, execution, self.head_act)
        self.stages_of = _stages_of_ranks(tuple(stage_to_rank))
        self.pairs = {moe: block_activation_pair(model, c, layout, cluster.device.kind, selective, moe, execution)
                      for moe in layer_kinds(model)}
        self.part_key = partition_key(partition)
        # Stages of one shape hold the same: each shape's blocks and FSDP buffers are worked out once (a dense
        # model's blocks by their count, an MoE model's by their place).
        self._shapes: dict[tuple, float] = {}
        self._buffer_shapes: dict[tuple, tuple[float, float]] = {}
        self._chunk_grad_shapes: dict[tuple, tuple[float, float, float, float]] = {}
        self._ranks: dict[int, tuple] = {}
        self._temporary: dict[tuple[bool, ...], float] = {}

    def _blocks_bytes(self, first: int, end: int, recomputed_blocks: int) -> float:
        key = (end - first, recomputed_blocks) if self.model.moe is None else (first, end, recomputed_blocks)
        if key not in self._shapes:
            self._shapes[key] = stage_block_activation_bytes(
                self.model, self.c, first, end, recomputed_blocks, self.layout, self.device_kind, self.selective,
                self.execution, self.pairs)
        return self._shapes[key]

    def _chunk_layers(self, st: int) -> tuple[int, int]:
        """Model stage `st`'s blocks as the FSDP buffer rules read them (`chunk_pairs`): of a dense model only their
        count matters, so chunks of one length share (0, length)."""
        first, end = self.partition[st]
        return (0, end - first) if self.model.moe is None else (first, end)

    def _buffer_bytes(self, st: int) -> tuple[float, float]:
        # A stage's root unit is its embedding, head and MTP embedding copy: it depends on its place only.
        layers = self._chunk_layers(st)
        key = (st == 0, st == len(self.partition) - 1, layers)
        if key not in self._buffer_shapes:
            stages = len(self.partition)
            self._buffer_shapes[key] = unsharded_buffer_bytes(
                self.model, self.c, self.layout, root_unit_params(self.model, self.c, self.partition, st), layers,
                embedding=holds_word_embedding(self.model, st, stages), execution=self.execution,
                vocab_early=vocab_grad_early(self.model, st, stages))
        return self._buffer_shapes[key]

    def _deferred_grads(self, stages: tuple[int, ...]) -> float:
        """`deferred_rank_grad_bytes` of a rank holding (copies of) model stages `stages` (torch layout, where each
        chunk holds its own MTP embedding copy: `mtp.copy_per_chunk`)."""
        return deferred_rank_grad_bytes(self.c, [self._chunk_grads(st) for st in sorted(stages)])

    def _chunk_grads(self, st: int) -> tuple[float, float, float, float]:
        """Model stage `st`'s entry of `deferred_rank_grad_bytes`: its local dense and expert parameters and
        `held_grad_terms`, worked out once per chunk shape as the FSDP buffers are."""
        layers = self._chunk_layers(st)
        last = len(self.partition) - 1
        key = (st == 0, st == last, layers)
        if key not in self._chunk_grad_shapes:
            model, c = self.model, self.c
            params = local_params_of(c, *_rank_params(model, self.part_key, (st,), self.layout))
            root = root_unit_params(model, c, self.partition, st)[0]
            block = fsdp_units(model, c).largest_block(chunk_pairs(model, layers))
            embedding = holds_word_embedding(model, st, len(self.partition))
            self._chunk_grad_shapes[key] = (*params, *held_grad_terms(model, c, root, block, embedding))
        return self._chunk_grad_shapes[key]

    def _kv_blocks(self, st: int) -> int:
        """The blocks of model stage `st` that keep seq1f1b's earlier-chunk K/V: its layers, and on the last stage
        the MTP modules' blocks."""
        first, end = self.partition[st]
        return end - first + (self.model.mtp_num_layers if st == len(self.partition) - 1 else 0)

    def _rank(self, rank: int) -> tuple:
        """What pipeline rank `rank` holds whatever its recomputed layers: (its schedule stages and their model
        stages, parameter bytes, gradient bytes, optimizer bytes, host state bytes, the activation and temporary
        scales of its seq1f1b chunks, the parts of "other" before and after its temporary, whether it holds the
        last stage and an MoE layer)."""
        if rank in self._ranks:
            return self._ranks[rank]
        model, c, partition, layout = self.model, self.c, self.partition, self.layout
        w_b, g_b, o_b, copy_b = self.state
        expert_bytes = self.expert_state
        copies = self.stages_of.get(rank, ())  # schedule stages, each reading inflight[st]
        stages = tuple(st % len(partition) for st in copies)  # their model stages (partition entries)
        local_params, local_experts = local_params_of(c, *_rank_params(model, self.part_key, stages, layout))
        param_buffer = grad_buffer = 0.0
        if layout == "torch" or megatron_fsdp_runs(c, self.execution):  # (FSDP's buffers)
            buffers = [self._buffer_bytes(st) for st in stages]
            param_buffer, grad_buffer = max(b[0] for b in buffers), max(b[1] for b in buffers)
        deferred = layout == "torch" and c.pp > 1 and len(stages) > 1 and holds_unsharded_grads(c)
        scales = seq_chunk_scales(c, self.bounds, layout, rank) if self.bounds else (1.0, 1.0)
        fp8_cache_bytes = (self.fp8_cache * sum(local_params_of(c, *_rank_block_params(model, self.part_key, stages)))
                           if self.fp8_cache else 0.0)
        params = (local_params * (w_b + copy_b) + local_experts * (expert_bytes[0] + expert_bytes[3]) + param_buffer
                  + fp8_cache_bytes)
        grads = (self._deferred_grads(stages) if deferred
                 else local_params * g_b + local_experts * expert_bytes[1] + grad_buffer)
        optimizer = local_params * o_b + local_experts * expert_bytes[2]
        host = host_state_bytes(c, layout, self.execution, local_params, local_experts) if c.offloads else 0.0
        # Under an uneven seq1f1b split the per-chunk buffers and temporaries are the longest chunk's.
        other = (self.fixed + pipeline_buffer_bytes(self.model, c, self.execution, copies, self.inflight, scales[1],
                                                    self.device_kind),
                 self.kv_grads * sum(self._kv_blocks(st) for st in stages))
        last = len(partition) - 1 in stages
        moe = any(moe_layers(model, *partition[st]) for st in stages)
        self._ranks[rank] = (copies, stages, params, grads, optimizer, host, scales, other, last, moe)
        return self._ranks[rank]

    def _mtp_kv(self, st: int) -> float:
        """seq1f1b's earlier-chunk K/V of the MTP modules' blocks on model stage `st` (the last), whose blocks run
        the plan's recompute mode whatever the per-stage counts (cost/mtp.py)."""
        if st != len(self.partition) - 1 or not self.model.mtp_num_layers:
            return 0.0
        return self.model.mtp_num_layers * (self.kv_cache if self.c.recompute == "none" else self.kv_recomputed)

    def _largest_temporary(self, facts: tuple[bool, bool, bool, bool]) -> float:
        """The largest temporary (0 if none) whose facts hold on a rank with `facts` (TEMPORARY_FACTS' order)."""
        if facts not in self._temporary:
            named = dict(zip(TEMPORARY_FACTS, facts))
            self._temporary[facts] = max([0.0] + [t.bytes for t in self.temporaries if t.holds(named)])
        return self._temporary[facts]

    def of(self, recomputed: Sequence[int], ranks: Sequence[int] | None = None) -> list[dict]:
        """`stage_memory`'s entries of pipeline `ranks` (default all) with `recomputed[s]` recomputed layers in
        model stage s (`recomputed_layers`' reading of the counts)."""
        c, partition, inflight, layout = self.c, self.partition, self.inflight, self.layout
        out = []
        for rank in (range(c.pp) if ranks is None else ranks):
            copies, stages, params, grads, optimizer, host, (act_scale, temp_scale), other, last, moe = self._rank(rank)
            activations = host_activations = 0.0
            recomputes = keeps = False
            for copy, st in zip(copies, stages):
                first, end = partition[st]
                recomputes = recomputes or recomputed[st] > 0
                keeps = keeps or recomputed[st] < end - first
                layers = self._blocks_bytes(first, end, recomputed[st])
                if c.offload_activations:  # each block's saved activations go to the host
                    host_activations += activation_copy_bytes(c, layers) * inflight[copy] * act_scale
                    layers = 0.0
                per_mb = ((layers + (self.embed_act if st == 0 else 0.0)
                           + (self.head_act + self.mtp_act if st == len(partition) - 1 else 0.0)) * act_scale
                          + (self.kv_cache * (end - first - recomputed[st]) + self.kv_recomputed * recomputed[st]
                             + self._mtp_kv(st)) * (act_scale if layout == "megatron" else 1.0))
                activations += per_mb * inflight[copy]
            # Temporaries that exist one at a time: the largest of those whose facts hold on this rank counts.
            temporary = self._largest_temporary((last, moe, recomputes, keeps))
            if layout == "torch" and c.num_microbatches == 1:
                # The gradients come into existence during the only backward while the activations go: the peak is
                # at the loss without them, or at the end of the backward with them and without the activations.
                if activations + temporary >= grads:
                    grads = 0.0
                else:
                    activations, temporary = 0.0, 0.0
            entry = {"params": params, "grads": grads, "optimizer": optimizer, "activations": activations,
                     "other": other[0] + temp_scale * temporary + other[1]}
            entry["total"] = sum(entry.values())
            if c.offloads:
                entry["host"] = host + host_activations
            out.append(entry)
        return out
