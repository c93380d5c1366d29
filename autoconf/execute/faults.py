"""Test-only fault injection for the executor, driven by environment variables (all unset in normal runs).

    AUTOCONF_FAULT_KILL_AT_STEP=K        the chosen rank SIGKILLs itself as it starts step K (1-based, as in metrics)
    AUTOCONF_FAULT_KILL_IN_CHECKPOINT=K  ... or while saving checkpoint K, after its shards are written and before
                                         the checkpoint is committed (leaves an incomplete .tmp-step directory)
    AUTOCONF_FAULT_HANG_AT_STEP=K        ... or stops working at step K (a hung peer: alive, never answers)
    AUTOCONF_FAULT_RANK=r                the global rank that fails (default 0)
    AUTOCONF_FAULT_START_TOGETHER=1      the ranks meet in torchrun's store (waiting up to START_TOGETHER_S) before
                                         their process group is made, so that a test's short collective timeout
                                         is not spent on a loaded machine's uneven start-up (imports)
    AUTOCONF_FAULT_KILL_AGENT=1          first SIGKILL the parent (the torchrun agent), as when a node is lost
    AUTOCONF_FAULT_MARKER=PATH           fire each kind once: only while PATH.<kind> does not exist (it is created
                                         just before);
                                         without it, fire only in torchrun's first attempt (TORCHELASTIC_RESTART_COUNT 0)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

START_TOGETHER_S = 600.0


def _armed(kind: str, step: int, rank: int) -> bool:
    value = os.environ.get(f"AUTOCONF_FAULT_{kind}")
    if not value or int(value) != step or int(os.environ.get("AUTOCONF_FAULT_RANK", "0")) != rank:
        return False
    marker = os.environ.get("AUTOCONF_FAULT_MARKER")
    if marker:
        marker = f"{marker}.{kind.lower()}"  # one per kind of fault, so that several can fire in one run
        if Path(marker).exists():
            return False
        Path(marker).write_text(f"{kind} {step} rank {rank}\n")
        return True
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def _fire(sig: int, what: str, rank: int) -> None:
    print(f"autoconf fault injection: rank {rank} {what}", file=sys.stderr, flush=True)
    if os.environ.get("AUTOCONF_FAULT_KILL_AGENT") == "1":
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), sig)


def start_together() -> None:
    """With AUTOCONF_FAULT_START_TOGETHER=1 under torchrun: returns once every rank of this attempt has called it."""
    if os.environ.get("AUTOCONF_FAULT_START_TOGETHER") != "1" or "MASTER_ADDR" not in os.environ:
        return
    from autoconf.execute.mesh import torchrun_store

    world = int(os.environ["WORLD_SIZE"])
    store = torchrun_store(timedelta(seconds=START_TOGETHER_S))
    key = f"autoconf/start_together/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if store.add(key, 1) == world:
        store.set(f"{key}/all", "1")
    store.wait([f"{key}/all"])


def at_step(step: int, rank: int) -> None:
    """Called as a rank starts step `step` (1-based)."""
    if _armed("KILL_AT_STEP", step, rank):
        _fire(signal.SIGKILL, f"killed at step {step}", rank)
    if _armed("HANG_AT_STEP", step, rank):
        print(f"autoconf fault injection: rank {rank} hangs at step {step}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


def in_checkpoint(step: int, rank: int) -> None:
    """Called after a rank wrote its shards of checkpoint `step`, before the commit."""
    if _armed("KILL_IN_CHECKPOINT", step, rank):
        _fire(signal.SIGKILL, f"killed while writing checkpoint {step}", rank)
