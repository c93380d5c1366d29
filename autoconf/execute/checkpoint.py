"""Checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Layout: DIR/step-XXXXXXXX/ holds the DCP shards of {"model", "optim"} (from `get_state_dict`, keyed by parameter
names that do not depend on the layout, so another layout can load them) and `complete.json` (step, data position,
seed, data source, config). Every rank writes into DIR/.tmp-step-XXXXXXXX/; after a barrier, global rank 0 writes the
marker and renames the directory, so only a directory with the marker counts as a checkpoint. Across nodes DIR must
be one shared file system.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch.distributed as dist

MARKER = "complete.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def find_latest(root: Path, log=print) -> tuple[Path, dict] | None:
    """The newest complete checkpoint in `root` and its marker; incomplete ones are skipped with a message."""
    root = Path(root)
    if not root.is_dir():
        return None
    candidates = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            candidates.append((int(match.group(1)), entry))
        elif entry.name.startswith(".tmp-step-"):
            log(f"skipping incomplete checkpoint {entry} (interrupted while writing)")
    for _, path in sorted(candidates, reverse=True):
        marker = path / MARKER
        if marker.is_file():
            try:
                return path, json.loads(marker.read_text())
            except (OSError, ValueError) as err:
                log(f"skipping checkpoint {path}: unreadable {MARKER} ({err})")
                continue
        log(f"skipping incomplete checkpoint {path} (no {MARKER})")
    return None


def _state(models, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(models, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save(root: Path, step: int, models: list, optimizer, meta: dict) -> Path:
    """Collective: every rank calls it. Returns the committed directory."""
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    tmp, final = root / f".tmp-step-{step:08d}", step_dir(root, step)
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    dcp.save(_state(models, optimizer), checkpoint_id=str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        (tmp / MARKER).write_text(json.dumps({**meta, "step": step, "saved_at": time.time()}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()
    return final


def load(path: Path, models: list, optimizer) -> None:
    """Collective: loads model and optimizer state from a DCP checkpoint, resharding to this layout."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(models, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(models, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
