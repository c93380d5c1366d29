"""What one llama-family block keeps from its forward until its backward, tensor by tensor, in Megatron's accounting
(the "megatron" memory layout), for one micro-batch on one TP rank: `saved_tensors` lists (name, bytes), and
`saved_bytes` is their sum.

It describes the blocks the closed formula of `ModelSpec.layer_activation_bytes` (Korthikanti et al. 2022) does not:
multi-head latent attention (DeepSeek-V2/V3), precision recipes that keep a linear layer's input in a dtype other
than the activations' (`Precision.cached`, `attention_output`: dtype fp8-deepseek), and the selective recompute
policies "norms_mla_swiglu" and "mla_up_proj_mlp" (`Execution.selective_recompute`). For grouped-query attention
with an element-dtype recipe it equals the closed formula and `cost/moe.routed_activation_bytes`
(tests/test_moe_memory.py), so it is that formula spelled out; `cost/memory.layer_activation_bytes` reads it for MLA
models, for such recipes and for those policies only.

Each row has a width per token, a dtype and a split:
- "replicated": outside the TP region (norm inputs and outputs, MLA's latents), divided by tp only under sequence
  parallelism; "sharded": split over the TP ranks (heads, FFN width); "routed": per routed row of the rank's MoE
  layer (T x k x etp rows, T = its tokens, `cost/moe.tokens_per_rank`); "tokens": per token the rank routes.
- dtypes: "element" (the activations), "cached" (a linear layer's input kept for its weight gradient),
  "attention_output" (the input of the projection after the attention core, which its backward also reads),
  "fp32", "byte" (a dropout mask).

Under "norms_mla_swiglu" the backward redoes every RMSNorm (so the linear inputs that are norm outputs are not
kept), MLA's up-projections (so Q, K, V are not kept; the compressed latents are) and the experts' SwiGLU output
(its inputs, gate and up, are kept; silu and the product are not): DeepSeek-V3 technical report (arXiv 2412.19437
v1), Sec. 3.2.3 "Recomputation of RMSNorm and MLA Up-Projection" and Sec. 3.3.3 (SwiGLU inputs cached, output
recomputed). Under "mla_up_proj_mlp" (Megatron-Core's --recompute-modules mla_up_proj mlp) the backward redoes
MLA's up-projections (Q, K, V not kept) and a dense layer's whole MLP (only its input, the norm output, kept); the
norms and the experts keep what they keep without it. Megatron's selective recompute ("attention_core") drops the
attention scores of the standard kernel (flash attention keeps none); full recompute keeps the block input only.
"""

from __future__ import annotations

from autoconf.cost.moe import ROUTER_SCORE_TENSORS, tokens_per_rank
from autoconf.spec.dtypes import STORAGE_BYTES, precision
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig

NORMS_MLA_SWIGLU = "norms_mla_swiglu"
MLA_UP_PROJ_MLP = "mla_up_proj_mlp"


def _dtype_bytes(c: ParallelConfig) -> dict[str, float]:
    p = precision(c.dtype)
    return {"element": STORAGE_BYTES[p.element], "cached": STORAGE_BYTES[p.cached_dtype],
            "attention_output": STORAGE_BYTES[p.attention_output_dtype], "fp32": 4.0, "byte": 1.0}


def _attention_rows(model: ModelSpec, c: ParallelConfig, policy: str) -> list[tuple[str, float, str, str]]:
    """(name, width per token, dtype, split) of the attention half, its norm included."""
    h, heads = model.hidden_size, model.num_heads
    redo_norms = policy == NORMS_MLA_SWIGLU
    redo_up = policy in (NORMS_MLA_SWIGLU, MLA_UP_PROJ_MLP)  # MLA's up-projections
    rows = [("attention norm input", h, "element", "replicated")]
    if model.mla is None:
        if not redo_norms:
            rows.append(("QKV input (norm output)", h, "cached", "replicated"))
        rows.append(("Q, K, V", h + 2 * model.kv_dim, "element", "sharded"))
        rows.append(("output projection input", h, "attention_output", "sharded"))
    else:
        a = model.mla
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        if not redo_norms:
            rows.append(("down-projection input (norm output)", h, "cached", "replicated"))
        if a.q_lora_rank:
            rows.append(("query latent (q norm input)", a.q_lora_rank, "element", "replicated"))
            if not redo_norms:
                rows.append(("query latent normed (up-projection input)", a.q_lora_rank, "cached", "replicated"))
        rows.append(("key-value latent and rope key", a.kv_lora_rank + a.qk_rope_head_dim, "element", "replicated"))
        if not redo_norms:
            rows.append(("key-value latent normed (up-projection input)", a.kv_lora_rank, "cached", "replicated"))
        # Under either policy the up-projections' outputs are recomputed; a full-rank query (no q_lora_rank) is not
        # an up-projection and stays.
        q_kept = not redo_up or not a.q_lora_rank
        rows.append(("Q, K, V", (heads * qk if q_kept else 0) + (0 if redo_up else heads * (qk + a.v_head_dim)),
                     "element", "sharded"))
        rows.append(("output projection input", heads * a.v_head_dim, "attention_output", "sharded"))
    return rows


def _swiglu_rows(name: str, width: float, split: str, policy: str, fused: bool) -> list[tuple[str, float, str, str]]:
    """A SwiGLU FFN's tensors: gate and up (the SwiGLU inputs) and their product (the down projection's input),
    which "norms_mla_swiglu" recomputes too, and unless `fused` (`Execution.fused_swiglu`: Megatron-Core's
    bias_swiglu and weighted_bias_swiglu, DeepSeek's kernels recompute the activation from its input) the silu
    output."""
    rows = [(f"{name} gate and up", 2 * width, "cached", split)]
    if policy != NORMS_MLA_SWIGLU:
        rows.append((f"{name} product", width, "cached", split))
        if not fused:
            rows.append((f"{name} silu", width, "element", split))
    return rows


def saved_tensors(model: ModelSpec, c: ParallelConfig, recompute: str, selective: str,
                  moe: bool, keeps_outputs: bool = True, fused_swiglu: bool = False) -> list[tuple[str, float]]:
    """(name, bytes) of what one block keeps for its backward (see the module docstring), one micro-batch, one TP
    rank; `selective` is the execution's selective recompute policy, read when `recompute` is "selective";
    `keeps_outputs`: an MoE block keeps the expert outputs its combine weighs
    (`Execution.moe_combine_keeps_outputs`); `fused_swiglu`: every SwiGLU (dense, routed and shared experts) is the
    fused kernel (`memory.fused_swiglu`), else each keeps its silu output."""
    s, b, h = c.local_seq_len, c.micro_batch_size, model.hidden_size
    nbytes = _dtype_bytes(c)
    tokens = s * b
    if recompute == "full":
        return [("block input", nbytes["element"] * tokens * h / (c.tp if c.sequence_parallel else 1))]
    policy = selective if recompute == "selective" else "none"
    rows = _attention_rows(model, c, policy)
    if c.attention == "flash":
        rows.append(("attention log-sum-exp", model.num_heads, "fp32", "sharded"))
    elif recompute != "selective" or policy == MLA_UP_PROJ_MLP:  # that policy keeps the attention core
        scores = model.num_heads * s
        rows += ([("attention softmax and dropout", 2 * scores, "element", "sharded"),
                  ("attention dropout mask", scores, "byte", "sharded")] if model.dropout > 0
                 else [("attention softmax", scores, "element", "sharded")])
    rows.append(("MLP norm input", h, "element", "replicated"))
    if policy != NORMS_MLA_SWIGLU:
        rows.append(("MLP input (norm output)", h, "cached", "replicated"))
    if model.dropout > 0:
        rows.append(("residual dropout masks", 2 * h, "byte", "replicated"))
    if not moe:
        if policy != MLA_UP_PROJ_MLP:  # that policy redoes the dense MLP from its input (the norm output above)
            rows += [("MLP gate and up", 2 * model.ffn_hidden_size, "element", "sharded"),
                     ("MLP product", model.ffn_hidden_size, "cached", "sharded")]
            if not fused_swiglu:
                rows.append(("MLP silu", model.ffn_hidden_size, "element", "sharded"))
    else:
        m = model.moe
        rows.append(("router logits and probabilities", ROUTER_SCORE_TENSORS["megatron"] * m.num_experts, "fp32",
                     "tokens"))
        rows.append(("routed tokens (expert input)", h, "cached", "routed"))
        rows += _swiglu_rows("expert", m.moe_intermediate_size / c.etp, "routed", policy, fused_swiglu)
        if keeps_outputs:
            rows.append(("expert outputs (combine weights)", m.num_experts_per_tok * h, "element", "tokens"))
        if m.num_shared_experts:
            rows += _swiglu_rows("shared expert", m.num_shared_experts * m.shared_expert_intermediate_size,
                                 "sharded", policy, fused_swiglu)
    out = []
    for name, width, dtype, split in rows:
        if split == "replicated":
            count = tokens * width / (c.tp if c.sequence_parallel else 1)
        elif split == "sharded":
            count = tokens * width / c.tp
        elif split == "routed":
            count = tokens_per_rank(c) * model.moe.num_experts_per_tok * c.etp * width
        else:
            count = tokens_per_rank(c) * width
        out.append((name, nbytes[dtype] * count))
    return out


def saved_bytes(model: ModelSpec, c: ParallelConfig, recompute: str, selective: str, moe: bool,
                keeps_outputs: bool = True, fused_swiglu: bool = False) -> float:
    """The sum of `saved_tensors`."""
    return sum(nbytes for _, nbytes in saved_tensors(model, c, recompute, selective, moe, keeps_outputs,
                                                     fused_swiglu))
