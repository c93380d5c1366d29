"""Applies a plan's intra-stage parallelism to one model chunk, in one fixed order:

1. tensor parallelism (DTensor `parallelize_module`: Colwise/Rowwise, plus SequenceParallel norms when planned), on
   the meta device;
2. materialisation and the seeded initialisation (`model.init_weights`), so every layout starts from the same
   weights: each parameter's full value is generated on CPU and this rank keeps its TP shard;
3. activation recompute: "selective" checkpoints the attention core (softmax(QK^T)V) and SwiGLU's silu(gate) * up
   (elementwise: its input is kept, the silu output is not), "full" each whole block,
   both with non-reentrant `torch.utils.checkpoint` inside the module's forward (parameter names do not change);
4. `torch.compile` of each block where the plan asks for it and the device supports it (`compiles`: CUDA);
5. mixed precision and data parallelism, both by FSDP2 (torchtitan's scheme): every block is an FSDP unit and the
   chunk itself the root unit (embedding, final norm, head), under `MixedPrecisionPolicy(param_dtype=<the plan's
   dtype>, reduce_dtype=fp32)`. Parameters, gradients and AdamW's states are fp32 (the master weights); each unit
   casts a bf16 compute copy of its parameters when it runs, so activations, the residual stream included, are
   bf16, and casts its gradient back to fp32. (On CPU the dtype is fp32: FSDP casts nothing.) By ZeRO stage over
   the "dp" mesh dimension (with context parallelism: over dp x cp, `replica_mesh`; "dp" below means that):
   - 0 (and any stage with dp == 1): one-rank FSDP units (over "dp" when dp == 1, else over the size-1 "solo"
     axis): whole parameters, FSDP only casts, after every micro-batch's backward; the units free their compute
     copy after the forward when there is no pipeline (`ParallelConfig.reshard_after_forward`). With dp > 1 the
     gradients are averaged over dp during the backward by `GradReducer` (built by the training loop for each
     chunk): the parameters' post-accumulate-grad hooks (FSDP calls them when it writes a gradient) fire on the
     last micro-batch's backward and launch an async all-reduce per bucket (a block, the head, the embedding), so
     each bucket's reduction overlaps the rest of the backward, as the cost model assumes; the loop's `grad_sync`
     phase only waits;
   - 1 and 2: `reshard_after_forward=False`: parameters stay gathered from forward to backward, gradients are
     reduce-scattered and optimizer state is sharded. This is ZeRO-2. FSDP2 has no mode that shards the optimizer
     state alone, so ZeRO-1 runs as ZeRO-2 (it uses less gradient memory than true ZeRO-1 would);
   - 3: `reshard_after_forward=True`: parameters re-gathered for backward.

Why hooks for ZeRO-0 rather than torch's wrappers (read in torch 2.13): DDP and the composable `replicate` (private
`torch.distributed._composable`) take TP parameters only by turning the DTensors into plain tensors
(`_pre_dp_module_transform`, "a temporary work around", no state_dict), and decide at forward time whether the
next backward syncs, which a pipeline running several forwards ahead of their backwards gets wrong (pipelining
patches DDP's reducer for `DistributedDataParallel` only). The FSDP2-based `replicate` (private) or `fully_shard`
on a replicate mesh (HSDP with shard size 1) turn the parameters into dp DTensors, and under pipelining torch
defers their reduction to after the stage's last backward (`perform_reduce_grad`). Public
`Tensor.register_post_accumulate_grad_hook` and `dist.all_reduce(..., async_op=True)` work alike with and without
pipelining, with TP shards, tied embeddings and every schedule. (torch's pipeline stage would defer a root FSDP
unit's gradient work to after the stage's last backward: the schedule gets the one-rank units behind a plain
wrapper, `pipeline.build_schedule`.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from autoconf.execute.dtypes import TORCH_DTYPES
from autoconf.execute.mesh import SOLO
from autoconf.execute.model import Transformer, init_weights


def apply_tp(model: Transformer, tp_mesh, sequence_parallel: bool) -> None:
    """Megatron-style TP: QKV and the first MLP matrices column-parallel, the output projections row-parallel, the
    vocabulary split for the embedding and head. With sequence parallelism the residual stream between the TP
    regions (norms, dropout, residual adds, and the tensors sent between pipeline stages) is split along the
    sequence."""
    sp = sequence_parallel
    residual = Shard(1) if sp else Replicate()
    top: dict = {}
    if model.embed is not None:
        top["embed.tok"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=residual)
        if model.embed.pos is not None:
            top["embed.pos"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=residual)
    if model.output is not None:
        if sp:
            top["norm"] = SequenceParallel()
        top["output"] = ColwiseParallel(input_layouts=residual, output_layouts=Replicate(), use_local_output=True)
    if top:
        parallelize_module(model, tp_mesh, top)
    gpt = model.spec.arch == "gpt"
    for block in model.layers.values():
        plan = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=residual),
        }
        if gpt:
            plan.update({"feed_forward.fc1": ColwiseParallel(),
                         "feed_forward.fc2": RowwiseParallel(output_layouts=residual)})
        else:
            plan.update({"feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
                         "feed_forward.w2": RowwiseParallel(output_layouts=residual)})
        if sp:
            gather = dict(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
            plan.update({"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
                         "attention": PrepareModuleInput(**gather), "feed_forward": PrepareModuleInput(**gather)})
        parallelize_module(block, tp_mesh, plan)
    model.tie_weights()  # TP replaced the embedding's parameter; the head shares it again (both Shard(0)).


def materialize(model: Transformer, device: torch.device, seed: int) -> None:
    model.to_empty(device=device)
    model.tie_weights()
    init_weights(model, seed)


def apply_recompute(model: Transformer, mode: str) -> None:
    for block in model.layers.values():
        block.recompute_full = mode == "full"
        block.attention.recompute_core = mode == "selective"
        if hasattr(block.feed_forward, "recompute_gate"):
            block.feed_forward.recompute_gate = mode == "selective"


def compiles(config, device_type: str) -> bool:
    """Whether the executor compiles the blocks: when the plan asks for it, on CUDA (torch.compile's Triton
    kernels; on CPU inductor needs a C++ toolchain and gains little)."""
    return bool(config.compile) and device_type == "cuda"


def apply_compile(model: Transformer) -> None:
    """torch.compile each block in place (parameter names unchanged), after recompute and before FSDP, as torchtitan
    does: the repeated block compiles once."""
    for block in model.layers.values():
        block.compile()


def compute_dtype(config, device_type: str) -> torch.dtype:
    """The dtype parameters and activations have in the forward and backward: the plan's on CUDA, fp32 on CPU."""
    return TORCH_DTYPES[config.dtype] if device_type == "cuda" else torch.float32


def precision_policy(dtype: torch.dtype):
    """FSDP2's mixed precision: compute copies of the parameters in `dtype`, gradients reduced and kept in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def apply_fsdp(model: Transformer, dp_mesh, zero_stage: int, mp_policy=None,
               reshard_after_forward: bool | None = None) -> None:
    """Each block an FSDP unit, the chunk the root unit. `reshard_after_forward` (default: ZeRO-3) applies to the
    blocks; the root reshards only under ZeRO-3."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = mp_policy or MixedPrecisionPolicy()
    blocks = zero_stage == 3 if reshard_after_forward is None else reshard_after_forward
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=blocks, mp_policy=policy)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=zero_stage == 3, mp_policy=policy)


def replica_mesh(mesh, config):
    """The ranks that hold the same weights and average their gradients: the "dp" mesh dimension, or with context
    parallelism dp x cp flattened into one dimension "dp_cp" (torchtitan's dp_shard_cp: the CP ranks of a replica
    see different tokens of the same sequences)."""
    if config.cp == 1:
        return mesh["dp"]
    return mesh["dp", "cp"]._flatten("dp_cp")


def apply_data_parallel(model: Transformer, mesh, config, mp_policy) -> None:
    """FSDP units by the plan's ZeRO stage (step 5 of the module docstring), sharded over `replica_mesh`."""
    if config.zero_sharded:
        apply_fsdp(model, replica_mesh(mesh, config), config.zero_stage, mp_policy)
    else:
        apply_fsdp(model, mesh["dp"] if config.dp == 1 else mesh[SOLO], 0, mp_policy,
                   reshard_after_forward=config.reshard_after_forward)


def parallelize_chunk(model: Transformer, mesh, config, device: torch.device, seed: int) -> Transformer:
    """TP, materialise + init, recompute, FP8 linears (dtype fp8), compile, then mixed precision and data
    parallelism (FSDP2) on one model chunk built on the meta device."""
    if config.tp > 1:
        apply_tp(model, mesh["tp"], config.sequence_parallel)
    materialize(model, device, seed)
    apply_recompute(model, config.recompute)
    if config.dtype == "fp8":  # torchao Float8Linear in the blocks, before FSDP wraps them
        from autoconf.execute.fp8 import apply_float8

        apply_float8(model, config.zero_sharded, device)
    if compiles(config, device.type):
        apply_compile(model)
    apply_data_parallel(model, mesh, config, precision_policy(compute_dtype(config, device.type)))
    return model


def match_grad_layout(p: nn.Parameter) -> None:
    """Gives a DTensor parameter's gradient the parameter's placements. (The vocabulary-parallel embedding's backward
    returns a Replicate gradient for a Shard(0) weight; redistributing to Shard(0) just keeps the local rows.)"""
    from torch.distributed.tensor import DTensor

    g = p.grad
    if isinstance(g, DTensor) and isinstance(p, DTensor) and g.placements != p.placements:
        p.grad = g.redistribute(p.device_mesh, p.placements)


def _bucket_name(fqn: str) -> str:
    """A parameter's bucket: its block ("layers.3"), the head (final norm and output) or the embedding."""
    parts = fqn.split(".")
    if parts[0] == "layers":
        return ".".join(parts[:2])
    return "head" if parts[0] in ("norm", "output") else parts[0]


class GradReducer:
    """ZeRO-0 data parallelism of one model chunk: averages its gradients over the dp group during the backward.

    Buckets: one per block, one for the head (final norm + output) and one for the embedding, in reverse parameter
    order (the order the backward produces them), split by dtype. A parameter's gradient is final at its
    `accumulations`-th accumulation of the step (one per micro-batch backward: the gradient accumulation's earlier
    micro-batches only accumulate, as under FSDP's `set_requires_gradient_sync(False)`). Its post-accumulate-grad
    hook then marks it ready; a bucket whose parameters are all ready is copied into one flat tensor and
    all-reduced asynchronously while the backward goes on. Buckets launch in their fixed order (the same on every
    replica, as the process group requires), a ready bucket waiting for the ones before it.

    `finish()` (the training loop's `grad_sync` phase) launches any bucket the hooks did not (gradients that
    autograd did not accumulate: the split-backward schedules' weight pass of a non-first stage writes `.grad`
    itself), waits for all, and writes each average (sum / `divisor`) back into the gradients. Local shards of
    DTensor (TP) gradients are reduced, after they take their parameter's placements.
    """

    def __init__(self, module: nn.Module, dp_group, accumulations: int, divisor: float):
        self.group, self.accumulations, self.divisor = dp_group, accumulations, divisor
        buckets: dict[tuple[str, torch.dtype], list[nn.Parameter]] = {}
        for fqn, p in reversed(list(module.named_parameters())):  # shared (tied) parameters appear once
            if p.requires_grad:
                buckets.setdefault((_bucket_name(fqn), p.dtype), []).append(p)
        self.buckets = list(buckets.values())
        self.bucket_of = {id(p): b for b, ps in enumerate(self.buckets) for p in ps}
        self.handles = [p.register_post_accumulate_grad_hook(self._on_accumulated)
                        for ps in self.buckets for p in ps]
        self._reset()

    def _reset(self) -> None:
        self.count = dict.fromkeys(self.bucket_of, 0)
        self.waiting = [len(ps) for ps in self.buckets]
        self.next = 0
        self.in_flight: list = []

    @torch.no_grad()
    def _on_accumulated(self, p: nn.Parameter) -> None:
        self.count[id(p)] += 1
        if self.count[id(p)] != self.accumulations:
            return
        match_grad_layout(p)
        self.waiting[self.bucket_of[id(p)]] -= 1
        while self.next < len(self.buckets) and self.waiting[self.next] == 0:
            self._launch(self.next)

    def _launch(self, b: int) -> None:
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        self.next = b + 1
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                 for p in self.buckets[b] if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.in_flight.append((dist.all_reduce(flat, group=self.group, async_op=True), flat, grads))

    @torch.no_grad()
    def finish(self) -> None:
        for b in range(self.next, len(self.buckets)):
            for p in self.buckets[b]:
                match_grad_layout(p)
            self._launch(b)
        for work, flat, grads in self.in_flight:
            work.wait()
            flat.div_(self.divisor)
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))
        self._reset()
