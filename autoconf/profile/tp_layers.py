"""Tensor-parallel layers measured in place (CPU profiles): what a TP layer adds beyond its local compute.

The executor's own layers, made tensor-parallel with DTensor over real TP groups of the running job, every group at
once as in training; the profile table `compute.tp_layers` that the cost model reads instead of modelled
collectives (see `measure_tp_layers`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from autoconf.execute.dtypes import TORCH_DTYPES
from autoconf.profile.timing import fit_line, median, time_once
from autoconf.spec.model import ModelSpec
from autoconf.spec.profile_checks import timed_at

TP_REFERENCE_LAYERS = 2
TP_BUDGET_S = 5.0  # seconds one (tp, sequence parallelism, micro-batch) point may take
MIN_REPEATS = 3


def measure_tp_layers(model: ModelSpec, table: dict, tps: tuple[int, ...], micro_batches: tuple[int, ...], seq: int,
                      device: torch.device, dtype: str, share: float, warmup: int, repeats: int) -> list[dict]:
    """Times TP_REFERENCE_LAYERS layers of the executor's own model, tensor-parallel with DTensor over real TP groups
    of this job (consecutive ranks; every group at once, as in training), with and without sequence parallelism.

    Returns entries {"tp", "micro_batch", "seq_len", "sequence_parallel", "forward_s", "backward_s"}: wall seconds
    per layer and pass beyond the layer's local compute (the block table's times over `share`), i.e. everything TP
    adds: its collectives, the wait for the group's members, DTensor's dispatch. Medians over repeats and ranks.
    Each point has about TP_BUDGET_S seconds: a larger micro-batch gets fewer repeats (at least MIN_REPEATS) rather
    than none, so slow ranks still measure the sizes they will train."""
    from torch.distributed.device_mesh import init_device_mesh

    from autoconf.execute.model import build_model
    from autoconf.execute.parallelize import apply_tp, materialize

    world = dist.get_world_size()
    layers = min(model.num_layers, TP_REFERENCE_LAYERS)
    out = []
    for tp in tps:
        if tp == 1 or world % tp:
            continue
        tp_mesh = init_device_mesh(device.type, (world // tp, tp), mesh_dim_names=("dp", "tp"))["tp"]
        for sp in (False, True):
            if sp and seq % tp:
                continue
            net = build_model(model, 0, layers, embed=False, head=False)
            apply_tp(net, tp_mesh, sp)
            materialize(net, device, 0)
            net = net.to(TORCH_DTYPES[dtype]).train()
            runs = (warmup, repeats)
            for mb in micro_batches:
                local = (mb, seq // tp if sp else seq, model.hidden_size)
                forward, backward, runs = timed_passes(net, local, device, dtype, runs)
                compute_f = sum(block_time(table, b, tp, mb, seq, ("forward_s",))
                                for b in ("attention", "mlp", "norm", "norm")) / share
                compute_b = sum(block_time(table, b, tp, mb, seq, ("backward_input_s", "backward_weight_s"))
                                for b in ("attention", "mlp", "norm", "norm")) / share
                out.append({"tp": tp, "micro_batch": mb, "seq_len": seq, "sequence_parallel": sp,
                            "forward_s": forward / layers - compute_f, "backward_s": backward / layers - compute_b})
                if runs is None:
                    break
    return medians_over_ranks(out)


def timed_passes(net, shape: tuple[int, ...], device: torch.device, dtype: str,
                 runs: tuple[int, int]) -> tuple[float, float, tuple[int, int] | None]:
    """Median wall seconds of a forward and a backward of `net` on a random input of `shape`, every rank starting
    each repeat together; `runs` is (warm-up, timed) repeats. Also the runs the next, larger point gets: the
    repeats that fit TP_BUDGET_S, at least MIN_REPEATS, or None when even those would not fit (the cost model
    extends the largest measured point), decided alike on every rank from the slowest one."""
    x = torch.randn(*shape, device=device, dtype=TORCH_DTYPES[dtype], requires_grad=True)
    grad = torch.randn(*shape, device=device, dtype=TORCH_DTYPES[dtype])
    fwd, bwd = [], []
    skip, timed = runs
    for i in range(skip + timed):
        dist.barrier()
        holder: dict = {}
        t_f = time_once(lambda: holder.__setitem__("out", net(x)), device)
        t_b = time_once(lambda: holder["out"].backward(grad), device)
        if i >= skip:
            fwd.append(t_f)
            bwd.append(t_b)
    slowest = torch.tensor([median(fwd) + median(bwd)], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    per_pass = 2.0 * float(slowest)  # the next point: twice the work or more
    if per_pass * (1 + MIN_REPEATS) > TP_BUDGET_S:
        return median(fwd), median(bwd), None
    return median(fwd), median(bwd), (1, max(MIN_REPEATS, min(timed, int(TP_BUDGET_S / per_pass) - 1)))


def medians_over_ranks(entries: list[dict]) -> list[dict]:
    """Every rank's `entries` (the same points in the same order) as one list: each point's forward_s and
    backward_s the median over the ranks, at least 0."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, entries)
    return [{**entry, "forward_s": max(0.0, median([g[i]["forward_s"] for g in gathered])),
             "backward_s": max(0.0, median([g[i]["backward_s"] for g in gathered]))}
            for i, entry in enumerate(gathered[0])]


def block_time(table: dict, block: str, tp: int, mb: int, seq: int, keys: tuple[str, ...], ep: int = 1) -> float:
    """The block's time (sum of `keys`) at micro-batch `mb`, on the least-squares line through the table's
    micro-batch sizes (the in-place measurements also run micro-batches the table did not time); of the "experts"
    block, its entries at `ep` (and etp 1)."""
    rows = [e for e in table["entries"] if e["block"] == block and e["seq_len"] == seq and timed_at(e, tp, ep)]
    xs, ys = [e["micro_batch"] for e in rows], [sum(e[k] for k in keys) for e in rows]
    if len(rows) == 1:
        return ys[0] * mb / xs[0]
    slope, intercept = fit_line(xs, ys)
    return max(0.0, intercept + slope * mb)
