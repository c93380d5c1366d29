"""The model spec: decoder-only transformers, and what each layer costs in parameters, FLOPs and activation bytes.

Two families are described:
- "gpt":   LayerNorm with bias, GeLU MLP (ffn = 4h by default), learned positions, biases on every linear layer.
- "llama": RMSNorm, SwiGLU MLP, rotary positions, grouped-query attention, no biases (qwen2 adds a QKV bias).

A llama-family model may have mixture-of-experts layers (`MoESpec`: Mixtral, Qwen-MoE, DeepSeek) and multi-head
latent attention (`MLASpec`: DeepSeek). Parameter counts and FLOPs are sums over the op table (spec/layers.py).

Activation bytes follow "Reducing Activation Recomputation in Large Transformer Models" (Korthikanti et al.),
derived tensor by tensor so that the GPT layer with dropout reproduces the paper's s*b*h*(34 + 5*a*s/h), and the same
derivation covers SwiGLU, grouped-query attention, memory-efficient attention and any activation dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass

from autoconf.errors import UserError
from autoconf.files import is_version, listed, quoted, shown
from autoconf.spec import layers
from autoconf.spec.hashing import remembered_hash

MAX_LAYERS = 100_000  # layers are listed and simulated one by one; more is a typo, not a model
# The largest size of each other field: beyond them no model exists and the arithmetic leaves floats.
MAX_SIZES = {"hidden_size": 1 << 20, "ffn_hidden_size": 1 << 22, "num_heads": 1 << 16, "num_kv_heads": 1 << 16,
             "vocab_size": 1 << 24, "max_seq_len": 1 << 34, "head_dim": 1 << 16, "num_experts": 1 << 16,
             "moe_intermediate_size": 1 << 22, "shared_expert_intermediate_size": 1 << 22,
             "num_shared_experts": 1 << 16, "q_lora_rank": 1 << 20, "kv_lora_rank": 1 << 20,
             "qk_nope_head_dim": 1 << 16, "qk_rope_head_dim": 1 << 16, "v_head_dim": 1 << 16}


def _too_large(spec) -> list[str]:
    """A problem for each field of `spec` bounded in MAX_SIZES whose integer value exceeds its bound."""
    values = {name: getattr(spec, name) for name in MAX_SIZES if hasattr(spec, name)}
    return [f"{name} {shown(value, 24)} is more than the {MAX_SIZES[name]:,} autoconf plans"
            for name, value in values.items() if isinstance(value, int) and value > MAX_SIZES[name]]

DEFAULT_SEQ_LEN = 8192  # the longest sequence planned without --seq-len
ARCHES = ("gpt", "llama")
RECOMPUTE = ("none", "selective", "full")
ATTENTION = ("flash", "standard")
MTP_NORMS = 3  # of one MTP module: enorm, hnorm and its final norm (`ModelSpec.mtp_extra_params`)
CLAMPED_SWIGLU_ALPHA = 1.702  # GPT-OSS's gate x sigmoid(alpha gate) under `swiglu_limit` (transformers' swiglu_alpha)
SINK_WIDTH = 8  # the head width autoconf's executor adds to Q, K and V for sinks (kernels take multiples of 8)


def is_printable_name(value) -> bool:
    """A name (of a model, a cluster, a device) is data: a non-empty string without control characters, so that no
    script, comment or log line it is written into can be broken out of."""
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and
                                                                        math.isfinite(value))


def _from_dict(cls, data, source: str, what: str):
    """Builds a frozen spec dataclass from a JSON object, naming unknown and missing fields."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object describing {what}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{source}: unknown {what} field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    missing = sorted(name for name, f in fields.items() if f.default is dataclasses.MISSING and name not in data)
    if missing:
        raise UserError(f"{source}: missing {what} field(s) {', '.join(missing)}")
    try:
        return cls(**data)
    except UserError as err:  # the spec's own checks already name `what`
        raise UserError(f"{source}: {str(err).removeprefix(what + ': ')}") from None


ROUTER_SCORING = ("softmax", "sigmoid")


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts layers. Names follow Hugging Face (DeepSeek's `n_routed_experts` is `num_experts`, its
    `n_shared_experts` is `num_shared_experts`, its `first_k_dense_replace` is `first_k_dense`).

    A layer is an MoE layer unless it is one of the first `first_k_dense` layers or listed in `dense_layers`
    (Qwen's `mlp_only_layers` and sparse step, DeepSeek's `moe_layer_freq`); dense layers use the model's
    ffn_hidden_size. Each routed expert and each shared expert is a SwiGLU MLP.
    """

    num_experts: int                          # routed experts per MoE layer
    num_experts_per_tok: int                  # top-k: routed experts each token is sent to
    moe_intermediate_size: int                # FFN width of one routed expert
    num_shared_experts: int = 0               # experts every token passes through
    shared_expert_intermediate_size: int = 0  # FFN width of one shared expert (0 without shared experts)
    shared_expert_gate: bool = False          # Qwen2-MoE: a sigmoid gate (a h x 1 linear) on the shared expert
    first_k_dense: int = 0                    # leading layers with a dense MLP
    dense_layers: tuple = ()                  # further layers with a dense MLP (indices)
    capacity_factor: float | None = None      # tokens an expert takes, over the even share; None: dropless
    scoring_func: str = "softmax"             # router scores: softmax (Mixtral, Qwen) or sigmoid (DeepSeek-V3)
    norm_topk_prob: bool = True               # renormalise the top-k scores to sum to 1
    router_bias: bool = False                 # a learned per-expert bias in the router linear
    n_group: int = 1                          # group-limited routing: experts in n_group groups ...
    topk_group: int = 1                       # ... of which a token may use topk_group
    routed_scaling_factor: float = 1.0        # scale on the routed experts' output
    router_aux_loss_coef: float = 0.0         # load-balancing loss coefficient
    expert_bias: bool = False                 # GPT-OSS: a bias on every routed expert's projections

    def __post_init__(self) -> None:
        if isinstance(self.dense_layers, list):
            object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        problems = []
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group", "topk_group"):
            if not _positive_int(getattr(self, name)):
                problems.append(f"{name} must be a positive integer (got {quoted(getattr(self, name))})")
        problems += _too_large(self)
        for name in ("num_shared_experts", "shared_expert_intermediate_size", "first_k_dense"):
            value = getattr(self, name)
            if not (_positive_int(value) or (value == 0 and isinstance(value, int) and not isinstance(value, bool))):
                problems.append(f"{name} must be an integer >= 0 (got {quoted(value)})")
        for name in ("shared_expert_gate", "norm_topk_prob", "router_bias", "expert_bias"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false (got {quoted(getattr(self, name))})")
        if not isinstance(self.dense_layers, tuple):
            problems.append(f"dense_layers must be a list of layer indices, e.g. [1, 3] (got "
                            f"{quoted(self.dense_layers)})")
        else:  # (whether each index is a layer of the model, the model checks: `dense_layers_problem`)
            odd = [i for i in self.dense_layers if isinstance(i, bool) or not isinstance(i, int)]
            if odd:
                problems.append(f"dense_layers {listed([quoted(i, 24) for i in odd])} "
                                f"{'is not a layer index' if len(odd) == 1 else 'are not layer indices'} (whole "
                                f"numbers from 0)")
        if self.capacity_factor is not None and not (_number(self.capacity_factor) and self.capacity_factor > 0):
            problems.append(f"capacity_factor must be a positive number, or null for dropless routing "
                            f"(got {quoted(self.capacity_factor)})")
        elif (self.capacity_factor is not None and _positive_int(self.num_experts)
              and _positive_int(self.num_experts_per_tok)
              and self.capacity_factor > self.num_experts / self.num_experts_per_tok):
            most = self.num_experts / self.num_experts_per_tok
            problems.append(f"capacity_factor {self.capacity_factor:g} lets an expert take more tokens than a batch "
                            f"holds; use at most num_experts / num_experts_per_tok = {most:g}, or null for dropless "
                            f"routing")
        if self.scoring_func not in ROUTER_SCORING:
            problems.append(f"scoring_func {quoted(self.scoring_func)} is not one of {', '.join(ROUTER_SCORING)}")
        for name in ("routed_scaling_factor", "router_aux_loss_coef"):
            value = getattr(self, name)
            if not _number(value) or value < 0 or (name == "routed_scaling_factor" and value == 0):
                problems.append(f"{name} must be a {'positive' if name == 'routed_scaling_factor' else 'non-negative'}"
                                f" number (got {quoted(value)})")
        if not problems:
            if self.num_experts_per_tok > self.num_experts:
                problems.append(f"num_experts_per_tok {shown(self.num_experts_per_tok, 24)} exceeds the "
                                f"{self.num_experts} experts (top-k must be 1..{self.num_experts})")
            if self.num_shared_experts > 0 and not self.shared_expert_intermediate_size:
                problems.append(f"num_shared_experts {self.num_shared_experts} needs a positive "
                                f"shared_expert_intermediate_size (got 0)")
            if self.shared_expert_intermediate_size > 0 and not self.num_shared_experts:
                problems.append(f"shared_expert_intermediate_size {self.shared_expert_intermediate_size} needs "
                                f"num_shared_experts 1 or more (got 0); or set it to 0 without shared experts")
            if self.shared_expert_gate and not self.num_shared_experts:
                problems.append("shared_expert_gate needs a shared expert")
            if self.num_experts % self.n_group:
                problems.append(f"n_group {self.n_group} does not divide the {self.num_experts} experts")
            elif self.topk_group > self.n_group:
                problems.append(f"topk_group {self.topk_group} exceeds n_group {self.n_group}")
            elif self.n_group > 1 and self.num_experts_per_tok > self.num_experts // self.n_group * self.topk_group:
                problems.append(f"num_experts_per_tok {shown(self.num_experts_per_tok, 24)} exceeds the "
                                f"{self.num_experts // self.n_group * self.topk_group} experts in topk_group "
                                f"{self.topk_group} of {self.n_group} groups")
        if problems:
            raise UserError("moe: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "dense_layers": list(self.dense_layers)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "moe") -> "MoESpec":
        return _from_dict(cls, data, source, "moe")


@dataclass(frozen=True)
class YarnSpec:
    """YaRN RoPE scaling (rope_type "yarn": GPT-OSS, DeepSeek-V3, Qwen's long-context configs), with transformers'
    names: rotary frequencies whose wavelength fits `original_context` at least beta_fast times are kept, those at
    most beta_slow times are divided by `factor`, a linear ramp between (`truncate`: its ends rounded outwards);
    cos and sin are multiplied by `attention_factor` (transformers' value from factor, mscale and mscale_all_dim
    when a config gives none)."""

    factor: float
    original_context: int
    attention_factor: float
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    # DeepSeek's attention (transformers' DeepseekV2/V3Attention): the softmax scale times mscale(factor,
    # mscale_all_dim)^2 where a config gives mscale_all_dim; 1 elsewhere.
    softmax_scale: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("factor", "attention_factor", "beta_fast", "beta_slow", "softmax_scale"):
            value = getattr(self, name)
            if not _number(value) or value <= 0:
                problems.append(f"{name} must be a positive number (got {quoted(value)})")
        if not _positive_int(self.original_context):
            problems.append(f"original_context must be a positive integer (got {quoted(self.original_context)})")
        if not isinstance(self.truncate, bool):
            problems.append(f"truncate must be true or false (got {quoted(self.truncate)})")
        if problems:
            raise UserError("rope_yarn: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "rope_yarn") -> "YarnSpec":
        return _from_dict(cls, data, source, "rope_yarn")


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3), with Hugging Face's names."""

    q_lora_rank: int | None  # query bottleneck rank; None: one full query projection
    kv_lora_rank: int        # rank of the latent that keys and values are projected up from
    qk_nope_head_dim: int    # per-head query/key width without rotary positions
    qk_rope_head_dim: int    # per-head query/key width with rotary positions (one rotary key shared by all heads)
    v_head_dim: int          # per-head value width

    def __post_init__(self) -> None:
        problems = [f"{f.name} must be a positive integer (got {quoted(getattr(self, f.name))})"
                    for f in dataclasses.fields(self)
                    if not _positive_int(getattr(self, f.name)) and not (f.name == "q_lora_rank"
                                                                          and getattr(self, f.name) is None)]
        problems += _too_large(self)
        if not problems and self.qk_rope_head_dim % 2:
            problems.append(f"qk_rope_head_dim must be even (RoPE rotates pairs of values; got "
                            f"{self.qk_rope_head_dim})")
        if problems:
            raise UserError("mla: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "mla") -> "MLASpec":
        return _from_dict(cls, data, source, "mla")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer. Every field is a published hyper-parameter of the model."""

    name: str
    arch: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    max_seq_len: int
    tied_embeddings: bool = False
    dropout: float = 0.0
    qkv_bias: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Width of one attention head; None: hidden_size / num_heads (resolved on construction, so a
    # dataclasses.replace that changes hidden_size or num_heads must pass head_dim=None).
    head_dim: int | None = None
    qk_norm: bool = False            # an RMSNorm on each query and key head (Qwen3)
    moe: MoESpec | None = None       # mixture-of-experts layers; None: every layer has a dense MLP
    mla: MLASpec | None = None       # multi-head latent attention (DeepSeek); None: grouped-query attention
    rope_scaling_factor: float = 1.0  # Llama 3.x ("llama3" rope_type) RoPE scaling factor; 1 is none
    # The rest of the "llama3" scaling (transformers' _compute_llama3_parameters): rotary wavelengths longer than
    # rope_original_context / rope_low_freq_factor are stretched by the factor, those shorter than
    # rope_original_context / rope_high_freq_factor kept, the ones between interpolated; Llama 3.1's 1, 4 and 8192
    # unless a config says otherwise. Read only where rope_scaling_factor > 1.
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    rope_yarn: YarnSpec | None = None  # YaRN scaling (GPT-OSS, DeepSeek-V3); None: none
    rope_linear_factor: float = 1.0  # linear RoPE scaling ("linear" rope_type): positions divided by it; 1 is none
    # A RoPE scaling read for the context it reaches only ("dynamic, factor 2", "longrope"): the executor and the
    # exports rotate positions unscaled, and say so; None: none.
    rope_unapplied: str | None = None
    # Multi-token-prediction modules (DeepSeek-V3, HF num_nextn_predict_layers; Megatron-Core --mtp-num-layers),
    # trained after the last block on the last pipeline stage; 0: none.
    mtp_num_layers: int = 0
    # Sliding-window attention (Mistral, Qwen, GPT-OSS): a token of a sliding layer attends to itself and the
    # sliding_window - 1 tokens before it; None: every layer attends to the whole causal sequence.
    sliding_window: int | None = None
    # The layers that attend to the whole sequence although the model has a window (transformers' layer_types
    # "full_attention": GPT-OSS's odd layers, Qwen's layers below max_window_layers); () with a window: all slide.
    full_attention_layers: tuple = ()
    # GPT-OSS: a learned logit per attention head that joins each softmax (attention sinks), a bias on the attention
    # output projection (its attention_bias biases q, k, v and o: qkv_bias and out_proj_bias), and its clamped
    # SwiGLU: gate and up clamped at swiglu_limit, out = (up + 1) * gate * sigmoid(CLAMPED_SWIGLU_ALPHA gate);
    # None: plain SwiGLU.
    attention_sinks: bool = False
    out_proj_bias: bool = False
    swiglu_limit: float | None = None

    __hash__ = remembered_hash

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.moe, dict):
            object.__setattr__(self, "moe", MoESpec.from_dict(self.moe))
        if isinstance(self.mla, dict):
            object.__setattr__(self, "mla", MLASpec.from_dict(self.mla))
        if isinstance(self.rope_yarn, dict):
            object.__setattr__(self, "rope_yarn", YarnSpec.from_dict(self.rope_yarn))
        if isinstance(self.full_attention_layers, list):
            object.__setattr__(self, "full_attention_layers", tuple(self.full_attention_layers))
        if self.arch not in ARCHES:
            problems.append(f"arch {quoted(self.arch)} is not one of {', '.join(ARCHES)}")
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size",
                      "max_seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{field} must be a positive integer (got {quoted(value)})")
        problems += _too_large(self)
        if isinstance(self.mtp_num_layers, bool) or not isinstance(self.mtp_num_layers, int) or self.mtp_num_layers < 0:
            problems.append(f"mtp_num_layers must be a whole number, 0 for none (got {quoted(self.mtp_num_layers)})")
        elif _positive_int(self.num_layers) and self.num_layers + self.mtp_num_layers > MAX_LAYERS:
            problems.append(f"num_layers {self.num_layers} (with mtp_num_layers {self.mtp_num_layers}) is more than "
                            f"the {MAX_LAYERS:,} layers autoconf plans")
        if self.head_dim is not None and not _positive_int(self.head_dim):
            problems.append(f"head_dim must be a positive integer or null (got {quoted(self.head_dim)})")
        if self.sliding_window is not None and not _positive_int(self.sliding_window):
            problems.append(f"sliding_window must be a positive integer or null (got {quoted(self.sliding_window)})")
        wrong = full_attention_layers_problem(self.full_attention_layers, self.num_layers, self.sliding_window)
        if wrong:
            problems.append(wrong)
        if not problems:
            if self.head_dim is None and self.hidden_size % self.num_heads:
                problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads} "
                                f"(give head_dim)")
            if self.num_heads % self.num_kv_heads:
                problems.append(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
            if self.head_dim is None and not self.hidden_size % self.num_heads:
                object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
            if isinstance(self.mla, MLASpec) and self.num_kv_heads != self.num_heads:
                problems.append(f"num_kv_heads {self.num_kv_heads} must equal num_heads {self.num_heads} under "
                                f"multi-head latent attention (mla): every query head gets its own key and value "
                                f"from the latent")
            if self.arch == "llama" and self.mla is None and self.head_dim is not None and self.head_dim % 2:
                problems.append(f"head_dim {self.head_dim} must be even: RoPE rotates pairs of values (hidden_size / "
                                f"num_heads, or the head_dim given)")
        if not isinstance(self.qk_norm, bool):
            problems.append(f"qk_norm must be true or false (got {quoted(self.qk_norm)})")
        for field, kind in (("moe", MoESpec), ("mla", MLASpec), ("rope_yarn", YarnSpec)):
            value = getattr(self, field)
            if value is not None and not isinstance(value, kind):
                problems.append(f"{field} must be an object of {kind.__name__} fields or null")
            elif value is not None and self.arch != "llama":
                problems.append(f"{field} needs arch llama (got {quoted(self.arch)})")
        if isinstance(self.moe, MoESpec) and _positive_int(self.num_layers):
            dense = self._dense_layer_count()
            wrong = dense_layers_problem(self.moe.dense_layers, self.num_layers)
            if wrong:
                problems.append(wrong)
            elif dense >= self.num_layers:
                problems.append(f"moe leaves no MoE layer: {dense} of the {self.num_layers} layers are dense "
                                f"(first_k_dense {self.moe.first_k_dense}, dense_layers "
                                f"{list(self.moe.dense_layers)}); keep the leading dense layers below the "
                                f"{self.num_layers} layers (a Hugging Face config's first_k_dense_replace), or drop "
                                f"moe for a dense model")
        if not is_printable_name(self.name):
            problems.append(f"name must be a string of printable characters, without newlines or other control "
                            f"characters (got {quoted(self.name)})")
        if self.swiglu_limit is not None and not (_number(self.swiglu_limit) and self.swiglu_limit > 0):
            problems.append(f"swiglu_limit must be a positive number or null (got {quoted(self.swiglu_limit)})")
        gpt_oss = [f for f in ("attention_sinks", "out_proj_bias", "swiglu_limit") if getattr(self, f)]
        if gpt_oss and self.arch != "llama":
            problems.append(f"{', '.join(gpt_oss)} need{'s' if len(gpt_oss) == 1 else ''} arch llama (got "
                            f"{quoted(self.arch)})")
        for field in ("tied_embeddings", "qkv_bias", "attention_sinks", "out_proj_bias"):
            if not isinstance(getattr(self, field), bool):
                problems.append(f"{field} must be true or false (got {quoted(getattr(self, field))})")
        for field in ("dropout", "norm_eps", "rope_theta", "rope_scaling_factor"):
            if not _number(getattr(self, field)):  # (the ranges below are asked of numbers only: one line each)
                problems.append(f"{field} must be a number (got {quoted(getattr(self, field))})")
        if _number(self.dropout) and not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if _number(self.norm_eps) and not 0 < self.norm_eps < 1:
            problems.append(f"norm_eps must be in (0, 1), a small epsilon such as 1e-5 (got {self.norm_eps})")
        if _number(self.rope_theta) and not self.rope_theta > 0:
            problems.append(f"rope_theta must be positive (got {self.rope_theta})")
        if _number(self.rope_scaling_factor) and not self.rope_scaling_factor >= 1:
            problems.append(f"rope_scaling_factor must be at least 1 (got {self.rope_scaling_factor})")
        if self.rope_yarn is not None and self.rope_scaling_factor != 1:
            problems.append("rope_yarn and a llama3 rope_scaling_factor exclude each other (one RoPE scaling)")
        if self.rope_unapplied is not None and not isinstance(self.rope_unapplied, str):
            problems.append(f"rope_unapplied must be a text or null (got {quoted(self.rope_unapplied)})")
        if not (_number(self.rope_linear_factor) and self.rope_linear_factor >= 1):
            problems.append(f"rope_linear_factor must be a number of at least 1 "
                            f"(got {quoted(self.rope_linear_factor)})")
        elif self.rope_linear_factor != 1 and (self.rope_yarn is not None or self.rope_scaling_factor != 1):
            problems.append("rope_linear_factor excludes rope_yarn and a llama3 rope_scaling_factor (one RoPE scaling)")
        low, high = self.rope_low_freq_factor, self.rope_high_freq_factor
        if not (_number(low) and _number(high) and 0 < low < high):
            problems.append(f"rope_low_freq_factor and rope_high_freq_factor must be numbers with 0 < low < high (got "
                            f"{quoted(low)} and {quoted(high)})")
        if not _positive_int(self.rope_original_context):
            problems.append(f"rope_original_context must be a positive integer (got "
                            f"{quoted(self.rope_original_context)})")
        if problems:
            raise UserError(f"model {quoted(self.name)}: " + "; ".join(problems))

    # ---- shapes ----------------------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        """Width of the Q projection (and of the attention output)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the K (and of the V) projection."""
        return self.num_kv_heads * self.head_dim

    @property
    def attention_kv_dim(self) -> int:
        """Width of one token's keys and values together as the attention core reads them (what context
        parallelism exchanges): 2 x kv_dim, or under latent attention every head's key (qk_nope_head_dim +
        qk_rope_head_dim, the shared rotary key copied to each head) and value (v_head_dim), after the
        up-projection."""
        if self.mla is None:
            return 2 * self.kv_dim
        return self.num_heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim + self.mla.v_head_dim)

    @property
    def attention_q_dim(self) -> int:
        """Width of one token's queries as the attention core reads them: q_dim, or under latent attention every
        head's qk_nope_head_dim + qk_rope_head_dim."""
        if self.mla is None:
            return self.q_dim
        return self.num_heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim)

    @property
    def attention_out_dim(self) -> int:
        """Width of one token's attention output (before the output projection): q_dim, or under latent attention
        every head's v_head_dim."""
        if self.mla is None:
            return self.q_dim
        return self.num_heads * self.mla.v_head_dim

    @property
    def learned_positions(self) -> bool:
        return self.arch == "gpt"

    @property
    def linear_bias(self) -> bool:
        return self.arch == "gpt"

    # ---- sliding-window attention ----------------------------------------------------------------------------------
    def attention_window(self, layer: int) -> int | None:
        """The keys a query of block `layer` (0-based) sees at most, itself included: the sliding window, or None
        (the whole causal sequence) in a full-attention layer or a model without a window."""
        if self.sliding_window is None or layer in self.full_attention_layers:
            return None
        return self.sliding_window

    @property
    def sliding_layer_count(self) -> int:
        """Blocks whose attention slides a window (0 without one)."""
        return 0 if self.sliding_window is None else self.num_layers - len(set(self.full_attention_layers))

    def attention_work_share(self, seq_len: int) -> float:
        """The query-key pairs the model's blocks attend, on average over its layers, as a share of causal
        attention's over the whole sequence of `seq_len`: 1 without a window or where the window holds the
        sequence (`window_pair_share`). Every cost of the attention core reads each block at this mean, so a
        pipeline stage holding more sliding than full layers is costed at the average (exact for a model whose
        layers all slide, and for GPT-OSS's alternating ones over any even number of layers)."""
        sliding = self.sliding_layer_count
        if not sliding:
            return 1.0
        share = window_pair_share(seq_len, self.sliding_window)
        return (sliding * share + (self.num_layers - sliding)) / self.num_layers

    @property
    def default_seq_len(self) -> int:
        """The sequence a plan takes when none is given: the context, at most DEFAULT_SEQ_LEN tokens (long runs
        pass --seq-len)."""
        return min(self.max_seq_len, DEFAULT_SEQ_LEN)

    def context_problem(self, seq_len: int) -> str | None:
        """Why the model cannot be trained on sequences of `seq_len` tokens (one line naming what would work), or
        None. Learned positions stop at `max_seq_len`. Rotary positions train beyond the model's context
        (`max_seq_len`) only with RoPE scaling (`rope_scaling_factor` > 1, Llama 3.1's "llama3" rope_type), which
        long-context training extends further, as Llama 3 did from 8k to 128k tokens; up to the context any rotary
        model trains; a sliding window (`sliding_window`) sets no limit.

        The spec does not record the file it was read from, so a line names a field as autoconf's model JSON does
        (`max_seq_len`, `rope_scaling_factor`) and, where a Hugging Face config.json calls it
        otherwise, that name beside it (max_position_embeddings, n_positions)."""
        if seq_len <= self.max_seq_len:
            return None
        if self.learned_positions:
            return (f"seq_len {seq_len} exceeds {self.name}'s {self.max_seq_len} learned positions (max_seq_len; "
                    f"n_positions in a config.json); use --seq-len {self.max_seq_len} or less")
        if self.rope_scaling_factor == 1:
            own = ("its yarn RoPE scaling reaches no further" if self.rope_yarn is not None else
                   "its linear RoPE scaling reaches no further" if self.rope_linear_factor != 1 else
                   "the model has no llama3 RoPE scaling to train further (rope_scaling_factor 1)")
            return (f"seq_len {seq_len} exceeds {self.name}'s context of {self.max_seq_len:,} tokens (max_seq_len; "
                    f"in a config.json max_position_embeddings, or what its RoPE scaling extends it to) and {own}; "
                    f"use --seq-len {self.max_seq_len} or less, or a model with a longer context or llama3 RoPE "
                    f"scaling (the llama3.1 presets: 131,072 tokens, longer with their llama3 scaling)")
        return None

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block `layer` (0-based) has an MoE layer instead of a dense MLP."""
        return (self.moe is not None and layer >= self.moe.first_k_dense and layer not in self.moe.dense_layers)

    # ---- the op table (spec/layers.py): every count below is a sum over it ----------------------------------------
    def layer_ops(self, layer: int) -> tuple:
        """The ops of block `layer`, each with its parameters, active parameters and forward FLOPs per token."""
        return self._ops["moe" if self.is_moe_layer(layer) else "dense"]

    def layer_groups(self) -> list[tuple[int, int]]:
        """(first layer, count) for each kind of block, dense before MoE: the layers of a kind have the same ops."""
        return list(self._ops["groups"])

    def _dense_layer_count(self) -> int:
        """Blocks with a dense MLP (counted without walking the layers: num_layers may be large)."""
        if self.moe is None:
            return self.num_layers
        first = min(self.moe.first_k_dense, self.num_layers)
        return first + len({i for i in self.moe.dense_layers if first <= i < self.num_layers})

    @functools.cached_property
    def _ops(self) -> dict:
        """The op table, built once per spec (the spec is frozen): the ops of a dense and of an MoE block, the
        embedding's, the head's, the attention's, and the layer groups."""
        dense = self._dense_layer_count()
        moe = self.num_layers - dense
        first_dense = 0 if self.moe is None or self.moe.first_k_dense else min(self.moe.dense_layers, default=0)
        first_moe = self.moe.first_k_dense if self.moe else 0
        while moe and not self.is_moe_layer(first_moe):  # steps over dense_layers only
            first_moe += 1
        return {"dense": layers.layer_ops(self, first_dense) if dense else (),
                "moe": layers.layer_ops(self, first_moe) if moe else (),
                "embedding": layers.embedding_ops(self), "head": layers.head_ops(self),
                "attention": layers.attention_ops(self),
                "groups": tuple(group for group in ((first_dense, dense), (first_moe, moe)) if group[1])}

    def op_table(self) -> list[tuple[str, int, object]]:
        """The whole model as (where, count, op) rows: the embedding, each kind of block, the head."""
        rows = [("embedding", 1, op) for op in self._ops["embedding"]]
        for first, count in self.layer_groups():
            where = "moe layer" if self.is_moe_layer(first) else "dense layer"
            rows += [(where, count, op) for op in self.layer_ops(first)]
        return rows + [("head", 1, op) for op in self._ops["head"]]

    def _uniform_layer(self, layer: int | None) -> int:
        if layer is not None:
            return layer
        if len(self.layer_groups()) > 1:
            raise ValueError(f"{self.name}: its blocks differ (dense and MoE layers); name the layer")
        return 0

    # ---- parameters --------------------------------------------------------------------------------------------
    def layer_params(self, layer: int | None = None) -> int:
        """Parameters of one transformer block (attention, MLP or MoE layer, and its two norms); `layer` may be left
        out when every block is alike."""
        sums = self._param_sums
        if self.moe is None:
            return sums["dense"]
        return sums["moe" if self.is_moe_layer(self._uniform_layer(layer)) else "dense"]

    def layer_active_params(self, layer: int | None = None) -> int:
        """Parameters of one block that one token uses (all but the routed experts it is not sent to)."""
        return sum(op.active_params for op in self.layer_ops(self._uniform_layer(layer)))

    def embedding_params(self) -> int:
        """Token embedding plus learned positions (GPT)."""
        return self._param_sums["embedding"]

    def head_params(self) -> int:
        """Final norm plus the LM head (zero extra weights when tied to the embedding)."""
        return self._param_sums["head"]

    def tp_replicated_params(self, part: str) -> int:
        """Parameters of a dense block ("dense"), an MoE block ("moe"), the embedding ("embedding") or the head
        ("head") that every tensor-parallel rank holds whole (`Op.tp_replicated_params`: norms, routers, latent
        attention's down-projections, row-parallel biases); TP splits the rest. 0 for a part the model lacks."""
        return self._replicated_sums[part]

    @functools.cached_property
    def _replicated_sums(self) -> dict:
        return {part: sum(op.tp_replicated_params for op in self._ops[part])
                for part in ("dense", "moe", "embedding", "head")}

    @functools.cached_property
    def _param_sums(self) -> dict:
        """Parameters of a dense block, an MoE block, the embedding and the head: sums over the op table, once per
        spec (the search's bounds ask for them hundreds of thousands of times)."""
        return {part: sum(op.params for op in self._ops[part]) for part in ("dense", "moe", "embedding", "head")}

    def total_params(self) -> int:
        return sum(count * op.params for _, count, op in self.op_table())

    def active_params(self) -> int:
        """Parameters one token uses: all of them for a dense model; for MoE, the routed experts count top-k times
        instead of num_experts times (the embedding and head count in full: docs/moe.md). Without the MTP modules."""
        return sum(count * op.active_params for _, count, op in self.op_table())

    # ---- multi-token prediction (DeepSeek-V3 report sec. 2.2) -----------------------------------------------------
    def mtp_extra_params(self) -> int:
        """Parameters of one MTP module beyond its block: the norms of the hidden state and of the next token's
        embedding, the 2h -> h projection, the module's final norm (Megatron-Core's MultiTokenPredictionLayer:
        enorm, hnorm, eh_proj, final_layernorm; HF: enorm, hnorm, eh_proj, shared_head.norm). The embedding and the
        output head are the model's own, shared."""
        h = self.hidden_size
        return self.mtp_norm_params() + 2 * h * h

    def mtp_norm_params(self) -> int:
        """The three norms of one MTP module: LayerNorm's weight and bias (gpt), else RMSNorm's weight."""
        return MTP_NORMS * self.hidden_size * (2 if self.arch == "gpt" else 1)

    @property
    def mtp_block_layer(self) -> int:
        """The layer an MTP module's block is built like: the model's last (DeepSeek-V3's MTP blocks are MoE blocks
        as its last layer is; Megatron-Core builds them from the last layer's spec). The one statement of that rule:
        the MTP counts here and the MTP costs (cost/mtp.py) read it."""
        return self.num_layers - 1

    def mtp_block_is_moe(self) -> bool:
        """Whether an MTP module's block is an MoE block (`mtp_block_layer`)."""
        return self.is_moe_layer(self.mtp_block_layer)

    def mtp_tp_replicated_params(self) -> int:
        """Of one MTP module's parameters, those every TP rank holds whole: its block's (`tp_replicated_params`)
        and its three norms (`mtp_extra_params`)."""
        return self.tp_replicated_params("moe" if self.mtp_block_is_moe() else "dense") + self.mtp_norm_params()

    def mtp_params(self) -> int:
        """Parameters of all MTP modules: each a block like `mtp_block_layer` plus `mtp_extra_params`."""
        return self.mtp_num_layers * (self.layer_params(self.mtp_block_layer) + self.mtp_extra_params())

    def total_params_with_mtp(self) -> int:
        """`total_params` plus the MTP modules (DeepSeek-V3: the published 671B plus the module's 11.6B of own
        weights; the 685B of its HF checkpoint also hold copies of the shared embedding and head)."""
        return self.total_params() + self.mtp_params()

    def active_params_with_mtp(self) -> int:
        """`active_params` plus what one token uses of the MTP modules."""
        return self.active_params() + self.mtp_num_layers * (self.layer_active_params(self.mtp_block_layer)
                                                             + self.mtp_extra_params())

    # ---- FLOPs -------------------------------------------------------------------------------------------------
    def layer_matmul_flops(self, seq_len: int, micro_batch: int, layer: int | None = None) -> float:
        """Forward FLOPs of the weight matmuls of one block (2 per multiply-add; routed experts: the active ones)."""
        per_token = sum(op.flops for op in self.layer_ops(self._uniform_layer(layer)))
        return 2.0 * seq_len * micro_batch * (per_token // 2)

    def layer_attention_flops(self, seq_len: int, micro_batch: int, windowed: bool = True) -> float:
        """Forward FLOPs of QK^T and attention-times-V, counted over the full s x s square (Megatron's convention),
        of the mean block under sliding windows (`attention_work_share`); `windowed` False: the whole square
        whatever the window (what a kernel that computes every score and masks them does)."""
        per_context_token = sum(op.context_flops for op in self._ops["attention"])
        share = self.attention_work_share(seq_len) if windowed else 1.0
        return 2.0 * 2.0 * micro_batch * seq_len * seq_len * (per_context_token / 4) * share

    def layer_forward_flops(self, seq_len: int, micro_batch: int, layer: int | None = None) -> float:
        return self.layer_matmul_flops(seq_len, micro_batch, layer) + self.layer_attention_flops(seq_len, micro_batch)

    def head_forward_flops(self, seq_len: int, micro_batch: int) -> float:
        """Forward FLOPs of the LM head projection."""
        return 2.0 * seq_len * micro_batch * (sum(op.flops for op in self._ops["head"]) // 2)

    def forward_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs of one token in a sequence of `seq_len`, with the active experts only."""
        return self.model_flops_per_iteration(seq_len, 1) / 3.0 / seq_len

    def model_flops_per_iteration(self, seq_len: int, global_batch: int) -> float:
        """Model FLOPs of one training step (forward + backward = 3x forward, no recompute), as used for MFU."""
        per_sample = sum(count * self.layer_forward_flops(seq_len, 1, first) for first, count in self.layer_groups())
        per_sample += self.head_forward_flops(seq_len, 1)
        return 3.0 * per_sample * global_batch

    def hardware_flops_per_iteration(self, seq_len: int, global_batch: int, recompute: str,
                                     recomputed_layers: int | None = None) -> float:
        """FLOPs actually executed: model FLOPs plus the recomputed forward (full block or attention core) of every
        layer, or of `recomputed_layers` of them (counted at the average layer's FLOPs)."""
        if recompute not in RECOMPUTE:
            raise UserError(f"recompute {quoted(recompute)} is not one of {', '.join(RECOMPUTE)}")
        extra = sum(count * {"none": 0.0,
                             "selective": self.layer_attention_flops(seq_len, 1),
                             "full": self.layer_forward_flops(seq_len, 1, first)}[recompute]
                    for first, count in self.layer_groups())
        if recomputed_layers is not None:
            extra *= recomputed_layers / self.num_layers
        return self.model_flops_per_iteration(seq_len, global_batch) + extra * global_batch

    # ---- activations ---------------------------------------------------------------------------------------------
    def layer_activation_bytes(self, seq_len: int, micro_batch: int, tp: int = 1, sequence_parallel: bool = False,
                               recompute: str = "none", attention: str = "flash", act_bytes: int = 2) -> float:
        """Bytes one block keeps from its forward until its backward, for one micro-batch on one TP rank.

        `act_bytes` is the size of an activation element (2 for bf16/fp16, 4 for fp32); dropout masks take 1 byte.
        Tensors outside the TP region (norm inputs, the QKV and first-MLP inputs, dropout masks after the residual
        branches) are replicated across TP ranks unless sequence parallelism splits them.
        """
        if recompute not in RECOMPUTE:
            raise UserError(f"recompute {quoted(recompute)} is not one of {', '.join(RECOMPUTE)}")
        if attention not in ATTENTION:
            raise UserError(f"attention {quoted(attention)} is not one of {', '.join(ATTENTION)}")
        s, b, h, f, a = seq_len, micro_batch, self.hidden_size, self.ffn_hidden_size, self.num_heads
        sbh = s * b * h
        if recompute == "full":
            return act_bytes * sbh / (tp if sequence_parallel else 1)
        dropout = self.dropout > 0
        e = act_bytes
        # Replicated part: two norm inputs, QKV input, first MLP input, two residual dropout masks.
        replicated = 4 * e * sbh + (2 * sbh if dropout else 0)
        # TP-sharded part of attention: Q, K, V, and the output projection's input.
        sharded = e * s * b * (h + 2 * self.kv_dim) + e * sbh
        if attention == "standard" and recompute != "selective":
            # Scores softmax output, and with attention dropout its mask and output too.
            sharded += (2 * e + 1) * a * s * s * b if dropout else e * a * s * s * b
        elif attention == "flash":
            sharded += 4 * a * s * b  # fp32 log-sum-exp per row
        # TP-sharded part of the MLP.
        if self.arch == "gpt":
            sharded += 2 * e * s * b * f  # GeLU input and output
        else:
            sharded += 4 * e * s * b * f  # gate, SiLU(gate), up, and their product
        if sequence_parallel:
            return (replicated + sharded) / tp
        return replicated + sharded / tp

    def to_dict(self) -> dict:
        """The model JSON: the fields (head_dim only when it is not hidden_size / num_heads; qk_norm, moe, mla,
        the window's, GPT-OSS's, YaRN's and linear RoPE scaling's fields only when set, the llama3 scaling's only
        when not Llama 3.1's, so a dense model's JSON is as before), then the derived `parameters` and
        `active_parameters` (equal for a dense model; both without MTP modules), and with MTP modules
        `parameters_with_mtp` and `active_parameters_with_mtp`."""
        data = {"version": 1, "kind": "model"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "head_dim" and value * self.num_heads == self.hidden_size:
                continue
            if f.name in ("qk_norm", "moe", "mla", "mtp_num_layers", "sliding_window", "full_attention_layers",
                          "attention_sinks", "out_proj_bias", "swiglu_limit", "rope_yarn",
                          "rope_unapplied") and not value:
                continue
            if f.name in LLAMA3_ROPE_DEFAULTS and value == LLAMA3_ROPE_DEFAULTS[f.name]:
                continue
            if f.name == "rope_linear_factor" and value == 1:
                continue
            data[f.name] = (value.to_dict() if f.name in ("moe", "mla", "rope_yarn") else
                            list(value) if f.name == "full_attention_layers" else value)
        data["parameters"] = self.total_params()
        data["active_parameters"] = self.active_params()
        if self.mtp_num_layers:
            data["parameters_with_mtp"] = self.total_params_with_mtp()
            data["active_parameters_with_mtp"] = self.active_params_with_mtp()
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "model") -> "ModelSpec":
        """Reads `to_dict`'s JSON (and older model JSON without the MoE fields). `parameters` and
        `active_parameters` are derived: when given, they must be the count the fields describe, exactly or rounded
        to the digits they state (a published 46.7B; `stated_count_agrees`), else both numbers are said. That
        catches a mixture-of-experts model written without its `moe` object, and a count the planner would silently
        replace by its own."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object describing a model")
        if not is_version(data.get("version", 1), 1):
            raise UserError(f"{source}: model version {shown(json.dumps(data['version']), 40)} is not supported "
                            f"(expected 1, or none)")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"version", "kind"} - set(DERIVED_COUNTS))
        if unknown:
            raise UserError(f"{source}: unknown model field(s) {listed([quoted(n, 40) for n in unknown])}; "
                            f"known: {', '.join(sorted(fields))}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise UserError(f"{source}: missing model field(s) {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in fields}
        if values.get("moe") is not None:
            values["moe"] = MoESpec.from_dict(values["moe"], source=f"{source}: moe")
        if values.get("mla") is not None:
            values["mla"] = MLASpec.from_dict(values["mla"], source=f"{source}: mla")
        if values.get("rope_yarn") is not None:
            values["rope_yarn"] = YarnSpec.from_dict(values["rope_yarn"], source=f"{source}: rope_yarn")
        spec = cls(**values)
        for key, count in DERIVED_COUNTS.items():
            given = data.get(key)
            if given is None:
                continue
            actual = count(spec)
            if not stated_count_agrees(given, actual):
                stated = f"{given:,}" if _number(given) else quoted(given)
                raise UserError(f"{source}: {key} {stated} disagrees with the {actual:,} that the model's "
                                f"fields describe{' (an MoE model needs its moe object)' if spec.moe is None else ''}; "
                                f"fix the fields or drop {key} (it is derived)")
        return spec


def dense_layers_problem(indices: tuple, num_layers: int) -> str | None:
    """The line naming the entries of moe.dense_layers that are no layer of a model of `num_layers` layers (negative,
    or at or beyond num_layers), each with why; None when every one is a layer."""
    negative = [i for i in indices if i < 0]
    beyond = [i for i in indices if i >= num_layers]
    parts = ([f"{listed([str(i) for i in negative])} {'is' if len(negative) == 1 else 'are'} negative"]
             if negative else []) + (
        [f"{listed([str(i) for i in beyond])} {'lies' if len(beyond) == 1 else 'lie'} beyond the {num_layers} "
         f"layers"] if beyond else [])
    if not parts:
        return None
    return f"moe.dense_layers: {' and '.join(parts)}; give layer indices from 0 to {num_layers - 1}"


LLAMA3_ROPE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelSpec)
                        if f.name in ("rope_low_freq_factor", "rope_high_freq_factor", "rope_original_context")}


def window_pair_share(seq_len: int, window: int) -> float:
    """The query-key pairs of causal attention over `seq_len` tokens in which a query sees at most `window` keys
    (itself and the window - 1 before it), as a share of the s (s + 1) / 2 pairs of full causal attention: query i
    sees min(i + 1, w) keys, so w (w + 1) / 2 + (s - w) w pairs where s > w, and all of them where s <= w."""
    s, w = seq_len, window
    if s <= w:
        return 1.0
    return (w * (w + 1) / 2 + (s - w) * w) / (s * (s + 1) / 2)


def window_band(keys: int, window: int | None) -> int | None:
    """The query block of autoconf's executor's banded attention for a sliding layer whose queries are the last of
    `keys` keys: the window, where blocks of `window` queries each scored against the 2 window - 1 keys that reach
    them compute fewer scores than the whole square (keys >= 2 window). None where the executor runs plain causal
    attention (no window, or one that holds every key) or one dense mask of the window (keys < 2 window)."""
    if window is None or keys < 2 * window:
        return None
    return window


def executor_window_work(seq_len: int, window: int) -> tuple[float, int]:
    """(pairs scored as a share of the s (s + 1) / 2 of causal attention, the sequence length whose causal kernel
    speed they run at) for one sliding layer over `seq_len` tokens in autoconf's executor, which hands windows to
    SDPA as masks (`window_band`): causal attention where the window holds the sequence; the whole square under one
    mask up to twice the window; beyond it ceil(s / w) blocks of w queries by 2 w - 1 keys, each a square about
    the size of a causal sequence of 2 w."""
    s, w = seq_len, window
    if s <= w:
        return 1.0, s
    block = window_band(s, w)
    if block is None:
        return s * s / (s * (s + 1) / 2), s
    return -(-s // block) * block * (block + w - 1) / (s * (s + 1) / 2), 2 * w


def full_attention_layers_problem(indices, num_layers, window) -> str | None:
    """The line naming what is wrong with a model's `full_attention_layers` (not a list of layer indices, an index
    outside the layers, a list without a window to exempt the layers from, or every layer listed), or None."""
    if not isinstance(indices, tuple):
        return (f"full_attention_layers must be a list of layer indices, e.g. [1, 3] (got {quoted(indices)})")
    odd = [i for i in indices if isinstance(i, bool) or not isinstance(i, int)]
    if odd:
        return (f"full_attention_layers {listed([quoted(i, 24) for i in odd])} "
                f"{'is not a layer index' if len(odd) == 1 else 'are not layer indices'} (whole numbers from 0)")
    if not indices:
        return None
    if window is None:
        return ("full_attention_layers needs a sliding_window (without one every layer attends to the whole "
                "sequence); give the window, or drop the list")
    if not _positive_int(num_layers):
        return None
    outside = sorted({i for i in indices if not 0 <= i < num_layers})
    if outside:
        return (f"full_attention_layers {listed([str(i) for i in outside])} "
                f"{'is' if len(outside) == 1 else 'are'} no layer of the {num_layers}; give indices from 0 to "
                f"{num_layers - 1}")
    if len(set(indices)) == num_layers:
        return ("full_attention_layers lists every layer, so none slides its window; set sliding_window to null "
                "instead")
    return None


def stated_count_agrees(given, actual: int) -> bool:
    """Whether a stated parameter count `given` is `actual`: equal, or `actual` rounded to the significant digits
    `given` states (its trailing zeros are rounding: 46,700,000,000 for 46,702,792,704, as counts are published);
    449,600 for 451,840 is not."""
    if not _number(given):
        return False
    if given != int(given) or given <= 0:
        return given == actual
    digits = str(int(given))
    scale = 10 ** (len(digits) - len(digits.rstrip("0")))
    return given == actual or round(actual / scale) * scale == given


# `parameters` and `active_parameters` leave the MTP modules out, as published counts do (DeepSeek-V3's 671B).
DERIVED_COUNTS = {"parameters": ModelSpec.total_params, "active_parameters": ModelSpec.active_params,
                  "parameters_with_mtp": ModelSpec.total_params_with_mtp,
                  "active_parameters_with_mtp": ModelSpec.active_params_with_mtp}
