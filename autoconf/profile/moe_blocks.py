"""The two blocks of a mixture-of-experts layer that the profiler times, built from the executor's own MoE layer
(execute/moe.py) at the shapes one rank holds, without the collectives (the cost model adds those from the network
profile, as it does for a TP layer's):

- "moe", per TP width: the layer without its routed experts' GEMMs: this TP rank's 1/tp share of the micro-batch's
  tokens routed (router, scores, top-k, the sort of the token copies by expert and its inverse, the weighted
  combine; the load-balancing loss's statistics where the spec has one), the TP ranks' outputs put together (a copy
  of this rank's stands in for the gather), and the shared experts (and their gate) at 1/tp of their width over
  every token;
- "experts", per expert-parallel degree ep and expert-TP degree etp: one rank's routed experts, num_experts / ep of
  them at moe_intermediate_size / etp, over the rows balanced routing brings them: the T x k token copies a rank
  dispatches when it routes T tokens (as many come back under balanced routing), from ep source ranks in equal
  blocks per local expert; under expert TP the etp ranks' rows side by side (a copy stands in for the gather), each
  regrouped by expert as the executor does and the partial outputs summed. Its time depends on T, not on the TP
  width: an entry timed at micro_batch x seq_len tokens is read at tp x those.
"""

from __future__ import annotations

import torch
from torch import nn

from autoconf.execute.moe import MoE, GroupedExperts, SharedExperts, regrouped_experts
from autoconf.spec.model import ModelSpec

INIT_STD = 0.02  # the weights' spread: routing over random weights spreads the tokens nearly evenly


def even_counts(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts that differ by at most one, the larger first."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def expert_degrees(model: ModelSpec, etps: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The (ep, etp) pairs the profiler times the routed experts at: ep every power of two that divides the routed
    experts, etp each of `etps` (the TP widths timed) that divides the experts' width. Empty for a dense model."""
    if model.moe is None:
        return ()
    m = model.moe
    eps = [1 << i for i in range(m.num_experts.bit_length()) if m.num_experts % (1 << i) == 0]
    return tuple((ep, etp) for etp in etps if m.moe_intermediate_size % etp == 0 for ep in eps)


def expert_block_bytes(model: ModelSpec, ep: int, etp: int, dtype_bytes: int) -> int:
    """Bytes of one "experts" block's weights and their gradients: what an entry holds beyond its activations."""
    m = model.moe
    per_expert = 3 * model.hidden_size * (m.moe_intermediate_size // etp)
    if m.expert_bias:
        per_expert += 2 * (m.moe_intermediate_size // etp) + model.hidden_size
    return 2 * (m.num_experts // ep) * per_expert * dtype_bytes


def fitting_degrees(model: ModelSpec, degrees: tuple[tuple[int, int], ...], dtype_bytes: int,
                    capacity: float) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """(kept, left out) of the (ep, etp) `degrees`: an "experts" entry is kept when its weights and gradients
    (`expert_block_bytes`) take at most half of a rank's `capacity`, the other half left to its rows, their
    activations and the allocator; a layout that holds more experts per rank would not train there either."""
    kept = tuple(d for d in degrees if expert_block_bytes(model, *d, dtype_bytes) <= capacity / 2)
    return kept, tuple(d for d in degrees if d not in kept)


def _init(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, INIT_STD)
    return module


class RoutingBlock(MoE):
    """The executor's MoE layer at TP width `tp` without its routed experts' GEMMs (module docstring): the rows
    come back from the experts unchanged."""

    def __init__(self, model: ModelSpec, tp: int):
        with torch.device("meta"):  # the routed experts are never built: only their count shapes the routing
            super().__init__(model)
        del self.experts
        m = model.moe
        width = m.num_shared_experts * m.shared_expert_intermediate_size
        self.shared = SharedExperts(model.hidden_size, -(-width // tp), model.swiglu_limit) if width else None
        self.to_empty(device="cpu")
        _init(self)
        self.tp = tp

    def token_share(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[: tokens.shape[0] // self.tp]

    def all_shares(self, out: torch.Tensor) -> torch.Tensor:
        return out.repeat(self.tp, 1) if self.tp > 1 else out

    def dispatched(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return rows


class ExpertsBlock(nn.Module):
    """One rank's routed experts of an ep x etp expert grid over the rows it dispatches (module docstring)."""

    def __init__(self, model: ModelSpec, ep: int, etp: int):
        super().__init__()
        m = model.moe
        self.experts = _init(GroupedExperts(m.num_experts // ep, model.hidden_size, m.moe_intermediate_size // etp,
                                            m.expert_bias, model.swiglu_limit))
        self.ep, self.etp = ep, etp
        self._counts: dict = {}

    def counts(self, n: int, parts: int, device) -> torch.Tensor:
        """`even_counts(n, parts)` on `device`, made once (the executor's counts are on the device already: the
        timed forward copies nothing from the host)."""
        key = (n, parts, device)
        if key not in self._counts:
            self._counts[key] = torch.tensor(even_counts(n, parts), device=device)
        return self._counts[key]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [n, hidden]: the token copies this rank dispatches; returns their outputs."""
        n, local = rows.shape[0], self.experts.w1.shape[0]
        if self.ep == 1 and self.etp == 1:  # the executor calls the experts directly here
            return self.experts(rows, self.counts(n, local, rows.device))
        received = self.counts(n, self.ep * local, rows.device).view(self.ep, local)
        if self.etp == 1:
            return regrouped_experts(self.experts, rows, received)
        out = regrouped_experts(self.experts, rows.repeat(self.etp, 1), received.repeat(self.etp, 1))
        return out.view(self.etp, n, -1).sum(0)


def dispatched_rows(model: ModelSpec, micro_batch: int, seq_len: int) -> int:
    """The token copies a rank dispatches when it routes micro_batch x seq_len tokens: top-k of each."""
    return micro_batch * seq_len * model.moe.num_experts_per_tok
