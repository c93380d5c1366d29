"""The executor-against-torchtitan step of scripts/gpu_check.sh: its inputs and its markdown table.

    python scripts/lean_report.py setup MODEL LAYERS OUT   # OUT/lean-model.json (MODEL with LAYERS blocks, no
                                                          # dropout) and OUT/lean-cluster.json (this device's profile)
    python scripts/lean_report.py report OUT              # a markdown section for docs/gpu.md from OUT/lean-plan.json,
                                                          # OUT/lean-executor.jsonl and OUT/lean-torchtitan.json

Tokens/s is the median over the steps after the first few (the executor's summary; torchtitan_bench.py's median);
peak memory is the allocator's maximum allocated and reserved bytes on the GPU.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

GIB = 2 ** 30


def setup(model: str, layers: int, out: Path) -> None:
    import torch

    from autoconf.profile.hardware import base_profile_for
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.presets import load_model

    spec = load_model(model)
    spec = dataclasses.replace(spec, name=f"{spec.name}-{layers}l", num_layers=layers, dropout=0.0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lean-model.json").write_text(json.dumps(spec.to_dict(), indent=1))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    cluster = load_cluster(base_profile_for(name) or "cpu-local", 1, 1)
    (out / "lean-cluster.json").write_text(json.dumps(cluster.to_dict(), indent=2))


def _gib(value) -> str:
    return f"{value / GIB:.2f}" if isinstance(value, (int, float)) else "-"


def report(out: Path) -> str:
    rows = []
    plan_path, metrics_path, tt_path = out / "lean-plan.json", out / "lean-executor.jsonl", out / "lean-torchtitan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    config = plan.get("config", {})
    shape = (f"{plan.get('model', {}).get('name', '?')}, seq {config.get('seq_len', '?')}, local batch "
             f"{config.get('micro_batch_size', '?')}, recompute {config.get('recompute', '?')}, compile "
             f"{config.get('compile', '?')}")
    if metrics_path.exists():
        lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        summary = next((r["summary"] for r in lines if "summary" in r), {})
        steps = [r for r in lines if "step" in r]
        measured = summary.get("measured_iteration_time_s")
        tokens = config.get("global_batch_size", 0) * config.get("seq_len", 0)
        rows.append(("autoconf executor", tokens / measured if measured else None,
                     steps[-1].get("peak_memory_bytes") if steps else None, summary.get("measured_peak_reserved_bytes"),
                     steps[-1].get("loss") if steps else None))
    else:
        rows.append(("autoconf executor", None, None, None, None))
    if tt_path.exists():
        tt = json.loads(tt_path.read_text())
        rows.append((f"torchtitan ({tt.get('flavor')} shape, {tt.get('layers')} layers"
                     f"{'' if tt.get('trained') else ', forward only'})", tt.get("tokens_per_s"),
                     tt.get("peak_allocated_bytes"), tt.get("peak_reserved_bytes"),
                     (tt.get("losses") or [None])[-1]))
    else:
        rows.append(("torchtitan", None, None, None, None))
    pred = plan.get("prediction", {})
    text = [f"### Executor vs torchtitan on one GPU: {shape}", "",
            f"Predicted by the estimate: {pred.get('tokens_per_s', 0):,.0f} tokens/s, "
            f"{_gib(pred.get('peak_memory_bytes'))} GiB peak.", "",
            "| run | tokens/s | peak allocated GiB | peak reserved GiB | last loss |", "|---|---|---|---|---|"]
    for name, tps, alloc, reserved, loss in rows:
        text.append(f"| {name} | {f'{tps:,.0f}' if tps else '-'} | {_gib(alloc)} | {_gib(reserved)} | "
                    f"{f'{loss:.4f}' if isinstance(loss, float) else '-'} |")
    return "\n".join(text) + "\n"


def main() -> None:
    if len(sys.argv) >= 5 and sys.argv[1] == "setup":
        setup(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        sys.stdout.write(report(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
