"""GPT and Llama decoder blocks exactly as a `ModelSpec` describes them, splittable into pipeline stages.

`Transformer(spec, first, end, embed=..., head=...)` holds layers [first, end) in a ModuleDict keyed by the global
layer index, plus the embedding (first stage) and the final norm + LM head (last stage), so parameter names (FQNs)
are the same in every layout: "layers.5.attention.wq.weight" is layer 5 whatever stage holds it. That is what lets
torch.distributed.checkpoint reshard a checkpoint into another layout, and what seeds each parameter's init.

- gpt:   LayerNorm with bias, GeLU (tanh) MLP of ffn_hidden_size, learned positions, a bias on every linear layer.
- llama: RMSNorm, SwiGLU MLP, rotary positions (rope_theta), grouped-query attention (num_kv_heads), optional QKV bias.
- MoE (a llama-family spec with `moe`): the MLP of every MoE layer is execute/moe.py's `MoE` (router, routed experts,
  shared experts); the leading `first_k_dense` layers and `dense_layers` keep the dense SwiGLU.
- qk_norm (Qwen3): an RMSNorm of head_dim on every query and key head before RoPE (`Attention.q_norm`, `k_norm`).
- sliding_window (Mistral, Qwen, GPT-OSS): a sliding layer's queries see the window's keys only (execute/
  window_attention.py, on every attention path: plain, context-parallel, seq1f1b chunks; over a sequence of twice
  the window or more in blocks of the band, no s x s mask); `full_attention_layers` keep the whole past.
- GPT-OSS: attention sinks (`AttentionCore.sinks`, `with_sink_key`: a key every query sees; causal layers keep the
  kernel's causal form, no mask), the output projection's bias, the clamped
  SwiGLU (`gated`); its biased experts are execute/moe.py's.
- RoPE with the model's scaling (Llama 3.x's band, YaRN): execute/rope.py.
- mla (DeepSeek-V2/V3): every block's attention is execute/mla.py's `LatentAttention` (`make_attention`).

Q, K and V are separate projections (not one fused matrix) so that column-parallel TP splits heads correctly.
Attention is `F.scaled_dot_product_attention(is_causal=True)` ("flash": memory-efficient) or an explicit
softmax(QK^T / sqrt(d)) ("standard"); under context parallelism (`context_parallel.py`) each rank holds a share of
the sequence, attends to every rank's K/V, and RoPE / learned positions read the real positions of its tokens.
Head counts are read from tensor shapes, so a TP-sharded block just sees fewer heads. Modules are built on the meta
device; `init_weights` fills them deterministically from the seed.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from autoconf.execute.rope import rope_scaling_of, rotate
from autoconf.execute.window_attention import attend_within, causal_or
from autoconf.spec.model import CLAMPED_SWIGLU_ALPHA, SINK_WIDTH, ModelSpec

EMBED_WEIGHT = "embed.tok.weight"
HEAD_WEIGHT = "output.weight"
MTP_EMBED = "mtp_embed."  # the last pipeline stage's copy of the embedding, for its MTP modules (execute/mtp.py)


def embedding_source(fqn: str, tied: bool) -> str:
    """The name of the embedding parameter (or its optimizer state) that `fqn` copies on another pipeline stage:
    the tied head copy's (`output.weight`, where `tied`) and the MTP modules' embedding copy's (`mtp_embed.*`) is the
    first stage's `embed.*`; any other name is its own."""
    if fqn.startswith(MTP_EMBED) or f".{MTP_EMBED}" in fqn:
        return fqn.replace(MTP_EMBED, "embed.", 1)
    return fqn.replace(HEAD_WEIGHT, EMBED_WEIGHT, 1) if tied else fqn


class Embedding(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.tok = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.pos = nn.Embedding(spec.max_seq_len, spec.hidden_size) if spec.learned_positions else None
        self.dropout = nn.Dropout(spec.dropout)
        self.context = None  # set by context_parallel.attach: this rank's share of the sequence

    def forward(self, tokens: torch.Tensor, ahead: int = 0) -> torch.Tensor:
        """The embedding of `tokens`; with `ahead` k, tokens that stand k positions ahead of their place (an MTP
        module's input, execute/mtp.py): learned positions k further, as Megatron-Core rolls the position ids
        with the tokens (the last k places of the sequence, which no loss reads, take position 0)."""
        h = self.tok(tokens)
        if self.pos is not None:
            positions = token_positions(self.context, tokens.shape[1], tokens.device)
            if ahead:
                length = tokens.shape[1] if self.context is None else self.context.seq_len
                positions = torch.where(positions + ahead < length, positions + ahead, 0)
            h = h + self.pos(positions.unsqueeze(0))
        return self.dropout(h)


def token_positions(context, seq: int, device) -> torch.Tensor:
    """Positions of the `seq` tokens a module sees: 0..seq-1, or under context parallelism the real positions of
    this rank's chunks."""
    return torch.arange(seq, device=device) if context is None else context.positions


def rope_positions(context, seq: int) -> tuple[torch.Tensor | None, int]:
    """(positions, length) of the `seq` tokens a module sees, as `rope.rotate` takes them: (None, seq) for
    0..seq-1, or the real positions of this rank's tokens (context parallelism, sequence chunks) and the whole
    sequence's length, which they lie below."""
    return (None, seq) if context is None else (context.positions, context.seq_len)


def with_sink_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor):
    """(q, k, v) with the attention sink as the first key, for a softmax scaled by the original 1 / sqrt(d): q gains
    SINK_WIDTH columns holding sqrt(d) x its head's sink logit (then zeros), each key SINK_WIDTH zero columns, and the
    sink key (zero but a one under the query's logit column) has a zero value, so its score is the head's sink logit
    and it adds to the softmax's denominator only. The values gain SINK_WIDTH zero columns too (the output's last
    ones, to be dropped): kernels that need Q, K and V of one width (FlashAttention's, torch's CPU flash) take them.
    Works for grouped K/V: the logit rides on the query heads. Every query must see the sink key (`attend`)."""
    b, heads, queries, d = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    logit = (sinks.to(q.dtype) * d ** 0.5).view(1, heads, 1, 1).expand(b, heads, queries, 1)
    q = torch.cat([q, logit, q.new_zeros(b, heads, queries, SINK_WIDTH - 1)], dim=-1)
    k = torch.cat([k, k.new_zeros(b, kv_heads, keys, SINK_WIDTH)], dim=-1)
    sink_key = torch.cat([k.new_zeros(b, kv_heads, 1, d), k.new_ones(b, kv_heads, 1, 1),
                          k.new_zeros(b, kv_heads, 1, SINK_WIDTH - 1)], dim=-1)
    k = torch.cat([sink_key, k], dim=2)
    v = F.pad(v, (0, SINK_WIDTH, 1, 0))
    return q, k, v


class AttentionCore(nn.Module):
    """What every attention module shares: the causal attention math over per-head Q, K, V (`core`, `attend`), its
    selective recompute and its context-parallel exchange. Subclasses make Q, K and V (`Attention`: grouped-query;
    execute/mla.py `LatentAttention`: DeepSeek's latent attention)."""

    def __init__(self, spec: ModelSpec, attention: str, window: int | None = None):
        super().__init__()
        self.attention = attention
        self.window = window  # the sliding window of the block's layer (`ModelSpec.attention_window`), or None
        self.p_attn = spec.dropout
        self.resid_dropout = nn.Dropout(spec.dropout)
        self.recompute_core = False  # set by parallelize (selective recompute)
        self.core_as_op = False  # set by parallelize (the per-op policy: CP attention as one op, cp_attention.py)
        self.context = None  # set by context_parallel.attach: K/V exchanged over the CP group
        # GPT-OSS's attention sinks: one learned logit per head that joins every query's softmax (its probability
        # weighs a value of zero); split over the TP ranks with the heads (parallelize.py).
        self.sinks = nn.Parameter(torch.empty(spec.num_heads)) if spec.attention_sinks else None

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(QK^T / sqrt(d)) V with a causal mask, within the layer's sliding window where it has one
        (`window_attention.attend_within`); q [b, heads, s, d], k and v [b, kv_heads, s, d] (v's width may differ
        from q's: latent attention). Under context parallelism the rank's queries attend to every CP rank's K/V
        (`ContextParallel.attention`), under seq1f1b to the earlier chunks' (`seq_chunks.LayerChunks`); both mask
        the window too."""
        p = self.p_attn if self.training else 0.0
        if self.context is not None:
            # the per-op policy: CP's exchange as one op (seq1f1b's context ignores it)
            return self.context.attention(q, k, v, p, self.attend, as_op=self.core_as_op, window=self.window,
                                          sinks=self.local_sinks())
        return attend_within(self.attend, q, k, v, self.window, p)

    def local_sinks(self) -> torch.Tensor | None:
        """This rank's sink logits (its heads' under TP), or None without sinks."""
        if self.sinks is None:
            return None
        from torch.distributed.tensor import DTensor

        return self.sinks.to_local() if isinstance(self.sinks, DTensor) else self.sinks

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               p: float) -> torch.Tensor:
        """The attention math: `mask` [q positions, k positions] True where a query may see a key, None for the
        causal mask of equal query and key positions, or torch's lower-right causal bias (`causal_lower_right`: the
        queries are the last keys' positions), which the fused kernels apply without a mask tensor; a mask may carry
        leading batch dimensions (`banded_attention`'s blocks). The fused kernel reads grouped K and V as they are
        (`enable_gqa`: it keeps them for its backward unrepeated). With sinks, one key more that every query sees
        (`with_sink_key`): under the plain causal mask, or a lower-right bias from `window_attention.lower_right`,
        the fused kernel stays causal with one leading query more (it sees the sink key only and its row is
        dropped), otherwise the mask gains the sink key's column."""
        scale = q.shape[-1] ** -0.5
        if self.sinks is None:
            return self._kernel(q, k, v, mask, p, scale)
        width = v.shape[-1]
        causal = mask is None or getattr(mask, "with_sink_key", None) is not None
        if causal and self.attention == "flash":
            # causal attention with the sink key first: one leading query more keeps the kernel's causal form
            q, k, v = with_sink_key(F.pad(q, (0, 0, 1, 0)), k, v, self.local_sinks())
            return self._kernel(q, k, v, None if mask is None else mask.with_sink_key, p, scale)[:, :, 1:, :width]
        mask = causal_or(mask, q.shape[-2], k.shape[-2], q.device)
        q, k, v = with_sink_key(q, k, v, self.local_sinks())
        mask = torch.cat([mask.new_ones(*mask.shape[:-1], 1), mask], dim=-1)
        return self._kernel(q, k, v, mask, p, scale)[..., :width]

    def _kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, p: float,
                scale: float) -> torch.Tensor:
        """`attend`'s math without sinks: SDPA ("flash") or the explicit softmax ("standard")."""
        if self.attention == "flash":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=p,
                                                  enable_gqa=k.shape[1] != q.shape[1], scale=scale)
        if k.shape[1] != q.shape[1]:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        mask = causal_or(mask, q.shape[-2], k.shape[-2], q.device)
        scores = (q @ k.transpose(-2, -1)) * scale
        probs = scores.float().masked_fill(~mask, float("-inf")).softmax(dim=-1).to(q.dtype)
        return F.dropout(probs, p) @ v

    def attend_and_project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The core (checkpointed under selective recompute) over q, k, v [b, heads, s, d], then the output
        projection `wo` and the residual dropout: [b, s, hidden]."""
        b, s = q.shape[0], q.shape[2]
        if self.recompute_core and torch.is_grad_enabled():
            out = checkpoint(self.core, q, k, v, use_reentrant=False)
        else:
            out = self.core(q, k, v)
        out = out.transpose(1, 2).reshape(b, s, -1)
        return self.resid_dropout(self.wo(out))


class Attention(AttentionCore):
    """Grouped-query attention: Q, K, V projections, with Qwen3's qk-norm (`qk_norm`: an RMSNorm of head_dim on
    every query and key head, `q_norm` and `k_norm`, before RoPE) when the spec has it."""

    def __init__(self, spec: ModelSpec, attention: str, window: int | None = None):
        super().__init__(spec, attention, window)
        h, kv, q = spec.hidden_size, spec.kv_dim, spec.q_dim
        qkv_bias = spec.linear_bias or spec.qkv_bias
        self.wq = nn.Linear(h, q, bias=qkv_bias)
        self.wk = nn.Linear(h, kv, bias=qkv_bias)
        self.wv = nn.Linear(h, kv, bias=qkv_bias)
        self.wo = nn.Linear(q, h, bias=spec.linear_bias or spec.out_proj_bias)
        self.q_norm = nn.RMSNorm(spec.head_dim, eps=spec.norm_eps) if spec.qk_norm else None
        self.k_norm = nn.RMSNorm(spec.head_dim, eps=spec.norm_eps) if spec.qk_norm else None
        self.head_dim = spec.head_dim
        self.rope_theta = spec.rope_theta if spec.arch == "llama" else None
        self.rope_scaling = rope_scaling_of(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        b, s = q.shape[0], q.shape[1]
        q, k, v = (t.view(b, s, -1, self.head_dim) for t in (q, k, v))
        if self.q_norm is not None:  # [b, s, heads, head_dim]: under TP the heads dimension is this rank's share
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.rope_theta is not None:
            positions, length = rope_positions(self.context, s)
            q, k = (rotate(t, self.rope_theta, positions, self.rope_scaling, length) for t in (q, k))
        return self.attend_and_project(q, k, v)


def make_attention(spec: ModelSpec, attention: str, layer: int | None = None) -> AttentionCore:
    """Block `layer`'s attention, with the layer's sliding window (None: a block of no layer, full attention, as
    the profiler times it): DeepSeek's multi-head latent attention (execute/mla.py) where the spec has `mla`, else
    grouped-query attention."""
    window = None if layer is None else spec.attention_window(layer)
    if spec.mla is not None:
        from autoconf.execute.mla import LatentAttention

        return LatentAttention(spec, attention, window)
    return Attention(spec, attention, window)


class GeluMLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden_size, spec.ffn_hidden_size, bias=True)
        self.fc2 = nn.Linear(spec.ffn_hidden_size, spec.hidden_size, bias=True)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


def gated(gate: torch.Tensor, up: torch.Tensor, limit: float | None = None) -> torch.Tensor:
    """SwiGLU's silu(gate) x up; with a `limit` (GPT-OSS's swiglu_limit) its clamped form: the gate clamped from
    above and the up projection both ways at the limit, then gate x sigmoid(alpha gate) x (up + 1), alpha
    `CLAMPED_SWIGLU_ALPHA`."""
    if limit is None:
        return F.silu(gate) * up
    gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return gate * torch.sigmoid(CLAMPED_SWIGLU_ALPHA * gate) * (up + 1)


class SwiGLU(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.w1 = nn.Linear(spec.hidden_size, spec.ffn_hidden_size, bias=False)  # gate
        self.w3 = nn.Linear(spec.hidden_size, spec.ffn_hidden_size, bias=False)  # up
        self.w2 = nn.Linear(spec.ffn_hidden_size, spec.hidden_size, bias=False)  # down
        self.dropout = nn.Dropout(spec.dropout)
        self.limit = spec.swiglu_limit
        self.recompute_gate = False  # set by parallelize (selective recompute): silu(gate) is recomputed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x), self.w3(x)
        if self.recompute_gate and torch.is_grad_enabled():
            hidden = checkpoint(gated, gate, up, self.limit, use_reentrant=False)
        else:
            hidden = gated(gate, up, self.limit)
        return self.dropout(self.w2(hidden))


def make_norm(spec: ModelSpec) -> nn.Module:
    if spec.arch == "gpt":
        return nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps, bias=True)
    return nn.RMSNorm(spec.hidden_size, eps=spec.norm_eps)


def make_ffn(spec: ModelSpec, layer: int | None) -> nn.Module:
    """Block `layer`'s MLP: an MoE layer (execute/moe.py) where the spec has one, else the dense MLP."""
    if layer is not None and spec.is_moe_layer(layer):
        from autoconf.execute.moe import MoE

        return MoE(spec)
    return GeluMLP(spec) if spec.arch == "gpt" else SwiGLU(spec)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, attention: str, layer: int | None = None):
        super().__init__()
        self.attention_norm = make_norm(spec)
        self.attention = make_attention(spec, attention, layer)
        self.ffn_norm = make_norm(spec)
        self.feed_forward = make_ffn(spec, layer)
        self.recompute_full = False  # set by parallelize (full recompute)
        self.recompute_ops = False  # set by parallelize (the per-op selective policy, execute/checkpoint_policy.py)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute_full and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        if self.recompute_ops and torch.is_grad_enabled():
            from autoconf.execute.checkpoint_policy import checkpoint_ops

            return checkpoint_ops(self._forward, x)
        return self._forward(x)


class Transformer(nn.Module):
    """Layers [first, end) of the model, with the embedding if `embed` and the final norm + head if `head`.

    Input: token ids [batch, seq] (with the embedding) or hidden states [batch, seq, hidden];
    output: logits [batch, seq, vocab] (with the head) or hidden states.
    """

    def __init__(self, spec: ModelSpec, first: int = 0, end: int | None = None, embed: bool = True,
                 head: bool = True, attention: str = "flash"):
        super().__init__()
        end = spec.num_layers if end is None else end
        self.spec = spec
        self.embed = Embedding(spec) if embed else None
        self.layers = nn.ModuleDict({str(i): Block(spec, attention, i) for i in range(first, end)})
        self.norm = make_norm(spec) if head else None
        self.output = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False) if head else None
        # DeepSeek-V3's multi-token-prediction modules, on the chunk with the head (execute/mtp.py); without the
        # embedding (a pipeline's last stage) with a copy of it (`mtp_embed`), kept equal by pipeline.EmbeddingSync.
        self.mtp = self.mtp_embed = None
        if spec.mtp_num_layers and head:
            from autoconf.execute.mtp import MTPModule

            self.mtp = nn.ModuleDict({str(k): MTPModule(spec, attention) for k in range(spec.mtp_num_layers)})
            if not embed:
                self.mtp_embed = Embedding(spec)
        self.tie_weights()

    def blocks(self):
        """(global layer index, block) of every transformer block of the chunk: its layers, then its MTP modules'
        blocks (indices num_layers, num_layers + 1, ...: after every layer of the model)."""
        yield from ((int(i), block) for i, block in self.layers.items())
        if self.mtp is not None:
            yield from ((self.spec.num_layers + int(k), m.block) for k, m in self.mtp.items())

    @property
    def ties_locally(self) -> bool:
        """True when the LM head shares the embedding matrix inside this module."""
        return self.spec.tied_embeddings and self.embed is not None and self.output is not None

    @property
    def head_is_tied_copy(self) -> bool:
        """True when this stage's head is a separate copy of an embedding that lives in another stage."""
        return self.spec.tied_embeddings and self.embed is None and self.output is not None

    @property
    def mtp_embedding(self):
        """The embedding the MTP modules read: the chunk's own, or on a pipeline's last stage its copy."""
        return self.embed if self.mtp_embed is None else self.mtp_embed

    def is_embedding_copy(self, fqn: str) -> bool:
        """Whether parameter `fqn` of this chunk copies the first stage's embedding (the tied head copy, the MTP
        modules' embedding copy): its gradient equals the embedding's once synced, so the norm counts it once."""
        return embedding_source(fqn, self.head_is_tied_copy) != fqn

    def tie_weights(self) -> None:
        if self.ties_locally:
            self.output.weight = self.embed.tok.weight
        if self.mtp_embed is not None and self.head_is_tied_copy:
            self.mtp_embed.tok.weight = self.output.weight  # one copy of a tied embedding on the last stage

    def forward(self, x: torch.Tensor, mtp_future: torch.Tensor | None = None):
        """The chunk's output; given `mtp_future` (the tokens ahead of each place, execute/mtp.py `future_tokens`)
        on a chunk with MTP modules, the tuple (logits, each MTP module's logits) (`mtp_logits`). Other chunks
        ignore `mtp_future` (a pipeline passes it to every stage)."""
        if self.embed is not None:
            x = self.embed(x)
        for layer in self.layers.values():
            x = layer(x)
        if self.norm is not None:
            x = self.norm(x)
        extra = None
        if self.mtp is not None and mtp_future is not None:
            from autoconf.execute.mtp import mtp_logits

            extra = mtp_logits(self, x, mtp_future)
        if self.output is not None:
            x = self.output(x)
        return x if extra is None else (x, *extra)


class OneBlock(nn.Module):
    """A model whose layers are one block and nothing else: what the model-level passes of execute/parallelize.py
    (recompute, FP8 linears, activation offload) walk, for measuring a block alone."""

    def __init__(self, block: Block):
        super().__init__()
        self.layers = nn.ModuleDict({"0": block})
        self.mtp = None

    def blocks(self):
        yield 0, self.layers["0"]


def build_model(spec: ModelSpec, first: int = 0, end: int | None = None, embed: bool = True, head: bool = True,
                attention: str = "flash", device: str | torch.device = "meta") -> Transformer:
    with torch.device(device):
        return Transformer(spec, first, end, embed, head, attention)


# ---- deterministic initialisation ------------------------------------------------------------------------------
def init_seed(seed: int, fqn: str) -> int:
    """Generator seed of one parameter: a stable hash of (seed, parameter name)."""
    digest = hashlib.sha256(f"{seed}:{fqn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def init_value(spec: ModelSpec, fqn: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """The full fp32 CPU value of parameter `fqn`: N(0, 0.02) weights (GPT-2's 0.02/sqrt(2L) on the projections
    into the residual stream), zero biases, unit norm weights. A copy of the embedding on another stage (a tied head
    copy, the MTP modules' copy: `embedding_source`) takes the embedding's value."""
    fqn = embedding_source(fqn, spec.tied_embeddings)
    name = fqn.rsplit(".", 2)
    leaf, owner = name[-1], name[-2] if len(name) > 1 else ""
    if leaf == "bias" or leaf.endswith("_bias"):  # (the routed experts' w1_bias, w3_bias, w2_bias)
        return torch.zeros(shape)
    if owner.endswith("norm"):
        return torch.ones(shape)
    into_residual = owner in ("wo", "fc2", "w2") or (owner == "experts" and leaf == "w2")  # MoE: experts.w2
    std = 0.02 / math.sqrt(2 * spec.num_layers) if into_residual else 0.02
    gen = torch.Generator().manual_seed(init_seed(seed, fqn))
    return torch.empty(shape).normal_(0.0, std, generator=gen)


@torch.no_grad()
def init_weights(model: Transformer, seed: int) -> None:
    """Fills every (possibly TP-sharded) parameter of a materialised model with its seeded full value."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for fqn, param in model.named_parameters():
        full = init_value(model.spec, fqn, param.shape, seed).to(param.device)
        if isinstance(param, DTensor):
            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
            param.to_local().copy_(local)
        else:
            param.copy_(full)
