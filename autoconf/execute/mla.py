"""DeepSeek's multi-head latent attention (MLA, DeepSeek-V2/V3) as the spec's `MLASpec` describes it, as trained (the
up-projections are not absorbed into the queries).

Shapes, with a = num_heads, d_nope = qk_nope_head_dim, d_rope = qk_rope_head_dim, d_v = v_head_dim:
- queries: `wq_a` (h -> q_lora_rank), the RMSNorm `q_a_norm`, `wq_b` (q_lora_rank -> a (d_nope + d_rope)); or one
  projection `wq` (h -> a (d_nope + d_rope)) when q_lora_rank is None;
- keys and values: `wkv_a` (h -> kv_lora_rank + d_rope) gives the latent and one rotary key shared by every head;
  the latent through the RMSNorm `kv_a_norm` and `wkv_b` (kv_lora_rank -> a (d_nope + d_v)) gives each head's
  K_nope and V;
- RoPE (rotate-half, rope_theta) on each query's last d_rope and on the shared key; a head's query is
  [q_nope, rope(q_rope)], its key [k_nope, rope(k_rope)]; softmax scale 1 / sqrt(d_nope + d_rope); `wo`
  (a d_v -> h) after the core.
The parameter names and widths are the op table's (spec/layers.py `_latent_attention_ops`), so the module holds the
spec's parameter count (tests/test_mla.py). Hugging Face's `DeepseekV3Attention` computes the same function with
`rope_interleave` false (its default true applies RoPE to the interleaved pairs of the rotary dims, a fixed
permutation of them); its YaRN softmax-scale correction (`rope_scaling`) is not in the spec and not here.

Tensor parallelism (parallelize.apply_tp) splits the heads: `wq` / `wq_b` and `wkv_b` column-parallel, `wo`
row-parallel; the down-projections `wq_a`, `wkv_a` and their norms are replicated (every TP rank computes the whole
latent). The shared rotary key goes from the replicated latent into each rank's heads directly, so its gradient is
summed over the TP group (`tp_mesh`, Megatron's copy-to-tensor-parallel-region); the latents' gradients come back
summed through the column-parallel layers' input. Head counts are read from tensor shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from autoconf.execute.model import AttentionCore, rope_positions
from autoconf.execute.rope import rope_scaling_of, rotate
from autoconf.spec.model import ModelSpec


def _sum_grad_over(t: torch.Tensor, mesh) -> torch.Tensor:
    """The identity whose backward sums the gradient over `mesh` (a replicated tensor feeding per-rank work)."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    return DTensor.from_local(t, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


class LatentAttention(AttentionCore):
    def __init__(self, spec: ModelSpec, attention: str, window: int | None = None):
        super().__init__(spec, attention, window)
        m, h, a = spec.mla, spec.hidden_size, spec.num_heads
        self.nope, self.rope, self.v_dim, self.kv_rank = (m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim,
                                                          m.kv_lora_rank)
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank is None:
            self.wq = nn.Linear(h, a * qk, bias=False)
        else:
            self.wq_a = nn.Linear(h, m.q_lora_rank, bias=False)
            self.q_a_norm = nn.RMSNorm(m.q_lora_rank, eps=spec.norm_eps)
            self.wq_b = nn.Linear(m.q_lora_rank, a * qk, bias=False)
        self.wkv_a = nn.Linear(h, m.kv_lora_rank + m.qk_rope_head_dim, bias=False)
        self.kv_a_norm = nn.RMSNorm(m.kv_lora_rank, eps=spec.norm_eps)
        self.wkv_b = nn.Linear(m.kv_lora_rank, a * (m.qk_nope_head_dim + m.v_head_dim), bias=False)
        self.wo = nn.Linear(a * m.v_head_dim, h, bias=False)
        self.rope_theta = spec.rope_theta
        self.rope_scaling = rope_scaling_of(spec)
        # DeepSeek's YaRN softmax scale (YarnSpec.softmax_scale), applied to the queries: every path's scores see it
        self.query_scale = spec.rope_yarn.softmax_scale if spec.rope_yarn is not None else 1.0
        self.tp_mesh = None  # set by parallelize.apply_tp when tp > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[0], x.shape[1]
        q = self.wq(x) if hasattr(self, "wq") else self.wq_b(self.q_a_norm(self.wq_a(x)))
        q_nope, q_rope = q.view(b, s, -1, self.nope + self.rope).split([self.nope, self.rope], -1)
        latent, k_rope = self.wkv_a(x).split([self.kv_rank, self.rope], -1)
        kv = self.wkv_b(self.kv_a_norm(latent)).view(b, s, -1, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], -1)
        if self.tp_mesh is not None:
            k_rope = _sum_grad_over(k_rope, self.tp_mesh)
        positions, length = rope_positions(self.context, s)
        q_rope = rotate(q_rope.transpose(1, 2), self.rope_theta, positions, self.rope_scaling,
                        length).transpose(1, 2)
        # [b, s, 1, d_rope]
        k_rope = rotate(k_rope.unsqueeze(1), self.rope_theta, positions, self.rope_scaling, length).transpose(1, 2)
        # Q, K and V each on a storage of their own in [b, s, heads, d] order, seen as [b, heads, s, d] (as the
        # grouped-query projections are): the attention keeps them for its backward, not the K_nope + V
        # projection, and its output is laid out so that the output projection reads it without a copy.
        q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)
        if self.query_scale != 1.0:
            q = q * self.query_scale
        k = torch.cat([k_nope, k_rope.expand(-1, -1, k_nope.shape[2], -1)], dim=-1).transpose(1, 2)
        return self.attend_and_project(q, k, v.contiguous().transpose(1, 2))
