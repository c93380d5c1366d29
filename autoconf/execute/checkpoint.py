"""Checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Layout: DIR/step-XXXXXXXX/ holds the DCP shards of {"model", "optim"} (from `get_state_dict`, keyed by parameter
names that do not depend on the layout, so another layout can load them), `rng/rank-NNNNN.pt` (each rank's random
generator states, for dropout; restored only under the same layout, where rank r's stream means the same thing) and
`complete.json` (step, data position, seed, data source, config, partition, mesh, world size). Every rank writes into
DIR/.tmp-step-XXXXXXXX/; after a barrier, global rank 0 writes the marker and renames the directory, so only a
directory with the marker counts as a checkpoint. Across nodes DIR must be one shared file system.

The marker records the size and SHA-256 of every file of the checkpoint (the ranks hash a share each). Before
loading, the ranks verify the newest complete checkpoint the same way and agree (all-reduce) whether it is intact; a
truncated, zeroed or missing shard, metadata or RNG file makes them fall back to the next older checkpoint that
verifies, saying so (`find_verified`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from autoconf.execute import faults
from autoconf.files import fsync_dir, write_file

MARKER = "complete.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_TMP_DIR = re.compile(r"^\.tmp-step-(\d{8,})$")
_RNG_FILE = re.compile(r"^rank-\d{5,}\.pt$")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def find_latest(root: Path, log=print) -> tuple[Path, dict] | None:
    """The newest complete checkpoint in `root` and its marker; incomplete ones are skipped with a message."""
    return next(iter(complete_checkpoints(root, log)), None)


def complete_checkpoints(root: Path, log=print) -> list[tuple[Path, dict]]:
    """Every complete checkpoint in `root` with its marker, newest first; incomplete ones are skipped with a
    message."""
    root = Path(root)
    if not root.is_dir():
        return []
    found, candidates = [], []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            candidates.append((int(match.group(1)), entry))
        elif _TMP_DIR.match(entry.name) and written_by_save(entry):
            log(f"skipping incomplete checkpoint {entry} (interrupted while writing)")
    for _, path in sorted(candidates, reverse=True):
        marker = path / MARKER
        if marker.is_file():
            try:
                meta = json.loads(marker.read_text())
                if not isinstance(meta, dict) or not isinstance(meta.get("data_position"), int):
                    raise ValueError("not a checkpoint marker")
            except (OSError, ValueError) as err:
                log(f"skipping checkpoint {path}: unreadable {MARKER} ({err})")
                continue
            found.append((path, meta))
            continue
        log(f"skipping incomplete checkpoint {path} (no {MARKER})")
    return found


def foreign_entries(root: Path) -> list[tuple[int, Path]]:
    """(step, entry) of the entries of `root` named like a checkpoint (step-NNNNNNNN) or its unfinished save
    (.tmp-step-NNNNNNNN) that autoconf did not write: a file; a checkpoint folder without autoconf's marker (a
    checkpoint gets its name only once its marker is written: `save` writes under .tmp-step-*, then renames); a
    save folder holding anything a save does not write (`written_by_save`). A save of that step must neither replace
    nor remove them."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for entry in root.iterdir():
        named, unfinished = _STEP_DIR.match(entry.name), _TMP_DIR.match(entry.name)
        if named and (not entry.is_dir() or not (entry / MARKER).exists()):
            out.append((int(named.group(1)), entry))
        elif unfinished and not written_by_save(entry):
            out.append((int(unfinished.group(1)), entry))
    return sorted(out)


def written_by_save(path: Path) -> bool:
    """Whether folder `path` holds only what `save` writes before its commit: DCP's shards (*.distcp) and
    .metadata, the ranks' rng/rank-NNNNN.pt and the marker (an empty folder too: a save stopped at once)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    for entry in path.iterdir():
        if entry.name == "rng" and entry.is_dir() and not entry.is_symlink():
            if not all(_RNG_FILE.match(f.name) and f.is_file() for f in entry.iterdir()):
                return False
        elif not (entry.is_file() and (entry.name in (".metadata", MARKER) or entry.name.endswith(".distcp"))):
            return False
    return True


def model_mismatch(path: Path, meta: dict, model) -> str | None:
    """Why checkpoint `path` (its marker `meta`) cannot be resumed by `model` (a ModelSpec): it holds another model,
    whose tensors would not fit; None when it can (another layout is fine: DCP reshards)."""
    saved = meta.get("model")
    if not isinstance(saved, dict):
        return None
    mine = model.to_dict()
    derived = ("parameters", "active_parameters")  # written since the MoE spec; older checkpoints lack them
    diff = sorted(k for k in set(saved) | set(mine)
                  if k not in ("name", "dropout", *derived) and saved.get(k) != mine.get(k))
    if not diff:
        return None
    return (f"checkpoint {path} holds model {saved.get('name')!r}, which differs from this plan's {model.name!r} in "
            f"{', '.join(diff)}; use another --checkpoint-dir")


def _files(path: Path) -> list[str]:
    """The checkpoint's files (relative paths, sorted), the marker left out."""
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file() and p.name != MARKER)


def _digest(file: Path) -> dict:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": file.stat().st_size, "sha256": h.hexdigest()}


def checksums(path: Path) -> dict:
    """Collective: {relative file: {"size", "sha256"}} of every file of the checkpoint in `path`, each rank
    hashing every world-size-th file."""
    names = _files(path)
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {name: _digest(Path(path) / name) for name in names[rank::world]}
    shares: list = [None] * world
    dist.all_gather_object(shares, mine)
    return {name: share[name] for share in shares for name in share}


def verify_problem(path: Path, meta: dict, rank: int = 0, world: int = 1) -> str | None:
    """What is wrong with this rank's share of the files recorded in the marker (None: intact, or a checkpoint
    written before checksums were recorded)."""
    recorded = meta.get("files")
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        return f"{MARKER} has no file list"
    missing = sorted(set(recorded) - set(_files(path)))
    if missing:
        return f"{missing[0]} is missing"
    for name in sorted(recorded)[rank::world]:
        want, file = recorded[name], Path(path) / name
        try:
            size = file.stat().st_size
            if size != want.get("size"):
                return f"{name} has {size} bytes, {want.get('size')} were written"
            if _digest(file)["sha256"] != want.get("sha256"):
                return f"{name} does not match its checksum"
        except (OSError, AttributeError) as err:
            return f"{name} cannot be read ({err})"
    return None


def find_verified(root: Path, log=print) -> tuple[Path, dict] | None:
    """Collective: the newest complete checkpoint whose files every rank verified, or None. A corrupt newer one
    is skipped with a message naming what is wrong, and a run left with none says it starts again."""
    rank, world = dist.get_rank(), dist.get_world_size()
    skipped = 0
    for path, meta in complete_checkpoints(root, log):
        problem = verify_problem(path, meta, rank, world)
        problems: list = [None] * world
        dist.all_gather_object(problems, problem)
        bad = [p for p in problems if p]
        if not bad:
            return path, meta
        skipped += 1
        log(f"skipping corrupt checkpoint {path}: {bad[0]}")
    if skipped:
        log(f"no intact checkpoint left in {root}: training starts again from step 1")
    return None


def _states(models: list, optimizers: list) -> list[tuple[dict, dict]]:
    """(model, optimizer) state dicts of every chunk, keyed by layout-independent names (optimizer state flattened
    to "state.<param>.<key>" keys), so the union over chunks and ranks is one namespace."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(flatten_optimizer_state_dict=True)
    return [get_state_dict(m, o, options=options) for m, o in zip(models, optimizers)]


def _merged(states: list[tuple[dict, dict]]) -> dict:
    model, optim = {}, {}
    for m, o in states:
        model.update(m)
        optim.update(o)
    return {"model": model, "optim": optim}


def save(root: Path, step: int, models: list, optimizers: list, meta: dict) -> Path:
    """Collective: every rank calls it. Returns the committed directory."""
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    tmp, final = root / f".tmp-step-{step:08d}", step_dir(root, step)
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # (an earlier save of this step, interrupted; launch refuses a folder autoconf did not write)
            if not written_by_save(tmp):
                raise RuntimeError(f"{tmp} holds what autoconf's save does not write; move it away")
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    dcp.save(_merged(_states(models, optimizers)), checkpoint_id=str(tmp))
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank-{dist.get_rank():05d}.pt")
    faults.in_checkpoint(step, dist.get_rank())
    dist.barrier()
    files = checksums(tmp)
    if dist.get_rank() == 0:
        write_file(tmp / MARKER, json.dumps({**meta, "step": step, "saved_at": time.time(), "files": files},
                                            indent=2) + "\n")
        if (final / MARKER).exists():  # one that failed verification (a good newer one would have been resumed)
            shutil.rmtree(final)  # (a folder without the marker is not autoconf's: the rename below fails on it)
        os.replace(tmp, final)
        fsync_dir(root)
        remove_interrupted(root)
    dist.barrier()
    return final


def remove_interrupted(root: Path) -> list[Path]:
    """Removes the folders of saves interrupted before their commit (`.tmp-step-*`, which a resume skips), once a
    later save has committed: the run holds the folder's lock, so none is being written. Only those holding what a
    save writes (`written_by_save`): a folder of that name holding anything else is left. Returns those removed."""
    stale = sorted(entry for entry in Path(root).iterdir() if _TMP_DIR.match(entry.name) and written_by_save(entry))
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True)
    return stale


def rng_state() -> dict:
    """This process's random generator states (CPU, and the current CUDA device's when there is one)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(path: Path, rank: int) -> bool:
    """Restores this rank's generator states saved in checkpoint `path`; False when the checkpoint has none."""
    file = Path(path) / "rng" / f"rank-{rank:05d}.pt"
    if not file.is_file():
        return False
    state = torch.load(file, weights_only=True)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return True


def _copies_request(merged: dict, saved: set[str]) -> tuple[dict, dict]:
    """What to ask the checkpoint for: `merged`, except that the state of a copy of the embedding on a pipeline's
    last stage (its own tied `output.weight`, the MTP modules' `mtp_embed.*`: model.py `embedding_source`) that a
    checkpoint without that copy lacks (written where one parameter served both) is read from the embedding's.
    Returns (request, {(section, key): the key read instead})."""
    from autoconf.execute.model import embedding_source

    request = {section: dict(entries) for section, entries in merged.items()}
    aliases = {}
    for section, entries in merged.items():
        for key in entries:
            alias = embedding_source(key, tied=True)
            if f"{section}.{key}" in saved or alias == key or f"{section}.{alias}" not in saved:
                continue
            aliases[section, key] = alias
            request[section].setdefault(alias, entries[key])
            del request[section][key]
    return request, aliases


def load(path: Path, models: list, optimizers: list) -> None:
    """Collective: loads model and optimizer state from a DCP checkpoint, resharding to this layout."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    states = _states(models, optimizers)
    merged = _merged(states)
    request, aliases = _copies_request(merged, set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata))
    dcp.load(request, checkpoint_id=str(path))
    for (section, key), alias in aliases.items():
        value, mine = request[section][alias], merged[section][key]
        if value is mine:
            continue
        if isinstance(mine, torch.Tensor):
            mine.copy_(value)
        else:
            merged[section][key] = value
    options = StateDictOptions(flatten_optimizer_state_dict=True)
    for (m, o), (msd, osd) in zip(zip(models, optimizers), states):
        set_state_dict(m, o, model_state_dict={k: merged["model"][k] for k in msd},
                       optim_state_dict={k: merged["optim"][k] for k in osd}, options=options)
