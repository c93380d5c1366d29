"""Sequence-level pipelining (schedule seq1f1b, Sun et al. arXiv 2406.03488) in the executor.

Each micro-batch's sequence is cut into k = `seq_chunks` chunks at the plan's boundaries (`Plan.chunk_bounds`: the
even split, or the equal-work split that `cost/compute.py::seq_chunk_bounds` chose, earlier chunks longer) and the
chunks flow through the pipeline as units: unit u = i * k + j is chunk j of micro-batch i (`to_units` lays a batch
out that way, so torch's runtime splits it into m * k units of micro_batch_size rows). torch's runtime keeps one
buffer shape per stage, so every unit is padded at its end to the longest chunk's length: padded inputs are token 0,
padded targets `IGNORE_INDEX` (no loss), and no real token sees a padded one (they come after it in the causal
order, and a later chunk reads only the real K/V of the earlier ones), so the real tokens compute exactly what one
process does.
A unit's loss is the sum over its real tokens / (micro_batch x seq_len / k) (`unit_share`, which the trainer's
objective applies), so the runtime's mean over units is the mean over the step's tokens for any split; the MTP
modules' losses are weighted the same way (execute/mtp.py `with_mtp_losses`, by the places that have a token
ahead). The order is the cost model's (`spec.schedule_orders.seq1f1b_order`), run by torch 2.13's
`_PipelineScheduleRuntime` from an explicit action list (its lowering adds the P2P actions; its only check on the
order is that a unit's forward precedes its backward, so a micro-batch's chunks may go backward last chunk first).

What torch does not provide is the state between the units of one sequence, kept here per pipeline rank
(`SequenceChunks`, attached to the rank's embedding and attention layers like context parallelism's object):

- positions: chunk j's tokens sit at b_j .. b_j+1 - 1 (RoPE and learned positions read them; its padding continues
  the count, clamped to the last position for the embedding tables); its queries are the last of the keys its
  attention reads, so the mask is torch's lower-right causal bias, which the fused kernels apply without a mask
  tensor (on CPU the math kernel builds it), or in a sliding layer the window (`window_attention.attend_within`);
- keys and values: chunk j's attention reads the K/V of chunks 0..j-1 of its micro-batch. torch's stage runs each
  unit's backward as an autograd graph of its own, so a later chunk must not backpropagate into an earlier chunk's
  graph: each chunk hands its real K/V on as detached leaves, a later chunk's backward accumulates their gradients
  there, and a hook on the chunk's own K/V adds them when its backward runs, which the order puts after every later
  chunk's. The leaves share the K/V's storage (no copy); a micro-batch's entry is dropped at its chunk 0's backward.

The runtime's shape inference calls a stage once outside any unit: it then sees chunk 0 with no earlier chunks.
"""

from __future__ import annotations

import torch

from autoconf.execute.loss import IGNORE_INDEX
from autoconf.execute.window_attention import attend_within, lower_right

from autoconf.spec.schedules import build_schedule as schedule_order


def to_units(t: torch.Tensor, micro_batch: int, bounds: list[int], pad: int = 0) -> torch.Tensor:
    """A [m * b, ..., s] batch as [m * k * b, ..., L]: micro-batch i's chunk j (its b rows, tokens bounds[j]..
    bounds[j+1] along the last dimension) at rows (i * k + j) * b, each padded with `pad` to L, the longest chunk's
    length (the MTP modules' tokens ahead, [rows, depth + 1, s], split along their places like the labels)."""
    rows, *middle, _ = t.shape
    m, k = rows // micro_batch, len(bounds) - 1
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    out = t.new_full((m, k, micro_batch, *middle, longest), pad)
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        out[:, j, ..., :b - a] = t[..., a:b].reshape(m, micro_batch, *middle, b - a)
    return out.reshape(m * k * micro_batch, *middle, longest)


def unit_share(labels: torch.Tensor, seq_len: int, chunks: int) -> torch.Tensor:
    """What a unit's mean cross entropy (over its labels but `IGNORE_INDEX`) is multiplied by so that it is the sum
    over the unit's real tokens / (rows x seq_len / k): the mean over units is then the mean over every token of the
    step, whatever the split."""
    return (labels != IGNORE_INDEX).sum() / (labels.shape[0] * seq_len / chunks)


class SequenceChunks:
    """One pipeline rank's view of the unit it computes: `start(u)` before unit u's forward (None outside one)."""

    def __init__(self, bounds: list[int], device: torch.device):
        self.bounds, self.device = list(bounds), device
        self.chunks, self.seq_len = len(bounds) - 1, bounds[-1]
        self.padded_len = max(b - a for a, b in zip(bounds, bounds[1:]))
        self.unit: int | None = None
        # Chunk j's queries are the last padded_len of its b_j + padded_len keys. Built here, outside the modes a
        # forward may run under (the per-op policy's): torch cannot create this tensor subclass inside them.
        self.masks = [None] + [lower_right(self.padded_len, a + self.padded_len) for a in self.bounds[1:-1]]

    def start(self, unit: int | None) -> None:
        self.unit = unit

    @property
    def chunk(self) -> int:
        return 0 if self.unit is None else self.unit % self.chunks

    def length(self, chunk: int) -> int:
        return self.bounds[chunk + 1] - self.bounds[chunk]

    @property
    def positions(self) -> torch.Tensor:
        """The positions of the unit's rows, its padding continuing the count, clamped to the sequence (what RoPE
        and learned positions read)."""
        first = self.bounds[self.chunk]
        return torch.arange(first, first + self.padded_len, device=self.device).clamp(max=self.seq_len - 1)

    def layer(self) -> "LayerChunks":
        return LayerChunks(self)


class LayerChunks:
    """One attention layer's share of `SequenceChunks`: the K/V leaves of the earlier chunks of each micro-batch in
    flight. Called by `Attention.core` as context parallelism's object is (`positions`, `attention`)."""

    def __init__(self, shared: SequenceChunks):
        self.shared = shared
        self.kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def positions(self) -> torch.Tensor:
        return self.shared.positions

    @property
    def seq_len(self) -> int:
        return self.shared.seq_len

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, attend,
                  as_op: bool = False, window: int | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
        """The unit's attention over the earlier chunks' K/V and its own (under a sliding `window`, a mask of the
        positions: `window_mask`). `as_op` (a block under the per-op policy) changes nothing: the chunk's attention
        is one `attend` call, whose kernel the policy sees itself (context parallelism needs its own op for its
        exchange, cp_attention.py), and which adds the layer's `sinks` itself."""
        shared = self.shared
        if shared.unit is None:
            return attend_within(attend, q, k, v, window, p)
        micro_batch, j = divmod(shared.unit, shared.chunks)
        earlier = self.kv.setdefault(micro_batch, [])
        # A recomputed forward (in the unit's backward) finds its own leaves kept already: it reads the same earlier
        # chunks and keeps nothing new.
        recomputing = len(earlier) > j
        assert recomputing or len(earlier) == j, f"chunk {j} of micro-batch {micro_batch} runs after {len(earlier)}"
        if j:
            keys = torch.cat([kl for kl, _ in earlier[:j]] + [k], dim=2)
            values = torch.cat([vl for _, vl in earlier[:j]] + [v], dim=2)
            # chunk j's padded_len queries from b_j over the earlier chunks' real keys and its own
            out = attend_within(attend, q, keys, values, window, p, causal=shared.masks[j])
        else:  # the causal mask: the padding comes after every real token
            out = attend_within(attend, q, k, v, window, p)
        if j < shared.chunks - 1 and torch.is_grad_enabled():
            n = shared.length(j)
            leaves = (k[:, :, :n].detach().requires_grad_(), v[:, :, :n].detach().requires_grad_())
            if not recomputing:  # the ops stay those of the first forward (the per-op policy replays them in order)
                earlier.append(leaves)
                for own, leaf in zip((k, v), leaves):
                    own.register_hook(self._adds(leaf, micro_batch if j == 0 else None))
        return out

    def _adds(self, leaf: torch.Tensor, done: int | None):
        """The hook on a chunk's own K or V: adds what the later chunks' backwards left in its leaf; chunk 0's
        (`done`: its micro-batch) also drops the micro-batch's leaves."""

        def hook(grad: torch.Tensor) -> torch.Tensor:
            extra, leaf.grad = leaf.grad, None
            if done is not None:
                self.kv.pop(done, None)
            if extra is None:
                return grad
            return grad + torch.nn.functional.pad(extra, (0, 0, 0, grad.shape[2] - extra.shape[2]))

        return hook


def attach(model, context: SequenceChunks) -> None:
    """Makes a model chunk's embeddings (its MTP modules' copy too: positions) and attention layers (its MTP
    modules' blocks too: positions, K/V of earlier chunks) read `context`."""
    for embedding in (model.embed, model.mtp_embed):
        if embedding is not None:
            embedding.context = context
    for _, block in model.blocks():
        block.attention.context = context.layer()


def runtime_schedule(plan, stages, loss_fn, scale_grads: bool):
    """torch's `_PipelineScheduleRuntime` over this rank's `stages`, running the cost model's seq1f1b order for
    every rank (m x k units), each unit's loss `loss_fn` (which weights it by `unit_share`)."""
    from torch.distributed.pipelining.schedules import _Action, _ComputationType, _PipelineScheduleRuntime

    c = plan.config
    kinds = {"F": _ComputationType.FORWARD, "B": _ComputationType.FULL_BACKWARD}
    order = schedule_order(c.schedule, c.pp, c.num_microbatches, c.vpp, c.seq_chunks)
    schedule = _PipelineScheduleRuntime(stages, n_microbatches=order.num_microbatches,
                                        loss_fn=loss_fn,
                                        scale_grads=scale_grads)
    actions = {rank: [_Action(a.stage, kinds[a.kind], a.microbatch) for a in acts]
               for rank, acts in enumerate(order.actions)}
    schedule._prepare_schedule_with_comms(actions)
    return schedule


def chunk_stage_class():
    """A PipelineStage that tells its `SequenceChunks` (the module attribute `chunk_context`) which unit it
    computes, in its forward and in its backward (where recompute runs the unit's forward again)."""
    from torch.distributed.pipelining import PipelineStage

    class ChunkStage(PipelineStage):
        chunk_context: SequenceChunks

        def forward_one_chunk(self, fwd_chunk_id, *args, **kwargs):
            self.chunk_context.start(fwd_chunk_id)
            try:
                return super().forward_one_chunk(fwd_chunk_id, *args, **kwargs)
            finally:
                self.chunk_context.start(None)

        def backward_one_chunk(self, bwd_chunk_id, *args, **kwargs):
            self.chunk_context.start(bwd_chunk_id)
            try:
                return super().backward_one_chunk(bwd_chunk_id, *args, **kwargs)
            finally:
                self.chunk_context.start(None)

    return ChunkStage
