"""The op table: each operation of a model's forward pass with the weights it holds and the FLOPs it does.

As in Calculon's `llm/layers.py`, a model is read as a list of ops (the embedding, each block's ops, the head), and
every count is a sum over that list: the parameters of a layer, of the model, the parameters one token uses
(`active_params`: all of them except the routed experts a token is not sent to), and the forward FLOPs of one token.
Nothing else in autoconf counts parameters or FLOPs of a model.

FLOPs follow Megatron's convention: 2 per multiply-add of a weight matmul (norms, activations, softmax and the
router's top-k selection are not counted), plus attention's QK^T and A.V over the full s x s square.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

KINDS = ("embedding", "norm", "linear", "attention", "router", "experts")


@dataclass(frozen=True)
class Op:
    """One operation. `flops` are the forward FLOPs of one token; `context_flops` the forward FLOPs of one token per
    token of its sequence (the attention core), so a token in a sequence of s costs flops + context_flops * s.
    `tp_replicated`: an op of a block that every tensor-parallel rank runs whole on all its tokens (latent
    attention's down-projections and their norms: Megatron-Core builds them `parallel_mode='duplicated'`,
    autoconf's executor leaves them out of its TP plan, execute/mla.py); the block's other linear ops are split.
    `tp_replicated_params`: of `params`, those every tensor-parallel rank holds whole (TP splits the rest): all of
    a `tp_replicated` op's, a norm's and a router's, and the bias of a row-parallel linear (Megatron's
    RowParallelLinear and torch's RowwiseParallel keep it whole; TP splits only its weight's input dimension)."""

    name: str
    kind: str
    params: int
    active_params: int
    flops: int
    context_flops: int = 0
    tp_replicated: bool = False
    tp_replicated_params: int = 0

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert 0 <= self.active_params <= self.params, self
        assert 0 <= self.tp_replicated_params <= self.params, self


def linear(name: str, n_in: int, n_out: int, bias: bool = False, tp_replicated: bool = False,
           row_parallel: bool = False) -> Op:
    """A weight matmul of n_in -> n_out; `row_parallel`: TP splits its input dimension (an output projection)."""
    params = n_in * n_out + (n_out if bias else 0)
    whole = params if tp_replicated else (n_out if bias and row_parallel else 0)
    return Op(name, "linear", params, params, 2 * n_in * n_out, tp_replicated=tp_replicated,
              tp_replicated_params=whole)


def norm(name: str, width: int, bias: bool, tp_replicated: bool = False) -> Op:
    """LayerNorm (weight and bias) or RMSNorm (weight only); every TP rank holds its parameters whole."""
    params = width * (2 if bias else 1)
    return Op(name, "norm", params, params, 0, tp_replicated=tp_replicated, tp_replicated_params=params)


def embedding_ops(model) -> tuple[Op, ...]:
    """Token embedding, plus learned positions (GPT). A token reads one row, but the table counts as active, as the
    Mixtral and Qwen model cards count it (docs/moe.md)."""
    tokens = model.vocab_size * model.hidden_size
    ops = [Op("embedding", "embedding", tokens, tokens, 0)]
    if model.learned_positions:
        positions = model.max_seq_len * model.hidden_size
        ops.append(Op("positions", "embedding", positions, positions, 0))
    return tuple(ops)


def head_ops(model) -> tuple[Op, ...]:
    """Final norm and the LM head (no weights of its own when tied to the embedding; its FLOPs all the same)."""
    h, v = model.hidden_size, model.vocab_size
    weights = 0 if model.tied_embeddings else h * v
    return (norm("final_norm", h, model.arch == "gpt"), Op("lm_head", "linear", weights, weights, 2 * h * v))


def attention_ops(model) -> tuple[Op, ...]:
    """The attention half of a block after its norm: projections, the attention core, the output projection."""
    h, a = model.hidden_size, model.num_heads
    if model.mla is not None:
        return _latent_attention_ops(model)
    q, kv = model.q_dim, model.kv_dim
    ops = [linear("qkv_proj", h, q + 2 * kv, bias=model.linear_bias or model.qkv_bias)]
    if model.qk_norm:
        ops.append(Op("qk_norm", "norm", 2 * model.head_dim, 2 * model.head_dim, 0,
                      tp_replicated_params=2 * model.head_dim))
    ops.append(Op("attention", "attention", 0, 0, 0, context_flops=2 * a * (model.head_dim + model.head_dim)))
    if model.attention_sinks:  # one logit per head, split with the heads
        ops.append(Op("sinks", "attention", a, a, 0))
    ops.append(linear("out_proj", q, h, bias=model.linear_bias or model.out_proj_bias, row_parallel=True))
    return tuple(ops)


def _latent_attention_ops(model) -> tuple[Op, ...]:
    """DeepSeek's multi-head latent attention as trained (the up-projections are not absorbed): queries through a
    low-rank bottleneck (or one projection when q_lora_rank is None), keys and values from a shared latent of
    kv_lora_rank plus one rotary key of qk_rope_head_dim shared by all heads."""
    m, h, a = model.mla, model.hidden_size, model.num_heads
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    if m.q_lora_rank is None:
        ops = [linear("q_proj", h, a * qk)]
    else:
        ops = [linear("q_a_proj", h, m.q_lora_rank, tp_replicated=True),
               norm("q_a_norm", m.q_lora_rank, False, tp_replicated=True), linear("q_b_proj", m.q_lora_rank, a * qk)]
    ops += [linear("kv_a_proj", h, m.kv_lora_rank + m.qk_rope_head_dim, tp_replicated=True),
            norm("kv_a_norm", m.kv_lora_rank, False, tp_replicated=True),
            linear("kv_b_proj", m.kv_lora_rank, a * (m.qk_nope_head_dim + m.v_head_dim)),
            Op("attention", "attention", 0, 0, 0, context_flops=2 * a * (qk + m.v_head_dim)),
            linear("out_proj", a * m.v_head_dim, h, row_parallel=True)]
    return tuple(ops)


def mlp_ops(model) -> tuple[Op, ...]:
    """A dense MLP of ffn_hidden_size: GeLU with biases (GPT) or SwiGLU (llama family)."""
    h, f = model.hidden_size, model.ffn_hidden_size
    if model.arch == "gpt":
        return linear("fc1", h, f, bias=True), linear("fc2", f, h, bias=True, row_parallel=True)
    return linear("gate_up_proj", h, 2 * f), linear("down_proj", f, h, row_parallel=True)


def moe_ops(model) -> tuple[Op, ...]:
    """An MoE layer: the router, the routed experts (SwiGLU of moe_intermediate_size each; a token uses
    num_experts_per_tok of them), the shared experts every token passes through, and Qwen2-MoE's shared-expert
    gate."""
    m, h = model.moe, model.hidden_size
    weights = 3 * h * m.moe_intermediate_size
    expert = weights + ((2 * m.moe_intermediate_size + h) if m.expert_bias else 0)
    router = h * m.num_experts + (m.num_experts if m.router_bias else 0)
    ops = [Op("router", "router", router, router, 2 * h * m.num_experts, tp_replicated_params=router),
           Op("experts", "experts", m.num_experts * expert, m.num_experts_per_tok * expert,
              2 * m.num_experts_per_tok * weights)]
    if m.num_shared_experts:
        shared = m.num_shared_experts * 3 * h * m.shared_expert_intermediate_size
        ops.append(Op("shared_experts", "linear", shared, shared, 2 * shared))
    if m.shared_expert_gate:
        gate = linear("shared_expert_gate", h, 1)  # a plain module on every TP rank, like the router
        ops.append(dataclasses.replace(gate, tp_replicated_params=gate.params))
    return tuple(ops)


def layer_ops(model, layer: int) -> tuple[Op, ...]:
    """The ops of block `layer`: norm, attention, norm, then a dense MLP or an MoE layer."""
    bias = model.arch == "gpt"
    ffn = moe_ops(model) if model.is_moe_layer(layer) else mlp_ops(model)
    return (norm("attention_norm", model.hidden_size, bias), *attention_ops(model),
            norm("mlp_norm", model.hidden_size, bias), *ffn)
