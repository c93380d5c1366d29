"""The pipeline split of a plan: virtual stages, their placement on pipeline ranks, and the schedule that runs them.

- Virtual stage s holds layers plan.partition[s] = [first, end); stage 0 adds the embedding, the last stage the
  final norm and LM head.
- The pipeline rank of each stage is `autoconf.spec.schedules.stage_to_rank` (loop placement s % pp, or V placement
  for zbv/dualpipev: rank r holds stages r and 2pp-1-r): the same mapping the cost model simulates and torch uses.
- The schedule class is torch.distributed.pipelining's, by `get_schedule_class(schedule_spec(name).torch_class)`:
  gpipe->ScheduleGPipe, 1f1b->Schedule1F1B, interleaved-1f1b->ScheduleInterleaved1F1B, looped-bfs->ScheduleLoopedBFS,
  zb-h1->ScheduleInterleavedZeroBubble (torch accepts one stage per rank: with vpp == 1 it is ZB-H1),
  zbv->ScheduleZBVZeroBubble, dualpipev->ScheduleDualPipeV. Its per-rank order equals the cost model's action lists
  (tests/test_schedules_torch.py). seq1f1b has no torch class: torch's `_PipelineScheduleRuntime` runs the cost
  model's own action list (execute/seq_chunks.py).
- With tied embeddings or MTP modules (execute/mtp.py) and pp > 1, the first and the last stage each hold a copy of
  the embedding matrix; `EmbeddingSync` sums their gradients after every backward (Megatron's embedding group), so
  both copies stay equal.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from autoconf.spec.grid import RankGrid
from autoconf.spec.schedules import schedule_spec, stage_to_rank
from autoconf.execute.model import EMBED_WEIGHT, Transformer, build_model, embedding_source


def stages_of_rank(plan, pp_rank: int) -> list[int]:
    """Virtual stages held by pipeline rank `pp_rank`, in model order."""
    c = plan.config
    if c.pp == 1:
        return list(range(c.num_stages))
    placement = stage_to_rank(c.schedule, c.pp, c.vpp)
    return [s for s, r in enumerate(placement) if r == pp_rank]


def build_chunks(plan, pp_rank: int) -> list[tuple[int, Transformer]]:
    """(stage index, meta-device chunk) for every stage of this pipeline rank. With pp == 1 the whole model is one
    chunk, whatever the partition says."""
    c, spec = plan.config, plan.model
    if c.pp == 1:
        return [(0, build_model(spec, attention=c.attention))]
    last = c.num_stages - 1
    return [(s, build_model(spec, plan.partition[s][0], plan.partition[s][1], embed=s == 0, head=s == last,
                            attention=c.attention))
            for s in stages_of_rank(plan, pp_rank)]


class _Unsharded(torch.nn.Module):
    """A chunk of one-rank FSDP units (`parallelize.apply_data_parallel` without ZeRO sharding) as torch's pipeline
    stage sees it: a plain module, so the stage lets FSDP cast each micro-batch's gradient into the fp32 gradient as
    it comes (the post-accumulate-grad hooks of `GradReducer` count them) instead of deferring it to after the
    stage's last backward as it does for a root FSDP unit. Not under split-backward schedules: their weight pass
    needs the stage to keep the compute copies from the input pass (which it does for a root unit only)."""

    def __init__(self, chunk: Transformer):
        super().__init__()
        self.chunk = chunk

    def forward(self, x: torch.Tensor, **kwargs):
        return self.chunk(x, **kwargs)


def build_schedule(plan, chunks: list[tuple[int, Transformer]], pp_group, device: torch.device, loss_fn,
                   scale_grads: bool = True):
    """PipelineStage objects for this rank's chunks and the plan's schedule over them, `loss_fn` the loss of one
    micro-batch on this rank (execute/loss.py `rank_loss`). With scale_grads=False the gradients stay summed over the
    micro-batches (the caller divides them)."""
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class

    c = plan.config
    if schedule_spec(c.schedule).sequence_chunks:
        return _sequence_chunk_schedule(plan, chunks, pp_group, device, loss_fn, scale_grads)
    cls = get_schedule_class(schedule_spec(c.schedule).torch_class)
    stage_class, wrap = _stage_kind(c, PipelineStage)
    stages = [stage_class(wrap(chunk), s, c.num_stages, device, group=pp_group) for s, chunk in chunks]
    if issubclass(cls, PipelineScheduleSingle):
        assert len(stages) == 1
        schedule = cls(stages[0], n_microbatches=c.num_microbatches, loss_fn=loss_fn, scale_grads=scale_grads)
    else:
        schedule = cls(stages, n_microbatches=c.num_microbatches, loss_fn=loss_fn, scale_grads=scale_grads)
        torch_map = getattr(schedule, "stage_index_to_group_rank", None)
        if torch_map is not None:
            ours = dict(enumerate(stage_to_rank(c.schedule, c.pp, c.vpp)))
            assert dict(torch_map) == ours, f"torch places stages {torch_map}, the cost model {ours}"
    return schedule, stages


def _stage_kind(c, base):
    """(stage class, chunk wrapper) for a rank's chunks, `base` a PipelineStage class, always holding its receive
    buffers just in time (`_just_in_time_stage_class`): a sharded plan that reduces every micro-batch's gradients
    runs `_reducing_stage_class` over it; ZeRO-0 chunks (one-rank FSDP units) run behind the plain `_Unsharded`
    wrapper so that torch's stage does not postpone their root unit's gradient work; split-backward schedules need
    torch's own handling of the weight pass, so their chunks stay unwrapped."""
    base = _just_in_time_stage_class(base)
    if c.reduces_every_microbatch:
        return _reducing_stage_class(c.zero_stage >= 3, base), (lambda chunk: chunk)
    if not c.zero_sharded and not schedule_spec(c.schedule).split_backward:
        return base, _Unsharded
    return base, (lambda chunk: chunk)


def _just_in_time_stage_class(base):
    """A subclass of the PipelineStage class `base` whose receive buffers hold memory only from their receive until
    their micro-batch's backward is done (`Execution.pipeline_buffers` "just_in_time"). torch's stage (2.13)
    allocates an activation and a gradient buffer for every micro-batch at its first step and keeps them through
    every step; this one keeps torch's tensors, so the runtime's bookkeeping is unchanged, but gives their storage
    back (`resize_(0)`) once the micro-batch's backward (its weight pass under split backward) is done and takes it
    again before the next receive into them; the buffers torch allocates at the first step are given back at once.
    After that, only tensors this stage received into are given back: a same-rank handoff (V placements) passes the
    other stage's output, which stays as it is."""

    class JustInTimeStage(base):
        def _prepare_forward_infra(self, *args, **kwargs):
            out = super()._prepare_forward_infra(*args, **kwargs)
            self._give_back_all(self.args_recv_info)
            return out

        def _prepare_backward_infra(self, *args, **kwargs):
            out = super()._prepare_backward_infra(*args, **kwargs)
            self._give_back_all(self.grad_recv_info)
            return out

        def get_fwd_recv_ops(self, fwd_chunk_id: int):
            self._take(fwd_chunk_id, self.args_recv_info.get(fwd_chunk_id, ()))
            return super().get_fwd_recv_ops(fwd_chunk_id)

        def get_bwd_recv_ops(self, bwd_chunk_id: int):
            if self.has_backward and not self.is_last:
                self._take(bwd_chunk_id, self.grad_recv_info.get(bwd_chunk_id, ()))
            return super().get_bwd_recv_ops(bwd_chunk_id)

        def backward_one_chunk(self, bwd_chunk_id: int, loss=None, full_backward: bool = True, last_backward=False):
            out = super().backward_one_chunk(bwd_chunk_id, loss=loss, full_backward=full_backward,
                                             last_backward=last_backward)
            if full_backward:
                self._give_back(bwd_chunk_id)
            return out

        def backward_weight_one_chunk(self, bwd_chunk_id: int, last_backward=False):
            out = super().backward_weight_one_chunk(bwd_chunk_id, last_backward=last_backward)
            self._give_back(bwd_chunk_id)
            return out

        def backward_maybe_with_nosync(self, backward_type, bwd_kwargs: dict, last_backward: bool = False):
            if backward_type == "weight" and len(bwd_kwargs.get("param_groups") or ()) > 1:
                bwd_kwargs = {**bwd_kwargs, "param_groups": weight_pass_groups(self.submod,
                                                                               bwd_kwargs["param_groups"])}
            return super().backward_maybe_with_nosync(backward_type, bwd_kwargs, last_backward=last_backward)

        def _take(self, chunk: int, infos) -> None:
            held = self.__dict__.setdefault("_received", {}).setdefault(chunk, [])
            for buffer in _receive_buffers(infos):
                storage = buffer.untyped_storage()
                size = (buffer.storage_offset() + buffer.numel()) * buffer.element_size()
                if storage.nbytes() < size:
                    storage.resize_(size)
                if not any(t is buffer for t in held):
                    held.append(buffer)

        @staticmethod
        def _give_back_all(recv_info: dict) -> None:
            """Every buffer torch has just allocated, until its first receive."""
            for infos in recv_info.values():
                for buffer in _receive_buffers(infos):
                    buffer.untyped_storage().resize_(0)

        def _give_back(self, chunk: int) -> None:
            for buffer in self.__dict__.get("_received", {}).pop(chunk, ()):
                buffer.untyped_storage().resize_(0)

    return JustInTimeStage


def weight_pass_groups(chunk, groups: list[dict]) -> list[dict]:
    """The parameter groups the weight pass runs (`stage_backward_weight`, one autograd call per group), from torch's
    `groups` of `chunk`: the groups of each block that recomputes whole (full recompute or the per-op policy)
    merged into one (`merged_param_groups`), every other group as torch made it.

    Each call unpacks a checkpointed region's saved tensors anew, so a whole-recomputing block recomputed once per
    group (tiny-moe with full recompute: the weight pass 7x the input pass); merged, once. But a merged call walks
    the backward between its intermediates too (torch only replaces what reaches them by their saved gradients): on
    tiny-gpt's four blocks without recompute the weight pass took 48 ms merged against 20 ms in torch's groups, a
    whole backward 46 ms. So blocks that keep their activations (or checkpoint only the attention core or SwiGLU's
    gate, whose region few groups reach) keep torch's groups.

    The MTP modules (execute/mtp.py) and their embedding copy are one merged group too: the embedding feeds every
    depth, and module k's input is module k - 1's output, so torch's groups (torch 2.13 `get_param_groups`) put
    the embedding, and with it the first depth's norm, in two groups whose calls both walk module 1's backward: the
    second call found its saved tensors freed. One call walks it once."""
    from torch.distributed.pipelining._backward import _get_grad_fn_or_grad_acc

    owner = {}
    for index, block in getattr(chunk, "layers", {}).items():
        if getattr(block, "recompute_full", False) or getattr(block, "recompute_ops", False):
            for param in block.parameters():
                if param.requires_grad:
                    owner[_get_grad_fn_or_grad_acc(param)] = index
    for module in (getattr(chunk, "mtp", None), getattr(chunk, "mtp_embed", None)):
        for param in module.parameters() if module is not None else ():
            if param.requires_grad:
                owner[_get_grad_fn_or_grad_acc(param)] = "mtp"
    merged: dict = {}
    kept = []
    for group in groups:
        blocks = {owner.get(node) for node in group["params"]}
        if len(blocks) == 1 and None not in blocks:
            merged.setdefault(blocks.pop(), []).append(group)
        else:
            kept.append(group)
    return [merged_param_groups(block_groups) for block_groups in merged.values()] + kept


def merged_param_groups(groups: list[dict]) -> dict:
    """One parameter group of all `groups`' parameters and intermediates (each intermediate once, with its saved
    gradients): one autograd call of the weight pass (`weight_pass_groups`). torch clamps every intermediate of a
    group of several to its saved gradients, so none is counted twice through another."""
    params, intermediates, grads, seen = set(), [], [], set()
    for group in groups:
        params |= set(group["params"])
        for node, grad in zip(group["intermediates"], group["grads"], strict=True):
            if id(node) not in seen:
                seen.add(id(node))
                intermediates.append(node)
                grads.append(grad)
    return {"params": params, "intermediates": intermediates, "grads": grads}


def _receive_buffers(infos):
    """The tensors torch's stage receives into among its receive infos (root arguments and absent gradients have
    none)."""
    return [info.buffer for info in infos if info.buffer is not None and not info.is_root_arg]


def _sequence_chunk_schedule(plan, chunks: list[tuple[int, Transformer]], pp_group, device: torch.device, loss_fn,
                             scale_grads: bool):
    """seq1f1b (execute/seq_chunks.py): the rank's chunks read one `SequenceChunks`, their stages (of the class and
    wrapper the other schedules take, `_stage_kind`) tell it which unit runs, and torch's runtime runs the cost
    model's order."""
    from autoconf.execute import seq_chunks

    c = plan.config
    context = seq_chunks.SequenceChunks(plan.chunk_bounds, device)
    stage_class, wrap = _stage_kind(c, seq_chunks.chunk_stage_class())
    stages = []
    for s, chunk in chunks:
        seq_chunks.attach(chunk, context)
        stage = stage_class(wrap(chunk), s, c.num_stages, device, group=pp_group)
        stage.chunk_context = context
        stages.append(stage)
    return seq_chunks.runtime_schedule(plan, stages, loss_fn, scale_grads), stages


def _reducing_stage_class(reshard: bool, base):
    """A subclass of the PipelineStage class `base` whose FSDP chunk reduce-scatters every micro-batch's gradients
    during its backward (grad_reduce "microbatch"). torch's stage runs every backward with `set_requires_gradient_sync(False)` and
    `set_reshard_after_backward(False)` and reduces after the stage's last one (`perform_reduce_grad`, which still
    runs and then finds nothing left to reduce); this one keeps the sync on, as FSDP runs outside a pipeline, and
    reshards after each backward at ZeRO-3 (`reshard`), after the last at ZeRO-1/2. Only the full backward: the
    split I/W schedules are refused with this choice (spec/support.py)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.pipelining._backward import stage_backward

    class ReducingStage(base):
        def backward_maybe_with_nosync(self, backward_type, bwd_kwargs: dict, last_backward: bool = False):
            if backward_type != "full" or not isinstance(self.submod, FSDPModule):
                return super().backward_maybe_with_nosync(backward_type, bwd_kwargs, last_backward)
            self.submod.set_is_last_backward(True)
            self.submod.set_requires_gradient_sync(True)
            self.submod.set_reshard_after_backward(reshard or last_backward)
            grads = stage_backward(bwd_kwargs["stage_output"], bwd_kwargs["output_grads"], bwd_kwargs["input_values"])
            return grads, None

    return ReducingStage


class EmbeddingSync:
    """Keeps the first stage's embedding and the last stage's copies of it (the tied head, the MTP modules'
    embedding: `Transformer.is_embedding_copy`) equal by summing their gradients.

    The copies have the embedding's layout (TP Shard(0), the same FSDP sharding), so local shards line up. When one
    rank holds both ends (V placement) nothing crosses the network; at pp == 1 there is nothing to sync (a tied
    head is the embedding's parameter, the MTP modules read the embedding itself). Every rank must construct this
    object (process groups are created collectively); the group of the two ends' ranks times out after `timeout`
    (torch's default when None). Gradients held in host memory (FSDP's CPU offload under offload_optimizer) are
    summed on `device`, where the group's backend (NCCL on CUDA) works.
    """

    def __init__(self, plan, grid: RankGrid, chunks: list[tuple[int, Transformer]], rank: int, timeout=None,
                 device: torch.device | None = None):
        self.slots: list[list[torch.nn.Parameter]] = []  # per embedding parameter, this rank's copies of it
        self.group, self.device = None, device
        c, spec = plan.config, plan.model
        if c.pp == 1 or not (spec.tied_embeddings or spec.mtp_num_layers):
            return
        copies: dict[str, list[torch.nn.Parameter]] = {}
        for _, chunk in chunks:
            tied = chunk.head_is_tied_copy
            for name, param in chunk.named_parameters():
                if name.startswith("embed.") or chunk.is_embedding_copy(name):
                    slot = copies.setdefault(embedding_source(name, tied), [])
                    if not any(param is p for p in slot):
                        slot.append(param)
        # The same slots in the same order on both ends: the embedding's weight (what a tied head copies), and with
        # MTP modules every parameter of the embedding (learned positions too).
        synced = sorted(copies) if spec.mtp_num_layers else [EMBED_WEIGHT]
        self.slots = [copies[name] for name in synced if name in copies]
        last_rank = stage_to_rank(c.schedule, c.pp, c.vpp)[c.num_stages - 1]
        if last_rank == 0:
            return
        for first, last in zip(grid.pipeline_rank(0).flat, grid.pipeline_rank(last_rank).flat):
            ranks = [int(first), int(last)]
            group = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                self.group = group

    @torch.no_grad()
    def sync(self) -> None:
        from torch.distributed.tensor import DTensor

        for params in self.slots:
            grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params]
            total = grads[0]  # summed in place: the first copy's gradient becomes the sum, the others copy it
            for g in grads[1:]:
                total += g
            if self.group is not None:
                here = total if self.device is None or total.device == self.device else total.to(self.device)
                dist.all_reduce(here, group=self.group)
                if here is not total:
                    total.copy_(here)
            for g in grads[1:]:
                g.copy_(total)
