"""Sequence-level pipelining (schedule seq1f1b, Sun et al. arXiv 2406.03488) in the executor.

Each micro-batch's sequence is cut into k = `seq_chunks` equal chunks that flow through the pipeline as units:
unit u = i * k + j is chunk j of micro-batch i (`to_units` lays a batch out that way, so torch's runtime splits it
into m * k units of micro_batch_size rows). The order is the cost model's (`spec.schedule_orders.seq1f1b_order`),
run by torch 2.13's `_PipelineScheduleRuntime` from an explicit action list (its lowering adds the P2P actions; its
only check on the order is that a unit's forward precedes its backward, so a micro-batch's chunks may go backward
last chunk first).

What torch does not provide is the state between the units of one sequence, kept here per pipeline rank
(`SequenceChunks`, attached to the rank's embedding and attention layers like context parallelism's object):

- positions: chunk j's tokens sit at j * s/k .. (j+1) * s/k - 1 (RoPE, learned positions and the causal mask read
  them);
- keys and values: chunk j's attention reads the K/V of chunks 0..j-1 of its micro-batch. torch's stage runs each
  unit's backward as an autograd graph of its own, so a later chunk must not backpropagate into an earlier chunk's
  graph: each chunk hands its K/V on as detached leaves, a later chunk's backward accumulates their gradients there,
  and a hook on the chunk's own K/V adds them when its backward runs, which the order puts after every later
  chunk's. The leaves share the K/V's storage (no copy); a micro-batch's entry is dropped at its chunk 0's backward.

The runtime's shape inference calls a stage once outside any unit: it then sees chunk 0 with no earlier chunks.
"""

from __future__ import annotations

import torch

from autoconf.spec.schedules import build_schedule as schedule_order


def to_units(t: torch.Tensor, micro_batch: int, chunks: int) -> torch.Tensor:
    """A [m * b, s] batch as [m * k * b, s / k]: micro-batch i's chunk j (its b rows) at rows (i * k + j) * b."""
    rows, seq = t.shape
    m = rows // micro_batch
    return t.reshape(m, micro_batch, chunks, seq // chunks).transpose(1, 2).reshape(m * chunks * micro_batch, -1)


class SequenceChunks:
    """One pipeline rank's view of the unit it computes: `start(u)` before unit u's forward (None outside one)."""

    def __init__(self, seq_len: int, chunks: int, device: torch.device):
        self.chunks, self.chunk_len, self.device = chunks, seq_len // chunks, device
        self.unit: int | None = None

    def start(self, unit: int | None) -> None:
        self.unit = unit

    @property
    def chunk(self) -> int:
        return 0 if self.unit is None else self.unit % self.chunks

    @property
    def positions(self) -> torch.Tensor:
        first = self.chunk * self.chunk_len
        return torch.arange(first, first + self.chunk_len, device=self.device)

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

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, attend) -> torch.Tensor:
        shared = self.shared
        if shared.unit is None:
            return attend(q, k, v, None, p)
        micro_batch, j = divmod(shared.unit, shared.chunks)
        earlier = self.kv.setdefault(micro_batch, [])
        assert len(earlier) == j, f"chunk {j} of micro-batch {micro_batch} runs after {len(earlier)} earlier chunks"
        if j:
            keys = torch.cat([kl for kl, _ in earlier] + [k], dim=2)
            values = torch.cat([vl for _, vl in earlier] + [v], dim=2)
            n = shared.chunk_len
            query_pos = torch.arange(j * n, (j + 1) * n, device=q.device)
            mask = query_pos[:, None] >= torch.arange((j + 1) * n, device=q.device)[None, :]
            out = attend(q, keys, values, mask, p)
        else:
            out = attend(q, k, v, None, p)
        if j < shared.chunks - 1 and torch.is_grad_enabled():
            leaves = (k.detach().requires_grad_(), v.detach().requires_grad_())
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
            return grad if extra is None else grad + extra

        return hook


def attach(model, context: SequenceChunks) -> None:
    """Makes a model chunk's embedding (positions) and attention layers (positions, K/V of earlier chunks) read
    `context`."""
    if model.embed is not None:
        model.embed.context = context
    for block in model.layers.values():
        block.attention.context = context.layer()


def runtime_schedule(plan, stages, loss_fn, scale_grads: bool):
    """torch's `_PipelineScheduleRuntime` over this rank's `stages`, running the cost model's seq1f1b order for
    every rank (m x k units)."""
    from torch.distributed.pipelining.schedules import _Action, _ComputationType, _PipelineScheduleRuntime

    c = plan.config
    kinds = {"F": _ComputationType.FORWARD, "B": _ComputationType.FULL_BACKWARD}
    order = schedule_order(c.schedule, c.pp, c.num_microbatches, c.vpp, c.seq_chunks)
    schedule = _PipelineScheduleRuntime(stages, n_microbatches=order.num_microbatches, loss_fn=loss_fn,
                                        scale_grads=scale_grads)
    actions = {rank: [_Action(a.stage, kinds[a.kind], a.microbatch) for a in acts]
               for rank, acts in enumerate(order.actions)}
    schedule._prepare_schedule_with_comms(actions)
    return schedule


def chunk_stage_class():
    """A PipelineStage that tells its `SequenceChunks` (the module attribute `chunk_context`) which unit it
    computes."""
    from torch.distributed.pipelining import PipelineStage

    class ChunkStage(PipelineStage):
        chunk_context: SequenceChunks

        def forward_one_chunk(self, fwd_chunk_id, *args, **kwargs):
            self.chunk_context.start(fwd_chunk_id)
            try:
                return super().forward_one_chunk(fwd_chunk_id, *args, **kwargs)
            finally:
                self.chunk_context.start(None)

    return ChunkStage
