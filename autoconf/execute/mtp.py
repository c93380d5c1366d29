"""DeepSeek-V3's multi-token-prediction (MTP) modules in the executor (report sec. 2.2; Megatron-Core's
MultiTokenPredictionLayer, whose order of operations this follows; cost/mtp.py prices them).

Module k (1..D) takes the previous depth's hidden states h_{k-1} (depth 0: the main model's, after its final norm)
and the embedding of the tokens k positions ahead (position i: token i + k, through the model's own embedding; its
learned positions, where it has them, i + k too, as Megatron-Core rolls the position ids with the tokens),
normalises both (enorm, hnorm), projects their concatenation [embedding, hidden] 2h -> h (eh_proj), runs one
transformer block like the model's `mtp_block_layer`, and its own final norm: h_k. The model's own head gives its
logits, whose cross entropy against the tokens k + 1 ahead (the last k positions have none and are left out) is
the module's loss. The model's forward returns the modules' logits beside its own when given the targets
(`mtp_logits`); the training objective adds `scale` / D times the sum of the modules' losses to the main loss
(`with_mtp_losses`); the reported loss stays the main cross entropy, so losses compare across models and layouts.

What the modules read and predict comes from whole sequences (`future_tokens`, made before context parallelism
splits the sequence), so any layout gets the right tokens k ahead of each place it holds. The executor builds them
in every layout it runs: any data parallelism, ZeRO stage, tensor parallelism (the
projection column-parallel, its output in the residual stream's layout; under sequence parallelism the norms split
along the sequence: parallelize.apply_tp), expert parallelism, recompute mode (each module's block is recomputed
under the plan's mode, as cost/mtp.py prices it) and context parallelism (each module's block exchanges K/V like
the layers'; `with_mtp_losses` weights each rank's mean by its share of the places that have a token ahead).
Under pipelining the modules live on the last stage, which holds a copy of the embedding (`Transformer.mtp_embed`,
Megatron-Core's layout, as cost/mtp.py counts it) whose gradient pipeline.EmbeddingSync sums with the first
stage's; the schedule passes the tokens ahead to every stage's forward (torch's stage kwargs) and the last stage's
loss function joins the modules' losses (execute/train.py). On the V placements (zbv, dualpipev) the last stage
shares a rank with the first and each chunk, an FSDP root of its own, keeps its embedding (EmbeddingSync sums the
two on the rank; the torch layout's count, cost/mtp.py `copy_per_chunk`, where DeepSeek's DualPipe shares one).
Under seq1f1b the tokens ahead are cut into the units with the labels (seq_chunks.to_units), the modules' blocks
read the earlier units' K/V like the layers', and each unit's MTP mean is weighted as a context-parallel rank's.
"""

from __future__ import annotations

import torch
from torch import nn

from autoconf.execute.loss import IGNORE_INDEX


class MTPModule(nn.Module):
    """One MTP depth: enorm, hnorm, eh_proj, a block and a final norm (module docstring)."""

    def __init__(self, spec, attention: str):
        from autoconf.execute.model import Block, make_norm

        super().__init__()
        h = spec.hidden_size
        self.enorm = make_norm(spec)
        self.hnorm = make_norm(spec)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = Block(spec, attention, spec.mtp_block_layer)
        self.norm = make_norm(spec)

    def forward(self, hidden: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(embedded), self.hnorm(hidden)], dim=-1))
        return self.norm(self.block(x))


def ahead(tokens: torch.Tensor, k: int, fill: int) -> torch.Tensor:
    """tokens [batch, seq] moved k positions to the left (position i holds token i + k), the last k positions
    `fill`."""
    if k == 0:
        return tokens
    return torch.cat([tokens[:, k:], tokens.new_full((tokens.shape[0], min(k, tokens.shape[1])), fill)], dim=1)


def future_tokens(targets: torch.Tensor, depth: int) -> torch.Tensor:
    """[batch, depth + 1, seq]: at [:, j, i] the token j + 1 places after token i (`targets` [batch, seq], the next
    tokens, are j = 0), IGNORE_INDEX past the sequence's end: what the MTP modules read and predict. Made from
    whole sequences: under context parallelism each rank takes its share along the last dimension (the tokens
    ahead of a chunk's last ones lie in the next chunk)."""
    return torch.stack([ahead(targets, j, IGNORE_INDEX) for j in range(depth + 1)], dim=1)


def mtp_logits(model, hidden: torch.Tensor, future: torch.Tensor) -> list[torch.Tensor]:
    """Each MTP module's logits, from the main model's final hidden states `hidden` and `future` (`future_tokens`
    of the micro-batch's places): inside the model's forward, where FSDP holds the embedding (on a pipeline's last
    stage its copy) and the head gathered."""
    logits = []
    for k, module in enumerate(model.mtp.values(), start=1):
        tokens = future[:, k - 1].clamp(min=0)  # (past the end any token: no loss reads those places)
        hidden = module(hidden, model.mtp_embedding(tokens, ahead=k))
        logits.append(model.output(hidden))
    return logits


def with_mtp_losses(loss: torch.Tensor, logits: list[torch.Tensor], future: torch.Tensor, loss_fn,
                    scale: float, parts: int = 1, seq_len: int | None = None) -> torch.Tensor:
    """`loss` (the main cross entropy), whose backward also runs the backward of scale / D x the sum of the D MTP
    modules' cross entropies (`logits` of depth k against the tokens k + 1 ahead, `future[:, k]`, over the places
    that have one), with the gradient `loss` receives. Where `future` holds one of `parts` > 1 parts of sequences of
    `seq_len` places (a context-parallel rank's share, a seq1f1b unit), a depth's places without a token ahead all
    lie in the last part: each part's mean over its own places is weighted by their share of the depth's places over
    the whole sequence, so the mean over the parts (which the gradients take) is the whole sequence's mean."""
    extra = 0.0
    for k, part in enumerate(logits, start=1):
        labels = future[:, k]
        term = loss_fn(part, labels)
        if parts > 1:
            term = term * ((labels != IGNORE_INDEX).sum() * (parts / (labels.shape[0] * (seq_len - k))))
        extra = extra + term
    return _JoinLosses.apply(loss, extra * (scale / len(logits)))


class _JoinLosses(torch.autograd.Function):
    """Returns `main`; its backward gives `extra` the same gradient, so extra joins the objective without joining
    the reported loss."""

    @staticmethod
    def forward(ctx, main, extra):
        return main.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, grad
