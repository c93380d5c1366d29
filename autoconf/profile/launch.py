"""`profile(...)`: check the arguments, then run the profiler (`autoconf.profile.run`) under torchrun on this node.

Every check that can fail is done before any process starts, so a typo costs a second rather than minutes: the
output file (not overwritten without `force`; its folder must exist and be writable), the rank counts, the model and
the base profile, the memory limit, and (on the master node) that the master port is free. On a multi-node cluster
run the same call on every node with its own `node_rank`; rank 0 (on node 0) writes the profile.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from autoconf.errors import UserError
from autoconf.execute.launch import (LOOPBACK, MULTI_NODE_PORT, busy_port_problem, check_master_addr, free_port,
                                     run_supervised)
from autoconf.files import check_new
from autoconf.spec.dtypes import PROFILED_DTYPES

RDZV = ("static", "c10d")


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install: profile the CPU
        return 0


def check_output(out: str | os.PathLike, force: bool) -> Path:
    """The absolute output path, its folder made where missing; refuses an existing file without `force` and an
    unwritable folder."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give a file name such as {path / 'profile.json'}")
    check_new(path, force, hint="choose another --out")
    folder = path.parent if str(path.parent) else Path(".")
    try:  # (as every other output: a folder that does not exist yet is made)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write {path}: cannot make folder {folder} ({err.strerror or err})") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as err:
        raise UserError(f"cannot write {path}: folder {folder} is not writable ({err.strerror or err})") from None
    return path.resolve()


def cpu_rank_limit() -> int:
    """The most CPU ranks one host may profile: one per core, and at least the default 4 (which a small host
    time-shares: the profile measures the share each rank gets)."""
    return max(4, os.cpu_count() or 1)


def base_profile_problem(base, base_name: str, on_gpu: bool) -> str | None:
    """Why `base` (a ClusterProfile, --base-profile `base_name`) cannot supply what this host's profile does not
    measure (its links, and on GPUs its efficiency): it describes another kind of device, whose links (InfiniBand
    beside gloo over TCP) and efficiencies are not this host's; None when the kinds agree."""
    kind = "gpu" if on_gpu else "cpu"
    if base.device.kind == kind:
        return None
    here = "GPUs" if on_gpu else "CPU ranks (no CUDA device)"
    return (f"--base-profile {base_name} describes {base.device.kind.upper()}s ({base.device.name}), but this host "
            f"profiles {here}: its links and efficiencies are not this host's; give a "
            f"{'GPU profile, e.g. dgx-h100-80g' if on_gpu else 'CPU profile, e.g. cpu-local'}, or drop --base-profile")


def cpu_memory_problem(model, nproc_per_node: int, dtype: str, memory_per_rank: str | None) -> str | None:
    """The line refusing a CPU profile of `model` whose ranks cannot hold what the profiler builds on each
    (`timed_model.cpu_rank_memory_bytes`, a lower bound): more than --memory-per-rank, or `nproc_per_node` times it
    more than this host has available (MemAvailable, less under a cgroup limit); None when it fits or the host's
    memory cannot be read."""
    from autoconf.execute import host_memory
    from autoconf.profile.hardware import parse_bytes
    from autoconf.profile.timed_model import cpu_rank_memory_bytes

    GiB = host_memory.GiB
    need = cpu_rank_memory_bytes(model, dtype)
    what = (f"profiling {model.name} on CPU needs at least {need / GiB:.1f} GiB per rank (the executor's model with "
            f"its embedding and head: weights, gradients and AdamW state in {dtype})")
    smaller = "profile a smaller model" + (", e.g. --model tiny-llama" if model.name != "tiny-llama" else "")
    if memory_per_rank and need > parse_bytes(memory_per_rank):
        return f"{what}, more than --memory-per-rank {memory_per_rank}; {smaller}"
    available = host_memory.available_memory_bytes()
    if available is None or nproc_per_node * need <= available:
        return None
    fewer = int(available // need)
    return (f"{what}, {nproc_per_node * need / GiB:.1f} GiB for {nproc_per_node} ranks, but this host has "
            f"{available / GiB:.1f} GiB available; {smaller}"
            + (f", or fewer ranks (--nproc-per-node {fewer})" if fewer >= 1 else ""))


def build_command(out: Path, nproc_per_node: int, nnodes: int, node_rank: int, master_addr: str, master_port: int,
                  model: str | None, quick: bool, base_profile: str | None = None,
                  memory_per_rank: str | None = None, dtype: str | None = None, rdzv: str = "static",
                  max_tp: int | None = None, seq_lens: tuple[int, ...] = ()) -> list[str]:
    # autoconf.execute.elastic is torchrun (its arguments unchanged) ending an interrupt or a failure in a summary.
    cmd = [sys.executable, "-m", "autoconf.execute.elastic", "--nproc-per-node", str(nproc_per_node),
           "--nnodes", str(nnodes)]
    if rdzv == "c10d":
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master_addr}:{master_port}",
                "--rdzv-id", "autoconf-profile"]
    else:
        cmd += ["--node-rank", str(node_rank), "--master-addr", master_addr, "--master-port", str(master_port)]
    cmd += ["-m", "autoconf.profile.run", "--out", str(out)]
    if model:
        cmd += ["--model", model]
    if quick:
        cmd.append("--quick")
    if base_profile:
        cmd += ["--base-profile", base_profile]
    if memory_per_rank:
        cmd += ["--memory-per-rank", memory_per_rank]
    if dtype:
        cmd += ["--dtype", dtype]
    if max_tp:
        cmd += ["--max-tp", str(max_tp)]
    for seq in seq_lens:
        cmd += ["--seq-len", str(seq)]
    return cmd


def profile(out, nproc_per_node: int | None = None, nnodes: int = 1, node_rank: int = 0,
            master_addr: str = "127.0.0.1", master_port: int | None = None, model: str | None = None,
            quick: bool = False,
            force: bool = False, base_profile: str | None = None, memory_per_rank: str | None = None,
            dtype: str | None = None, rdzv: str = "static", max_tp: int | None = None,
            seq_lens: tuple[int, ...] = ()) -> int:
    """Profiles this cluster into `out`; returns torchrun's exit status (0 on success).

    `nproc_per_node` defaults to the number of GPUs, or on a CPU-only host 2 ranks with `quick` and 4 without.
    `rdzv` "static" (the default) passes --node-rank/--master-addr/--master-port to torchrun, so node k of the
    profile is the node started with node_rank k; "c10d" uses a c10d rendezvous at master_addr:master_port instead
    (nodes may join in any order). `master_port` defaults to a free port when this one node is the whole cluster
    and to 29500 (torchrun's default) on more nodes, which must agree on it. `max_tp` times the blocks at TP widths
    up to it (default: the ranks per node), e.g. 8 on a single GPU whose profile will plan 8-GPU nodes. `seq_lens`
    are sequence lengths to plan for: the attention block is timed at each, so its seq^2 term is measured there
    rather than extrapolated.
    """
    path = check_output(out, force)
    if master_port is None:
        local = nnodes == 1 and master_addr in LOOPBACK
        master_port = free_port() if local else MULTI_NODE_PORT
    gpus = _cuda_devices()
    if nproc_per_node is None:
        nproc_per_node = gpus or (2 if quick else 4)
    for name, value, least in (("--nproc-per-node", nproc_per_node, 1), ("--nnodes", nnodes, 1),
                               ("--node-rank", node_rank, 0), ("--master-port", master_port, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(f"{name} must be an integer >= {least} (got {value!r})")
    if max_tp is not None and (isinstance(max_tp, bool) or not isinstance(max_tp, int) or max_tp < 1):
        raise UserError(f"--max-tp must be an integer >= 1 (got {max_tp!r}), e.g. 8 to time the blocks as an 8-GPU "
                        f"node would shard them")
    from autoconf.spec.plan import MAX_SEQ_LEN

    for seq in seq_lens:
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ_LEN:
            raise UserError(f"--seq-len must be an integer from 1 to {MAX_SEQ_LEN} (got {seq!r}), e.g. 8192")
    if gpus and nproc_per_node > gpus:
        raise UserError(f"--nproc-per-node {nproc_per_node} exceeds the {gpus} GPU(s) on this node")
    if not gpus and nproc_per_node > cpu_rank_limit():
        raise UserError(f"--nproc-per-node {nproc_per_node}: a CPU rank wants a core of its own (this host has "
                        f"{os.cpu_count()} cores; up to 4 ranks, the full grid's default, may time-share fewer); "
                        f"give at most {cpu_rank_limit()}")
    if node_rank >= nnodes:
        raise UserError(f"--node-rank {node_rank} must be below --nnodes {nnodes} (nodes count from 0)")
    if master_port > 65535:
        raise UserError(f"--master-port {master_port} is not a TCP port (1..65535)")
    check_master_addr(master_addr)
    if nnodes > 1 and master_addr in LOOPBACK:
        raise UserError(f"--nnodes {nnodes} cannot meet at {master_addr} (a loopback address reaches this host only): "
                        f"pass --master-addr with the address of the node that starts as --node-rank 0, reachable "
                        f"from every node, or profile one node with --nnodes 1")
    if rdzv not in RDZV:
        raise UserError(f"rendezvous {rdzv!r} is not one of {', '.join(RDZV)}")
    if model:
        from autoconf.profile.timed_model import timed_model
        from autoconf.spec.presets import load_model

        spec = load_model(model)
        timed_model(spec)  # refuses what the executor's blocks cannot build
        if not gpus:
            problem = cpu_memory_problem(spec, nproc_per_node, dtype or "fp32", memory_per_rank)
            if problem:
                raise UserError(problem)
    if base_profile:
        from autoconf.spec.cluster import load_cluster

        problem = base_profile_problem(load_cluster(base_profile), base_profile, bool(gpus))
        if problem:
            raise UserError(problem)
    if memory_per_rank is not None and not str(memory_per_rank).strip():
        raise UserError("--memory-per-rank is empty; give a size such as 4GiB, or leave the option out for the "
                        "host's memory shared by the ranks")
    if memory_per_rank:
        from autoconf.profile.hardware import parse_bytes, physical_memory_bytes
        from autoconf.spec.profile_checks import MIN_DEVICE_BYTES

        per_rank = parse_bytes(memory_per_rank)
        if per_rank < MIN_DEVICE_BYTES:
            raise UserError(f"--memory-per-rank {memory_per_rank} is less than the {MIN_DEVICE_BYTES >> 20} MiB a "
                            f"profile's device may hold; give e.g. 4GiB")
        host = physical_memory_bytes()
        if not gpus and per_rank * nproc_per_node > host:
            raise UserError(f"--memory-per-rank {memory_per_rank} for {nproc_per_node} rank(s) is "
                            f"{per_rank * nproc_per_node / 2**30:.1f} GiB, more than this host's "
                            f"{host / 2**30:.1f} GiB; give at most {host // nproc_per_node / 2**30:.1f}GiB")
    if dtype and dtype not in PROFILED_DTYPES:
        raise UserError(f"--dtype {dtype!r}: the profiler times one of {', '.join(PROFILED_DTYPES)}")
    busy = busy_port_problem(master_port) if nnodes == 1 and master_addr in LOOPBACK else None
    if busy:
        raise UserError(busy)
    cmd = build_command(path, nproc_per_node, nnodes, node_rank, master_addr, master_port, model, quick,
                        base_profile, memory_per_rank, dtype, rdzv, max_tp, tuple(seq_lens))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    repo_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
    from rich.console import Console

    from autoconf.report.progress import Follow

    with Follow(Console(markup=False), f"profiling {nproc_per_node} rank(s) per node into {path}") as follow:
        return run_supervised(cmd, env, follow=follow if follow.live else None)
