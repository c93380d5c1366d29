"""autoconf's own jobs on a testbed that is up: the profiler, and a `validate` runner that launches plans.

Both run one torchrun per emulated node through `exec_nodes` (real static rendezvous across the namespaces), with
one compute thread per rank and this source tree on PYTHONPATH.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from autoconf.spec.plan import load_plan, node_blocks
from autoconf.testbed.runner import exec_nodes
from autoconf.testbed.system import state_spec

ROOT = Path(__file__).resolve().parents[2]


def job_env() -> dict:
    """PYTHONPATH with this source tree, one OpenMP thread per rank."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


def profile_testbed(state: dict, out: Path, model: str, log_path: Path, master_port: int,
                    timeout_s: float = 900.0, quick: bool = True) -> int:
    """`autoconf.profile.run [--quick] --model MODEL` on every node; returns the worst exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "{nnodes}", "--node-rank", "{node_rank}",
           "--master-addr", "{master_addr}", "--master-port", "{master_port}", "--nproc-per-node",
           "{nproc_per_node}", "-m", "autoconf.profile.run", "--out", str(out), "--model", model]
    if quick:
        cmd.append("--quick")
    with open(log_path, "w") as log:
        return exec_nodes(state, cmd, master_port, timeout_s, out=log, extra_env=job_env())


def launch_runner(state: dict, timeout_s: float, first_port: int = 29600):
    """A validate runner `(plan, metrics, log, steps) -> exit code`: `autoconf launch` on every testbed node.

    torchrun's static rendezvous puts its TCPStore on torchrun node rank 0, i.e. on the physical node hosting grid
    block 0 of the placement, so --master-addr is that node's address (not physical node 0's) when the placement
    reorders nodes. Every run gets a fresh port."""
    spec = state_spec(state)
    ips = spec.ips()
    port = [first_port]

    def run(plan_path: Path, metrics_path: Path, log_path: Path, steps: int) -> int:
        plan = load_plan(plan_path)
        gpus = plan.config.world_size // spec.nodes
        blocks = node_blocks(plan.device_of(), gpus) or list(range(spec.nodes))
        master = ips[blocks[0]]
        port[0] += 1
        cmd = [sys.executable, "-m", "autoconf", "launch", str(plan_path), "--steps", str(steps), "--metrics",
               str(metrics_path), "--force", "--nnodes", "{nnodes}", "--node-rank", "{node_rank}",
               "--master-addr", master, "--master-port", "{master_port}", "--collective-timeout", "180",
               "--rendezvous-timeout", "120"]
        if metrics_path.exists():
            metrics_path.unlink()
        with open(log_path, "w") as log:
            log.write(f"# grid blocks on physical nodes {blocks}; master {master}:{port[0]}\n")
            return exec_nodes(state, cmd, port[0], timeout_s, grace_s=10.0, out=log, extra_env=job_env())

    return run
