"""The torchrun entry point: `python -m autoconf.execute.train --plan PLAN.json --steps N [...]`.

Every rank builds its chunks of the model from the plan (mesh, TP, pipeline split, FSDP), trains with AdamW under a
warm-up + cosine learning rate, clips gradients by the global norm over every parallel dimension, and reports the
loss a single-process run would report (mean token cross entropy over the global batch). Rank 0 prints one progress
line per step and writes the metrics file. fp32 on CPU; on CUDA the plan's bf16/fp16 runs as FSDP2 mixed precision
on every rank (bf16 parameters, activations and compute, fp32 master weights, gradients and optimizer states:
`parallelize.py`), with torch's fused AdamW.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import math
import os
import resource
import signal
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from autoconf.errors import EXIT_DIVERGED, EXIT_LOST_PEER, EXIT_REFUSED, Diverged, UserError
from autoconf.execute import checkpoint as ckpt
from autoconf.execute import context_parallel as cpx
from autoconf.execute import faults
from autoconf.execute.data import TokenSource, local_rows
from autoconf.execute.mesh import (build_expert_mesh, build_mesh, process_group_backend, subgroup_backend,
                                   torchrun_store)
from autoconf.execute.model import init_seed
from autoconf.execute.moe import is_expert_param
from autoconf.execute.hyperparameters import HYPERPARAMETERS, default_of, parse_hyperparameter, schedule_problem
from autoconf.execute.mtp import future_tokens, with_mtp_losses
from autoconf.execute.optimizer import model_optimizer
from autoconf.execute.parallelize import (GradReducer, expert_grad_scale, match_grad_layout, moe_layers,
                                         parallelize_chunk, replica_mesh)
from autoconf.files import open_append, write_file
from autoconf.execute.loss import IGNORE_INDEX, rank_loss
from autoconf.execute.pipeline import EmbeddingSync, build_chunks, build_schedule
from autoconf.execute.seq_chunks import to_units, unit_share
from autoconf.spec.grid import AXES, RankGrid
from autoconf.spec.plan import Plan, load_plan, recomputed_layer_indices
from autoconf.spec.support import check_supported

@dataclass
class TrainOptions:
    steps: int
    seed: int = 0
    data: str | None = None
    metrics: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    # The training hyperparameters (execute/hyperparameters.py, where each is described and checked).
    lr: float = default_of("lr")
    min_lr_ratio: float = default_of("min_lr_ratio")
    warmup_steps: int | None = default_of("warmup_steps")  # None: 10% of the steps, at least 1
    weight_decay: float = default_of("weight_decay")
    max_grad_norm: float = default_of("max_grad_norm")
    mtp_loss_scale: float = default_of("mtp_loss_scale")  # the MTP modules' losses' weight (execute/mtp.py)
    timing_warmup: int = 2  # steps left out of the measured median iteration time
    stop_after: int | None = None  # end this run after that many steps (the schedule still spans `steps`)
    quiet: bool = False
    timeout_s: float = 600.0  # every collective's timeout: the default group's (init_distributed) and the meshes'


class PhaseClock:
    """Wall seconds of the parts of one step on this rank (rank 0's go into the metrics). On GPU each lap
    synchronises the device first, so the phases are only recorded when asked for (AUTOCONF_PHASES=1); on CPU they
    cost nothing and are always recorded."""

    def __init__(self, device: torch.device):
        self.device = device
        self.enabled = device.type == "cpu" or os.environ.get("AUTOCONF_PHASES") == "1"
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[name] = now - self._last
        self._last = now


def lr_at(step: int, opts: TrainOptions) -> float:
    """The learning rate of step `step` (0-based): linear warm-up to opts.lr at step warmup - 1, then cosine decay to
    opts.lr * min_lr_ratio at the last step (steps - 1)."""
    warmup = opts.warmup_steps if opts.warmup_steps is not None else max(1, opts.steps // 10)
    if step < warmup:
        return opts.lr * (step + 1) / warmup
    progress = (step + 1 - warmup) / max(1, opts.steps - warmup)
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Trainer:
    """One rank's share of a plan: model chunks, optimizer, pipeline schedule, data."""

    def __init__(self, plan: Plan, opts: TrainOptions, device: torch.device):
        self.plan, self.opts, self.device = plan, opts, device
        c = self.config = plan.config
        self.rank = dist.get_rank()
        if dist.get_world_size() != c.world_size:
            raise UserError(f"plan needs {c.world_size} processes ({c.dims.product()}) but "
                            f"{dist.get_world_size()} were started")
        check_supported(c, plan.model)
        # Grid position i runs as global rank i; which device hosts it is the launcher's business (node ranks and
        # local devices follow plan.placement, see spec/plan.py node_blocks), so every group is in grid order.
        grid = RankGrid.logical(c.dims)
        groups = subgroup_backend(device.type, opts.timeout_s)
        self.mesh = build_mesh(grid, device.type, solo=c.dp > 1 and not c.zero_sharded, groups=groups)
        moe = plan.model.is_moe
        self.expert_mesh = build_expert_mesh(grid, c.ep, c.etp, device.type, groups) if moe else None
        self.coords = grid.coords(self.rank)
        self.sizes = {axis: grid.size(axis) for axis in AXES} | {"edp": c.edp, "etp": c.etp}
        self.expert_scale = expert_grad_scale(c) if moe else 1.0  # applied by `clip`, counted by `grad_norm`
        self.fsdp = c.zero_sharded
        self.chunks = build_chunks(plan, self.coords["pp"])
        recomputed = recomputed_layer_indices(c, plan.partition)
        for _, chunk in self.chunks:
            parallelize_chunk(chunk, self.mesh, c, device, opts.seed, self.expert_mesh, recomputed)
        self.models = [chunk for _, chunk in self.chunks]
        # Context parallelism: this rank holds a share of every sequence (context_parallel.py); its attention
        # layers exchange K/V over the "cp" mesh dimension.
        self.context, self.attention_context = None, contextlib.nullcontext
        if c.cp > 1:
            self.context = cpx.ContextParallel(self.mesh["cp"], c.seq_len, device, c.cp_comm,
                                               cpx.uses_torch_attention(c, device.type, plan.model))
            self.attention_context = self.context.torch_attention  # the CUDA path's torch context_parallel
            for model in self.models:
                cpx.attach(model, self.context)
        self.tied = EmbeddingSync(plan, grid, self.chunks, self.rank, timedelta(seconds=opts.timeout_s), device)
        # Each parameter's gradient accumulates once per backward unit: a micro-batch, or under seq1f1b each of its
        # seq_chunks chunks. Each unit's loss is divided by the units before its backward (the loop's, and the
        # pipeline's loss function: torchtitan's way), so no pass divides the gradients after the step (torch's
        # scale_grads is off).
        # ZeRO-0 over dp x cp > 1 (or over edp > 1 for the routed experts): each chunk's gradients are averaged
        # during its last micro-batch's backward, the experts' over the expert-data-parallel group.
        self.units = c.num_microbatches * c.seq_chunks
        self.reducers: list[GradReducer] = []
        if not self.fsdp and (c.dp_cp > 1 or (moe and c.edp > 1)):
            for model in self.models:
                self.reducers.append(GradReducer(model, replica_mesh(self.mesh, c).get_group(), self.units, c.dp_cp))
                if moe:
                    self.reducers.append(GradReducer(model, self.expert_mesh["edp"].get_group(), self.units, c.edp,
                                                     expert_params=True))
        self.schedule = None
        # Under TP each rank's head returns its vocabulary slice's logits; the loss reduces over the TP group.
        self.loss_fn = rank_loss(self.mesh["tp"] if c.tp > 1 else None, plan.model.vocab_size)
        if c.pp > 1:
            self.schedule, self.stages = build_schedule(plan, self.chunks, self.mesh["pp"].get_group(), device,
                                                        self._stage_loss, scale_grads=False)
        for moe_layer in (m for model in self.models for m in moe_layers(model)):
            moe_layer.aux_loss_scale = 1.0 / self.units  # (the aux loss's gradient takes the cross entropy's scale)
        self.can_drop_outputs = (self.schedule is not None and
                                 "return_outputs" in inspect.signature(self.schedule.step).parameters)
        self.optimizers = [self._optimizer(model) for model in self.models]  # one per chunk (for DCP)
        self.data = TokenSource(opts.data, plan.model.vocab_size, c.seq_len, opts.seed)

    # ---- optimizer -------------------------------------------------------------------------------------------
    def _optimizer(self, model) -> torch.optim.Optimizer:
        """AdamW on the fp32 master weights (execute/optimizer.py: torch's fused kernel, on the device or on
        offload_optimizer's host tensors); decay on matrices only."""
        return model_optimizer(model.parameters(), self.opts.lr, self.opts.weight_decay)

    # ---- gradients ---------------------------------------------------------------------------------------------
    def _grads(self):
        """(model chunk, parameter name, gradient) of every parameter holding one, each parameter once (a tied
        embedding shared by two modules of one chunk is one parameter): what the norm and the clip walk."""
        seen: set[int] = set()
        for model in self.models:
            for name, p in model.named_parameters():
                if p.grad is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield model, name, p.grad

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """L2 norm of the whole model's gradient. Each rank adds its local shards' squared norms, divided by how many
        ranks hold the same values (the dp/cp/tp dimensions the tensor is not sharded over; for routed experts the
        edp and etp dimensions: the down projection's bias is whole on every ETP rank); a sum over all ranks then
        counts every element once. The embedding's copies on the last stage (tied head, MTP embedding) are left out
        (their gradients equal the embedding's). The routed experts' gradients count as scaled by
        `expert_grad_scale` (`clip` applies it). One read of each gradient (`torch._foreach_norm` per group of equal
        replication, as torch's clip_grad_norm_ reads them: `Execution.grad_norm_bytes`); the squares summed in
        float64."""
        from torch.distributed.tensor import DTensor

        total = torch.zeros((), dtype=torch.float64, device=self.device)
        groups: dict[tuple[int, bool], list[torch.Tensor]] = {}
        for model, name, grad in self._grads():
            if model.is_embedding_copy(name):
                continue
            g, sharded = grad, set()
            if isinstance(g, DTensor):
                # Not is_shard(): FSDP over TP uses _StridedShard, which is_shard() does not count.
                # A flattened dimension ("dp_cp") shards over each axis it joins.
                sharded = {axis for n, pl in zip(g.device_mesh.mesh_dim_names, g.placements)
                           if not pl.is_replicate() for axis in n.split("_")}
                g = g.to_local()
            replicas, expert = 1, is_expert_param(name)
            for dim in ("edp", "etp") if expert else ("dp", "cp", "tp"):
                if dim not in sharded:
                    replicas *= self.sizes[dim]
            if g.numel():
                groups.setdefault((replicas, expert), []).append(g)
        for (replicas, expert), grads in groups.items():
            scale = self.expert_scale ** 2 if expert else 1.0
            total += torch.stack(torch._foreach_norm(grads)).double().pow(2).sum() * (scale / replicas)
        dist.all_reduce(total)
        return total.sqrt()

    @torch.no_grad()
    def match_grad_layouts(self) -> None:
        """Gives every DTensor gradient its parameter's placements (`match_grad_layout`)."""
        for model in self.models:
            for p in model.parameters():
                match_grad_layout(p)

    @torch.no_grad()
    def clip(self, norm: torch.Tensor) -> None:
        """Scales every gradient by max_grad_norm / norm, at most 1, as torch's clip_grads_with_norm_ does, and the
        routed experts' also by `expert_grad_scale`: the coefficient stays on the device (no host sync mid-step),
        so the scaling runs every step, one foreach multiply per dtype and kind (`Execution.grad_norm_bytes`: a
        read and a write more than the norm's read). Without clipping only the experts' gradients are scaled
        (where the scale is not 1)."""
        from torch.distributed.tensor import DTensor

        clips = self.opts.max_grad_norm > 0
        if not clips and self.expert_scale == 1.0:
            return
        coef = (self.opts.max_grad_norm / (norm + 1e-6)).clamp(max=1.0) if clips else None
        grads: dict[tuple[torch.dtype, bool], list[torch.Tensor]] = {}
        for _, name, grad in self._grads():
            g = grad.to_local() if isinstance(grad, DTensor) else grad
            grads.setdefault((g.dtype, is_expert_param(name)), []).append(g)
        for (dtype, expert), group in grads.items():
            scale = self.expert_scale if expert else 1.0
            if coef is not None:
                torch._foreach_mul_(group, (coef * scale).to(dtype))
            elif scale != 1.0:
                torch._foreach_mul_(group, scale)

    # ---- one step ----------------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        c = self.config
        lr = lr_at(step, self.opts)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        clock = PhaseClock(self.device)
        batch = local_rows(self.data, step, c.global_batch_size, self.coords["dp"], c.dp).to(self.device)
        inputs, targets = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        if self.plan.model.mtp_num_layers:  # the labels with the tokens further ahead, from whole sequences
            targets = future_tokens(targets, self.plan.model.mtp_num_layers)
        if self.context is not None:  # this CP rank's tokens and their labels (the same chunks of both)
            inputs = cpx.shard(inputs, c.cp, self.coords["cp"])
            targets = cpx.shard(targets, c.cp, self.coords["cp"], dim=targets.dim() - 1)
        losses: list[torch.Tensor] = []
        clock.lap("data")
        with self.attention_context():
            if self.schedule is None:
                self._accumulate(inputs, targets, losses)
            else:
                self._pipeline(inputs, targets, losses)
        clock.lap("forward_backward")
        for reducer in self.reducers:
            reducer.finish()  # waits for the reductions the backward launched (ZeRO-0)
        self.match_grad_layouts()
        clock.lap("grad_sync")
        self.tied.sync()
        norm = self.grad_norm()
        clock.lap("tied_and_norm")
        self.clip(norm)
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        clock.lap("optimizer")
        # Mean over every micro-batch of every replica (ranks that hold no loss add zeros; TP copies count alike
        # in the sum and in the count; CP ranks add the means over equal shares of the same sequences).
        stats = torch.zeros(2, dtype=torch.float64, device=self.device)
        if losses:
            stats[0] = torch.stack([l.detach().double() for l in losses]).sum()
            stats[1] = len(losses)
        dist.all_reduce(stats)
        clock.lap("loss_sync")
        return {"loss": float(stats[0] / stats[1]), "grad_norm": float(norm), "lr": lr, "phases_s": clock.phases}

    def _accumulate(self, inputs, targets, losses) -> None:
        """pp == 1: plain gradient accumulation over the micro-batches.

        FSDP (cost/memory.py describes what each choice holds): with grad_reduce "step" every micro-batch but the
        last skips the reduce-scatter, so the unsharded gradients accumulate; with "microbatch" each backward
        reduce-scatters into the sharded gradients. Either way ZeRO-1/2 keep the gathered parameters until the last
        backward (no re-gather per micro-batch), ZeRO-3 reshards after every forward and backward."""
        c = self.config
        model, m, b = self.models[0], c.num_microbatches, c.micro_batch_size
        for i in range(m):
            if self.fsdp:
                last = i == m - 1
                model.set_requires_gradient_sync(last or c.reduces_every_microbatch)
                model.set_reshard_after_backward(last or c.zero_stage >= 3)
            # The loss keeps the logits and writes their gradient into them (execute/loss.py).
            target = targets[i * b:(i + 1) * b]
            if model.mtp is None:
                loss = objective = self.loss_fn(model(inputs[i * b:(i + 1) * b]), target)
            else:  # the MTP modules' losses join the backward, not the reported loss
                loss = objective = self._objective(model(inputs[i * b:(i + 1) * b], mtp_future=target), target)
            (objective / m).backward()
            losses.append(loss.detach())

    def _objective(self, output, target: torch.Tensor) -> torch.Tensor:
        """One micro-batch's training objective from the last stage's `output`: the cross entropy of its logits, and
        where the output also holds the MTP modules' logits (a tuple; `target` then the tokens ahead of each place,
        execute/mtp.py `future_tokens`, the labels first) their scaled losses joined to its backward
        (`with_mtp_losses`); its value is the main cross entropy."""
        c = self.config
        logits, *extra = output if isinstance(output, tuple) else (output,)
        labels = target[:, 0] if extra else target
        loss = self.loss_fn(logits, labels)
        if c.seq_chunks > 1:  # seq1f1b: a unit's mean as its share of the step's (execute/seq_chunks.py)
            loss = loss * unit_share(labels, c.seq_len, c.seq_chunks)
        if not extra:
            return loss
        return with_mtp_losses(loss, extra, target, self.loss_fn, self.opts.mtp_loss_scale, c.cp * c.seq_chunks,
                               c.seq_len)

    def _stage_loss(self, output, target: torch.Tensor) -> torch.Tensor:
        """The pipeline's loss function: `_objective` divided by the backward units (see __init__)."""
        return self._objective(output, target) * (1.0 / self.units)

    def _pipeline(self, inputs, targets, losses) -> None:
        c = self.config
        if c.seq_chunks > 1:  # seq1f1b: the runtime's units are the sequences' chunks (execute/seq_chunks.py)
            inputs, targets = (to_units(t, c.micro_batch_size, self.plan.chunk_bounds, pad)
                               for t, pad in ((inputs, 0), (targets, IGNORE_INDEX)))
        stage_ids = [s for s, _ in self.chunks]
        first, last = 0 in stage_ids, self.config.num_stages - 1 in stage_ids
        args = (inputs,) if first else ()
        kwargs = {"target": targets, "losses": losses} if last else {}
        if self.plan.model.mtp_num_layers:  # (every stage's forward takes them; the last one's MTP modules read them)
            kwargs["mtp_future"] = targets
        if self.can_drop_outputs:
            kwargs["return_outputs"] = False  # else the last stage holds every micro-batch's logits until the end
        self.schedule.step(*args, **kwargs)
        losses[:] = [loss.detach() * self.units for loss in losses]  # (each was divided by the units)

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_meta(self, step: int, loss: float | None) -> dict:
        """What a checkpoint records besides the tensors: the step (data position), the loss of that step (so that
        a relaunch recognises its own metrics file), the schedule's length, the training hyperparameters, seed,
        data, model and layout."""
        return {"data_position": step, "loss": loss, "steps": self.opts.steps, "seed": self.opts.seed,
                "hyperparameters": {h.field: getattr(self.opts, h.field) for h in HYPERPARAMETERS},
                "data": self.opts.data, "model": self.plan.model.to_dict(), "config": self.config.to_dict(),
                "partition": self.plan.partition, "mesh": _mesh_list(self.plan),
                "world_size": dist.get_world_size()}


def _same_layout(meta: dict, plan: Plan) -> bool:
    """Whether a checkpoint was written by this very layout (config, partition, placement, world size), so that
    rank r's saved random streams are rank r's own."""
    return (meta.get("config") == plan.config.to_dict() and meta.get("partition") == [list(p) for p in plan.partition]
            and meta.get("mesh") == _mesh_list(plan) and meta.get("world_size") == dist.get_world_size())


def _mesh_list(plan: Plan):
    mesh = plan.placement.get("mesh")
    return mesh.tolist() if hasattr(mesh, "tolist") else mesh


def check_resumable(path: Path, meta: dict, plan: Plan, opts: TrainOptions, log) -> None:
    """Refuses a checkpoint of another model (its tensors would not fit); warns when seed, data, batch or sequence
    differ, and says when --steps changes the learning-rate schedule's length. A different layout (degrees,
    schedule, partition, ZeRO) is fine: DCP reshards."""
    mismatch = ckpt.model_mismatch(path, meta, plan.model)
    if mismatch:
        raise UserError(mismatch)
    if meta.get("seed") != opts.seed or meta.get("data") != opts.data:
        def data(source) -> str:
            return "synthetic tokens" if source is None else repr(source)

        log(f"warning: {path} was written with seed {meta.get('seed')} and data {data(meta.get('data'))}; this run "
            f"has seed {opts.seed} and data {data(opts.data)}: the batches after the resume are not the ones the "
            f"first run would have drawn")
    if meta.get("steps") not in (None, opts.steps):
        log(f"note: the learning-rate schedule now spans {opts.steps} steps where the checkpoint's run planned "
            f"{meta['steps']}: the steps after the resume follow the new schedule (warm-up and cosine decay)")
    written = meta.get("hyperparameters") or {}
    changed = [f"{h.flag} {written[h.field]} -> {getattr(opts, h.field)}" for h in HYPERPARAMETERS
               if h.field in written and written[h.field] != getattr(opts, h.field)]
    if changed:
        log(f"note: {path} was written with other training hyperparameters; the steps after the resume take the new "
            f"ones ({', '.join(changed)})")
    saved = meta.get("config") or {}
    for key in ("global_batch_size", "seq_len"):
        if saved.get(key) not in (None, getattr(plan.config, key)):
            log(f"warning: {path} was written at {key} {saved[key]}; this plan trains at {getattr(plan.config, key)}")


def dedupe_metrics(path: str | Path, keep_through: int) -> None:
    """After a restart resumed at step `keep_through`: keeps each step record up to that step once and drops the
    rest (steps of the failed attempt that are about to run again, and any summary)."""
    path = Path(path)
    if not path.exists():
        return
    kept, seen = [], set()
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the crash
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and step <= keep_through and step not in seen:
            seen.add(step)
            kept.append(line + "\n")
    write_file(path, "".join(kept), force=True)


def _log(msg: str) -> None:
    if dist.get_rank() == 0:
        print(msg, flush=True)


def diverged(step: int, out: dict, last_saved: int | None) -> None:
    """Raises `Diverged` (one line) where step `step`'s loss or global gradient norm (`Trainer.train_step`'s, the same
    on every rank) is not a finite number: the run stops before saving that step or any later one, so the newest
    checkpoint, `last_saved` (None: no checkpoint directory), is one a resume can train on from."""
    if math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"]):
        return
    kept = ("no checkpoint directory was given" if last_saved is None else
            "nothing was saved yet" if last_saved == 0 else f"the checkpoint of step {last_saved} is the newest")
    raise Diverged(f"training diverged at step {step}: loss {out['loss']:g}, gradient norm {out['grad_norm']:g}; "
                   f"the run stops ({kept}): use a smaller --lr, a longer --warmup-steps or a lower --max-grad-norm, "
                   f"or check the data")


def train(plan: Plan, opts: TrainOptions, device: torch.device | None = None) -> list[dict]:
    """Runs (or resumes) training on an initialised process group; returns one record per step run here."""
    device = device or _default_device()
    log = (lambda msg: None) if opts.quiet else _log
    rss_start = _max_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(plan, opts, device)
    # Dropout draws from the global generators: one seeded stream per (pipeline, data-parallel, context-parallel)
    # position, shared by the TP ranks of a group (their replicated activations must get the same mask),
    # checkpointed with the model.
    cp_stream = f"/cp{trainer.coords['cp']}" if plan.config.cp > 1 else ""
    torch.manual_seed(init_seed(opts.seed, f"dropout/pp{trainer.coords['pp']}/dp{trainer.coords['dp']}{cp_stream}"))
    start = 0
    if opts.checkpoint_dir:
        found = ckpt.find_verified(Path(opts.checkpoint_dir), log=log)
        if found:
            path, meta = found
            check_resumable(path, meta, plan, opts, log)
            ckpt.load(path, trainer.models, trainer.optimizers)
            start = int(meta["data_position"])
            log(f"resumed from {path} at step {start}")
            if not (_same_layout(meta, plan) and ckpt.restore_rng(path, dist.get_rank())) and plan.model.dropout > 0:
                log("note: dropout's random streams restart (the checkpoint is of another layout or has none): the "
                    "losses after the resume follow the same distribution but not the same values")
    if opts.metrics and dist.get_rank() == 0:
        dedupe_metrics(opts.metrics, start)
    end = opts.steps if opts.stop_after is None else min(opts.steps, start + opts.stop_after)
    c = plan.config
    tokens_per_step = c.global_batch_size * c.seq_len
    metrics = open_append(opts.metrics) if (opts.metrics and dist.get_rank() == 0) else None
    records: list[dict] = []
    last_saved = start
    try:
        for step in range(start, end):
            faults.at_step(step + 1, trainer.rank)
            t0 = time.perf_counter()
            out = trainer.train_step(step)
            diverged(step + 1, out, last_saved if opts.checkpoint_dir else None)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            peak = _peak_memory(device, rss_start)
            record = {"step": step + 1, "loss": out["loss"], "step_time_s": dt, "tokens_per_s": tokens_per_step / dt,
                      "peak_memory_bytes": peak, "grad_norm": out["grad_norm"], "lr": out["lr"]}
            if out["phases_s"]:
                record["phases_s"] = out["phases_s"]
            records.append(record)
            log(f"step {step + 1}/{opts.steps} loss {out['loss']:.4f} lr {out['lr']:.2e} "
                f"grad_norm {out['grad_norm']:.3f} {dt:.3f}s {tokens_per_step / dt:,.0f} tok/s")
            if metrics:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            if opts.checkpoint_dir and opts.checkpoint_every and (step + 1) % opts.checkpoint_every == 0:
                ckpt.save(Path(opts.checkpoint_dir), step + 1, trainer.models, trainer.optimizers,
                          trainer.checkpoint_meta(step + 1, out["loss"]))
                last_saved = step + 1
                log(f"checkpoint step {step + 1} saved")
        if opts.checkpoint_dir and end > last_saved:
            ckpt.save(Path(opts.checkpoint_dir), end, trainer.models, trainer.optimizers,
                      trainer.checkpoint_meta(end, records[-1]["loss"] if records else None))
            log(f"checkpoint step {end} saved")
        reserved = _max_over_ranks(torch.cuda.max_memory_reserved(device), device) if device.type == "cuda" else None
        if metrics:
            summary = {**_summary(plan, opts, records, device, rss_start), "resumed_from_step": start,
                       "measured_peak_reserved_bytes": reserved,
                       "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))}
            metrics.write(json.dumps({"summary": summary}) + "\n")
    finally:
        if metrics:
            metrics.close()
    return records


def _peak_memory(device: torch.device, rss_start: int) -> int:
    if device.type == "cuda":
        value = torch.cuda.max_memory_allocated(device)
    else:
        value = _max_rss_bytes() - rss_start
    return _max_over_ranks(value, device)


def _max_over_ranks(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _summary(plan: Plan, opts: TrainOptions, records: list[dict], device: torch.device, rss_start: int) -> dict:
    times = [r["step_time_s"] for r in records]
    skip = min(opts.timing_warmup, max(0, len(times) - 1))
    measured = statistics.median(times[skip:]) if times else None
    # the stored prediction of a plan not as autoconf wrote it may be another layout's (report/current.py): none is
    # compared
    pred = (plan.prediction or {}) if plan.as_written else {}
    return {"predicted_iteration_time_s": pred.get("iteration_time_s"),
            "measured_iteration_time_s": measured,
            "timing_warmup_steps": skip,
            "predicted_peak_memory_bytes": pred.get("peak_memory_bytes"),
            "measured_peak_memory_bytes": records[-1]["peak_memory_bytes"] if records else None,
            "peak_memory_kind": ("cuda max_memory_allocated, max over ranks" if device.type == "cuda" else
                                 "CPU: process max RSS growth since start, max over ranks (not comparable to the "
                                 "predicted device memory)"),
            "steps": len(records), "final_step": records[-1]["step"] if records else None,
            **({"prediction": "none: the plan is not as autoconf wrote it, or carries no checksum of it"}
               if not plan.as_written else {})}


def placed_local_device(plan: Plan, rank: int) -> int:
    """The local GPU index the plan's placement gives global rank `rank` (grid position `rank`)."""
    gpus = int(plan.cluster.get("gpus_per_node", 1))
    return plan.device_of()[rank] % gpus


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> None:
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = process_group_backend(device.type)
    timeout = timedelta(seconds=timeout_s)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart != "0" and "MASTER_ADDR" in os.environ:
        # After a torchrun restart the workers meet in the same store as the failed attempt, whose gloo addresses
        # (of dead processes) are still there: give every attempt its own key space.
        store = dist.PrefixStore(f"autoconf/attempt_{restart}", torchrun_store(timeout))
        dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
        return
    dist.init_process_group(backend=backend, timeout=timeout)


_COMM_FAILURE_WORDS = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "gloo",
                       "nccl", "socket", "peer")


def is_communication_failure(err: BaseException) -> bool:
    """A collective or point-to-point operation failed: a peer died, hung past the timeout, or its node is lost."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and any(w in str(err).lower() for w in _COMM_FAILURE_WORDS)


def _checked(h):
    """argparse's type for hyperparameter `h` (`parse_hyperparameter`): its value, or argparse's one-line error."""
    def parse(text: str):
        try:
            return parse_hyperparameter(h, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m autoconf.execute.train", description=__doc__.splitlines()[0])
    p.add_argument("--plan", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data")
    p.add_argument("--metrics")
    p.add_argument("--checkpoint-dir")
    p.add_argument("--checkpoint-every", type=int, default=0)
    for h in HYPERPARAMETERS:
        p.add_argument(h.flag, dest=h.field, type=_checked(h), default=h.default, help=h.help)
    p.add_argument("--timing-warmup", type=int, default=2)
    p.add_argument("--stop-after", type=int, help="end this run after that many steps (for tests of resuming)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--timeout", type=float, default=600.0, help="collective timeout in seconds")
    args = p.parse_args(argv)
    problem = schedule_problem(args.steps, args.warmup_steps)
    if problem:
        p.error(problem)
    return args


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The TrainOptions of the worker's parsed command line (`parse_args`), every hyperparameter included."""
    return TrainOptions(steps=args.steps, seed=args.seed, data=args.data, metrics=args.metrics,
                        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                        timing_warmup=args.timing_warmup, stop_after=args.stop_after, timeout_s=args.timeout,
                        **{h.field: getattr(args, h.field) for h in HYPERPARAMETERS})


def quiet_known_warnings() -> None:
    """Silences what torch prints on every rank that does not apply or that the launcher says in one line:
    - FSDP2's "returned a view tensor": under TP the head's logits come back as the local view of their
      vocabulary-sharded DTensor (`use_local_output`); the loss (execute/loss.py) writes their gradient into them in
      its own backward, which autograd does not see;
    - the pipelining runtime's error log of its whole action table when an action fails (a lost peer: about 50
      lines per rank); the failure itself still ends the rank, and AUTOCONF_DEBUG keeps the table."""
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor",
                            category=UserWarning)
    if not os.environ.get("AUTOCONF_DEBUG"):
        logging.getLogger("torch.distributed.pipelining.schedules").setLevel(logging.CRITICAL)


def main(argv=None) -> int:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: never outlive the agent that supervises this worker
        from autoconf.execute.launch import die_with_parent

        die_with_parent(signal.SIGKILL)
        if os.getppid() == 1:
            return 1
    args = parse_args(argv)
    quiet_known_warnings()
    if args.device == "cpu":
        device = torch.device("cpu")
    elif args.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = _default_device()
    opts = train_options(args)
    try:
        plan = load_plan(args.plan)
        if device.type == "cuda":
            device = torch.device("cuda", placed_local_device(plan, int(os.environ.get("RANK", 0))))
        faults.start_together()
        init_distributed(device, opts.timeout_s)
        _log(f"autoconf: tp {plan.config.tp} cp {plan.config.cp} pp {plan.config.pp} dp {plan.config.dp} schedule "
             f"{plan.config.schedule} zero {plan.config.zero_stage} on {dist.get_world_size()} x {device.type}")
        train(plan, opts, device)
        dist.barrier()  # every rank done (and its last sends received) before the process groups are torn down
    except UserError as err:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # one line per node: a node may refuse what the others took
            print(f"autoconf: error: {err}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED if isinstance(err, Diverged) else EXIT_REFUSED
    except Exception as err:  # noqa: BLE001 - only communication failures are explained; bugs keep the traceback
        if not is_communication_failure(err):
            raise
        # One line per node (the launcher's summary names every rank that ended so); all of them when debugging.
        debug = bool(os.environ.get("AUTOCONF_DEBUG"))
        if debug or os.environ.get("LOCAL_RANK", "0") == "0":
            rank = os.environ.get("RANK", "?")
            first = (str(err).strip().splitlines() or [""])[0]
            print(f"autoconf: rank {rank}: error: lost a peer (it died, hung for more than the {args.timeout:g} s "
                  f"collective timeout, or its node is gone): {first[:300]}", file=sys.stderr, flush=True)
        if debug:
            import traceback

            traceback.print_exc()
        return EXIT_LOST_PEER
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
