"""The model spec: decoder-only transformers, and what each layer costs in parameters, FLOPs and activation bytes.

Two families are described:
- "gpt":   LayerNorm with bias, GeLU MLP (ffn = 4h by default), learned positions, biases on every linear layer.
- "llama": RMSNorm, SwiGLU MLP, rotary positions, grouped-query attention, no biases (qwen2 adds a QKV bias).

Activation bytes follow "Reducing Activation Recomputation in Large Transformer Models" (Korthikanti et al.),
derived tensor by tensor so that the GPT layer with dropout reproduces the paper's s*b*h*(34 + 5*a*s/h), and the same
derivation covers SwiGLU, grouped-query attention, memory-efficient attention and any activation dtype.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from autoconf.errors import UserError

ARCHES = ("gpt", "llama")
RECOMPUTE = ("none", "selective", "full")
ATTENTION = ("flash", "standard")


def is_printable_name(value) -> bool:
    """A name (of a model, a cluster, a device) is data: a non-empty string without control characters, so that no
    script, comment or log line it is written into can be broken out of."""
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


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
    rope_scaling_factor: float = 1.0  # Llama 3.x ("llama3" rope_type) RoPE scaling factor; 1 is none

    def __post_init__(self) -> None:
        problems = []
        if self.arch not in ARCHES:
            problems.append(f"arch {self.arch!r} is not one of {', '.join(ARCHES)}")
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size",
                      "max_seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{field} must be a positive integer (got {value!r})")
        if not problems:
            if self.hidden_size % self.num_heads:
                problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            if self.num_heads % self.num_kv_heads:
                problems.append(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if not is_printable_name(self.name):
            problems.append(f"name must be a string of printable characters, without newlines or other control "
                            f"characters (got {self.name!r})")
        for field in ("tied_embeddings", "qkv_bias"):
            if not isinstance(getattr(self, field), bool):
                problems.append(f"{field} must be true or false (got {getattr(self, field)!r})")
        for field in ("dropout", "norm_eps", "rope_theta", "rope_scaling_factor"):
            value = getattr(self, field)
            if isinstance(value, bool) or not (isinstance(value, int) or
                                               (isinstance(value, float) and math.isfinite(value))):
                problems.append(f"{field} must be a number (got {value!r})")
        if isinstance(self.dropout, (int, float)) and not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        for field in ("norm_eps", "rope_theta"):
            value = getattr(self, field)
            if isinstance(value, (int, float)) and not value > 0:
                problems.append(f"{field} must be positive (got {value})")
        if isinstance(self.rope_scaling_factor, (int, float)) and not self.rope_scaling_factor >= 1:
            problems.append(f"rope_scaling_factor must be at least 1 (got {self.rope_scaling_factor})")
        if problems:
            raise UserError(f"model {self.name!r}: " + "; ".join(problems))

    # ---- shapes ----------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of the K (and of the V) projection."""
        return self.num_kv_heads * self.head_dim

    @property
    def learned_positions(self) -> bool:
        return self.arch == "gpt"

    @property
    def linear_bias(self) -> bool:
        return self.arch == "gpt"

    # ---- parameters --------------------------------------------------------------------------------------------
    def layer_params(self) -> int:
        """Parameters of one transformer block (attention, MLP and its two norms)."""
        h, f, kv = self.hidden_size, self.ffn_hidden_size, self.kv_dim
        attention = h * (h + 2 * kv) + h * h
        if self.linear_bias:
            attention += h + 2 * kv + h
        elif self.qkv_bias:
            attention += h + 2 * kv
        if self.arch == "gpt":
            mlp = 2 * h * f + f + h
            norms = 2 * 2 * h
        else:
            mlp = 3 * h * f
            norms = 2 * h
        return attention + mlp + norms

    def embedding_params(self) -> int:
        """Token embedding plus learned positions (GPT)."""
        positions = self.max_seq_len * self.hidden_size if self.learned_positions else 0
        return self.vocab_size * self.hidden_size + positions

    def head_params(self) -> int:
        """Final norm plus the LM head (zero extra weights when tied to the embedding)."""
        norm = 2 * self.hidden_size if self.arch == "gpt" else self.hidden_size
        return norm + (0 if self.tied_embeddings else self.vocab_size * self.hidden_size)

    def total_params(self) -> int:
        return self.num_layers * self.layer_params() + self.embedding_params() + self.head_params()

    # ---- FLOPs -------------------------------------------------------------------------------------------------
    def layer_matmul_flops(self, seq_len: int, micro_batch: int) -> float:
        """Forward FLOPs of the weight matmuls of one block (2 per multiply-add)."""
        h, f, kv = self.hidden_size, self.ffn_hidden_size, self.kv_dim
        mlp_mats = 2 if self.arch == "gpt" else 3
        weights = h * (h + 2 * kv) + h * h + mlp_mats * h * f
        return 2.0 * seq_len * micro_batch * weights

    def layer_attention_flops(self, seq_len: int, micro_batch: int) -> float:
        """Forward FLOPs of QK^T and attention-times-V, counted over the full s x s square (Megatron's convention)."""
        return 2.0 * 2.0 * micro_batch * seq_len * seq_len * self.hidden_size

    def layer_forward_flops(self, seq_len: int, micro_batch: int) -> float:
        return self.layer_matmul_flops(seq_len, micro_batch) + self.layer_attention_flops(seq_len, micro_batch)

    def head_forward_flops(self, seq_len: int, micro_batch: int) -> float:
        """Forward FLOPs of the LM head projection."""
        return 2.0 * seq_len * micro_batch * self.hidden_size * self.vocab_size

    def model_flops_per_iteration(self, seq_len: int, global_batch: int) -> float:
        """Model FLOPs of one training step (forward + backward = 3x forward, no recompute), as used for MFU."""
        per_sample = self.num_layers * self.layer_forward_flops(seq_len, 1) + self.head_forward_flops(seq_len, 1)
        return 3.0 * per_sample * global_batch

    def hardware_flops_per_iteration(self, seq_len: int, global_batch: int, recompute: str) -> float:
        """FLOPs actually executed: model FLOPs plus the recomputed forward (full block or attention core)."""
        extra_per_layer = {"none": 0.0,
                           "selective": self.layer_attention_flops(seq_len, 1),
                           "full": self.layer_forward_flops(seq_len, 1)}[recompute]
        return self.model_flops_per_iteration(seq_len, global_batch) + (
            extra_per_layer * self.num_layers * global_batch)

    # ---- activations ---------------------------------------------------------------------------------------------
    def layer_activation_bytes(self, seq_len: int, micro_batch: int, tp: int = 1, sequence_parallel: bool = False,
                               recompute: str = "none", attention: str = "flash", act_bytes: int = 2) -> float:
        """Bytes one block keeps from its forward until its backward, for one micro-batch on one TP rank.

        `act_bytes` is the size of an activation element (2 for bf16/fp16, 4 for fp32); dropout masks take 1 byte.
        Tensors outside the TP region (norm inputs, the QKV and first-MLP inputs, dropout masks after the residual
        branches) are replicated across TP ranks unless sequence parallelism splits them.
        """
        if recompute not in RECOMPUTE:
            raise UserError(f"recompute {recompute!r} is not one of {', '.join(RECOMPUTE)}")
        if attention not in ATTENTION:
            raise UserError(f"attention {attention!r} is not one of {', '.join(ATTENTION)}")
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
        return {"version": 1, "kind": "model", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "model") -> "ModelSpec":
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object describing a model")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"version", "kind"})
        if unknown:
            raise UserError(f"{source}: unknown model field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise UserError(f"{source}: missing model field(s) {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in fields})
