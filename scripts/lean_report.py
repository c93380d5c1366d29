"""The executor-against-torchtitan step of scripts/gpu_check.sh: its inputs and its markdown table.

    python scripts/lean_report.py setup MODEL LAYERS W TAG  # W/TAG-model.json (MODEL with LAYERS blocks, no dropout)
                                                           # and W/TAG-cluster.json (this device's data-sheet profile)
    python scripts/lean_report.py report W TAG...          # a markdown section per TAG for docs/gpu.md from
                                                           # W/TAG-plan-{autoconf,torchtitan}.json (the estimates),
                                                           # W/TAG-executor.jsonl and W/TAG-torchtitan.json (runs)

Tokens/s is the median over the steps after the first few (the executor's summary; torchtitan_bench.py's median);
peak memory is the allocator's maximum allocated and reserved bytes on the GPU.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

GIB = 2 ** 30


def setup(model: str, layers: int, work: Path, tag: str) -> None:
    import torch

    from autoconf.profile.hardware import base_profile_for
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.presets import load_model

    spec = load_model(model)
    spec = dataclasses.replace(spec, name=f"{spec.name}-{layers}l", num_layers=layers, dropout=0.0)
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{tag}-model.json").write_text(json.dumps(spec.to_dict(), indent=1))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    cluster = load_cluster(base_profile_for(name) or "cpu-local", 1, 1)
    (work / f"{tag}-cluster.json").write_text(json.dumps(cluster.to_dict(), indent=2))


def _gib(value) -> str:
    return f"{value / GIB:.2f}" if isinstance(value, (int, float)) else "-"


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _executor_run(path: Path, tokens_per_step: int) -> dict:
    """tokens/s, peak allocated and reserved bytes and the last loss of an executor metrics file ({} if absent)."""
    if not path.exists():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    summary = next((r["summary"] for r in lines if "summary" in r), {})
    steps = [r for r in lines if "step" in r]
    measured = summary.get("measured_iteration_time_s")
    return {"tokens_per_s": tokens_per_step / measured if measured else None,
            "allocated": steps[-1].get("peak_memory_bytes") if steps else None,
            "reserved": summary.get("measured_peak_reserved_bytes"), "loss": steps[-1].get("loss") if steps else None}


def _torchtitan_run(path: Path) -> dict:
    tt = _read(path)
    return tt and {"tokens_per_s": tt.get("tokens_per_s"), "allocated": tt.get("peak_allocated_bytes"),
                   "reserved": tt.get("peak_reserved_bytes"), "loss": (tt.get("losses") or [None])[-1],
                   "trained": tt.get("trained"), "release": tt.get("release", "0.3")}


def _error(measured, predicted) -> str:
    return f"{(predicted / measured - 1) * 100:+.1f}%" if measured and predicted else "-"


def section(work: Path, tag: str) -> str:
    """One markdown section: for the executor and (where it ran) torchtitan, the estimate's tokens/s and peak memory
    (the autoconf and torchtitan presets) beside the measured ones."""
    plans = {fw: _read(work / f"{tag}-plan-{fw}.json") for fw in ("autoconf", "torchtitan")}
    config = plans["autoconf"].get("config", {})
    tokens = config.get("global_batch_size", 0) * config.get("seq_len", 0)
    runs = {"autoconf": _executor_run(work / f"{tag}-executor.jsonl", tokens),
            "torchtitan": _torchtitan_run(work / f"{tag}-torchtitan.json")}
    shape = (f"{plans['autoconf'].get('model', {}).get('name', '?')}, seq {config.get('seq_len', '?')}, local batch "
             f"{config.get('micro_batch_size', '?')}, recompute {config.get('recompute', '?')}, compile "
             f"{config.get('compile', '?')}")
    text = [f"### {tag}: {shape}", "",
            "| run | tokens/s predicted | measured | error | peak GiB predicted | allocated | reserved | error "
            "| last loss |", "|---|---|---|---|---|---|---|---|---|"]
    for fw in ("autoconf", "torchtitan"):
        run, pred = runs[fw], plans[fw].get("prediction", {})
        if not run and fw == "torchtitan":
            continue
        name = "autoconf executor" if fw == "autoconf" else f"torchtitan {run.get('release')}"
        label = name + ("" if run.get("trained", True) else " (forward only)")
        tps, alloc, loss = run.get("tokens_per_s"), run.get("allocated"), run.get("loss")
        text.append(f"| {label} | {pred.get('tokens_per_s', 0):,.0f} | {f'{tps:,.0f}' if tps else '-'} | "
                    f"{_error(tps, pred.get('tokens_per_s'))} | {_gib(pred.get('peak_memory_bytes'))} | "
                    f"{_gib(alloc)} | {_gib(run.get('reserved'))} | {_error(alloc, pred.get('peak_memory_bytes'))} | "
                    f"{f'{loss:.4f}' if isinstance(loss, float) else '-'} |")
    return "\n".join(text) + "\n"


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "setup":
        setup(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) >= 4 and sys.argv[1] == "report":
        sys.stdout.write("\n".join(section(Path(sys.argv[2]), tag) for tag in sys.argv[3:]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
