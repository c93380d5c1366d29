"""Whether a run on this host's CPU ranks fits in its memory, checked before any rank starts.

A CPU run's "device" memory is the host's: every rank of the node shares it with whatever else runs there, so the
plan's own fit check (against the per-rank capacity written in the profile when it was measured) is not enough. The
need is the cost model's: each rank's predicted peak (the plan's prediction for a CPU plan; for a GPU plan
rehearsed on CPU, the same layout estimated again on the CPU profile in fp32, as the executor runs it there). The
supply is what the kernel says new processes can still take (MemAvailable), less under a cgroup's limit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

GiB = 1024**3


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _inactive_file(cgroup: Path) -> int:
    """Page cache the kernel drops before it runs out (memory.stat's inactive_file): memory.current counts it."""
    try:
        for line in (cgroup / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "inactive_file" and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _own_cgroups(root: Path) -> list[Path]:
    """This process's cgroup (v2: the "0::" line of /proc/self/cgroup) and each one above it, up to the root."""
    base = root / "sys/fs/cgroup"
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return [base]
    relative = next((line[3:].strip("/") for line in lines if line.startswith("0::")), "")
    parts = [p for p in relative.split("/") if p and p != ".."]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def available_memory_bytes(root: Path = Path("/")) -> int | None:
    """Bytes new processes can still take on this host: /proc/meminfo's MemAvailable, or less when this process's
    cgroup (v2) or one above it has a memory limit (memory.max less what is in use, memory.current without the
    page cache it may drop); None where neither can be read. `root` is for tests."""
    available = None
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for cgroup in _own_cgroups(root):
        limit, used = _read_int(cgroup / "memory.max"), _read_int(cgroup / "memory.current")
        if limit is not None and used is not None:
            left = max(0, limit - max(0, used - _inactive_file(cgroup)))
            available = left if available is None else min(available, left)
    return available


def cpu_run_memory_bytes(plan, nproc_per_node: int) -> float | None:
    """What the ranks of one node hold at their peak when the plan runs on CPU, `nproc_per_node` to a node: each
    pipeline rank's predicted total for each of its ranks on the node, the most of any node (the nodes are alike).
    None when the layout cannot be estimated on CPU (the executor then refuses it anyway)."""
    from autoconf.errors import UserError
    from autoconf.execute.launch import plan_wants_gpus

    stages = plan.prediction.get("memory_per_stage")
    if plan_wants_gpus(plan):  # rehearsed: estimated again as the CPU ranks run it
        from autoconf.cost.estimate import estimate
        from autoconf.spec.cluster import load_cluster
        from autoconf.spec.frameworks import plan_execution

        c = plan.config
        try:
            cpu = load_cluster("cpu-local", 1, c.world_size)
            # (offloaded state stays in the same memory on CPU ranks, and is counted there without the offload)
            on_cpu = dataclasses.replace(c, dtype="fp32", offload_activations=False, offload_optimizer=False)
            stages = estimate(plan.model, cpu, on_cpu, partition=plan.partition,
                              execution=plan_execution(plan.prediction), detail=False).prediction["memory_per_stage"]
        except (UserError, ValueError, KeyError):
            return None
    if not stages:
        return None
    grid = plan.grid()
    per_node: dict[int, float] = {}
    for pp_rank, stage in enumerate(stages):
        for device in grid.pipeline_rank(pp_rank).flatten():
            node = int(device) // nproc_per_node
            per_node[node] = per_node.get(node, 0.0) + stage["total"]
    return max(per_node.values())


def host_memory_problem(plan, nproc_per_node: int, available: int | None, allowed: bool = False) -> str | None:
    """The line refusing a CPU run whose ranks need more than `available` bytes (`allowed`: the note of a run
    launched anyway); None when it fits or either side is unknown."""
    need = cpu_run_memory_bytes(plan, nproc_per_node)
    if need is None or available is None or need <= available:
        return None
    from autoconf.execute.launch import plan_wants_gpus

    rehearsal = " (the layout estimated in fp32 on CPU)" if plan_wants_gpus(plan) else ""
    shortfall = (f"the plan's {nproc_per_node} ranks on this host need about {need / GiB:.1f} GiB of memory at "
                 f"their peak{rehearsal}, but it has {available / GiB:.1f} GiB available")
    if allowed:
        return f"--allow-unfit: launching anyway, though {shortfall}: it may swap or be killed"
    return (f"{shortfall}; free memory, plan a smaller model or fewer ranks, or pass --allow-unfit to launch it "
            f"anyway")
