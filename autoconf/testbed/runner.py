"""`exec`: runs one command per emulated node, each in its namespace, UTS namespace and cgroup, and waits for all.

Output is streamed line by line with a `[nodeI]` prefix. When a node fails, the others get `grace_s` to finish
(torchrun on the other nodes usually notices by itself) before they are killed; on timeout or Ctrl-C every node is
killed. Killing goes through the node's cgroup (torchrun starts ranks in new sessions, so a process group is not
enough) and the namespace's pid list. With a per-rank CPU quota a small thread moves each rank process (found by the
LOCAL_RANK that torchrun puts in its environment) into its own rank cgroup as soon as it appears.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from autoconf.testbed.commands import Names, node_argv, node_env, node_values, substitute
from autoconf.testbed.system import Cgroups, kill_pids, sh, state_spec

TIMEOUT_CODE = 124


def _exit_code(code: int | None) -> int:
    if code is None:
        return TIMEOUT_CODE
    return 128 - code if code < 0 else code


def _local_rank(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"LOCAL_RANK="):
            try:
                return int(item[len(b"LOCAL_RANK="):])
            except ValueError:
                return None
    return None


class _RankMover(threading.Thread):
    """Moves rank processes from the node cgroup into node/rankK as soon as they appear."""

    def __init__(self, cg: Cgroups, nodes: list[str], ranks: list[list[str]]):
        super().__init__(daemon=True)
        self.cg, self.nodes, self.ranks = cg, nodes, ranks
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for node_rel, rank_rels in zip(self.nodes, self.ranks):
                try:
                    pids = Path(self.cg.procs(node_rel)).read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    rank = _local_rank(int(pid))
                    if rank is not None and rank < len(rank_rels):
                        try:
                            Path(self.cg.procs(rank_rels[rank])).write_text(pid)
                        except OSError:
                            pass  # exited meanwhile


def _pump(stream, prefix: str, lock: threading.Lock, out) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with lock:
            out.write(f"{prefix}{line}\n")
            out.flush()
    stream.close()


def exec_nodes(state: dict, cmd: list[str], master_port: int = 29500, timeout: float | None = None,
               grace_s: float = 15.0, out=None, extra_env: dict | None = None) -> int:
    """Runs cmd on every node; returns the worst exit code (124 when killed by the timeout, 130 on Ctrl-C)."""
    out = out or sys.stdout
    spec = state_spec(state)
    names = Names(state["name"])
    groups = state.get("cgroups")
    cg = Cgroups(Path(groups["root"]), groups["version"]) if groups else None
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()
    pumps = []
    mover = None
    if cg is not None and any(groups["ranks"]):
        mover = _RankMover(cg, groups["nodes"], groups["ranks"])
        mover.start()

    def kill_all() -> None:
        for _ in range(3):
            pids = []
            for i in range(spec.nodes):
                if cg is not None:
                    pids += cg.pids(groups["nodes"][i])
                pids += [int(p) for p in sh(["ip", "netns", "pids", names.netns(i)], check=False).stdout.split()]
            pids += [p.pid for p in procs if p.poll() is None]
            pids = sorted(set(pids) - {os.getpid()})
            if not pids:
                return
            kill_pids(pids, signal.SIGKILL)
            time.sleep(0.1)

    codes: list[int | None] = [None] * spec.nodes
    interrupted = timed_out = False
    try:
        for i in range(spec.nodes):
            values = node_values(spec, i, master_port)
            argv = node_argv(names, i, substitute(cmd, values), cg.procs(groups["nodes"][i]) if cg else None)
            env = {**os.environ, **(extra_env or {}), **node_env(values)}
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(proc)
            pump = threading.Thread(target=_pump, args=(proc.stdout, f"[node{i}] ", lock, out), daemon=True)
            pump.start()
            pumps.append(pump)
        deadline = None if timeout is None else time.monotonic() + timeout
        failed_at = None
        while True:
            for i, proc in enumerate(procs):
                if codes[i] is None and proc.poll() is not None:
                    codes[i] = _exit_code(proc.returncode)
                    if codes[i] != 0 and failed_at is None:
                        failed_at = time.monotonic()
            if all(c is not None for c in codes):
                break
            now = time.monotonic()
            if deadline is not None and now > deadline:
                timed_out = True
                with lock:
                    out.write(f"[testbed] timeout after {timeout:g} s: killing every node\n")
                break
            if failed_at is not None and now - failed_at > grace_s:
                with lock:
                    out.write(f"[testbed] a node failed {grace_s:g} s ago: killing the others\n")
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        interrupted = True
        with lock:
            out.write("[testbed] interrupted: killing every node\n")
    finally:
        kill_all()
        if mover is not None:
            mover.stop.set()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for pump in pumps:
            pump.join(timeout=2)
    for i, proc in enumerate(procs):
        if codes[i] is None:
            codes[i] = TIMEOUT_CODE if timed_out else 130 if interrupted else _exit_code(proc.returncode)
    worst = max(codes, default=0)
    if interrupted:
        worst = max(worst, 130)
    if any(codes):
        with lock:
            out.write("[testbed] exit codes: " + ", ".join(f"node{i}={c}" for i, c in enumerate(codes)) + "\n")
    return worst
