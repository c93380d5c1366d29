"""What training costs beyond the blocks timed alone, measured on the executor's own model.

- `measure_reference`: the unsharded model end to end (one layer: the per-pass overhead; several layers: blocks
  chained against timed alone) and its optimizer step over the real tensors (CPU profiles);
- `chain_scales`: on GPUs, two depths of that model under the executor's autocast against the block table, per
  micro-batch size: how much longer (or shorter) a layer and the model's ends take in training than their blocks
  timed alone;
- `measure_fsdp`: the same model sharded with FSDP2 over every rank, and in the one-rank FSDP2 units of an unsharded
  rank: the hooks per pass and unit, and the optimizer over DTensor parameters;
- `reference_overheads`: the profile entries those measurements give, against the block table.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist

from autoconf.execute.dtypes import TORCH_DTYPES
from autoconf.spec.profile_checks import BLOCKS, MOE_BLOCKS, timed_at
from autoconf.profile.timing import median, sync, work_time
from autoconf.spec.model import ModelSpec

CHAIN_DEPTHS = (1, 5)  # the two depths whose difference is one layer in its place (GPU profiles)


def measure_reference(model: ModelSpec, device: torch.device, dtype: str, micro_batches: tuple[int, ...], seq: int,
                      warmup: int, repeats: int, layers: int = 1, optimizer: bool = True,
                      autocast: bool = False) -> dict:
    """Times the executor's own unsharded model of `layers` layers (embedding, the first layers, final norm and head;
    one layer is the smallest stage) end to end on this rank: forward + loss and the full backward of one
    micro-batch of each size, and with `optimizer` one AdamW step plus the gradient-norm pass over its real
    parameter tensors (small tensors cost more per parameter than the 1M-element chunks `optimizer_time_per_param`
    times). What the block tables miss (module calls, residual adds, the loss, autograd's per-pass bookkeeping,
    blocks evicting each other from the caches) is the difference; `reference_overheads` turns it into profile
    entries. Returns {"layers", "params", "passes": [{"micro_batch", "seq_len", "forward_s", "backward_s"}]} and,
    with `optimizer`, "optimizer_s". With `autocast` the parameters stay fp32 and every pass runs under autocast to
    `dtype`, as the executor trains an unsharded GPU rank."""
    from autoconf.execute.loss import cross_entropy

    net = _executor_model(model, device, "fp32" if autocast else dtype, layers)
    context = (lambda: torch.autocast(device.type, dtype=TORCH_DTYPES[dtype])) if autocast else contextlib.nullcontext
    params = [p for p in net.parameters() if p.requires_grad]
    passes = []
    for mb in micro_batches:
        tokens = torch.randint(0, model.vocab_size, (mb, seq + 1), device=device)
        x, y = tokens[:, :-1], tokens[:, 1:]
        fwd, bwd = [], []
        for i in range(warmup + repeats):
            holder: dict = {}
            with context():
                t_f = work_time(lambda: holder.__setitem__("loss", cross_entropy(net(x), y)), device)
                t_b = work_time(lambda: holder["loss"].backward(), device)
            if i >= warmup:
                fwd.append(t_f)
                bwd.append(t_b)
        passes.append({"micro_batch": mb, "seq_len": seq, "forward_s": median(fwd), "backward_s": median(bwd)})
    out = {"layers": layers, "params": sum(p.numel() for p in params), "passes": passes}
    if optimizer:
        out["optimizer_s"] = _optimizer_step_time(params, device, warmup, repeats)
    return out


def measure_fsdp(model: ModelSpec, device: torch.device, dtype: str, seq: int, warmup: int, repeats: int) -> dict:
    """What FSDP2 (and DTensor parameters in general) add on this rank, on a one-layer model of the executor (one
    unit per block plus the root):

    - "pass_s_per_unit": process CPU seconds (gloo threads included) per forward or backward pass and FSDP unit
      beyond the same passes of the unsharded model, the units sharded over every rank of the job as ZeRO 1-2 shards
      them, gradient sync off as for all but the last micro-batch (the hooks, DTensor bookkeeping, unsharding); the
      cost model adds it to every pass of a stage under ZeRO >= 1;
    - "solo_pass_s_per_unit": the same for the one-rank units the executor puts on an unsharded (ZeRO-0) rank
      (`parallelize.apply_data_parallel` over its SOLO mesh axis: FSDP2 casts and hooks without sharding, gradients
      written out at every backward, gathered parameters kept between passes as under a pipeline); the cost model
      adds it to every pass of a stage without ZeRO sharding;
    - "optimizer_s_per_param": the gradient-norm pass and AdamW over the sharded DTensor parameters, per unsharded
      parameter; on a small model mostly per-tensor dispatch, which sharding does not shrink, so the cost model
      takes it as a lower bound for DTensor parameters (FSDP or TP)."""
    from torch.distributed.device_mesh import init_device_mesh

    from autoconf.execute.loss import cross_entropy
    from autoconf.execute.mesh import SOLO
    from autoconf.execute.parallelize import apply_fsdp

    tokens = torch.randint(0, model.vocab_size, (1, seq + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    units = 2  # the block and the root

    def passes(net) -> float:
        for _ in range(warmup):
            cross_entropy(net(x), y).backward()
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            cross_entropy(net(x), y).backward()
            times.append(time.process_time() - t0)
        return median(times)

    def per_unit(wrapped: float, plain: float) -> float:
        return max(0.0, wrapped - plain) / 2 / units

    world = dist.get_world_size()
    net = _executor_model(model, device, dtype, 1)
    full = sum(p.numel() for p in net.parameters())
    plain = passes(net)
    solo_mesh = init_device_mesh(device.type, (world, 1), mesh_dim_names=("dp", SOLO))[SOLO]
    apply_fsdp(net, solo_mesh, 0, reshard_after_forward=False)
    solo = passes(net)
    net = _executor_model(model, device, dtype, 1)
    plain = median([plain, passes(net)])  # the unwrapped model before and after, against drift
    apply_fsdp(net, init_device_mesh(device.type, (world,), mesh_dim_names=("dp",)), 2)
    cross_entropy(net(x), y).backward()  # gradients to step on, gathered parameters
    net.set_requires_gradient_sync(False)
    sharded = passes(net)
    net.set_requires_gradient_sync(True)
    params = [p for p in net.parameters() if p.grad is not None]
    return {"pass_s_per_unit": per_unit(sharded, plain), "solo_pass_s_per_unit": per_unit(solo, plain),
            "optimizer_s_per_param": _optimizer_step_time(params, device, warmup, repeats) / full}


def _executor_model(model: ModelSpec, device: torch.device, dtype: str, layers: int):
    """The executor's model of `layers` layers with embedding and head, materialised, tied and initialised as
    training does it, in `dtype`, in training mode."""
    from autoconf.execute.model import build_model
    from autoconf.execute.parallelize import materialize

    net = build_model(model, 0, layers)
    materialize(net, device, 0)
    return net.to(TORCH_DTYPES[dtype]).train()


def _optimizer_step_time(params: list, device: torch.device, warmup: int, repeats: int) -> float:
    """Median work seconds of what the trainer does with gradients each step: the gradient norm's squares summed
    over `params` (their local shards when DTensors) and one step of the trainer's own AdamW
    (`execute.optimizer.model_optimizer`, torch's fused kernel; torch's default, one tensor at a time on CPU,
    took 2.5x as long over FSDP's DTensors as the foreach kernels); the gradients must be set."""
    from torch.distributed.tensor import DTensor

    from autoconf.execute.optimizer import model_optimizer

    opt = model_optimizer(params, 1e-4, 0.1)

    def step():
        total = torch.zeros((), dtype=torch.float64, device=device)
        for p in params:
            g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            total += g.double().pow(2).sum()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    return median([work_time(step, device) for _ in range(max(repeats // 2, 2))])


def _tp1_block_totals(model: ModelSpec, table: dict) -> dict[tuple[int, int], dict[str, float]]:
    """{(micro_batch, seq_len): {block: forward + backward-input + backward-weight seconds}} of the table's TP-1
    entries (an MoE model's "experts" entry: the one at ep 1 and etp 1, whole experts on one rank as the unsharded
    reference holds them), for the sizes at which every block `model` has was timed."""
    needed = BLOCKS + (MOE_BLOCKS if model.moe is not None else ())
    by_size: dict[tuple[int, int], dict[str, float]] = {}
    for e in table["entries"]:
        if timed_at(e, 1):
            by_size.setdefault((e["micro_batch"], e["seq_len"]), {})[e["block"]] = (
                e["forward_s"] + e["backward_input_s"] + e["backward_weight_s"])
    return {size: blocks for size, blocks in by_size.items() if all(b in blocks for b in needed)}


def _layers_parts(model: ModelSpec, blocks: dict[str, float], first: int, end: int) -> float:
    """The table's time of blocks [first, end) of `model`: attention, two norms and the MLP, or in an MoE layer the
    "moe" and "experts" blocks."""
    def mlp(layer: int) -> float:
        if model.moe is not None and model.is_moe_layer(layer):
            return blocks["moe"] + blocks["experts"]
        return blocks["mlp"]

    return sum(blocks["attention"] + 2 * blocks["norm"] + mlp(layer) for layer in range(first, end))


def _reference_gaps(model: ModelSpec, table: dict, refs: list[dict]) -> list[tuple[int, float, float]]:
    """Per micro-batch size of the references: (size, whole-model time, sum of its blocks in the table at tp 1),
    forward + backward, medians over ranks."""
    totals = _tp1_block_totals(model, table)
    layers = refs[0]["layers"]
    out = []
    for i, item in enumerate(refs[0]["passes"]):
        blocks = totals.get((item["micro_batch"], item["seq_len"]))
        if blocks is None:
            continue
        parts = _layers_parts(model, blocks, 0, layers) + blocks["embedding"] + blocks["head"]
        whole = median([r["passes"][i]["forward_s"] + r["passes"][i]["backward_s"] for r in refs])
        out.append((item["micro_batch"], whole, parts))
    return out


def measure_chain(model: ModelSpec, device: torch.device, dtype: str, micro_batches: tuple[int, ...], seq: int,
                  warmup: int, repeats: int) -> tuple[dict, dict]:
    """The executor's model at the two `CHAIN_DEPTHS` (at most the model's layers), end to end at every micro-batch
    size, under autocast when `dtype` is a low precision: (shallow, deep) `measure_reference` results."""
    low = dtype != "fp32"
    shallow, deep = (min(d, model.num_layers) for d in CHAIN_DEPTHS)
    return tuple(measure_reference(model, device, dtype, micro_batches, seq, warmup, repeats, layers=d,
                                   optimizer=False, autocast=low) for d in (shallow, deep))


def chain_scales(model: ModelSpec, table: dict, shallow: dict, deep: dict) -> list[dict]:
    """Per micro-batch size of the chain measurements: {"micro_batch", "seq_len", "layer_scale", "ends_scale"}.

    One layer in its place takes (deep - shallow) / (deep layers - shallow layers); "layer_scale" is that over the
    table's attention + MLP + two norms at TP 1, "ends_scale" what the shallow model has left beyond its layers
    (embedding, final norm, head and loss) over the table's embedding + head. On a GPU they hold what timing blocks
    one by one cannot: a fp32 residual stream and casts under autocast, and the host running ahead of the device
    (blocks timed alone wait for every launch, so small ones read long). Of an MoE model the layers between the two
    depths are read as what each is (`_layers_parts`). Kept within [0.25, 4]; rows whose blocks are missing from the
    table, or whose depths are equal, are left out."""
    totals = _tp1_block_totals(model, table)
    span = deep["layers"] - shallow["layers"]
    out = []
    for a, b in zip(shallow["passes"], deep["passes"]):
        total = totals.get((a["micro_batch"], a["seq_len"]))
        if span <= 0 or total is None:
            continue
        whole_shallow = a["forward_s"] + a["backward_s"]
        layer = (b["forward_s"] + b["backward_s"] - whole_shallow) / span
        ends = whole_shallow - shallow["layers"] * layer
        layer_parts = _layers_parts(model, total, shallow["layers"], deep["layers"]) / span
        ends_parts = total["embedding"] + total["head"]
        if layer_parts <= 0 or ends_parts <= 0:
            continue
        out.append({"micro_batch": a["micro_batch"], "seq_len": a["seq_len"],
                    "layer_scale": min(4.0, max(0.25, layer / layer_parts)),
                    "ends_scale": min(4.0, max(0.25, ends / ends_parts))})
    return out


def reference_overheads(model: ModelSpec, table: dict, refs: list[dict], deep: list[dict] | None = None) -> dict:
    """From the block table and every rank's `measure_reference`s: {"pass_overhead_s": time per forward or
    backward pass of a stage that its blocks do not account for, "model_compute_scale": how much longer blocks take
    chained in the model than timed alone, "optimizer_s_per_param": the optimizer step and gradient norm of the
    real model's tensors, per parameter}.

    `refs` (one layer, smallest micro-batch): the pass overhead is half the gap between the model and its blocks,
    never below 0. `deep` (several layers, several micro-batch sizes): the scale is the ratio of the summed model
    times, less two pass overheads each, to the summed block times, kept within [1, 2] (below 1 is noise: chaining
    cannot make a block faster); 1 without `deep`. Medians over ranks."""
    gaps = _reference_gaps(model, table, refs)
    overhead = max(0.0, (gaps[0][1] - gaps[0][2]) / 2) if gaps else 0.0
    scale = 1.0
    deep_gaps = _reference_gaps(model, table, deep) if deep else []
    if deep_gaps:
        whole = sum(w - 2 * overhead for _, w, _ in deep_gaps)
        parts = sum(p for _, _, p in deep_gaps)
        scale = min(2.0, max(1.0, whole / parts)) if parts > 0 else 1.0
    optimizer = median([r["optimizer_s"] for r in refs]) / refs[0]["params"]
    return {"pass_overhead_s": overhead, "model_compute_scale": scale, "optimizer_s_per_param": optimizer}
