"""The profiler's torchrun entry point: measures the cluster it runs on and writes a cluster profile (rank 0).

    python -m torch.distributed.run --nproc-per-node N [multi-node flags] -m autoconf.profile.run \
        --out PROFILE.json [--model MODEL] [--quick] [--base-profile NAME] [--memory-per-rank 4GiB] [--dtype fp32] \
        [--max-tp T] [--seq-len S ...]

(`autoconf profile`, i.e. `autoconf.profile.launch.profile`, builds that command, run through
`autoconf.execute.elastic`.) Phases, all ranks together:
1. layout: host names -> nodes and ranks per node;
2. device: memory capacity, peak FLOP/s and memory bandwidth (CPU: measured; GPU: data sheet), runtime overhead;
3. point-to-point links of every ordered pair (round-robin tournament), alpha-beta fits, link matrices;
4. collectives inside and across nodes;
5. compute tables of the model's blocks (when a model is given; on CPU tiny-gpt by default), of an MoE model also its
   MoE layer and routed experts (profile/moe_blocks.py).
Progress is printed on rank 0; the profile is written by rank 0 through a temporary file and a rename.

Hidden switches for tests: AUTOCONF_PROFILE_TINY=1 shrinks every grid to a few points; AUTOCONF_PROFILE_FAKE_NODES=K
splits the ranks of one host into K pretend nodes (to exercise the inter-node paths on one machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from autoconf.errors import UserError
from autoconf.files import write_file
from autoconf.profile import compute, ep_layers, hardware, host, network, overheads, pipeline, tp_layers
from autoconf.profile.moe_blocks import fitting_degrees
from autoconf.profile.timed_model import REFERENCE_LAYERS, dense_view, timed_model, timed_note
from autoconf.profile.timing import median
from autoconf.spec.cluster import ClusterProfile, Device, Link, load_cluster
from autoconf.spec.dtypes import PROFILED_DTYPES, dtype_bytes

DEFAULT_CPU_MODEL = "tiny-gpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m autoconf.profile.run",
                                     description="Measure this cluster (run under torchrun on every node).")
    parser.add_argument("--out", required=True, help="where rank 0 writes the cluster profile JSON")
    parser.add_argument("--model", help=f"model whose blocks to time (preset or JSON; default on CPU: "
                                        f"{DEFAULT_CPU_MODEL}; on GPU none: no compute tables)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a few minutes)")
    parser.add_argument("--base-profile", help="bundled profile or path supplying what is not measured")
    parser.add_argument("--memory-per-rank", help="CPU only: memory capacity of one rank (e.g. 4GiB); "
                                                  "default physical RAM / ranks on the host")
    parser.add_argument("--dtype", choices=sorted(PROFILED_DTYPES), help="compute-table dtype "
                                                                              "(default fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--max-tp", type=int, help="time the blocks at TP widths up to this (default: the ranks per "
                                                    "node)")
    parser.add_argument("--name", help="profile name (default: the output file's stem)")
    parser.add_argument("--seq-len", type=int, action="append", default=[],
                        help="a sequence length to plan for (repeatable): the attention block is timed there too")
    parser.add_argument("--tiny-grid", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class Progress:
    def __init__(self, rank: int):
        self.rank = rank
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.rank == 0:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", flush=True)


def _hostnames(world: int) -> list[str]:
    names: list = [None] * world
    dist.all_gather_object(names, socket.gethostname())
    fake = int(os.environ.get("AUTOCONF_PROFILE_FAKE_NODES", "0") or 0)
    if fake > 1:
        per = max(world // fake, 1)
        names = [f"{host}/fake-node-{rank // per}" for rank, host in enumerate(names)]
    return names


def _gather(value):
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def write_atomic(path: Path, data: dict) -> None:
    """The launcher refused an existing --out without --force before starting the ranks."""
    write_file(path, json.dumps(data, indent=2) + "\n", force=True)


def main(argv: list[str] | None = None) -> int:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: never outlive the agent
        from autoconf.execute.launch import die_with_parent

        die_with_parent(signal.SIGKILL)
        if os.getppid() == 1:
            return 1
    args = parse_args(argv)
    tiny = args.tiny_grid or os.environ.get("AUTOCONF_PROFILE_TINY") == "1"
    quick = args.quick or tiny
    on_gpu = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", device_id=device)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    log = Progress(rank)
    try:
        profile = _measure(args, device, quick, tiny, log)
        if rank == 0:
            out = Path(args.out)
            write_atomic(out, profile.to_dict())
            log(f"wrote {out} ({profile.nodes} node(s) x {profile.gpus_per_node} rank(s), "
                f"{time.perf_counter() - log.start:.0f} s)")
        dist.barrier()
        return 0
    except UserError as err:
        if rank == 0:
            print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # (torchrun, which also got it, says so once)
        return 130
    finally:
        dist.destroy_process_group()


def _measure(args, device: torch.device, quick: bool, tiny: bool, log: Progress) -> ClusterProfile:
    from autoconf.spec.presets import load_model

    rank, world = dist.get_rank(), dist.get_world_size()
    on_gpu = device.type == "cuda"
    kind = "quick" if quick else "full"
    log(f"profiling {world} rank(s) on {'CUDA (nccl)' if on_gpu else 'CPU (gloo, one thread per rank)'}, {kind}")

    # 1. Layout.
    layout = network.group_hosts(_hostnames(world))
    log(f"layout: {layout.nodes} node(s) x {layout.gpus_per_node} rank(s): {', '.join(layout.hostnames)}")
    overhead = hardware.rss_bytes() if not on_gpu else 0

    # 2. Device.
    device_name = torch.cuda.get_device_name(device) if on_gpu else f"cpu-rank ({hardware.cpu_name()})"
    base_name = args.base_profile or (hardware.base_profile_for(device_name) if on_gpu else None)
    base = load_cluster(base_name) if base_name else None
    if base is not None:
        from autoconf.profile.launch import base_profile_problem

        problem = base_profile_problem(base, base_name, on_gpu)
        if problem:
            raise UserError(problem)
    main_dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    dtypes = [main_dtype] + [d for d in ("fp32", "bf16", "fp16") if d != main_dtype]
    if tiny:
        dtypes = dtypes[:2]
    log(f"device: matmul FLOP/s ({', '.join(dtypes)}), copy bandwidth, attention rate on every rank at once")
    dist.barrier()  # every rank measures at once
    rates = hardware.combine(_gather(hardware.measure_device(device, quick, dtypes, tiny)))
    if on_gpu:
        capacity = float(torch.cuda.get_device_properties(device).total_memory)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        overhead = total - free
        table = hardware.known_gpu(device_name)
        if table is not None:
            peaks, bandwidth = table
        else:
            peaks, bandwidth = dict(rates["peak_flops"]), rates["memory_bandwidth_Bps"]
        efficiency = hardware.gpu_efficiency(base.efficiency if base else None, rates, peaks.get(main_dtype, 1.0),
                                             main_dtype)
    else:
        if args.memory_per_rank:
            capacity = float(hardware.parse_bytes(args.memory_per_rank))
        else:
            capacity = float(hardware.physical_memory_bytes() // layout.gpus_per_node)
        peaks, bandwidth = dict(rates["peak_flops"]), rates["memory_bandwidth_Bps"]
        dist.barrier()  # every rank busy at once
        share = float(median(_gather(hardware.cpu_share(0.2 if tiny else 1.0))))
        dist.barrier()  # one rank per node busy, the others asleep in the barrier below
        alone = hardware.cpu_share(0.2 if tiny else 1.0) if layout.local_of[rank] == 0 else None
        dist.barrier()
        alone = float(median([a for a in _gather(alone) if a is not None]))
        log(f"  each rank gets {share:.2f} of a core while all ranks compute, {alone:.2f} while it computes alone")
        efficiency = hardware.cpu_efficiency(rates, main_dtype, share, alone)
    overhead = float(median(_gather(overhead)))
    log(f"  {main_dtype} matmul {rates['peak_flops'][main_dtype] / 1e9:.1f} GFLOP/s per rank, copy "
        f"{rates['memory_bandwidth_Bps'] / 1e9:.1f} GB/s, capacity {capacity / 2 ** 30:.1f} GiB per rank")
    log("host: host-device copies and CPU AdamW on every rank at once, host memory")
    dist.barrier()
    host_facts = host.combine_host(_gather(host.measure_host(device, quick, tiny)), on_gpu,
                                   time.strftime("%Y-%m-%d"))
    log(f"  host: {host_facts['memory_bytes'] / 2 ** 30:.0f} GiB per node, h2d {host_facts['h2d_Bps'] / 1e9:.1f} "
        f"GB/s, d2h {host_facts['d2h_Bps'] / 1e9:.1f} GB/s per rank, AdamW {host_facts['adam_s_per_param'] * 1e9:.2f} "
        f"ns per parameter")
    dev = Device(name=device_name, kind="gpu" if on_gpu else "cpu", memory_bytes=capacity,
                 memory_bandwidth_Bps=float(bandwidth), peak_flops={k: float(v) for k, v in peaks.items()},
                 memory_overhead_bytes=overhead)

    # 3. Links.
    p2p_sizes = network.P2P_SIZES_QUICK if quick else network.P2P_SIZES
    warm, reps = (1, 3) if tiny else ((2, 20) if quick else (3, 30))
    if tiny:
        p2p_sizes = [p2p_sizes[0], p2p_sizes[-1]]
    log(f"point-to-point: {len(network.round_robin_pairs(world))} round(s), sizes "
        f"{', '.join(_size(n) for n in p2p_sizes)}, both directions, {reps} repeats")
    samples = network.measure_p2p(p2p_sizes, warm, reps, device, log)
    fits = {pair: network.fit_alpha_beta([n for n, _ in pts], [t for _, t in pts]) for pair, pts in samples.items()}
    links = network.summarize_links(layout, fits, Link(0.0, float(bandwidth)))
    notes = []
    intra, inter = links["intra_node"], links["inter_node"]
    if intra is None and inter is None:
        if base:
            intra, inter = base.intra_node, base.inter_node
            notes.append(f"no links measured (one rank): taken from {base_name}")
        else:
            intra = inter = Link(0.0, float(bandwidth))
            notes.append("no links measured (one rank): placeholders at memory bandwidth")
    elif inter is None:
        inter = base.inter_node if base else intra
        notes.append("inter-node link not measured (one node): " +
                     (f"taken from {base_name}" if base else "copied from the intra-node link"))
    elif intra is None:
        intra = base.intra_node if base else inter
        notes.append("intra-node link not measured (one rank per node): " +
                     (f"taken from {base_name}" if base else "copied from the inter-node link"))
    for label, link in (("intra", links["intra_node"]), ("inter", links["inter_node"])):
        if link is not None:
            log(f"  {label}-node: latency {link.latency_s * 1e6:.1f} us, bandwidth {link.bandwidth_Bps / 1e9:.2f} GB/s")

    # 4. Collectives.
    coll_sizes = network.COLLECTIVE_SIZES_QUICK if quick else network.COLLECTIVE_SIZES
    if tiny:
        coll_sizes = coll_sizes[:1]
    log(f"collectives: all_reduce, all_gather, reduce_scatter at {', '.join(_size(n) for n in coll_sizes)}")
    collectives = network.measure_collectives(layout, coll_sizes, warm, reps, device, log) if world > 1 else {}
    if not on_gpu and world > 1:
        per_rank = _gather(network.loaded_sync_times(device, 5 if tiny else 30))
        by_ranks = {size: float(median([times[size] for times in per_rank])) for size in per_rank[0]}
        efficiency["collective_sync_s"] = {
            "value": by_ranks[world],
            "why": "median time of a 4 KiB all-reduce while every rank computes between calls: the wait for all "
                   "members to be scheduled, added to every collective (by_ranks: per group size, every size's "
                   "groups at once) and to transfers",
            "by_ranks": {str(size): seconds for size, seconds in by_ranks.items()}}
        log("  collective under load: " + ", ".join(f"{seconds * 1e3:.2f} ms over {size} ranks"
                                                    for size, seconds in by_ranks.items()))
        halves = [t for t in _gather(network.loaded_p2p_time(device, 5 if tiny else 30)) if t == t]
        efficiency["p2p_sync_s"] = {
            "value": float(median(halves)),
            "why": "median one-way time of a 4 KiB message between neighbour ranks while every rank computes between "
                   "messages: the wait for the receiver to be scheduled, added to every pipeline transfer"}
        log(f"  point-to-point under load: {efficiency['p2p_sync_s']['value'] * 1e3:.2f} ms")

    # 5. Compute.
    model_arg = args.model or (None if on_gpu else DEFAULT_CPU_MODEL)
    table = None
    if model_arg:
        model = load_model(model_arg)
        note = timed_note(model)
        if note:
            log(f"note: {note}")
            notes.append(note.rstrip("."))
        model = timed_model(model)
        grid = compute.default_grid(model, args.max_tp or layout.gpus_per_node, quick, tiny, tuple(args.seq_len))
        kept, left_out = fitting_degrees(model, grid.expert_degrees, dtype_bytes(main_dtype), capacity)
        if left_out:
            skipped = (f"the routed experts are not timed at (ep, etp) {', '.join(map(str, left_out))}: their "
                       f"weights and gradients take more than half of a rank's {capacity / 2 ** 30:.1f} GiB")
            log(f"note: {skipped}")
            notes.append(skipped)
            grid = dataclasses.replace(grid, expert_degrees=kept)
        capped = args.max_tp and compute.tp_widths_note(model, args.max_tp, grid.tps)
        if capped:
            log(f"note: {capped}")
            notes.append(capped)
        log(f"compute: {model.name} blocks, {main_dtype}")
        optimizer_numel = (1 << 20) if (quick or not on_gpu) else (64 << 20)
        table = compute.measure_compute(model, grid, device, main_dtype,
                                        f"cuda:{device_name}" if on_gpu else "cpu", log, optimizer_numel)
        if not on_gpu:
            _cpu_model_entries(model, table, grid, device, main_dtype, efficiency, tiny, log)
        else:
            _gpu_model_entries(model, table, grid, device, main_dtype, log)
    else:
        unused = f"; --max-tp {args.max_tp} has no blocks to time" if args.max_tp else ""
        log(f"compute: skipped (no --model){unused}")

    name = args.name or Path(args.out).stem
    description = (f"Measured by `autoconf profile` ({kind}) on {layout.nodes} node(s) x {layout.gpus_per_node} "
                   f"{'GPU(s)' if on_gpu else 'CPU rank(s), one thread each'} ({dev.name}) on "
                   f"{time.strftime('%Y-%m-%d %H:%M')}. " + " ".join(f"{n}." for n in notes)).strip()
    profile = ClusterProfile(
        name=name, nodes=layout.nodes, gpus_per_node=layout.gpus_per_node, device=dev, intra_node=intra,
        inter_node=inter, efficiency=efficiency, backend="nccl" if on_gpu else "gloo", description=description,
        intra_node_matrix=links["intra_node_matrix"], inter_node_matrix=links["inter_node_matrix"],
        collectives=collectives, compute=table, hostnames=layout.hostnames, source="measured", host=host_facts)
    return ClusterProfile.from_dict(profile.to_dict(), source="measured profile")  # the written file must load


def _cpu_model_entries(model, table: dict, grid, device: torch.device, dtype: str, efficiency: dict, tiny: bool,
                       log: Progress) -> None:
    """What a CPU rank's training adds to its block times, measured on the executor's own model and written into
    `table` and `efficiency`: the per-pass overhead, blocks chained in a model, the optimizer over real (and over
    DTensor) parameters, an MoE layer's token exchange and tensor-parallel layers in place."""
    world = dist.get_world_size()
    deep_layers = min(model.num_layers, REFERENCE_LAYERS)
    log(f"reference: the executor's {model.name} with 1 and {deep_layers} layers end to end, and its optimizer "
        f"step, on every rank at once")
    dist.barrier()
    seq = max(grid.seq_lens)
    refs = _gather(overheads.measure_reference(model, device, dtype, (min(grid.micro_batches),), seq, grid.warmup,
                                               3 * grid.repeats))
    deep = _gather(overheads.measure_reference(model, device, dtype, grid.micro_batches, seq, grid.warmup,
                                               grid.repeats, layers=deep_layers, optimizer=False))
    found = overheads.reference_overheads(model, table, refs, deep)
    table["optimizer_s_per_param"] = found["optimizer_s_per_param"]
    efficiency["pass_overhead_s"] = {
        "value": found["pass_overhead_s"],
        "why": "CPU seconds per forward or backward pass of a stage beyond its blocks' times (module calls, loss, "
               "autograd bookkeeping): half the gap between a one-layer model and its blocks at the smallest "
               "micro-batch; the cost model divides it by the CPU share"}
    efficiency["model_compute_scale"] = {
        "value": found["model_compute_scale"],
        "why": f"the executor's {deep_layers}-layer model over the sum of its blocks timed alone, at every profiled "
               f"micro-batch (blocks chained in a model share caches); the cost model scales the measured block "
               f"times by it"}
    log(f"  pass overhead {found['pass_overhead_s'] * 1e3:.2f} ms, blocks chained x{found['model_compute_scale']:.3f}, "
        f"optimizer + gradient norm {found['optimizer_s_per_param'] * 1e9:.2f} ns per parameter")
    if world == 1:
        return
    runtime = [r for r in _gather(pipeline.measure_pipeline_actions(device, grid.warmup, grid.repeats)) if r]
    table["pipeline_action_s"] = {name: median([r[name] for r in runtime]) for name in runtime[0]}
    log("  pipelining runtime per pass: " + ", ".join(f"{name} {t * 1e3:.2f} ms"
                                                     for name, t in table["pipeline_action_s"].items()))
    dist.barrier()
    fsdp = _gather(overheads.measure_fsdp(dense_view(model), device, dtype, seq, grid.warmup, grid.repeats))
    table["fsdp_pass_s_per_unit"] = median([f["pass_s_per_unit"] for f in fsdp])
    table["fsdp_solo_pass_s_per_unit"] = median([f["solo_pass_s_per_unit"] for f in fsdp])
    table["optimizer_dtensor_s_per_param"] = median([f["optimizer_s_per_param"] for f in fsdp])
    log(f"  FSDP: {table['fsdp_pass_s_per_unit'] * 1e3:.2f} ms per pass and unit sharded, "
        f"{table['fsdp_solo_pass_s_per_unit'] * 1e3:.2f} ms one-rank (ZeRO-0), optimizer + gradient norm over "
        f"DTensors {table['optimizer_dtensor_s_per_param'] * 1e9:.2f} ns per unsharded parameter")
    eps = ep_layers.ep_degrees(grid.expert_degrees, world)
    if eps:
        log(f"MoE token exchange in place: ep {list(eps)}")
        table["ep_layers"] = ep_layers.measure_ep_layers(model, table, eps, grid.micro_batches, seq, device, dtype,
                                                         efficiency["cpu_share"]["value"], grid.warmup, grid.repeats)
        for e in table["ep_layers"]:
            if e["micro_batch"] == max(grid.micro_batches):
                log(f"  ep {e['ep']} micro-batch {e['micro_batch']}: +{e['forward_s'] * 1e3:.2f} ms forward, "
                    f"+{e['backward_s'] * 1e3:.2f} ms backward per MoE layer")
    tps = tuple(t for t in grid.tps if t > 1)
    if not tps:
        return
    log(f"tensor-parallel layers in place: tp {list(tps)}, with and without sequence parallelism")
    largest = max(grid.micro_batches)  # and larger ones: TP's cost grows faster than its compute
    tp_batches = tuple(grid.micro_batches) + ((2 * largest, 4 * largest) if not tiny else ())
    table["tp_layers"] = tp_layers.measure_tp_layers(dense_view(model), table, tps, tp_batches, seq, device, dtype,
                                                     efficiency["cpu_share"]["value"], grid.warmup, grid.repeats)
    for e in table["tp_layers"]:
        if e["micro_batch"] == tp_batches[-1]:
            log(f"  tp {e['tp']}{' sp' if e['sequence_parallel'] else ''} micro-batch {e['micro_batch']}: "
                f"+{e['forward_s'] * 1e3:.2f} ms forward, +{e['backward_s'] * 1e3:.2f} ms backward per layer")


def _gpu_model_entries(model, table: dict, grid, device: torch.device, dtype: str, log: Progress) -> None:
    """The executor's model end to end at two depths against the block table (`compute.chain_scales`), every rank
    at once, medians over ranks; left out, with a note, when the deeper model does not fit the device or the table
    has no matching entries."""
    shallow, deep = (min(d, model.num_layers) for d in overheads.CHAIN_DEPTHS)
    log(f"chain: the executor's {model.name} with {shallow} and {deep} layers end to end"
        f"{' under autocast' if dtype != 'fp32' else ''}, micro-batch {list(grid.micro_batches)}")
    dist.barrier()
    try:
        found = overheads.chain_scales(model, table, *overheads.measure_chain(
            model, device, dtype, grid.micro_batches, max(grid.seq_lens), grid.warmup, grid.repeats))
    except torch.cuda.OutOfMemoryError:
        found = None
    torch.cuda.empty_cache()
    per_rank = _gather(found)
    if any(rows is None for rows in per_rank):
        log("  skipped: the model does not fit this device at that depth (blocks are taken as timed alone)")
        return
    if not per_rank[0]:
        log("  skipped: the block table has no TP-1 entries at the chain's sequence length")
        return
    table["chain_scales"] = [{**row, "layer_scale": median([r[i]["layer_scale"] for r in per_rank]),
                              "ends_scale": median([r[i]["ends_scale"] for r in per_rank])}
                             for i, row in enumerate(per_rank[0])]
    log("  in training vs timed alone: " + ", ".join(
        f"micro-batch {r['micro_batch']}: layer x{r['layer_scale']:.3f}, ends x{r['ends_scale']:.3f}"
        for r in table["chain_scales"]))


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


if __name__ == "__main__":
    sys.exit(main())
