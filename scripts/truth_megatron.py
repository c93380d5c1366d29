"""Compares `estimate` with the published Megatron-LM runs of Korthikanti et al. 2022 and Narayanan et al. 2021 on A100
(Selene).

Time: the eight end-to-end iteration times of Korthikanti's Table 5 (four models x {full recompute, sequence parallel +
selective recompute}) and the 530B run scaled to 8-way data parallelism (Sec. 6.3). Memory: the activation memory of
the first pipeline stage against the paper's own closed form (Table 2 per layer x layers x the interleaving factor of
Eq. 5) for each recompute mode; the paper publishes no measured per-GPU bytes (its Figures 1 and 7 are drawn from that
formula). Per layer: Korthikanti's Table 4 (one layer of the 22B, forward + backward, in five modes) against the
estimate's one layer, read as the difference of the step's compute, recompute and TP terms with the model's layers
and with one layer fewer (the estimate itself, no layer-level formula of its own). Throughput: Narayanan et al.'s
Table 1 (weak scaling, 1.7B to 1T on 32 to 3072 GPUs), each run as the authors' SC21 scripts launch it (micro-batch,
interleaving, DDP implementation: the data file's `artifact` fields); its TFLOP/s per GPU come from the paper's Eq. 3,
so the iteration time is Eq. 3's FLOPs over GPUs x TFLOP/s.

Nothing here is fitted: the A100 profile's efficiencies are properties of the GPU and the network, the same for every
model. Usage: python scripts/truth_megatron.py [--json]
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
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


def korthikanti_layer_rows(data: dict) -> tuple[list[dict], list[float]]:
    """Korthikanti Table 4: one 22B layer's forward + backward (ms) per mode against the estimate's, the difference of
    the step's compute + recompute + TP time between the model and the model with one layer fewer (pp 1, one
    micro-batch: no bubble, pipeline or data-parallel term moves)."""
    run = next(r for r in data["korthikanti2022"] if r["model"] == "gpt-22b")
    model, cluster = PRESETS[run["model"]], load_cluster("dgx-a100-80g", nodes=run["gpus"] // 8)
    rows, errors = [], []
    for mode, (recompute, sp) in MEMORY_MODES.items():
        published = run["per_layer_ms"][mode]["total"]
        c = _config(run, recompute, sp)

        def layer_terms(spec) -> float:
            terms = estimate(spec, cluster, c, execution=execution("megatron")).prediction["time_breakdown"]
            return terms["compute"] + terms["recompute"] + terms["tp_comm"]

        predicted = 1e3 * (layer_terms(model) - layer_terms(replace(model, num_layers=model.num_layers - 1)))
        error = predicted / published - 1
        errors.append(abs(error))
        rows.append({"mode": mode, "published_ms": published, "predicted_ms": round(predicted, 2),
                     "error_pct": round(100 * error, 2)})
    return rows, errors


def _eq3_flops(run: dict) -> float:
    """FLOPs of one iteration by Narayanan et al.'s Eq. 3 (full recompute: 96 B s l h^2 (1 + s/(6h) + V/(16 l h))), the
    count behind Table 1's TFLOP/s."""
    b, s, l, h, v = run["global_batch"], run["seq_len"], run["layers"], run["hidden"], run["vocab"]
    return 96 * b * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))


def narayanan_model(run: dict):
    """Table 1's GPT (hidden, heads, layers, 4h FFN, vocabulary 51200, seq 2048) as Korthikanti's GPT presets are built:
    the gpt-22b preset with the row's shape."""
    return replace(PRESETS["gpt-22b"], name=f"gpt-{run['params_b']}b-sc21", num_layers=run["layers"],
                   hidden_size=run["hidden"], num_heads=run["heads"], num_kv_heads=run["heads"],
                   head_dim=run["hidden"] // run["heads"], ffn_hidden_size=4 * run["hidden"], vocab_size=run["vocab"],
                   max_seq_len=run["seq_len"])


def narayanan_execution(run: dict):
    """The `megatron` preset as Megatron-LM of the SC21 scripts (6985e58938, 2021-08) ran: fp16 gradients (--fp16
    leaves fp32 accumulation off). --DDP-impl local: a hook adds each gradient into the main-gradient buffer every
    micro-batch (no gradient accumulation fusion before 2022) and the buffer is all-reduced after the flush.
    --DDP-impl torch: torch's DistributedDataParallel reduces 25 MB buckets (12.5M fp16 gradients, its default
    bucket_cap_mb) during the last micro-batch's backward; autograd accumulates the gradients of earlier micro-batches
    itself (uncounted: only the 18.4B row has more than one, under 0.3% of its step)."""
    if run["ddp_impl"] == "torch":
        flags = {"grad_reduce_start": "per_bucket", "bucket_params": 25e6 / 2}
    else:
        flags = {"grad_accumulation_fusion": False}
    return execution("megatron").replace(grad_buffer_dtype="fp16", **flags)


def narayanan_rows(data: dict) -> tuple[list[dict], list[float]]:
    rows, errors = [], []
    for run in data["narayanan2021"]:
        model = narayanan_model(run)
        cluster = load_cluster("dgx-a100-80g", nodes=run["gpus"] // 8)
        c = ParallelConfig(tp=run["tp"], pp=run["pp"], dp=run["dp"], vpp=run["vpp"],
                           micro_batch_size=run["micro_batch"], global_batch_size=run["global_batch"],
                           seq_len=run["seq_len"], schedule="interleaved-1f1b" if run["vpp"] > 1 else "1f1b",
                           recompute="full", dtype="fp16", attention="standard")
        plan = estimate(model, cluster, c, execution=narayanan_execution(run))
        predicted_s = plan.prediction["iteration_time_s"]
        tflops = _eq3_flops(run) / (run["gpus"] * predicted_s) / 1e12
        error = tflops / run["tflops_per_gpu"] - 1
        errors.append(abs(error))
        rows.append({"model": f"{run['params_b']}B", "layout": f"tp{run['tp']} pp{run['pp']} dp{run['dp']}",
                     "gpus": run["gpus"], "micro_batch": run["micro_batch"], "vpp": run["vpp"], "ddp": run["ddp_impl"],
                     "published_tflops_per_gpu": run["tflops_per_gpu"], "predicted_tflops_per_gpu": round(tflops, 1),
                     "predicted_s": round(predicted_s, 2), "error_pct": round(100 * error, 2)})
    return rows, errors


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
    layer_rows, layer_errors = korthikanti_layer_rows(data)
    sc21_rows, sc21_errors = narayanan_rows(data)
    (time_mean, time_max, _), (mem_mean, mem_max, _) = error_stats(errors), error_stats(mem_errors)
    sc21_mean, sc21_max, _ = error_stats(sc21_errors)
    layer_mean, layer_max, _ = error_stats(layer_errors)
    summary = {"time_mean_abs_error_pct": time_mean, "time_max_abs_error_pct": time_max,
               "activation_memory_mean_abs_error_pct": mem_mean, "activation_memory_max_abs_error_pct": mem_max,
               "per_layer_mean_abs_error_pct": layer_mean, "per_layer_max_abs_error_pct": layer_max,
               "narayanan2021_mean_abs_error_pct": sc21_mean, "narayanan2021_max_abs_error_pct": sc21_max}
    if "--json" in sys.argv:
        print(json.dumps({"time": rows, "memory": mem_rows, "per_layer": layer_rows, "narayanan2021": sc21_rows,
                          "summary": summary}, indent=2))
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
    print()
    print("One layer's forward + backward vs Korthikanti et al. 2022 Table 4 (gpt-22b, tp 8, micro-batch 4, seq 2048)")
    print(f"{'mode':15s} {'published ms':>12s} {'predicted ms':>12s} {'error':>8s}")
    for r in layer_rows:
        print(f"{r['mode']:15s} {r['published_ms']:12.1f} {r['predicted_ms']:12.2f} {r['error_pct']:+7.2f}%")
    print(f"per layer: {error_line(layer_mean, layer_max, len(layer_rows), 'modes')}")
    print()
    print("Throughput vs Narayanan et al. 2021 Table 1 (A100 80GB, Selene; runs as examples/sc21/run_table_1.sh sets "
          "them), framework=megatron, fp16, full recompute, standard attention")
    print(f"{'model':8s} {'layout':16s} {'GPUs':>5s} {'mb':>3s} {'vpp':>3s} {'DDP':5s} {'TFLOP/s pub':>11s} "
          f"{'pred':>6s} {'step s':>7s} {'error':>8s}")
    for r in sc21_rows:
        print(f"{r['model']:8s} {r['layout']:16s} {r['gpus']:5d} {r['micro_batch']:3d} {r['vpp']:3d} {r['ddp']:5s} "
              f"{r['published_tflops_per_gpu']:11.0f} {r['predicted_tflops_per_gpu']:6.1f} {r['predicted_s']:7.2f} "
              f"{r['error_pct']:+7.2f}%")
    print(f"TFLOP/s per GPU: {error_line(sc21_mean, sc21_max, len(sc21_rows), 'runs')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
