"""Applies a plan's intra-stage parallelism to one model chunk, in one fixed order:

1. tensor parallelism (DTensor `parallelize_module`: Colwise/Rowwise, plus SequenceParallel norms when planned), on
   the meta device; attention by `attention_tp_plan` (grouped-query with or without qk-norm, or latent attention),
   dense MLPs and MoE layers' shared experts by `mlp_tp_plan`; an MoE layer's router and routed experts stay whole
   on every TP rank (each TP rank routes its share of the tokens, execute/moe.py);
   then expert parallelism (`apply_expert_parallel`): the routed experts' weights sharded over "ep" of the expert
   mesh (mesh.build_expert_mesh: each pipeline rank's ranks folded as edp x ep x etp);
2. materialisation and the seeded initialisation (`model.init_weights`), so every layout starts from the same
   weights: each parameter's full value is generated on CPU and this rank keeps its TP shard;
3. activation recompute, in the first `recompute_layers` blocks of each stage (all by default): "selective"
   checkpoints the attention core (softmax(QK^T)V) and SwiGLU's silu(gate) * up
   (elementwise: its input is kept, the silu output is not), or under selective_recompute "alternate_matmuls" the
   whole block with torchtitan's per-op policy (execute/checkpoint_policy.py); "full" each whole block,
   all with non-reentrant `torch.utils.checkpoint` inside the module's forward (parameter names do not change);
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
   The routed experts of each MoE layer are an FSDP unit of their own on the expert mesh: over "edp" under ZeRO 1-3,
   else one-rank units whose gradients a `GradReducer` averages over the edp group.

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
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from autoconf.execute.dtypes import TORCH_DTYPES
from autoconf.execute.mesh import SOLO
from autoconf.execute.mla import LatentAttention
from autoconf.execute.model import Transformer, init_weights
from autoconf.execute.moe import MoE, is_expert_param
from autoconf.spec.frameworks import selective_policy


def apply_tp(model: Transformer, tp_mesh, sequence_parallel: bool) -> None:
    """Megatron-style TP: QKV and the first MLP matrices column-parallel, the output projections row-parallel, the
    vocabulary split for the embedding and head. With sequence parallelism the residual stream between the TP
    regions (norms, dropout, residual adds, and the tensors sent between pipeline stages) is split along the
    sequence."""
    sp = sequence_parallel
    residual = Shard(1) if sp else Replicate()
    top: dict = {}
    for name in ("embed", "mtp_embed"):  # (the MTP modules' copy on a pipeline's last stage: the same layout)
        embedding = getattr(model, name)
        if embedding is not None:
            top[f"{name}.tok"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=residual)
            if embedding.pos is not None:
                top[f"{name}.pos"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=residual)
    if model.output is not None:
        if sp:
            top["norm"] = SequenceParallel()
        # Each rank's logits over its vocabulary slice; the loss reduces over TP (execute/loss.py `rank_loss`).
        top["output"] = ColwiseParallel(input_layouts=residual, output_layouts=Shard(-1), use_local_output=True)
    for k in model.mtp or ():  # MTP modules (execute/mtp.py): the projection column-parallel, its output the
        # residual stream's layout again; under SP the norms split along the sequence
        top[f"mtp.{k}.eh_proj"] = ColwiseParallel(input_layouts=residual, output_layouts=residual)
        if sp:
            top.update({f"mtp.{k}.{norm}": SequenceParallel() for norm in ("enorm", "hnorm", "norm")})
    if top:
        parallelize_module(model, tp_mesh, top)
    gpt = model.spec.arch == "gpt"
    # A TP region's column-parallel projections take its input as one replicated DTensor, so their input gradients
    # (partial sums over the TP ranks) add up before a single all-reduce, one per region as Megatron's (a plain
    # tensor would be all-reduced once per projection: Q, K and V, or SwiGLU's gate and up).
    whole = dict(input_layouts=(Replicate(),), desired_input_layouts=(Replicate(),), use_local_output=False)
    for _, block in model.blocks():
        moe = isinstance(block.feed_forward, MoE)
        plan = attention_tp_plan(block.attention, tp_mesh, residual)
        if moe:  # router and routed experts replicated over TP, each TP rank routing its share of the tokens
            # (execute/moe.py); the shared experts split like a dense MLP
            block.feed_forward.token_group = tp_mesh.get_group()
            block.feed_forward.sequence_mesh = tp_mesh if sp else None
            if block.feed_forward.shared is not None:
                plan.update(mlp_tp_plan("feed_forward.shared", False, residual))
                plan["feed_forward.shared"] = PrepareModuleInput(**whole)
        else:
            plan.update(mlp_tp_plan("feed_forward", gpt, residual))
        if not sp:
            if not isinstance(block.attention, LatentAttention):  # its down-projections take a plain tensor
                plan["attention"] = PrepareModuleInput(**whole)
            if not moe:
                plan["feed_forward"] = PrepareModuleInput(**whole)
        if sp:
            gather = dict(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
            # The MoE layer takes a plain tensor, the whole sequence, and returns this rank's part (execute/moe.py).
            ffn = PrepareModuleInput(**gather, use_local_output=moe)
            # Latent attention's replicated down-projections are plain modules: they take the gathered sequence as
            # a plain tensor (its gradient is the same on every TP rank: parallelize's module docstring).
            attention = PrepareModuleInput(**gather, use_local_output=isinstance(block.attention, LatentAttention))
            plan.update({"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
                         "attention": attention, "feed_forward": ffn})
        parallelize_module(block, tp_mesh, plan)
        sinks = block.attention.sinks
        if sinks is not None:  # GPT-OSS's sink logits: one per head, split with the heads
            block.attention.sinks = nn.Parameter(distribute_tensor(sinks.data, tp_mesh, [Shard(0)]))
    model.tie_weights()  # TP replaced the embedding's parameter; its sharers take it again (all Shard(0)).


def mlp_tp_plan(prefix: str, gpt: bool, residual) -> dict:
    """The TP plan of the MLP at `prefix` (a dense block's FFN, an MoE layer's shared experts): the first matrices
    (GeLU's fc1; SwiGLU's gate w1 and up w3) column-parallel, the last (fc2, w2) row-parallel with its output in
    the `residual` layout (an all-reduce, or a reduce-scatter along the sequence under sequence parallelism)."""
    first = ["fc1"] if gpt else ["w1", "w3"]
    plan: dict = {f"{prefix}.{name}": ColwiseParallel() for name in first}
    plan[f"{prefix}.{'fc2' if gpt else 'w2'}"] = RowwiseParallel(output_layouts=residual)
    return plan


def attention_tp_plan(attention, tp_mesh, residual) -> dict:
    """The TP plan of a block's attention (keys relative to the block): the heads split, the projections into the
    heads column-parallel, the output projection row-parallel (its output in the `residual` layout).

    - grouped-query attention: wq, wk, wv column-parallel; qk-norm's `q_norm` and `k_norm` (one head_dim weight
      every head shares) replicated DTensors over the rank's heads (`SequenceParallel` over the heads dimension 2
      of [b, s, heads, head_dim]), so their gradients are summed over the TP ranks' heads;
    - latent attention (execute/mla.py): the up-projections `wq_b` (or the one query projection `wq`) and `wkv_b`
      column-parallel; the down-projections `wq_a`, `wkv_a` and their norms plain replicated modules (every TP rank
      computes the whole latent, with the same gradient: the column-parallel inputs' backward sums theirs over
      the group, and the shared rotary key's is summed in the module, `tp_mesh`)."""
    if isinstance(attention, LatentAttention):
        attention.tp_mesh = tp_mesh
        query = {"attention.wq": ColwiseParallel()} if hasattr(attention, "wq") else {
            "attention.wq_b": ColwiseParallel()}
        return {**query, "attention.wkv_b": ColwiseParallel(),
                "attention.wo": RowwiseParallel(output_layouts=residual)}
    plan = {"attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(output_layouts=residual)}
    if attention.q_norm is not None:
        plan.update({"attention.q_norm": SequenceParallel(sequence_dim=2, use_local_output=True),
                     "attention.k_norm": SequenceParallel(sequence_dim=2, use_local_output=True)})
    return plan


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def apply_expert_parallel(model: Transformer, expert_mesh, config) -> None:
    """Expert parallelism on the meta device: with ep > 1 each routed-expert weight becomes a DTensor sharded over
    the "ep" axis of the expert mesh (Shard(0): this rank holds experts [r E/ep, (r+1) E/ep)), so checkpoints keep
    every expert under its one name, and the MoE layer exchanges tokens over that group; with etp > 1 also over
    "etp" (a 1/etp slice of each expert's FFN width), and the layer gathers and sums rows over the ETP group.

    Gradients: an expert's gradient on a rank sums the contributions of every token routed to it from the ep group,
    each token counted once (TP ranks route disjoint shares). The data-parallel average the dense weights get is
    the sum over all the ranks of a pipeline rank divided by dp x cp (the CP ranks of a replica hold a share of its
    tokens each); averaging over the edp replicas (FSDP, or the ZeRO-0 reducer) divides by edp, so the experts'
    reduced gradients are then scaled by `expert_grad_scale` (the training step folds it into the clip's multiply
    and the norm: no pass of its own)."""
    for moe in moe_layers(model):
        if config.etp > 1:  # and each expert's FFN width over "etp": w1, w3 [E, h, f] by columns, w2 [E, f, h] by
            # rows, the biases of w1, w3 [E, f] with their columns; w2's bias [E, h] whole, added after the sum
            mesh = expert_mesh["ep", "etp"]
            width = {"w1": Shard(2), "w3": Shard(2), "w2": Shard(1), "w1_bias": Shard(1), "w3_bias": Shard(1),
                     "w2_bias": Replicate()}
            for name, param in list(moe.experts.named_parameters()):
                sharded = distribute_tensor(param.data, mesh, [Shard(0), width[name]])
                moe.experts.register_parameter(name, nn.Parameter(sharded, requires_grad=param.requires_grad))
            moe.experts.down_bias_after_sum = moe.experts.bias
            moe.ep_group = expert_mesh["ep"].get_group() if config.ep > 1 else None
            moe.etp_group = expert_mesh["etp"].get_group()
        elif config.ep > 1:
            for name, param in list(moe.experts.named_parameters()):
                sharded = distribute_tensor(param.data, expert_mesh["ep"], [Shard(0)])
                moe.experts.register_parameter(name, nn.Parameter(sharded, requires_grad=param.requires_grad))
            moe.ep_group = expert_mesh["ep"].get_group()


def expert_grad_scale(config) -> float:
    """The factor on the routed experts' reduced gradients that turns their average over the edp replicas into the
    data-parallel average over dp x cp (`apply_expert_parallel`)."""
    return config.edp / config.dp_cp


def materialize(model: Transformer, device: torch.device, seed: int) -> None:
    model.to_empty(device=device)
    model.tie_weights()
    init_weights(model, seed)


def apply_recompute(model: Transformer, mode: str, layers: set[int] | None = None,
                    policy: str = "attention_core") -> None:
    """Recompute `mode` in the blocks whose global layer index is in `layers` (spec/plan.py
    `recomputed_layer_indices`: the first ones of each stage), in every block when None; the others keep their
    activations. Selective recompute by `policy` (spec/frameworks.py SELECTIVE_RECOMPUTE): the attention core and
    SwiGLU's silu, or the per-op policy over the whole block (execute/checkpoint_policy.py)."""
    ops = policy == "alternate_matmuls"
    for index, block in model.blocks():
        # (an MTP module's block, after every layer, follows the plan's mode: cost/mtp.py)
        on = layers is None or index in layers or (model.mtp is not None and index >= model.spec.num_layers)
        block.recompute_full = on and mode == "full"
        block.recompute_ops = on and mode == "selective" and ops
        block.attention.recompute_core = on and mode == "selective" and not ops
        block.attention.core_as_op = on and mode == "selective" and ops
        if hasattr(block.feed_forward, "recompute_gate"):
            block.feed_forward.recompute_gate = on and mode == "selective" and not ops


def compiles(config, device_type: str) -> bool:
    """Whether the executor compiles the blocks on a torch `device_type` (`ParallelConfig.compiles_blocks`)."""
    return config.compiles_blocks("gpu" if device_type == "cuda" else device_type)


def apply_compile(model: Transformer) -> None:
    """torch.compile each block in place (parameter names unchanged), after recompute and before FSDP, as torchtitan
    does: the repeated block compiles once. MoE blocks run eagerly (their routing has data-dependent shapes and
    collectives; not yet tried under compile)."""
    for _, block in model.blocks():
        if not isinstance(block.feed_forward, MoE):
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
               reshard_after_forward: bool | None = None, offload_policy=None) -> None:
    """Each block an FSDP unit, the chunk the root unit. `reshard_after_forward` (default: ZeRO-3) applies to the
    blocks; the root reshards only under ZeRO-3. `offload_policy` (CPUOffloadPolicy) applies to every unit."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = mp_policy or MixedPrecisionPolicy()
    offload = offload_policy or OffloadPolicy()
    blocks = zero_stage == 3 if reshard_after_forward is None else reshard_after_forward
    for _, block in model.blocks():
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=blocks, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=zero_stage == 3, mp_policy=policy, offload_policy=offload)


def replica_mesh(mesh, config):
    """The ranks that hold the same weights and average their gradients: the "dp" mesh dimension, or with context
    parallelism dp x cp flattened into one dimension "dp_cp" (torchtitan's dp_shard_cp: the CP ranks of a replica
    see different tokens of the same sequences)."""
    if config.cp == 1:
        return mesh["dp"]
    return mesh["dp", "cp"]._flatten("dp_cp")


def offload_policy(config, device: torch.device):
    """FSDP2's CPUOffloadPolicy under offload_optimizer (pinned host memory on CUDA only), else None."""
    if not config.offload_optimizer:
        return None
    from torch.distributed.fsdp import CPUOffloadPolicy

    return CPUOffloadPolicy(pin_memory=device.type == "cuda")


def apply_data_parallel(model: Transformer, mesh, config, mp_policy, device: torch.device | None = None,
                        expert_mesh=None) -> None:
    """FSDP units by the plan's ZeRO stage (step 5 of the module docstring), sharded over `replica_mesh`; under
    offload_optimizer with
    CPUOffloadPolicy (the parameters were materialised in host memory). The routed experts of each MoE layer
    are a unit of their own over the expert mesh: sharded over "edp" under ZeRO 1-3, else a one-rank unit (their
    ZeRO-0 reducer averages over edp, `GradReducer` with `expert_params`)."""
    from torch.distributed.fsdp import fully_shard

    for moe in moe_layers(model):
        if config.zero_sharded:
            fully_shard(moe.experts, mesh=expert_mesh["edp"], reshard_after_forward=config.zero_stage == 3,
                        mp_policy=mp_policy, offload_policy=offload_policy(config, device or torch.device("cpu")))
        else:
            fully_shard(moe.experts, mesh=expert_mesh[SOLO], reshard_after_forward=config.reshard_after_forward,
                        mp_policy=mp_policy)
    if config.zero_sharded:
        apply_fsdp(model, replica_mesh(mesh, config), config.zero_stage, mp_policy,
                   offload_policy=offload_policy(config, device or torch.device("cpu")))
    else:
        apply_fsdp(model, mesh["dp"] if config.dp == 1 else mesh[SOLO], 0, mp_policy,
                   reshard_after_forward=config.reshard_after_forward)


def parallelize_chunk(model: Transformer, mesh, config, device: torch.device, seed: int,
                      expert_mesh=None, recomputed: set[int] | None = None) -> Transformer:
    """TP, expert parallelism (MoE models: `expert_mesh`, mesh.build_expert_mesh), materialise + init, recompute (of
    the layers in `recomputed`, every layer when None), FP8 linears (dtype fp8), compile, then mixed precision and
    data parallelism (FSDP2) on one model chunk built on the meta device."""
    if config.tp > 1:
        apply_tp(model, mesh["tp"], config.sequence_parallel)
    if expert_mesh is not None:
        apply_expert_parallel(model, expert_mesh, config)
    # CPUOffloadPolicy wants the parameters in host memory before fully_shard; it computes on the mesh's device.
    materialize(model, torch.device("cpu") if config.offload_optimizer else device, seed)
    apply_recompute(model, config.recompute, recomputed, selective_policy(config))
    if config.offload_activations:
        from autoconf.execute.offload import apply_activation_offload

        apply_activation_offload(model, device)
    if config.dtype == "fp8":  # torchao Float8Linear in the blocks, before FSDP wraps them
        from autoconf.execute.fp8 import apply_float8

        apply_float8(model, config.zero_sharded, device)
    if compiles(config, device.type):
        apply_compile(model)
    apply_data_parallel(model, mesh, config, precision_policy(compute_dtype(config, device.type)), device,
                        expert_mesh)
    return model


def match_grad_layout(p: nn.Parameter) -> None:
    """Gives a DTensor parameter's gradient the parameter's placements. (The vocabulary-parallel embedding's backward
    returns a Replicate gradient for a Shard(0) weight; redistributing to Shard(0) just keeps the local rows.)"""
    from torch.distributed.tensor import DTensor

    g = p.grad
    if isinstance(g, DTensor) and isinstance(p, DTensor) and g.placements != p.placements:
        p.grad = g.redistribute(p.device_mesh, p.placements)


def _bucket_name(fqn: str) -> str:
    """A parameter's bucket: its block ("layers.3"), its MTP module ("mtp.0"), the head (final norm and output) or
    the embedding."""
    parts = fqn.split(".")
    if parts[0] in ("layers", "mtp"):  # (one bucket per MTP module too)
        return ".".join(parts[:2])
    return "head" if parts[0] in ("norm", "output") else parts[0]


class GradReducer:
    """ZeRO-0 data parallelism of one model chunk: averages its gradients over the dp group during the backward.

    The parameters are the chunk's routed expert weights (`expert_params`, reduced over the expert-data-parallel
    group) or all the others (over dp). Buckets: one per block, one for the head (final norm + output) and one for
    the embedding, in reverse parameter
    order (the order the backward produces them), split by dtype. A parameter's gradient is final at its
    `accumulations`-th accumulation of the step (one per micro-batch backward: the gradient accumulation's earlier
    micro-batches only accumulate, as under FSDP's `set_requires_gradient_sync(False)`). Its post-accumulate-grad
    hook then marks it ready; a bucket whose parameters are all ready is copied into one flat tensor and
    all-reduced asynchronously while the backward goes on. Buckets launch in their fixed order (the same on every
    replica, as the process group requires), a ready bucket waiting for the ones before it.

    A bucket's average (sum / `divisor`) is written back into its gradients, and its flat copy freed, when the
    bucket IN_FLIGHT places after it launches (the wait orders the device's stream on NCCL, it does not block the
    host), so at most IN_FLIGHT + 1 flat copies live at once, not one of every gradient. `finish()` (the training
    loop's `grad_sync` phase) launches any bucket the hooks did not (gradients that autograd did not accumulate: the
    split-backward schedules' weight pass of a non-first stage writes `.grad` itself) and writes back the rest.
    Local shards of DTensor (TP) gradients are reduced, after they take their parameter's placements.
    """

    IN_FLIGHT = 2

    def __init__(self, module: nn.Module, dp_group, accumulations: int, divisor: float,
                 expert_params: bool = False):
        self.group, self.accumulations, self.divisor = dp_group, accumulations, divisor
        buckets: dict[tuple[str, torch.dtype], list[nn.Parameter]] = {}
        for fqn, p in reversed(list(module.named_parameters())):  # shared (tied) parameters appear once
            if p.requires_grad and is_expert_param(fqn) == expert_params:
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
        while len(self.in_flight) > self.IN_FLIGHT:
            self._write_back(*self.in_flight.pop(0))

    def _write_back(self, work, flat: torch.Tensor, grads: list[torch.Tensor]) -> None:
        work.wait()
        flat.div_(self.divisor)
        torch._foreach_copy_(grads, [part.view_as(g) for g, part in zip(grads, flat.split([g.numel() for g in grads]))])

    @torch.no_grad()
    def finish(self) -> None:
        for b in range(self.next, len(self.buckets)):
            for p in self.buckets[b]:
                match_grad_layout(p)
            self._launch(b)
        for work, flat, grads in self.in_flight:
            self._write_back(work, flat, grads)
        self._reset()
