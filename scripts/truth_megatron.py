"""Compares `estimate` with the published Megatron-LM runs of Korthikanti et al. 2022 on A100 (Selene).

Time: the eight end-to-end iteration times of Table 5 (four models x {full recompute, sequence parallel + selective
recompute}) and the 530B run scaled to 8-way data parallelism (Sec. 6.3). Memory: the activation memory of the first
pipeline stage against the paper's own closed form (Table 2 per layer x layers x the interleaving factor of Eq. 5) for
each recompute mode; the paper publishes no measured per-GPU bytes (its Figures 1 and 7 are drawn from that formula).

Nothing here is fitted: the A100 profile's efficiencies are properties of the GPU and the network, the same for every
model. Usage: python scripts/truth_megatron.py [--json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autoconf.cost.estimate import estimate
from autoconf.spec.frameworks import execution
from autoconf.spec.cluster import load_cluster
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from truth_summary import error_line, error_stats

DATA = Path(__file__).resolve().parent / "data" / "published_megatron.json"
MODES = {"full": ("full", False), "selective+sp": ("selective", True)}
MEMORY_MODES = {"none": ("none", False), "sp_only": ("none", True), "selective_only": ("selective", False),
                "selective+sp": ("selective", True), "full": ("full", False)}


def _config(run: dict, recompute: str, sp: bool) -> ParallelConfig:
    return ParallelConfig(tp=run["tp"], pp=run["pp"], dp=run["dp"], vpp=run.get("vpp") or 1,
                          micro_batch_size=run["micro_batch"], global_batch_size=run["global_batch"],
                          seq_len=run["seq_len"], schedule="interleaved-1f1b" if run.get("vpp") else "1f1b",
                          recompute=recompute, sequence_parallel=sp, dtype="fp16", attention="standard")


def _paper_activation_bytes(model, c: ParallelConfig, mode: str) -> float:
    """Korthikanti Table 2 per layer, times the layers of all stages (1F1B's first stage holds p micro-batches of
    L/p layers), times 1 + (p-1)/(p*v) for interleaving (Eq. 5)."""
    s, b, h, a, t = c.seq_len, c.micro_batch_size, model.hidden_size, model.num_heads, c.tp
    per_layer = {"none": s * b * h * (10 + 24 / t + 5 * a * s / (h * t)),
                 "sp_only": s * b * h * (34 / t + 5 * a * s / (h * t)),
                 "selective_only": s * b * h * (10 + 24 / t),
                 "selective+sp": s * b * h * 34 / t,
                 "full": 2 * s * b * h}[mode]
    factor = 1 + (c.pp - 1) / (c.pp * c.vpp) if c.vpp > 1 else 1.0
    return per_layer * model.num_layers * factor


def main() -> int:
    data = json.loads(DATA.read_text())
    runs = list(data["korthikanti2022"])
    extra = data["korthikanti2022_extra"]["gpt-530b_dp8"]
    runs.append({**next(r for r in runs if r["model"] == "gpt-530b"), **{k: extra[k] for k in (
        "tp", "pp", "dp", "gpus", "global_batch", "micro_batch", "vpp")}, "runs": extra["runs"], "label": "530b dp8"})
    rows, errors = [], []
    for run in runs:
        model = PRESETS[run["model"]]
        cluster = load_cluster("dgx-a100-80g", nodes=run["gpus"] // 8)
        for mode, (recompute, sp) in MODES.items():
            published = run["runs"].get(mode, {}).get("iteration_time_s")
            if published is None:
                continue
            plan = estimate(model, cluster, _config(run, recompute, sp), execution=execution("megatron"))
            predicted = plan.prediction["iteration_time_s"]
            error = predicted / published - 1
            errors.append(abs(error))
            rows.append({"model": run.get("label", run["model"]), "mode": mode, "published_s": published,
                         "predicted_s": round(predicted, 3), "error_pct": round(100 * error, 2),
                         "mfu_pct": round(100 * plan.prediction["mfu"], 1)})
    mem_rows, mem_errors = [], []
    for run in data["korthikanti2022"]:
        model = PRESETS[run["model"]]
        cluster = load_cluster("dgx-a100-80g", nodes=run["gpus"] // 8)
        for mode, (recompute, sp) in MEMORY_MODES.items():
            c = _config(run, recompute, sp)
            plan = estimate(model, cluster, c, execution=execution("megatron"), detail=False)
            ours = plan.prediction["memory_per_stage"][0]["activations"]
            paper = _paper_activation_bytes(model, c, mode)
            error = ours / paper - 1
            mem_errors.append(abs(error))
            mem_rows.append({"model": run["model"], "mode": mode, "paper_GiB": round(paper / 2**30, 2),
                             "predicted_GiB": round(ours / 2**30, 2), "error_pct": round(100 * error, 2)})
    (time_mean, time_max, _), (mem_mean, mem_max, _) = error_stats(errors), error_stats(mem_errors)
    summary = {"time_mean_abs_error_pct": time_mean, "time_max_abs_error_pct": time_max,
               "activation_memory_mean_abs_error_pct": mem_mean, "activation_memory_max_abs_error_pct": mem_max}
    if "--json" in sys.argv:
        print(json.dumps({"time": rows, "memory": mem_rows, "summary": summary}, indent=2))
        return 0
    print("Iteration time vs Korthikanti et al. 2022 (A100 80GB, Selene), framework=megatron, standard attention")
    print(f"{'model':10s} {'mode':13s} {'published s':>11s} {'predicted s':>11s} {'error':>8s} {'MFU':>6s}")
    for r in rows:
        print(f"{r['model']:10s} {r['mode']:13s} {r['published_s']:11.2f} {r['predicted_s']:11.2f} "
              f"{r['error_pct']:+7.2f}% {r['mfu_pct']:5.1f}%")
    print(f"time: {error_line(time_mean, time_max, len(rows), 'runs')}")
    print()
    print("First-stage activation memory vs the paper's closed form (Table 2 x layers x Eq. 5 interleaving factor)")
    print(f"{'model':10s} {'mode':15s} {'paper GiB':>10s} {'predicted GiB':>13s} {'error':>8s}")
    for r in mem_rows:
        print(f"{r['model']:10s} {r['mode']:15s} {r['paper_GiB']:10.2f} {r['predicted_GiB']:13.2f} "
              f"{r['error_pct']:+7.2f}%")
    print(f"activation memory: {error_line(mem_mean, mem_max, len(mem_rows), 'points')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
