"""Training frameworks as named behaviour flags: what overlaps with what, which memory layout, which P2P scheme.

An `Execution` says how a framework runs a `ParallelConfig` where frameworks differ; the cost model, the search,
the pictures and the exporters read its flags and never a framework's name. The presets:

  autoconf       the bundled torch executor (execute/): FSDP2 / per-block gradient buckets, its own memory layout
  megatron       Megatron-LM as published in 2022 (Korthikanti et al.): 18-byte mixed precision, P2P scattered over
                 the TP ranks and blocking, gradients all-reduced after the pipeline flush
  megatron-core  Megatron-Core as its README's H100 runs use it: the distributed optimizer, the gradient
                 reduce-scatter per bucket during the backward (--overlap-grad-reduce), the parameter all-gather per
                 bucket during the forward (--overlap-param-gather), TP communication overlapped with the GEMMs under
                 sequence parallelism (--tp-comm-overlap)
  torchtitan     torchtitan's FSDP2 (fully_shard per block, bf16 parameters, fp32 gradient reduction, implicit
                 forward/backward prefetch; reshard after forward unless pipelined)
  deepseek       DeepSeek-V3's training framework as its report and published kernels state it (DualPipe's
                 overlapped pairs, its recompute policy, no expert outputs kept, node-deduplicated dispatch); the
                 rest megatron-core's (see PRESETS["deepseek"])

`Execution.check(config)` says in one line what a framework cannot run; building an `Execution` whose flags
contradict each other (an overlapped parameter gather without the distributed optimizer) says what would work.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from autoconf.errors import UserError
from autoconf.files import ascii_number, did_you_mean
from autoconf.spec.dtypes import STORAGE_BYTES, precision
from autoconf.spec.hashing import remembered_hash
from autoconf.spec.schedules import RUNTIMES, SCHEDULES, pipeline_problem, schedule_spec

# The framework whose predictions are the bundled executor's (execute/): only its plans are launched.
EXECUTOR_FRAMEWORK = "autoconf"
# When a stage's gradient reduction may start:
#   "after_flush"  after every stage's last backward, the stages' reductions one after another (no overlap)
#   "after_stage"  after the stage's own last backward, overlapping the other stages' compute
#   "per_bucket"   bucket by bucket as the stage's last backward produces them; the last bucket stays exposed
GRAD_REDUCE_START = ("after_flush", "after_stage", "per_bucket")
# What "selective" recompute redoes in the backward:
#   "attention_core"     the attention core (Korthikanti et al.; Megatron's --recompute-granularity selective)
#   "alternate_matmuls"  every op but the attention kernel and every other matmul of a block in forward order
#                        (torchtitan's selective_ac_option "op": it saves mm outputs except every second one, and
#                        the SDPA output)
#   "norms_mla_swiglu"   every RMSNorm, the up-projections of multi-head latent attention (so their outputs Q, K, V)
#                        and the output of the MoE experts' SwiGLU (DeepSeek-V3 report Sec. 3.2.3 and 3.3.3); the
#                        attention core is not redone (cost/saved.py)
#   "mla_up_proj_mlp"    Megatron-Core's --recompute-modules mla_up_proj mlp (core_v0.14.0 transformer_config.py
#                        `recompute_modules`): the up-projections of multi-head latent attention (their outputs Q, K,
#                        V; output-discarding checkpointing) and the MLP of the dense layers only (transformer_layer.py
#                        sets recompute_mlp for a non-MoELayer mlp; normal checkpointing, which keeps the MLP input);
#                        neither the norms, the attention core nor the experts are redone (cost/saved.py)
# A plan may name its own (`ParallelConfig.selective_recompute`) among those its framework runs
# (`Execution.selective_policies`); `selective_policy` is the one reading.
SELECTIVE_RECOMPUTE = ("attention_core", "alternate_matmuls", "norms_mla_swiglu", "mla_up_proj_mlp")
# The policies autoconf's executor builds (execute/parallelize.py, execute/checkpoint_policy.py).
EXECUTOR_SELECTIVE = ("attention_core", "alternate_matmuls")
MEMORY_LAYOUTS = ("torch", "megatron")
# What a pipeline's runtime holds to pass activations and their gradients between stages
# (`autoconf.cost.memory.pipeline_buffer_bytes` counts it):
#   "per_microbatch"  torch.distributed.pipelining's PipelineStage (torch 2.13; stage.py `_setup_forward_recv_info`,
#                     `_create_grad_recv_info`): at its first step every stage allocates a receive buffer for each
#                     micro-batch's input activation (stages but the first) and output gradient (stages but the
#                     last) and keeps them across steps; a received activation is the stage's input, which its first
#                     block saves; each micro-batch's output stays referenced until its backward (`fwd_cache`), and
#                     the input gradient lives until its send completes. torchtitan runs it.
#   "just_in_time"    autoconf's executor (execute/pipeline.py `_just_in_time_stage_class`): torch's stage whose
#                     buffers hold memory only from their receive until their micro-batch's backward is done, so a
#                     stage holds its in-flight inputs (already counted), one receive posted ahead, the gradient its
#                     running backward received and its in-flight outputs (pytorch/pytorch PRs #193872, 2026-08,
#                     and #196463 do the same inside torch; 2.13.0 does not).
#   "per_transfer"    Megatron's p2p_communication: each receive allocates its tensor when posted, the received
#                     activation is the stage's input, the sent output is freed once sent (`deallocate_output_tensor`):
#                     four activations of one micro-batch (a forward and a backward send and receive).
PIPELINE_BUFFERS = ("just_in_time", "per_microbatch", "per_transfer")
# Element-wise ops a framework runs as separate eager torch kernels instead of one fused kernel each (the
# specification model's count, `autoconf.cost.compute.eager_elementwise_bytes` says what each adds):
#   "rmsnorm"    RMSNorm upcast to fp32 in six kernels (torchtitan's own `RMSNorm` until 2025, norm_type "rmsnorm")
#   "rotary"     rotary embedding as a complex fp32 product (torchtitan's `apply_rotary_emb`)
#   "swiglu"     silu and the gate product as two kernels
#   "repeat_kv"  grouped K and V copied to every query head before the attention kernel (torchtitan's `repeat_kv`
#                until SDPA's enable_gqa; also under torch.compile: the attention kernel needs the copies)
#   "cross_entropy"      the loss as torch's eager fp32 kernels: logits.float(), log_softmax, nll_loss (torchtitan's
#                        cross_entropy_loss without torch.compile; its compile config compiles "model" and "loss")
#   "vocab_parallel_ce"  Megatron's vocab-parallel cross entropy (megatron/core/tensor_parallel/cross_entropy.py):
#                        fp32 copy, max, in-place subtract, exp, sum and divide, its backward in place; never compiled
#   "rotate_half"        autoconf's executor's rotary embedding (execute/rope.py `rotate`): x * cos + cat(-x2, x1) *
#                        sin as five kernels on Q and K
#   "executor_ce"        autoconf's executor's cross entropy (execute/loss.py): max, then per row chunk an fp32 copy
#                        shifted and exponentiated in place and summed; its backward the same copy, in-place subtract,
#                        exp and scale, copied back into the logits
EAGER_OPS = ("rmsnorm", "rotary", "swiglu", "repeat_kv", "cross_entropy", "vocab_parallel_ce", "rotate_half",
             "executor_ce")
# Ops torch.compile leaves as they are: the K/V copies (the attention kernel needs them materialized) and Megatron's
# cross entropy (Megatron does not compile).
NOT_COMPILED = ("repeat_kv", "vocab_parallel_ce")
# The eager ops that are a loss: torch.compile fuses them only where the framework compiles its loss (`compile_loss`).
LOSS_OPS = ("cross_entropy", "executor_ce")
# autoconf's executor's own kernels where nothing is compiled (CPU, `compile` off, and its MoE blocks, which
# parallelize.apply_compile leaves eager): its rotary and SwiGLU (nn.RMSNorm is torch's fused kernel; SDPA takes
# grouped K/V) and its loss, which it never compiles.
EXECUTOR_EAGER_OPS = ("rotate_half", "swiglu", "executor_ce")
# Which attention kernel the framework's flash path runs: "fused" (cuDNN / Transformer Engine fused attention),
# "fa2" (FlashAttention-2: torch's SDPA flash backend), "fa3" (FlashAttention-3, Hopper). The profile's
# attention_curves give each kernel's speed over sequence length (cost/compute.py `attention_efficiency`); a profile
# without a curve for it reads its flat efficiency["attention_fa2"] ("fa2", where stated) or efficiency["attention"].
ATTENTION_KERNELS = ("fused", "fa2", "fa3")
# How context-parallel attention runs its blockwise steps (`autoconf.cost.cp_ring` says what each costs;
# `cp_ring.torch_ring` is the one reading):
#   "kernel"    nothing is counted beyond the attention kernels and the K/V exchange (`cost/estimate.py`
#               `cp_attention_comm`): Megatron (Transformer Engine corrects its partial outputs in kernels of its own,
#               not counted)
#   "torch"     torch's `torch.distributed.tensor.experimental.context_parallel` (`_templated_ring_attention`) in
#               every block: one SDPA call per ring step on the K/V the kernel sees (`cp_ring.sdpa_kv_width`), each
#               partial output merged by log-sum-exp in fp32 eager kernels, the backward accumulating dQ, dK, dV in
#               fp32 and passing dK/dV around the ring in fp32 by all-to-all; the forward's all-gather (or ring
#               transfer) issued before the local step and awaited after it
#   "executor"  autoconf's executor on CUDA: "torch" where it hands attention to torch's `context_parallel`
#               (`executor_torch_cp`), "kernel" where it runs its own (execute/context_parallel.py,
#               execute/cp_attention.py: explicit blockwise math whose merges are not counted). On CPU the executor
#               always runs its own; the planner plans GPUs, so the preset describes CUDA.
CP_ATTENTION = ("kernel", "torch", "executor")
# Which layouts a framework offloads activations in (`Execution.activation_offload`):
#   "any"          autoconf's executor: saved-tensor hooks around every block, under any layout
#   "unpipelined"  Megatron-Core (--cpu-offloading-num-layers): its TransformerConfig refuses CPU offloading with
#                  pipeline parallelism and with recompute (megatron/core/transformer/transformer_config.py at
#                  core_v0.16.1, `__post_init__`)
#   "none"         no activation offload: torchtitan 0.3.0 (training.enable_cpu_offload is FSDP2's
#                  CPUOffloadPolicy, parameters, gradients and optimizer states only); Megatron-LM of 2022
ACTIVATION_OFFLOAD = ("any", "unpipelined", "none")
# The megatron memory layout's main-gradient buffer (what the gradients accumulate in and are reduced from): "fp32"
# (Megatron-LM under --bf16, --accumulate-allreduce-grads-in-fp32), "bf16" (Megatron-Bridge's
# grad_reduce_in_fp32=False; NeMo 1.x's distributed Adam with grad_sync_dtype bf16) or "fp16" (Megatron-LM under
# --fp16, which leaves --accumulate-allreduce-grads-in-fp32 off: the gradients in the parameters' dtype, 2021's
# Narayanan et al. runs).
GRAD_BUFFER_DTYPES = ("fp32", "bf16", "fp16")
# Passes a framework makes over the megatron layout's whole main-gradient buffer once per step on the compute stream
# (each of the rank's parameters, before ZeRO sharding, at `Execution.grad_buffer_bytes`), with the reads and writes
# each costs:
#   "zero"       the buffer zeroed before the step's first micro-batch (Megatron's zero_grad_buffer)
#   "scale"      the gradients scaled by 1/dp in place before the collective sums them (Megatron's
#                gradient_scaling_factor; not when --ddp-average-in-collective averages in the collective)
#   "nan_check"  each bucket's norm taken before its collective, to stop on a NaN (Megatron-Core's
#                check_for_nan_in_grad, on by default for bf16: `--no-check-for-nan-in-loss-and-grad` turns it off)
GRAD_BUFFER_PASSES = {"zero": 1, "scale": 2, "nan_check": 1}
# The optimizer state of the megatron layout, per parameter sharded over the data-parallel ranks:
#   "megatron"  Megatron's distributed optimizer: fp32 master weights and Adam moments (12 bytes)
#   "apex"      apex's DistributedFusedAdam as NeMo 1.x (NeMo 24.07) sets it up for a bf16 model: the 16-bit
#               remainders of the fp32 master weights (the bf16 weight holds the other half), fp32 moments, and a
#               sharded copy of the reduced gradients in the grad buffer's dtype (2 + 8 + 4 or 2 bytes)
OPTIMIZERS = ("megatron", "apex")
# The AdamW kernels a step runs on the device, as the HBM bytes each moves per (local, fp32) parameter:
#   "fused"    one kernel (torch's fused AdamW, `fused=True`; apex's / Transformer Engine's multi-tensor Adam that
#              Megatron runs): reads the parameter, its gradient and the two moments, writes the parameter and the
#              moments (28 bytes)
#   "foreach"  torch's multi-tensor AdamW (`foreach=True`: torch/optim/adam.py `_multi_tensor_adam`, decoupled
#              weight decay, lr a float): the weight decay `_foreach_mul_` (8), `_foreach_lerp_` of the first moment
#              (12), `_foreach_mul_` and `_foreach_addcmul_` of the second (8 + 12), its `_foreach_sqrt`, `_foreach_div_`
#              and `_foreach_add_` of eps into a new list (8 + 8 + 8) and `_foreach_addcdiv_` of the parameter (16):
#              80 bytes (read in torch 2.13; the same kernels since torch 2.1)
# The search's bound reads the smallest (`cost/compute.rank_optimizer_time` without an execution).
ADAM_KERNELS = {"fused": 28, "foreach": 80}
# The dtype the megatron layout's Adam moments may be kept in ("": the precision recipe's, `Precision.moments`).
MOMENTS_DTYPES = ("", "fp32", "bf16")
# What the loss holds at its peak, per logit of one micro-batch (cost/memory.py `logits_temporary_bytes`):
#   "copy"     Megatron 2022's vocab-parallel cross entropy: the logits, an fp32 copy and an fp32 max-subtracted
#              copy (8 bytes beyond the logits)
#   "inplace"  Megatron-Core's (megatron/core/tensor_parallel/cross_entropy.py and its fused variant): the logits and
#              the fp32 copy, shifted and exponentiated in place and kept as the softmax for the backward (4 bytes)
#   "fused"    Transformer Engine's parallel cross entropy (Megatron-Core's cross_entropy_fusion_impl "te"): the
#              kernel writes the gradient into the logits (0 bytes beyond them)
#   "torch"    torch's F.cross_entropy on an fp32 copy (torchtitan 0.2 and its published runs): the logits go with the
#              copy, the fp32 log-softmax is kept and its backward makes two fp32 gradients (12 bytes). Compiled
#              (the plan's `compile` on a GPU with `compile_loss`: torchtitan since bbb1b616e, 2025-04-02): the
#              graph keeps the logits and per-row statistics only, its backward writes their gradient in one kernel
#              (the logits and e bytes beside them; traced on CPU, tests/test_loss.py)
#   "executor" autoconf's executor (execute/loss.py): the logits, which receive their own gradient, and one of
#              EXECUTOR_LOSS_CHUNKS row chunks' fp32 temporary at a time (4 bytes per logit of the chunk: the fp32
#              copy shifted in place, or for fp32 logits the shifted chunk; the backward works in the copy or in place)
LOSS_MEMORY = ("copy", "inplace", "fused", "torch", "executor")
# autoconf's executor runs its cross entropy over the micro-batch's rows in this many chunks.
EXECUTOR_LOSS_CHUNKS = 8
# ... and holds this many bytes per row beside the logits and the chunk at its peak (during the forward's chunks):
# the fp32 row maximum (4), sum of exponentials and target logit (8), the target's int64 column in the rank's
# vocabulary slice (8), two bool masks (2), and the chunk's fp32 row sums (4 / EXECUTOR_LOSS_CHUNKS, rounded up).
EXECUTOR_LOSS_ROW_BYTES = 23
# ... and saves this many per row for its backward beside the logits (execute/loss.py `_CrossEntropy`): the target
# column (int64, 8), two bool masks (2) and the fp32 log-sum-exp (4).
EXECUTOR_LOSS_SAVED_ROW_BYTES = 14
# What `tp_comm_overlap` overlaps: Transformer Engine's userbuffers as Megatron-Core's --tp-comm-overlap sets them up
# under sequence parallelism (TE pytorch/module/base.py `initialize_ub`, its default method per layer, unchanged from
# TE 1.x to 2.x). Each TP collective of a layer runs beside one GEMM of the same layer and pass only, as
# (pass, collective, GEMM, method); a GEMM's backward (dgrad, wgrad) has its forward's FLOPs:
#   "ring_exchange"  the all-gather as tp - 1 ring steps, each beside the GEMM on the chunk already here (the
#                    rank's own chunk first): exposes what the steps exceed, nothing when the GEMM covers them
#   "pipeline"       the GEMM split in TP_OVERLAP_SPLITS, the reduce-scatter of each chunk beside the next chunk's
#                    GEMM: the last chunk's reduce-scatter is always exposed
#   "bulk"           the whole collective beside the whole GEMM, launched together: exposes what it exceeds
# Forward: the all-gathers before QKV and FC1 (column-parallel) beside those GEMMs, the reduce-scatters after the
# output projection and FC2 (row-parallel) beside them. Backward: the row-parallel layers' output-gradient
# all-gather beside their dgrad GEMM; the column-parallel layers' input re-gather (sequence parallelism keeps only
# the 1/tp slice) beside their dgrad GEMM and the reduce-scatter of that dgrad beside their wgrad GEMM. The attention
# core, the element-wise kernels and the row-parallel wgrad GEMMs hide nothing.
TP_OVERLAP_PAIRS = (
    ("forward", "all_gather", "qkv", "ring_exchange"),
    ("forward", "reduce_scatter", "proj", "pipeline"),
    ("forward", "all_gather", "fc1", "ring_exchange"),
    ("forward", "reduce_scatter", "fc2", "pipeline"),
    ("backward", "all_gather", "proj", "ring_exchange"),
    ("backward", "all_gather", "fc2", "ring_exchange"),
    ("backward", "all_gather", "qkv", "bulk"),
    ("backward", "reduce_scatter", "qkv", "bulk"),
    ("backward", "all_gather", "fc1", "bulk"),
    ("backward", "reduce_scatter", "fc1", "bulk"),
)
TP_OVERLAP_SPLITS = 4  # TE's num_splits for the "pipeline" method
TP_OVERLAP_GEMMS = ("qkv", "proj", "fc1", "fc2")  # the GEMMs of TP_OVERLAP_PAIRS, the MLP's last
ATTENTION_GEMMS, MLP_GEMMS = TP_OVERLAP_GEMMS[:2], TP_OVERLAP_GEMMS[2:]


def tp_overlap_chunks(method: str, tp: int) -> int:
    """How many GEMMs Transformer Engine's userbuffers cut the GEMM of a `TP_OVERLAP_PAIRS` entry into, each on its
    share of the tokens (TE pytorch/module/base.py `initialize_ub`, default num_splits per method, the same in TE 1.x
    and 2.x): "ring_exchange" one per TP rank (each ring step multiplies the chunk already there), "pipeline"
    TP_OVERLAP_SPLITS, "bulk" one (the whole GEMM beside the whole collective)."""
    return {"ring_exchange": tp, "pipeline": TP_OVERLAP_SPLITS, "bulk": 1}[method]


# When ZeRO sharding (ZeRO >= 1 over dp x cp > 1) reduce-scatters the gradients (`ParallelConfig.grad_reduce`): once
# per step, after the last micro-batch (the unsharded fp32 gradients accumulate until then), or after every
# micro-batch's backward (sharded gradients, one reduce-scatter per micro-batch). cost/memory.py and cost/estimate.py
# say what each costs; `Execution.grad_reductions` which a framework runs.
GRAD_REDUCE = ("step", "microbatch")
# How context-parallel attention meets the rest of the sequence's keys and values (cost/estimate.py says what each
# costs, cost/memory.py what each holds): "allgather" gathers the K/V of the whole sequence before the attention
# (Llama 3, Sec. 3.3.2; torchtitan's default rotate method; Megatron --cp-comm-type all_gather), "ring" passes K/V
# blocks around the CP group, each transfer overlapped with the attention on the block before (Ring Attention;
# Megatron --cp-comm-type p2p). `Execution.cp_comms`: those a framework runs.
CP_COMM = ("allgather", "ring")


@dataclass(frozen=True, kw_only=True)
class Execution:
    """Explicit flags of one training framework (Calculon's `Execution` is the model).

    The defaults are autoconf's executor. name: the preset these flags came from (reported in the plan's
    prediction as "framework").
    memory_layout: "torch" (FSDP2 mixed precision, cost/memory.py) or "megatron" (18 bytes per parameter).
    pipeline_buffers: see PIPELINE_BUFFERS.
    attention_saved_whole: attention runs as a torch.compile'd region that torchtitan's per-op policy saves whole
        (its FlexAttention: `torch.compile(..., options={"wrap_inductor_compiled_regions": True})` in
        models/common/attention.py, and `inductor_compiled_code` MUST_SAVE in distributed/activation_checkpoint.py, at
        24eecd08, PR #4016; torch's selective checkpoint caches every output of a saved op, and the compiled forward
        returns the tensors its backward reads), so under the "alternate_matmuls" policy an eager block keeps its
        Q, K and V, V's whole projection output where V views it, beside the attention output and its
        log-sum-exp. False: SDPA, whose saved outputs are those two (`cost/memory.op_policy_layer_activation_bytes`).
    masked_attention: sliding windows and attention sinks reach SDPA as masks and an extra key (autoconf's
        executor, execute/window_attention.py): a sliding layer's kernel computes every score of its mask, the
        whole square up to twice the window and beyond it the band's blocks (`spec.model.executor_window_work`),
        and the sink key widens the query-key product; False: kernels that skip what a window leaves out and take
        sinks natively (FlashAttention's and Transformer Engine's window_size, cuDNN's learnable softmax,
        FlexAttention's block masks). `cost/compute.flash_core_seconds` reads it.
    zero_stages: the ZeRO stages the framework can run; zero_searched: those worth telling apart in a search.
    distributed_optimizer: ZeRO-1 as Megatron's distributed optimizer (reduce-scatter of the gradients, all-gather
        of the updated parameters), which the Megatron layout needs for any zero_stage >= 1 to be real.
    grad_reduce_start: see GRAD_REDUCE_START (the plan's own `grad_reduce` says how often FSDP reduces).
    bucket_params: parameters per gradient bucket (Megatron-Core's DDP: max(40M, 1M x dp)); None: one bucket per
        transformer block plus one for the stage's other parameters (FSDP2 units, the executor's GradReducer).
    bucket_first_rank_only: buckets only on pipeline rank 0; later ranks reduce their stage in one bucket, as
        Megatron-Core does (their reduction is off the critical path).
    param_gather_overlap: the once-per-step parameter all-gather (ZeRO 1/2) runs bucket by bucket ahead of the
        first forward that needs it, so only the first bucket is exposed; otherwise the whole gather precedes it.
    blocking_p2p: a pipeline send also occupies the sending rank (Megatron 2022's batched isend/irecv + wait).
    p2p_scatter_gather: stage activations cross the pipeline as a 1/tp slice and are all-gathered over the TP group
        after the transfer (Megatron's scatter/gather optimisation); with sequence parallelism they are sliced anyway.
    tp_comm_overlap: under sequence parallelism each TP all-gather and reduce-scatter runs beside one GEMM of its
        layer (Megatron-Core's userbuffers, TP_OVERLAP_PAIRS): a layer's TP time is what those GEMMs do not cover.
    selective_recompute: see SELECTIVE_RECOMPUTE: the policy of a plan that names none.
    selective_policies: the selective policies the framework runs (a plan's own must be one; the search weighs
        each): autoconf's executor runs both, Megatron the attention core, torchtitan its per-op policy.
    executor_overheads: the profile's measurements of autoconf's executor (pipeline runtime per pass, FSDP hooks
        per unit, TP layers timed in the executor) describe this framework's runtime.
    eager_ops: see EAGER_OPS (specification profiles only; measured tables time the executor's own kernels).
    attention_kernel: see ATTENTION_KERNELS.
    cp_attention: see CP_ATTENTION (read only under context parallelism).
    cp_repeat_kv: under torch's ring the grouped K/V are repeated to every query head before SDPA, so the ring
        exchanges, merges and accumulates them at the query width. False: SDPA receives the grouped K/V (torchtitan
        0.3.0's enable_gqa; autoconf's executor since 2026-12-03, where the flash kernel takes them:
        `context_parallel.torch_ring_kv`); the eager op "repeat_kv" repeats them in every block, CP or not.
    fsdp_copies: FSDP2's copy kernels beside its collectives cost HBM time on the rank (specification profiles;
        `autoconf.cost.compute.fsdp_copy_bytes` counts them): the all-gather's copy-out into the unsharded
        parameters, the reduce-scatter's copy-in (one chunked copy that casts to the fp32 reduce dtype).
    compile_loss: under torch.compile the loss is compiled too (torchtitan 0.3.0's compile components "model" and
        "loss"); False: it stays eager (torchtitan's train.py until 2025 left `torch.compile(loss_fn)` commented out;
        autoconf's executor compiles its blocks only).
    compiles_moe_blocks: under torch.compile the MoE blocks are compiled too (torchtitan compiles every block, MoE
        blocks with graph breaks allowed); False: they run eager with every op of `eager_ops` (autoconf's executor:
        `parallelize.apply_compile` leaves them out, their routing has data-dependent shapes).
    transformer_engine: the megatron layout's blocks are Transformer Engine modules (Megatron-Core's TE layer spec):
        under fp8 the linear layers save their inputs as fp8 and (without fp8_params) keep an fp8 copy of their
        weight and its transpose through the step (`autoconf.cost.memory` says what each changes).
    fused_swiglu: in the megatron layout every SwiGLU, a dense MLP's and an expert's alike, is one fused kernel that
        saves its input (gate and up) and recomputes silu in the backward, so no silu output is kept: Megatron-Core's
        bias_activation_fusion, which Megatron-LM sets from --bias-swiglu-fusion (on unless
        --no-bias-swiglu-fusion) for the dense MLP (`bias_swiglu_impl`) and the grouped experts
        (`weighted_bias_swiglu_impl`), and DeepSeek's own SwiGLU kernels. False: autograd's silu and product, four
        tensors of the FFN width (Megatron-LM's 2022 code had no fused SwiGLU; the export then writes
        --no-bias-swiglu-fusion).
    fp8_params: under fp8 the blocks' linear weights are stored in fp8 (Megatron's --fp8-param-gather: the fp8 weight
        and its transpose replace the bf16 weight) instead of bf16 plus TE's cached fp8 copies.
    grad_buffer_dtype: see GRAD_BUFFER_DTYPES; the megatron layout reduces its gradients in it (the torch layout
        holds and reduces fp32 gradients). optimizer: see OPTIMIZERS. loss_memory: see LOSS_MEMORY.
    grad_accumulation_fusion: the megatron layout's weight-gradient GEMMs accumulate into the main-gradient buffer
        (Megatron-LM's gradient accumulation fusion: added in 83b1e42f30, 2022-02-13, for fp32 buffers and in
        07916bf245, 2022-09-27, for fp16; on unless --no-gradient-accumulation-fusion). False: each GEMM writes the
        parameter's gradient and a hook adds it into the buffer every micro-batch (`param.main_grad.add_(
        param.grad)`: Megatron-LM before then, e.g. the SC21 runs), `autoconf.cost.compute.grad_accumulation_bytes`.
    adam_kernels: see ADAM_KERNELS (specification profiles; a measured profile times the executor's own step).
    grad_norm_bytes: HBM bytes per local fp32 gradient that the step's gradient clipping moves before AdamW: the
        norm's one read and, where the clip multiplies every step by the clamped coefficient (no host sync to
        decide), a read and a write more: 12 for torchtitan 0.3.0 (torch.nn.utils.clip_grads_with_norm_'s
        `_foreach_mul_`) and autoconf's executor (`torch._foreach_norm`, then `_foreach_mul_`); 4 for Megatron
        (multi_tensor_l2norm; its scaling runs only when the norm exceeds the limit).
        The megatron layout also copies its fp32 main parameters into the model's after the step
        (`autoconf.cost.compute.main_param_copy_bytes`).
    optimizer_moments: the dtype of the megatron layout's two Adam moments (MOMENTS_DTYPES; Megatron-Core's
        --use-precision-aware-optimizer with --exp-avg-dtype and --exp-avg-sq-dtype), "" for the precision recipe's
        (`Precision.moments`: fp32 but under fp8-deepseek).
    grad_buffer_passes: see GRAD_BUFFER_PASSES (megatron layout; `autoconf.cost.compute.rank_optimizer_time` adds
        them to the step's optimizer term).
    overlap_paired_chunks: runs the paired forward and backward chunks of a schedule that pairs them
        (`ScheduleSpec.pairs`: dualpipev, interleaved-1f1b) together, in the order the schedule then runs
        (`ScheduleSpec.paired_order`), so that each one's token exchange runs during the other's compute (DeepSeek's
        DualPipe code does; Megatron-Core's --overlap-moe-expert-parallel-comm with --delay-wgrad-compute does for
        interleaved 1F1B, exported where ep > 1; torch's ScheduleDualPipeV does only with a user-registered
        OVERLAP_F_B function, which autoconf's executor does not register, so its runtime runs each pair's F then its
        B). overlap_comm_sm_share: the share of the device's SMs the exchange kernels take from the compute they run
        beside (DeepSeek-V3: 20 of the H800's 132, report Sec. 3.5.1); cost/simulate.py says how a pair is timed.
    moe_combine_keeps_outputs: an MoE layer weighs its T x k expert outputs by the routing weights after the experts
        (in the combine), so it keeps those outputs for the weights' gradient: autoconf's executor
        (execute/moe.py `MoE.routed`), Megatron-Core up to core_v0.12 (`unpermute(..., probs=...)` in
        moe/token_dispatcher.py). False: the weights multiply the SwiGLU output inside the experts, whose fused
        kernel keeps its input and the weights only, and the combine takes no weights (Megatron-Core since
        core_v0.13.0: moe/experts.py `weighted_bias_swiglu_impl(..., permuted_probs)`, checked at core_v0.16.1).
        Read by the memory model's MoE rule only (cost/moe.routed_activation_bytes, cost/saved.saved_tensors).
    pairs_full_recompute: the framework overlaps paired chunks (`overlap_paired_chunks`) under full recompute too.
        Megatron-Core refuses --overlap-moe-expert-parallel-comm with --recompute-granularity full
        (megatron/core/transformer/transformer_config.py at core_v0.16.1, `__post_init__`: "disable full
        recomputation when enabling overlap_moe_expert_parallel_comm"), so its preset is False and such a plan runs
        and is exported without pairs. `runs_pairs(config)` is the one reading.
    dispatch_per_node: the MoE dispatch sends a token once to each node its experts lie on (over the NIC to the GPU
        of the same in-node index) and forwards it there over NVLink, and the combine returns one summed vector per
        node: DeepEP's internode kernels (DeepSeek-V3 report, arXiv 2412.19437, Sec. 3.2.2; deepseek-ai/DeepEP
        README). With a routing that reaches at most M nodes (`cost/moe.dispatch_nodes_bound`) the cross-node bytes
        are then min(M, top-k) / top-k of an all-to-all's, and the NVLink forwarding carries more than its
        intra-node part (`cost/moe.dispatch_shares`). False: NCCL's all-to-all, every routed copy travels on its
        own (Megatron-Core's alltoall dispatcher).
    moe_fp8_padding: under fp8 the grouped experts pad each local expert's routed rows to the fp8 GEMM's multiple
        with a copy before the GEMMs and unpad the output with another (Megatron-Core's TEGroupedMLP with Transformer
        Engine's Fp8Padding / Fp8Unpadding whenever config.fp8 is set, core_v0.15.0 moe/experts.py; TE copies unless
        every count is already a multiple of 16). Timed by `cost/moe.routed_copy_bytes`. autoconf's executor runs no
        fp8 routed experts.
    moe_tp_token_share: at tp > 1 each TP rank of an MoE layer routes 1/tp of the layer's tokens and the ranks
        gather each other's outputs (autoconf's executor, execute/moe.py `_TakeShare` / `_GatherShares`, the router's
        gradients summed over TP by `_SumGrad`, a load-balancing loss's statistics by `_SumOver`): collectives of
        their own over the TP group in each pass (`cost/moe.token_share_tp_comm`), beside those of the attention and
        the shared experts. False: the MoE layer's TP collectives are a dense MLP's (torchtitan's: its MoE module
        all-gathers its sequence-parallel input and reduce-scatters its output over TP), or `moe_sequence_dispatch`'s.
    moe_sequence_dispatch: at tp > 1 the routed experts read the rank's sequence-parallel slice of the tokens, so an
        MoE layer runs no collective over the attention's TP group for them: Megatron-Core's token dispatchers take
        the [S/TP, B, H] input and exchange it over EP and the expert-TP group only (token_dispatcher.py: "permute ->
        A2A(EP) -> AG(TP)", the TP there being the expert TP group); the shared experts keep a dense MLP's
        collectives. Megatron refuses MoE under TP without sequence parallelism ("When using MoE and tensor
        parallelism, sequence parallelism must be used", arguments.py), and so does `layout_problem`.
    moe_fp8_routed_experts: under a dynamic-scaling fp8 dtype the routed experts' grouped GEMMs run in fp8 and cast
        their operands (Megatron-Core's TEGroupedMLP: Transformer Engine's GroupedLinear under the fp8 recipe). False:
        they run in the compute dtype, uncast (autoconf's executor: torchao converts the blocks' nn.Linear modules,
        execute/fp8.py `is_block_linear`, and the routed experts are the raw weights of execute/moe.py
        `GroupedExperts`); the shared experts are linear layers and run in fp8 either way, the router in neither.
        Read by `cost/compute._moe_ffn_time` (the GEMMs' peak) and `cost/moe.expert_cast_elements` (the casts).
    accumulation_sync: without a pipeline, FSDP reduce-scatters every gradient-accumulation step's gradients (the
        framework's loop never turns gradient sync off: torchtitan 0.3.0, whose train loop calls no
        `set_requires_gradient_sync(False)`); under a pipeline torch's stage reduces once per step either way.
    zero1_all_reduce: ZeRO-1 all-reduces the whole gradients (every rank keeps them all) and then each rank updates
        its shard and all-gathers the parameters, instead of reduce-scattering them: nanotron's
        ZeroDistributedOptimizer with its fp32 gradient accumulator (huggingface/nanotron at 9055c664,
        trainer.py:516-517: "This is too memory hungry, instead we run all_reduce", reduce_scatter=False), which
        moves twice the gradient bytes of a reduce-scatter. Read by `cost/estimate.dp_collectives` (the megatron
        layout's ZeRO-1 already holds the whole gradient buffer).
    megatron_fsdp: ZeRO-3 runs as Megatron-Core's Megatron-FSDP (--use-megatron-fsdp --data-parallel-sharding-strategy
        optim_grads_params; megatron/core/distributed/fsdp at core_v0.16.1): every TransformerLayer a unit, its
        bf16 (or fp8) weights, fp32 main weights, gradients and Adam moments sharded over the DP group; each unit
        gathered before its forward and again before its backward, the next one prefetched (with the recipes'
        --fsdp-double-buffer, pools of two units for the weights and for the gradients); every micro-batch's
        gradients reduce-scattered after its backward (`grad_reduce_every_bprop`), so a plan sets grad_reduce
        "microbatch" (`problem`). Read by the megatron layout's memory (`cost/memory.unsharded_buffer_bytes`) and
        the Megatron export.
    keep_fp8_transpose: under fp8 parameters with Megatron-FSDP each block linear keeps its fp8 transpose through
        the step, unsharded (--keep-fp8-transpose-cache; Megatron-FSDP's README: about one byte per parameter),
        instead of dropping it after use.
    expert_tp_biases: the framework splits routed experts that have biases (GPT-OSS) over expert TP (etp > 1).
        Megatron-Core does not: its TransformerConfig asserts "Bias in Moe is only supported when ETP==1"
        (transformer_config.py at core_v0.16.1, `__post_init__`), so its presets run such models at etp 1
        (`problem`; the search weighs etp 1 only).
    schedules: the pipeline schedules the framework runs, the ones its search weighs (empty: every registered one the
        executor runs, `ScheduleSpec.executor_note`; a schedule that splits sequences is weighed only when pinned).
        Another is costed only where `--fix schedule=` pins it, as a comparison: the exports say why the framework
        cannot run it (`ScheduleSpec.megatron_note`, `torchtitan_note`). Megatron-LM and Megatron-Core run 1F1B and
        its interleaved form (`forward_backward_pipelining_without_interleaving` / `_with_interleaving`,
        megatron/core/pipeline_parallel/schedules.py); torchtitan the torch classes it names; DeepSeek's framework
        also DualPipe and DualPipeV (deepseek-ai/DualPipe).
    pipeline_runtime: whose runtime its pipelines run on (schedules.RUNTIMES), whose rules on the micro-batch count
        hold (`ScheduleSpec.problem`): "torch", torch.distributed.pipelining's schedule classes (autoconf's executor,
        torchtitan: Schedule1F1B needs m >= pp), or "megatron", Megatron-LM's schedules (1F1B runs any m; the
        interleaved one needs m a multiple of pp).
    cp_comms: the CP_COMM exchanges the framework runs (torchtitan 0.3.0: "allgather" only, torch's default rotate
        method; its config has no setting for another). pipelines_tied_embeddings: it pipelines a model whose
        embedding and head share one matrix (torchtitan 0.3.0 refuses weight tying under pipeline parallelism in its
        decoder's `update_from_config`). experts_on_sharded_ranks: the expert-parallel ranks are drawn from the ranks
        that shard the weights and the sequence, dp_shard x cp x tp (torchtitan 0.3.0's ParallelDims: dp_shard is
        dp under ZeRO >= 1 and 1 under ZeRO-0), which ep must divide. cp_shards_weights: context parallelism shards
        the weights over dp_shard x cp (torchtitan's FSDP covers the CP ranks whenever cp > 1), so a plan of
        ZeRO-0 with cp > 1 is not what it runs. The search weighs only what these allow (`layout_problem`).
    activation_offload: see ACTIVATION_OFFLOAD. optimizer_offload: the framework keeps the optimizer states (and
        the sharded fp32 weights) on the host and steps there (FSDP2's CPUOffloadPolicy in the executor and
        torchtitan, Megatron-Core's --optimizer-cpu-offload); Megatron-LM of 2022 had neither lever.
        `offload_problem` is the one reading.
    megatron_args / torchtitan_settings: what makes the target framework run as modelled, as (when, flag, line):
        the line applies when the config matches `when` (see `_applies`) and the flag ("name" or "name=value") holds.
    """

    name: str = "autoconf"
    memory_layout: str = "torch"
    pipeline_buffers: str = "just_in_time"
    attention_saved_whole: bool = False
    masked_attention: bool = True
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    zero_searched: tuple[int, ...] = (0, 2, 3)
    distributed_optimizer: bool = False
    grad_reduce_start: str = "per_bucket"
    bucket_params: float | None = None
    bucket_first_rank_only: bool = False
    param_gather_overlap: bool = True
    blocking_p2p: bool = False
    p2p_scatter_gather: bool = False
    tp_comm_overlap: bool = False
    selective_recompute: str = "attention_core"
    selective_policies: tuple[str, ...] = EXECUTOR_SELECTIVE
    executor_overheads: bool = True
    eager_ops: tuple[str, ...] = EXECUTOR_EAGER_OPS
    attention_kernel: str = "fused"
    cp_attention: str = "executor"
    cp_repeat_kv: bool = False
    fsdp_copies: bool = False
    compile_loss: bool = False
    compiles_moe_blocks: bool = False
    transformer_engine: bool = False
    fused_swiglu: bool = False
    fp8_params: bool = False
    grad_buffer_dtype: str = "fp32"
    grad_accumulation_fusion: bool = True
    optimizer: str = "megatron"
    optimizer_moments: str = ""
    adam_kernels: str = "fused"
    grad_norm_bytes: float = 12.0
    loss_memory: str = "executor"
    grad_buffer_passes: tuple[str, ...] = ()
    overlap_paired_chunks: bool = False
    overlap_comm_sm_share: float = 0.0
    moe_combine_keeps_outputs: bool = True
    pairs_full_recompute: bool = True
    dispatch_per_node: bool = False
    moe_fp8_padding: bool = False
    moe_fp8_routed_experts: bool = False
    moe_tp_token_share: bool = True
    moe_sequence_dispatch: bool = False
    accumulation_sync: bool = False
    zero1_all_reduce: bool = False
    megatron_fsdp: bool = False
    keep_fp8_transpose: bool = False
    expert_tp_biases: bool = True
    schedules: tuple[str, ...] = ()
    pipeline_runtime: str = "torch"
    activation_offload: str = "any"
    optimizer_offload: bool = True
    cp_comms: tuple[str, ...] = CP_COMM
    pipelines_tied_embeddings: bool = True
    experts_on_sharded_ranks: bool = False
    cp_shards_weights: bool = False
    megatron_args: tuple[tuple[str, str, str], ...] = ()
    torchtitan_settings: tuple[tuple[str, str, str], ...] = ()

    __hash__ = remembered_hash

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError(f"framework {self.name!r} cannot run as asked: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every flag combination this framework cannot run, each naming what would work."""
        out = []
        if self.memory_layout not in MEMORY_LAYOUTS:
            out.append(f"memory_layout {self.memory_layout!r} is none of {', '.join(MEMORY_LAYOUTS)}")
        if self.pipeline_buffers not in PIPELINE_BUFFERS:
            out.append(f"pipeline_buffers {self.pipeline_buffers!r} is none of {', '.join(PIPELINE_BUFFERS)}")
        if self.selective_recompute not in SELECTIVE_RECOMPUTE:
            out.append(f"selective_recompute {self.selective_recompute!r} is none of {', '.join(SELECTIVE_RECOMPUTE)}")
        elif self.selective_recompute not in self.selective_policies:
            out.append(f"selective_recompute {self.selective_recompute!r} is not among the policies the framework "
                       f"runs ({', '.join(self.selective_policies)})")
        if not set(self.eager_ops) <= set(EAGER_OPS):
            out.append(f"eager_ops {', '.join(self.eager_ops)}: each must be one of {', '.join(EAGER_OPS)}")
        if self.attention_kernel not in ATTENTION_KERNELS:
            out.append(f"attention_kernel {self.attention_kernel!r} is none of {', '.join(ATTENTION_KERNELS)}")
        if self.cp_attention not in CP_ATTENTION:
            out.append(f"cp_attention {self.cp_attention!r} is none of {', '.join(CP_ATTENTION)}")
        if not self.cp_comms or not set(self.cp_comms) <= set(CP_COMM):
            out.append(f"cp_comms {', '.join(self.cp_comms)}: each must be one of {', '.join(CP_COMM)}")
        if self.activation_offload not in ACTIVATION_OFFLOAD:
            out.append(f"activation_offload {self.activation_offload!r} is none of {', '.join(ACTIVATION_OFFLOAD)}")
        for flag, known in (("grad_buffer_dtype", GRAD_BUFFER_DTYPES), ("optimizer", OPTIMIZERS),
                            ("loss_memory", LOSS_MEMORY), ("optimizer_moments", MOMENTS_DTYPES),
                            ("adam_kernels", tuple(ADAM_KERNELS))):
            if getattr(self, flag) not in known:
                out.append(f"{flag} {getattr(self, flag)!r} is none of {', '.join(k or repr(k) for k in known)}")
        if not set(self.grad_buffer_passes) <= set(GRAD_BUFFER_PASSES):
            out.append(f"grad_buffer_passes {', '.join(self.grad_buffer_passes)}: each must be one of "
                       f"{', '.join(GRAD_BUFFER_PASSES)}")
        elif self.grad_buffer_passes and self.memory_layout != "megatron":
            out.append("grad_buffer_passes describe the megatron layout's main-gradient buffer; the torch layout has "
                       "none (set grad_buffer_passes=none)")
        if self.memory_layout != "megatron" and not self.grad_accumulation_fusion:
            out.append("grad_accumulation_fusion describes the megatron layout's main-gradient buffer; the torch "
                       "layout has none (leave grad_accumulation_fusion=true)")
        if self.memory_layout != "megatron" and (self.transformer_engine or self.fused_swiglu
                                                 or self.optimizer != "megatron"):
            out.append("transformer_engine, fused_swiglu and optimizer describe the megatron memory layout; the torch "
                       "layout is the executor's own")
        if self.grad_reduce_start not in GRAD_REDUCE_START:
            out.append(f"grad_reduce_start {self.grad_reduce_start!r} is none of {', '.join(GRAD_REDUCE_START)}")
        if not set(self.zero_searched) <= set(self.zero_stages) or not set(self.zero_stages) <= {0, 1, 2, 3}:
            out.append(f"zero stages {','.join(map(str, self.zero_stages))} (searched "
                       f"{','.join(map(str, self.zero_searched))}) must lie within 0-3 and the searched ones among "
                       f"them (e.g. zero_stages=0,1,2,3)")
        if self.distributed_optimizer and self.memory_layout != "megatron":
            out.append("the distributed optimizer is Megatron's: it needs memory_layout 'megatron' (FSDP shards "
                       "the torch layout without it)")
        if self.param_gather_overlap and self.memory_layout == "megatron":
            if not self.distributed_optimizer:
                out.append("an overlapped parameter all-gather needs the distributed optimizer (Megatron: "
                           "--overlap-param-gather with --use-distributed-optimizer); without it, set "
                           "param_gather_overlap=false")
            if self.grad_reduce_start != "per_bucket":
                out.append("an overlapped parameter all-gather needs the per-bucket gradient reduction (Megatron: "
                           "--overlap-param-gather with --overlap-grad-reduce)")
        unknown = [name for name in self.schedules if name not in SCHEDULES]
        if unknown:
            out.append(f"schedules {', '.join(unknown)}: each must be one of {', '.join(SCHEDULES)}")
        chunked = [name for name in self.schedules if name in SCHEDULES and schedule_spec(name).sequence_chunks]
        if chunked:
            out.append(f"schedules {', '.join(chunked)}: a schedule that splits sequences is weighed only where "
                       f"--fix schedule= pins it; leave it out of the list")
        if self.pipeline_runtime not in RUNTIMES:
            out.append(f"pipeline_runtime {self.pipeline_runtime!r} is none of {', '.join(RUNTIMES)}")
        if self.bucket_params is not None and not 0 < self.bucket_params < float("inf"):
            out.append(f"bucket_params must be a finite number > 0 of parameters (or none: one bucket per stage), "
                       f"got {self.bucket_params}")
        if self.selective_recompute in ("norms_mla_swiglu", "mla_up_proj_mlp") and self.memory_layout != "megatron":
            out.append(f"selective_recompute {self.selective_recompute!r} is described in the megatron memory "
                       f"layout only; the executor runs selective recompute as {' or '.join(EXECUTOR_SELECTIVE)}")
        if self.overlap_paired_chunks and self.executor_overheads:  # the runtime is autoconf's executor
            out.append("autoconf's executor runs torch's ScheduleDualPipeV without an OVERLAP_F_B function, so each "
                       "paired forward and backward run one after the other; overlap_paired_chunks describes "
                       "DeepSeek's DualPipe code (use it with another framework, e.g. megatron-core)")
        if not 0.0 <= self.overlap_comm_sm_share < 1.0:
            out.append(f"overlap_comm_sm_share must lie in [0, 1), got {self.overlap_comm_sm_share}")
        if not 0.0 <= self.grad_norm_bytes < float("inf"):
            out.append(f"grad_norm_bytes must be a finite number >= 0 of bytes per gradient (4: one read for the "
                       f"norm; 12: and an unconditional clip), got {self.grad_norm_bytes}")
        if self.tp_comm_overlap and self.memory_layout != "megatron":
            out.append("TP communication overlap is Megatron-Core's (userbuffers); torch's TP does not overlap it")
        if self.zero1_all_reduce and self.memory_layout != "megatron":
            out.append("zero1_all_reduce describes the megatron layout's ZeRO-1 (whole gradient buffer on every rank); "
                       "the torch layout's ZeRO stages are FSDP2's")
        if self.megatron_fsdp and self.memory_layout != "megatron":
            out.append("megatron_fsdp is Megatron-Core's FSDP in its memory layout; the torch layout's ZeRO-3 is FSDP2")
        if self.keep_fp8_transpose and not (self.megatron_fsdp and self.fp8_params):
            out.append("keep_fp8_transpose caches Megatron-FSDP's fp8 parameters' transposes: it needs megatron_fsdp "
                       "and fp8_params")
        return out

    def grad_reductions(self, zero_stage: int, pp: int = 1) -> tuple[str, ...]:
        """The gradient reductions (GRAD_REDUCE) the framework runs at a sharded ZeRO stage on a pipeline of `pp`
        ranks: FSDP2 (the torch layout) either, or with `accumulation_sync` every micro-batch without a pipeline
        and once per step under one (torch's stage); in the megatron layout Megatron's distributed optimizer (ZeRO-1)
        once per step, and the stages that shard the gradients (the ZeRO paper's 2 and 3, Megatron-FSDP) every
        micro-batch: a rank holding a shard of the gradient cannot sum the micro-batches' whole gradients in it.
        Read by `problem` and the search's space."""
        if self.memory_layout != "megatron":
            if self.accumulation_sync:
                return ("microbatch",) if pp == 1 else ("step",)
            return GRAD_REDUCE
        return ("microbatch",) if zero_stage >= 2 else ("step",)

    def runs_pairs(self, config) -> bool:
        """Whether the framework runs a schedule's paired chunks overlapped for `config` (`overlap_paired_chunks`;
        under full recompute only with `pairs_full_recompute`): read by `overlaps_pairs`
        and the Megatron export."""
        return self.overlap_paired_chunks and (config.recompute != "full" or self.pairs_full_recompute)

    @property
    def is_executor(self) -> bool:
        """Its predictions are the bundled executor's, so `launch` runs its plans (`support.plan_unsupported_reason`)
        and its search keeps to the layouts the executor runs; another framework's plans are exported, and its
        search weighs every layout that framework runs."""
        return self.name == EXECUTOR_FRAMEWORK

    @property
    def grad_buffer_bytes(self) -> int:
        """Bytes per parameter of the megatron layout's gradient buffer: what it holds and what its reduction moves."""
        return STORAGE_BYTES[self.grad_buffer_dtype]

    def moment_bytes(self, dtype: str) -> int:
        """Bytes per parameter of the megatron layout's two Adam moments under the plan's `dtype`: each in
        `optimizer_moments`, or where that is "" in the precision recipe's (`Precision.moments`)."""
        return 2 * STORAGE_BYTES[self.optimizer_moments or precision(dtype).moments]

    @property
    def skips_nan_check(self) -> bool:
        """The megatron layout without the per-bucket NaN check (what `--no-check-for-nan-in-loss-and-grad` asks)."""
        return self.memory_layout == "megatron" and "nan_check" not in self.grad_buffer_passes

    @property
    def averages_in_collective(self) -> bool:
        """The megatron layout without the 1/dp scale pass: the collective averages (`--ddp-average-in-collective`)."""
        return self.memory_layout == "megatron" and "scale" not in self.grad_buffer_passes

    @property
    def framework(self) -> str:
        """The preset's name (older code read `Execution.framework`)."""
        return self.name

    def replace(self, **flags) -> "Execution":
        """These flags with some changed (checked again); an unknown flag is a one-line error. A selective policy
        the framework does not list becomes the one it runs."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(flags) - known)
        if unknown:
            hint = did_you_mean(unknown[0], known) if len(unknown) == 1 else ""
            raise UserError(f"unknown framework flag(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}{hint}")
        policy = flags.get("selective_recompute")
        if policy is not None and "selective_policies" not in flags and policy not in self.selective_policies:
            flags = {**flags, "selective_policies": (policy,)}  # the framework runs the policy it is told to
        return dataclasses.replace(self, **flags)

    def problem(self, config, model=None) -> str | None:
        """What this framework cannot run of `config`, in one line (a ZeRO stage it does not have; a selective
        policy it does not run; a precision recipe whose cached activations its memory layout does not describe;
        pipeline factors its pipeline runtime refuses; an offload lever it does not run there, `offload_problem`; a
        K/V exchange or, with `model`, a pipeline of tied embeddings it does not run, `layout_problem`; with `model`,
        expert TP over biased experts where `expert_tp_biases` is off), or None. The one rule `check` and the
        fitting advice read; the search's space leaves out what it refuses of the ZeRO stages, reductions,
        pipelines, expert TP and layouts before asking, and its offloading twins what `offload_problem` refuses."""
        first = ((model is not None and self.expert_tp_problem(config, model)) or self.offload_problem(config)
                 or self.layout_problem(config, model))
        if first:
            return first
        if precision(config.dtype).cached and self.memory_layout != "megatron":
            return (f"dtype {config.dtype} caches activations in its own dtypes, which only the megatron memory "
                    f"layout describes; use a framework with it (megatron, megatron-core)")
        problem = pipeline_problem(config, self.pipeline_runtime)
        if problem:
            return f"framework {self.name!r}: {problem}"
        if config.zero_stage not in self.zero_stages:
            able = [n for n, e in PRESETS.items() if config.zero_stage in e.zero_stages and n != self.name]
            return (f"framework {self.name!r} runs ZeRO stages {', '.join(map(str, self.zero_stages))}, not "
                    f"{config.zero_stage}; pick one of those or a framework that runs it ({', '.join(able) or 'none'})")
        runs = self.grad_reductions(config.zero_stage, config.pp)
        if config.zero_sharded and config.grad_reduce not in runs and (config.num_microbatches > 1 or config.pp > 1):
            if self.megatron_fsdp and config.zero_stage == 3:
                return (f"framework {self.name!r} runs ZeRO-3 as Megatron-FSDP, which reduce-scatters every "
                        f"micro-batch's gradients: add --grad-reduce microbatch")
            if self.memory_layout == "megatron" and runs == ("microbatch",):
                return (f"framework {self.name!r} at ZeRO {config.zero_stage} shards the gradients, so it "
                        f"reduce-scatters every micro-batch's: add --grad-reduce microbatch")
            if self.memory_layout != "megatron":
                return f"framework {self.name!r} reduce-scatters the gradients " + (
                    "every micro-batch without a pipeline: add --grad-reduce microbatch" if runs == ("microbatch",)
                    else "once per step under a pipeline (torch's stage): drop --grad-reduce microbatch")
            return (f"framework {self.name!r} reduces the gradients once per step at ZeRO {config.zero_stage} "
                    f"(Megatron's distributed optimizer): drop --grad-reduce microbatch"
                    + (", or use ZeRO-3 (Megatron-FSDP)" if self.megatron_fsdp and 3 in self.zero_stages else ""))
        policy = config.selective_recompute
        if config.recompute == "selective" and policy is not None and policy not in self.selective_policies:
            return (f"framework {self.name!r} runs selective recompute as {' or '.join(self.selective_policies)}, "
                    f"not {policy}; drop --selective-recompute {policy}, or " + self._runs_policy(policy))
        return None

    def layout_problem(self, config, model=None) -> str | None:
        """Why the framework cannot run `config`'s K/V exchange or, with `model`, its pipeline of tied embeddings
        (`cp_comms`, `pipelines_tied_embeddings`), naming what would work; None where it can. The search's space
        asks it of every candidate where `restricts_layouts`."""
        if config.cp > 1 and config.cp_comm not in self.cp_comms:
            return (f"framework {self.name!r} exchanges K/V for context parallelism by {' or '.join(self.cp_comms)} "
                    f"only, not {config.cp_comm}: use cp_comm {self.cp_comms[0]}")
        if model is not None and not self.pipelines_tied_embeddings and config.pp > 1 and model.tied_embeddings:
            return (f"framework {self.name!r} refuses a model with tied embeddings under pipeline parallelism "
                    f"(pp {config.pp}): use pp 1")
        return (self.expert_mesh_problem(config) or self.cp_sharding_problem(config)
                or self.moe_tp_problem(config, model))

    def moe_tp_problem(self, config, model=None) -> str | None:
        """Why the framework does not run `model`'s MoE layers at `config`'s TP without sequence parallelism
        (`moe_sequence_dispatch`: the dispatchers read the rank's sequence slice), naming what would work."""
        if (not self.moe_sequence_dispatch or model is None or model.moe is None or config.tp == 1
                or config.sequence_parallel):
            return None
        return (f"framework {self.name!r} runs MoE layers under tensor parallelism only with sequence parallelism "
                f"(its token dispatchers read each rank's slice of the sequence): add --sequence-parallel or use tp 1")

    def expert_mesh_problem(self, config) -> str | None:
        """Why the framework cannot draw `config`'s expert-parallel ranks from its sharding ranks
        (`experts_on_sharded_ranks`), naming what would work; None where it can or does not draw them so."""
        c = config
        sharding = c.dp * c.cp * c.tp if c.zero_stage else c.cp * c.tp
        if not self.experts_on_sharded_ranks or c.ep == 1 or sharding % c.ep == 0:
            return None
        return (f"framework {self.name!r} splits the experts over ranks of dp_shard x cp x tp, which ep {c.ep} must "
                f"divide; at ZeRO {c.zero_stage} that is {sharding} rank{'s' if sharding != 1 else ''}"
                + (" (ZeRO-0 replicates dp: dp_shard 1)" if not c.zero_stage else "")
                + ": use a ZeRO stage >= 1 or an ep dividing them")

    def cp_sharding_problem(self, config) -> str | None:
        """Why the framework does not run `config`'s unsharded weights beside context parallelism
        (`cp_shards_weights`), naming what would work; None where it does."""
        if not self.cp_shards_weights or config.cp == 1 or config.zero_stage:
            return None
        return (f"framework {self.name!r} shards the weights over dp_shard x cp whenever cp > 1 (FSDP over the CP "
                f"ranks), so it runs no ZeRO-0 with cp {config.cp}: use ZeRO {max(z for z in self.zero_stages)} "
                f"or cp 1")

    def restricts_layouts(self) -> bool:
        """Whether `layout_problem` can refuse anything (the search asks it of each candidate only then)."""
        return (tuple(self.cp_comms) != CP_COMM or not self.pipelines_tied_embeddings
                or self.experts_on_sharded_ranks or self.cp_shards_weights or self.moe_sequence_dispatch)

    def runs_lever(self, lever: str) -> bool:
        """Whether the framework runs the offload lever `lever` (an OFFLOADS name) in some layout."""
        return self.optimizer_offload if lever == "offload_optimizer" else self.activation_offload != "none"

    def lever_problem(self, lever: str) -> str | None:
        """Why this framework never runs the offload lever `lever` (an OFFLOADS name), naming those that do; None
        where it runs it in some layout."""
        if self.runs_lever(lever):
            return None
        able = [n for n, e in PRESETS.items() if e.runs_lever(lever)]
        return (f"framework {self.name!r} has no {lever.replace('_', ' ')}; drop it or plan for a framework with it "
                f"({', '.join(able)})")

    def refuses_activation_offload(self, config) -> bool:
        """Whether `config` offloads activations where this framework cannot (`activation_offload`)."""
        return config.offload_activations and (self.activation_offload == "none" or (
            self.activation_offload == "unpipelined" and (config.pp > 1 or config.recompute != "none")))

    def offload_problem(self, config) -> str | None:
        """What this framework cannot offload of `config`, in one line naming what would work, or None: a lever it
        does not have, or activations offloaded beside a pipeline or recompute where it offloads them only
        without either (`activation_offload`)."""
        for lever in config.offload_levers:
            if not self.runs_lever(lever):
                return self.lever_problem(lever)
        if self.refuses_activation_offload(config):  # (beside a pipeline or recompute: the only case left)
            return (f"framework {self.name!r} offloads activations only without pipeline parallelism and without "
                    f"recompute (Megatron-Core's TransformerConfig refuses cpu_offloading with either; the plan has "
                    f"pp {config.pp}, recompute {config.recompute}): use pp 1 and recompute none, or drop "
                    f"offload_activations")
        return None

    def _runs_policy(self, policy: str) -> str:
        """Where `policy` runs, shortest first: the frameworks that list it; this framework told to run it
        (`--framework-flag selective_recompute=...`, which `replace` accepts only where the memory layout describes
        the policy); else the first framework that accepts being told."""
        flag = f"--framework-flag selective_recompute={policy}"

        def accepts(preset: "Execution") -> bool:
            try:
                preset.replace(selective_recompute=policy)
            except UserError:
                return False
            return True

        ways = [f"--framework {n}" for n, e in PRESETS.items() if policy in e.selective_policies and n != self.name]
        if accepts(self):
            ways.append(flag)
        if not ways:
            ways = [f"--framework {n} {flag}" for n, e in PRESETS.items() if n != self.name and accepts(e)][:1]
        return "run it with " + " or ".join(ways) if ways else "no framework preset runs it"

    def expert_tp_problem(self, config, model) -> str | None:
        """Why this framework cannot split `model`'s routed experts over `config`'s expert TP (`expert_tp_biases`
        off and experts with biases at etp > 1), in one line, or None."""
        if model.moe is None or not model.moe.expert_bias or config.etp == 1 or self.expert_tp_biases:
            return None
        return (f"framework {self.name!r} runs experts with biases ({model.name}) at expert TP 1 only "
                f"(Megatron-Core: 'Bias in Moe is only supported when ETP==1'), not etp {config.etp}; use etp 1")

    def check(self, config, model=None) -> None:
        """Raises UserError with `problem`'s line when this framework cannot run `config` (of `model`)."""
        problem = self.problem(config, model)
        if problem:
            raise UserError(problem)

    def buckets(self, params: float, layers: int, pipeline_rank: int, dp: int) -> int:
        """How many gradient (and parameter-gather) buckets a stage of `params` parameters per TP rank and `layers`
        blocks reduces in."""
        if self.grad_reduce_start != "per_bucket" or (self.bucket_first_rank_only and pipeline_rank > 0):
            return 1
        if self.bucket_params is None:
            return layers + 1
        size = max(self.bucket_params, 1e6 * dp)  # Megatron-Core's default grows with the DP group
        return max(1, int(-(-params // size)))

    def export_lines(self, target: str, config) -> list[str]:
        """The settings of `target` ("megatron" arguments or "torchtitan" config-module statements) that make it run
        `config` as modelled; settings that apply to a feature the config does not use are left out."""
        entries = {"megatron": self.megatron_args, "torchtitan": self.torchtitan_settings}[target]
        lines = [line for when, flag, line in entries if _applies(when, config) and self._holds(flag, config)]
        return list(dict.fromkeys(lines))  # one flag asked for by two features is written once

    def _holds(self, flag: str, config) -> bool:
        name, _, value = flag.partition("=")
        current = getattr(self, name)
        if callable(current):  # a rule of the config (runs_pairs)
            return bool(current(config))
        return str(current) == value if value else bool(current)


def _applies(when: str, c) -> bool:
    """Whether a setting's condition holds for config `c`: "always", "dp" (data parallel > 1), "sharded" (ZeRO >= 1
    over dp > 1), "zero3" (ZeRO-3 over dp > 1), "sp" (sequence parallelism with tp > 1), "pp" (pipeline > 1),
    "fp8" (dtype fp8), "ep" (expert parallel > 1)."""
    return {"always": True, "dp": c.dp_cp > 1, "sharded": c.zero_sharded,
            "zero3": c.zero_sharded and c.zero_stage == 3, "sp": c.sequence_parallel and c.tp > 1, "pp": c.pp > 1,
            "fp8": c.dtype == "fp8", "ep": c.ep > 1}[when]


# The schedules Megatron-LM runs (`Execution.schedules`), and those torchtitan names: torch's classes it may run.
MEGATRON_SCHEDULES = ("1f1b", "interleaved-1f1b")
TORCHTITAN_SCHEDULES = tuple(name for name in SCHEDULES if schedule_spec(name).torch_class
                             and not schedule_spec(name).torchtitan_note)
PRESETS: dict[str, Execution] = {
    # The defaults: FSDP2 gathers unit by unit with implicit prefetch; ZeRO-0's GradReducer and FSDP2 reduce per
    # block during the last micro-batch's backward (execute/parallelize.py); ZeRO-1 runs as ZeRO-2 (FSDP2). Context
    # parallelism on CUDA: torch's ring where `executor_torch_cp` says, handed grouped K/V.
    "autoconf": Execution(),
    "megatron": Execution(
        # ZeRO-0 (DDP) and ZeRO-1 (the distributed optimizer: every rank keeps the whole gradient buffer, Megatron's
        # docs/user-guide/features/dist_optimizer.md, 6 + 12/d bytes per parameter); no FSDP in 2022
        name="megatron", memory_layout="megatron", pipeline_buffers="per_transfer", masked_attention=False,
        grad_norm_bytes=4.0,
        zero_stages=(0, 1),
        zero_searched=(0, 1),
        selective_policies=("attention_core",), grad_reduce_start="after_flush", param_gather_overlap=False,
        blocking_p2p=True, p2p_scatter_gather=True,
        executor_overheads=False, eager_ops=("vocab_parallel_ce",), grad_buffer_passes=("zero", "scale"),
        cp_attention="kernel", loss_memory="copy", schedules=MEGATRON_SCHEDULES, pipeline_runtime="megatron",
        expert_tp_biases=False, moe_tp_token_share=False, moe_sequence_dispatch=True, activation_offload="none",
        optimizer_offload=False,
        megatron_args=(("sharded", "memory_layout=megatron", "--use-distributed-optimizer"),
                       ("always", "grad_accumulation_fusion=False", "--no-gradient-accumulation-fusion"))),
    "megatron-core": Execution(
        # ZeRO-3 is Megatron-FSDP (`megatron_fsdp`: with grad_reduce microbatch, which the search gives it).
        name="megatron-core", memory_layout="megatron", pipeline_buffers="per_transfer", masked_attention=False,
        grad_norm_bytes=4.0,
        zero_stages=(0, 1, 3),
        zero_searched=(0, 1, 3),
        megatron_fsdp=True, selective_policies=("attention_core",),
        distributed_optimizer=True, grad_reduce_start="per_bucket", bucket_params=40e6, bucket_first_rank_only=True,
        param_gather_overlap=True, tp_comm_overlap=True, executor_overheads=False, eager_ops=("vocab_parallel_ce",),
        transformer_engine=True, fused_swiglu=True, loss_memory="inplace",
        grad_buffer_passes=("zero", "scale", "nan_check"),
        moe_combine_keeps_outputs=False, moe_fp8_padding=True, moe_fp8_routed_experts=True, cp_attention="kernel",
        schedules=MEGATRON_SCHEDULES, pipeline_runtime="megatron", expert_tp_biases=False, moe_tp_token_share=False,
        moe_sequence_dispatch=True, megatron_args=(("dp", "grad_reduce_start=per_bucket", "--overlap-grad-reduce"),
                       ("sharded", "distributed_optimizer", "--use-distributed-optimizer"),
                       ("sharded", "param_gather_overlap", "--overlap-param-gather"),
                       ("sp", "tp_comm_overlap", "--tp-comm-overlap"),
                       ("fp8", "fp8_params", "--fp8-param-gather"),
                       ("always", "skips_nan_check", "--no-check-for-nan-in-loss-and-grad"),
                       ("dp", "averages_in_collective", "--ddp-average-in-collective"),
                       ("ep", "runs_pairs", "--overlap-moe-expert-parallel-comm"),
                       ("ep", "runs_pairs", "--delay-wgrad-compute"),
                       ("always", "grad_accumulation_fusion=False", "--no-gradient-accumulation-fusion"),
                       ("zero3", "megatron_fsdp", "--use-megatron-fsdp"),
                       ("zero3", "megatron_fsdp", "--data-parallel-sharding-strategy optim_grads_params"),
                       ("zero3", "megatron_fsdp", "--no-gradient-accumulation-fusion"),
                       ("zero3", "megatron_fsdp", "--ckpt-format fsdp_dtensor"),
                       ("zero3", "megatron_fsdp", "--fsdp-double-buffer"),
                       ("zero3", "keep_fp8_transpose", "--keep-fp8-transpose-cache")),
        pairs_full_recompute=False, activation_offload="unpipelined"),
    "torchtitan": Execution(
        name="torchtitan", memory_layout="torch", pipeline_buffers="per_microbatch", masked_attention=False,
        schedules=TORCHTITAN_SCHEDULES,
        zero_stages=(0, 2, 3),
        zero_searched=(0, 2, 3),
        accumulation_sync=True,
        grad_reduce_start="per_bucket", param_gather_overlap=True, selective_recompute="alternate_matmuls",
        selective_policies=("alternate_matmuls",), executor_overheads=False,
        # torchtitan 0.3.0 (the exporters' target) without torch.compile: the complex fp32 rotary
        # (models/common/rope.py), SwiGLU (feed_forward.py) and the fp32 loss (components/loss.py) as eager
        # kernels; nn.RMSNorm (torch's fused kernel) and SDPA with enable_gqa (no K/V copies) are fused; SDPA's
        # flash backend is FlashAttention-2. The plan's `compile` field (exported as compile.enable, components
        # model and loss) fuses them on a GPU. Its published runs (Dec 2024 and earlier) ran older code:
        # torchtitan's own fp32 RMSNorm ("rmsnorm") and repeat_kv ("repeat_kv"); scripts/truth_torchtitan.py sets
        # each run's kernels. FSDP2's copy kernels beside its collectives: fsdp_copies. Its context parallelism is
        # torch's (parallelisms/parallelize_llama.py and utils.py create_context_parallel_ctx): cp_attention "torch".
        eager_ops=("rotary", "swiglu", "cross_entropy"), attention_kernel="fa2", cp_attention="torch",
        fsdp_copies=True, loss_memory="torch", compile_loss=True, compiles_moe_blocks=True, moe_tp_token_share=False,
        activation_offload="none", cp_comms=("allgather",), pipelines_tied_embeddings=False,
        experts_on_sharded_ranks=True, cp_shards_weights=True,
        torchtitan_settings=(("always", "memory_layout=torch", 'training.mixed_precision_reduce = "float32"'),
                             ("always", "compile_loss=False", 'config.compile.components = ["model"]'),
                             ("always", "adam_kernels=foreach", 'config.optimizer.implementation = "foreach"'))),
}
# DeepSeek-V3's own training framework (not public) as DeepSeek states it; every flag it does not state is the
# megatron-core preset's (docs/moe.md "DeepSeek-V3's memory" lists them as assumed):
# - ZeRO-1 data parallelism, no TP (arXiv 2412.19437, Sec. 3.2);
# - selective recompute of every RMSNorm and the MLA up-projections (Sec. 3.2.3) and of the experts' SwiGLU output
#   from its cached inputs (Sec. 3.3.3);
# - DualPipe's forward and backward chunks run as overlapped pairs (Sec. 3.2.1), the exchange kernels on 20 of the
#   H800's 132 SMs (Sec. 3.2.2, 3.5.1);
# - the routing weights multiply the SwiGLU output inside the experts and the combine sums without weights, so no
#   expert output is kept: DeepSeek's published training trace (deepseek-ai/profile-data train.json at 4496024,
#   EP64 TP1 4K, 4 MoE layers per chunk) runs `swiglu_forward_with_weight_...` before the down projection and
#   `swiglu_forward_backward_with_weight_impl` / `swiglu_weight_backward_with_weight_impl` in the backward, and
#   DeepEP's combine is "addition **without** weights" (deep_ep/buffer.py at ebfe47e, its training example
#   dispatches topk_weights with the tokens);
# - node-deduplicated dispatch and combine (Sec. 3.2.2; DeepEP's internode kernels, which the trace runs);
# - its own kernels, not Transformer Engine's (the trace's dpsk:: grouped GEMMs and cuda:: SwiGLU kernels); the
#   SwiGLU keeps its inputs and recomputes its output (Sec. 3.3.3, for the MoE; fused_swiglu, megatron-core's).
# The precision recipe (Sec. 3.3) is dtype fp8-deepseek, and the layout (DualPipe) the plan's.
PRESETS["deepseek"] = PRESETS["megatron-core"].replace(
    name="deepseek", zero_stages=(0, 1), zero_searched=(1,), selective_recompute="norms_mla_swiglu",
    selective_policies=("norms_mla_swiglu",), overlap_paired_chunks=True, overlap_comm_sm_share=20 / 132,
    moe_combine_keeps_outputs=False, dispatch_per_node=True, tp_comm_overlap=False, transformer_engine=False,
    schedules=MEGATRON_SCHEDULES + ("dualpipe", "dualpipev"), megatron_args=(), torchtitan_settings=())
DEFAULT = "autoconf"


def overlaps_pairs(model, config, execution: Execution) -> bool:
    """The step runs the schedule's paired chunks overlapped (`ScheduleSpec.pairs`, in its `paired_order`): an MoE
    model (a token exchange to hide) under a framework that overlaps them for this config (`Execution.runs_pairs`:
    Megatron-Core not under full recompute). Read by the estimate's timing and the memory's held losses."""
    return (model.moe is not None and execution.runs_pairs(config)
            and schedule_spec(config.schedule).overlaps_paired_chunks)


def selective_policy(config, execution: Execution | None = None) -> str:
    """What selective recompute redoes in `config` (SELECTIVE_RECOMPUTE): the plan's own
    `selective_recompute` when it names one, else the framework's (`execution`, default autoconf's executor). The
    one reading the estimate, the search, the executor and the exporters share."""
    own = config.selective_recompute
    return own if own is not None else (execution or PRESETS[DEFAULT]).selective_recompute


def executor_torch_cp(config, model) -> bool:
    """Whether autoconf's executor on CUDA hands the attention of `config`'s blocks to torch's `context_parallel`
    (cp > 1; SDPA, i.e. attention "flash"; no attention dropout; no sliding window nor attention sinks, which
    torch's causal ring cannot apply; and not where a block recomputes under the per-op selective policy, whose
    blocks run autoconf's own op, execute/cp_attention.py: per-op selective recompute of no layer, `recompute_layers`
    all 0, is the plain step, torch's ring included).
    The one rule the executor (execute/train.py) and the estimate (`cp_ring.torch_ring` under cp_attention
    "executor") read; on CPU the executor runs its own always."""
    per_op = (config.recompute == "selective" and selective_policy(config) == "alternate_matmuls"
              and (config.recompute_layers is None or any(config.recompute_layers)))
    return (config.cp > 1 and config.attention == "flash" and model.dropout == 0.0 and model.sliding_window is None
            and not model.attention_sinks and not per_op)


def compiled_ops(ops: tuple[str, ...], compile_loss: bool = True) -> tuple[str, ...]:
    """The eager ops that stay eager under torch.compile (`NOT_COMPILED`, and torch's loss unless it is compiled)."""
    kept = NOT_COMPILED if compile_loss else NOT_COMPILED + LOSS_OPS
    return tuple(op for op in ops if op in kept)


def compiled(ex: Execution) -> Execution:
    """The same framework with each block (and the loss) under torch.compile: its element-wise ops fused, but those
    of `NOT_COMPILED`. Estimates apply this themselves where the plan's `compile` field is on for a GPU."""
    return ex.replace(eager_ops=compiled_ops(ex.eager_ops, ex.compile_loss))


def execution(name: str = DEFAULT) -> Execution:
    """The preset called `name`; an unknown name is a one-line error listing the known ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown framework {name!r}; known: {', '.join(PRESETS)}"
                        f"{did_you_mean(name, PRESETS)}") from None


# Flags a user may change on a preset (`--framework-flag KEY=VALUE`): the behaviour, not the name or export data.
USER_FLAGS = ("memory_layout", "zero_stages", "distributed_optimizer", "grad_reduce_start", "bucket_params",
              "bucket_first_rank_only", "param_gather_overlap", "blocking_p2p", "p2p_scatter_gather", "tp_comm_overlap",
              "selective_recompute", "executor_overheads", "eager_ops", "attention_kernel", "fsdp_copies",
              "compile_loss", "compiles_moe_blocks", "transformer_engine", "fused_swiglu", "fp8_params",
              "grad_buffer_dtype",
              "grad_accumulation_fusion", "optimizer", "optimizer_moments", "adam_kernels", "grad_norm_bytes",
              "loss_memory",
              "grad_buffer_passes", "overlap_paired_chunks", "overlap_comm_sm_share", "moe_combine_keeps_outputs",
              "pairs_full_recompute", "dispatch_per_node", "moe_fp8_padding", "moe_fp8_routed_experts",
              "cp_attention", "cp_repeat_kv", "accumulation_sync", "zero1_all_reduce", "megatron_fsdp",
              "keep_fp8_transpose", "pipeline_buffers", "attention_saved_whole", "masked_attention", "schedules",
              "pipeline_runtime", "expert_tp_biases", "moe_tp_token_share", "moe_sequence_dispatch",
              "activation_offload", "optimizer_offload", "cp_comms", "pipelines_tied_embeddings",
              "experts_on_sharded_ranks", "cp_shards_weights")


def parse_flags(pairs) -> dict:
    """KEY=VALUE strings into typed flags: true/false for the yes-no flags, a number or "none" for bucket_params,
    comma-separated stages for zero_stages, comma-separated names for eager_ops, cp_comms, grad_buffer_passes
    ("none": no op) and schedules ("all": every registered one that does not split sequences), a name otherwise.
    One-line errors name the known flags; a flag given twice is refused."""
    out = {}
    defaults = Execution()
    for item in pairs:
        key, sep, value = str(item).partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or key not in USER_FLAGS:
            raise UserError(f"--framework-flag {item!r} must be KEY=VALUE with KEY one of {', '.join(USER_FLAGS)}"
                            f"{did_you_mean(key, USER_FLAGS) if sep else ''}")
        if key in out:
            raise UserError(f"--framework-flag {key} is given twice; give it once")
        if key == "schedules" and not value.replace(",", "").strip():
            # (the empty tuple is the flag's "every schedule": not what an empty value says)
            raise UserError(f"--framework-flag schedules names no schedule; give one or more of "
                            f"{', '.join(SCHEDULES)}, or all")
        current = getattr(defaults, key)
        try:
            numeric = key == "bucket_params" and value.lower() != "none" or isinstance(current, float)
            if numeric and not ascii_number(value, integer=False) or key == "zero_stages" and not all(
                    ascii_number(v) for v in value.split(",")):
                raise ValueError
            if isinstance(current, bool):
                if value.lower() not in ("true", "false"):
                    raise ValueError
                out[key] = value.lower() == "true"
            elif key == "bucket_params":
                out[key] = None if value.lower() == "none" else float(value)
            elif isinstance(current, float):
                out[key] = float(value)
            elif key == "zero_stages":
                out[key] = tuple(sorted({int(v) for v in value.split(",")}))
            elif key in ("eager_ops", "grad_buffer_passes", "cp_comms"):
                out[key] = tuple(v.strip() for v in value.split(",") if v.strip() and v.strip() != "none")
            elif key == "schedules":  # ("all": every registered one that does not split sequences)
                names = [v.strip() for v in value.split(",") if v.strip()]
                out[key] = tuple(n for n in SCHEDULES if not schedule_spec(n).sequence_chunks) if names == [
                    "all"] else tuple(names)
            else:
                out[key] = value
        except ValueError:
            raise UserError(f"--framework-flag {key}: cannot read {value!r} (e.g. {key}={_example(current)})") from None
    return out


def _example(current) -> str:
    if isinstance(current, bool):
        return "true"
    if isinstance(current, tuple):
        return ",".join(map(str, current))
    return "none" if current is None else str(current)


def with_flags(preset: Execution, flags: dict) -> Execution:
    """A preset with some flags changed and checked; the searched ZeRO stages follow the runnable ones."""
    if not flags:
        return preset
    if "zero_stages" in flags:
        kept = tuple(z for z in preset.zero_searched if z in flags["zero_stages"])
        flags = {**flags, "zero_searched": kept or flags["zero_stages"]}
    return preset.replace(**flags)


def changed_flags(ex: Execution) -> dict:
    """The user flags in which `ex` differs from its preset (recorded in a plan beside the preset's name)."""
    preset = execution(ex.name)
    return {k: (list(v) if isinstance(v, tuple) else v) for k in USER_FLAGS
            if (v := getattr(ex, k)) != getattr(preset, k)}


def loss_compiled(config, execution: Execution | None, device_kind: str) -> bool:
    """Whether torch.compile compiles the loss of `config`: the plan's blocks compile (`ParallelConfig.compiles_blocks`)
    and the framework compiles its loss with them (`Execution.compile_loss`). The one reading of the loss's kernels (cost/compute.py) and of
    its memory (cost/memory.py)."""
    return bool(execution and execution.compile_loss and config.compiles_blocks(device_kind))


def json_flags(flags: dict, where: str = "framework_flags") -> dict:
    """Framework flags as a JSON file holds them (a plan's record, a truth script's data file) with every list read
    as the flag's tuple, ready for `Execution.replace`. Each must be a user flag (USER_FLAGS) holding a value of its
    type (true/false, a number, a list of stages or names, a name; bucket_params a number or null): one line naming
    `where` and the first that is not (a string "false" was taken as true)."""
    defaults, out = Execution(), {}
    for key, value in flags.items():
        if key not in USER_FLAGS:
            raise UserError(f"{where}: {str(key)[:60]!r} is not a framework flag; known: {', '.join(USER_FLAGS)}")
        current = getattr(defaults, key)
        if key == "bucket_params":
            ok = value is None or _is_number(value)
        elif isinstance(current, bool):
            ok = isinstance(value, bool)
        elif isinstance(current, float):
            ok = _is_number(value)
        elif isinstance(current, tuple):
            item = _is_stage if key == "zero_stages" else (lambda v: isinstance(v, str))
            ok = isinstance(value, list) and all(item(v) for v in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            example = ("a number or null" if key == "bucket_params" else
                       json.dumps(list(current) if isinstance(current, tuple) else current))
            raise UserError(f"{where}: {key} is {json.dumps(value)[:60]}, which is not a value of its type "
                            f"(e.g. {example})")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_stage(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plan_execution(prediction: dict) -> Execution:
    """The execution a plan was predicted with: its preset (plans written before frameworks were recorded:
    autoconf) with the flags the plan records as changed."""
    flags = prediction.get("framework_flags") or {}
    if not isinstance(flags, dict):
        raise UserError("prediction.framework_flags must be an object of flag -> value")
    return with_flags(execution(prediction.get("framework", DEFAULT)),
                      json_flags(flags, "prediction.framework_flags"))
