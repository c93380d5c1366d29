"""Compares `estimate --dtype fp8` with published FP8 training runs on H100 (scripts/data/published_fp8.json).

For every run the source publishes in both precisions (torchtitan's float8 tensorwise rows and the bf16 rows of the
same layout) it prints predicted vs published tokens/s per GPU for each, memory where given, and the FP8 speed-up
(FP8 row / bf16 row): the fair figure while the bf16 baseline itself is still off (framework model, FSDP memory).
Runs published in FP8 only (Megatron-Bridge) give the absolute figure alone.

Each run is estimated with the framework preset its data entry names: torchtitan runs with `torchtitan` (both rows
of a pair compiled: the plan's `compile` field, on by default) on the `grand-teton-h100-96g-500w` profile,
Megatron-Bridge with `megatron-core` on `dgx-h100-80g`. torchtitan's memory is its logged maximum reserved memory,
compared with the estimate read as the allocator's reserve (`truth_torchtitan.reserved_bytes`, as
`truth_torchtitan.py` and `truth_long_context.py` read it), the allocated peak beside it. Nothing is fitted.
Usage: python scripts/truth_fp8.py [--json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autoconf.cost.estimate import estimate
from autoconf.spec.frameworks import execution as framework_execution, json_flags
from autoconf.spec.cluster import load_cluster
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from truth_torchtitan import reserved_bytes

DATA = Path(__file__).resolve().parent / "data" / "published_fp8.json"
GiB = 2**30


def _config(run: dict, dtype: str) -> ParallelConfig:
    vpp = run.get("vpp") or 1
    return ParallelConfig(tp=run["tp"], pp=run["pp"], dp=run["dp"], vpp=vpp, micro_batch_size=run["micro_batch"],
                          global_batch_size=run["global_batch"], seq_len=run["seq_len"],
                          schedule="interleaved-1f1b" if vpp > 1 else "1f1b", zero_stage=run["zero"],
                          recompute=run["recompute"], sequence_parallel=run.get("sequence_parallel", False),
                          dtype=dtype)


def _predict(run: dict, dtype: str) -> dict:
    cluster = load_cluster(run["cluster"], nodes=run["gpus"] // 8)
    execution = framework_execution(run["framework"])  # the data file names a preset of spec/frameworks.py
    if run["framework"] == "torchtitan":
        # Every torchtitan pair ran under torch.compile (the data file's notes), with the K/V copies of its Llama
        # code of Dec 2024 and Jun 2025 (repeat_kv).
        execution = execution.replace(eager_ops=("repeat_kv",))
    execution = execution.replace(**json_flags(run.get("framework_flags", {})))  # what the source's code ran
    model, config = PRESETS[run["model"]], _config(run, dtype)
    p = estimate(model, cluster, config, execution=execution, detail=False).prediction
    reserved = (reserved_bytes(model, cluster, config, p["peak_memory_bytes"], execution)
                if run["framework"] == "torchtitan" else None)
    return {"tokens_per_s_per_gpu": p["tokens_per_s"] / run["gpus"], "memory_gib": p["peak_memory_bytes"] / GiB,
            "reserved_gib": None if reserved is None else reserved / GiB}


def _stats(errors: list[float]) -> dict:
    return {"mean_abs_error_pct": round(100 * sum(map(abs, errors)) / len(errors), 2),
            "max_abs_error_pct": round(100 * max(map(abs, errors)), 2), "n": len(errors)} if errors else {}


def main() -> int:
    rows = []
    errors: dict[str, list[float]] = {"fp8_tokens": [], "bf16_tokens": [], "speedup": [], "fp8_memory": []}
    for run in json.loads(DATA.read_text())["runs"]:
        row = {"run": run["label"], "framework": run["framework"]}
        for dtype in ("bf16", "fp8"):
            if dtype not in run:
                continue
            ours, theirs = _predict(run, dtype), run[dtype]
            row[dtype] = {"published_tps": theirs["tokens_per_s_per_gpu"],
                          "predicted_tps": round(ours["tokens_per_s_per_gpu"], 1),
                          "error_pct": round(100 * (ours["tokens_per_s_per_gpu"] / theirs["tokens_per_s_per_gpu"] - 1),
                                             2)}
            errors[f"{dtype}_tokens"].append(row[dtype]["error_pct"] / 100)
            if "memory_gib" in theirs:  # torchtitan's maximum reserved
                row[dtype]["published_gib"] = theirs["memory_gib"]
                row[dtype]["reserved_gib"] = round(ours["reserved_gib"], 1)
                row[dtype]["peak_gib"] = round(ours["memory_gib"], 1)
                if dtype == "fp8":
                    errors["fp8_memory"].append(ours["reserved_gib"] / theirs["memory_gib"] - 1)
        if "bf16" in row and "fp8" in row:
            published = row["fp8"]["published_tps"] / row["bf16"]["published_tps"]
            predicted = row["fp8"]["predicted_tps"] / row["bf16"]["predicted_tps"]
            row["speedup"] = {"published": round(published, 3), "predicted": round(predicted, 3),
                              "error_pct": round(100 * (predicted / published - 1), 2)}
            errors["speedup"].append(predicted / published - 1)
        rows.append(row)
    summary = {key: _stats(values) for key, values in errors.items()}
    if "--json" in sys.argv:
        print(json.dumps({"runs": rows, "summary": summary}, indent=2))
        return 0
    print("FP8 (tensorwise) vs published H100 runs: tokens/s per GPU, predicted / published (error)")
    print(f"{'run':20s} {'bf16 published':>14s} {'predicted':>10s} {'fp8 published':>14s} {'predicted':>10s} "
          f"{'error':>8s} {'speed-up pub':>12s} {'pred':>6s} {'error':>8s}")
    for r in rows:
        b, f, s = r.get("bf16"), r["fp8"], r.get("speedup")
        bf16 = f"{b['published_tps']:14.1f} {b['predicted_tps']:10.1f}" if b else f"{'-':>14s} {'-':>10s}"
        ratio = (f"{s['published']:12.3f} {s['predicted']:6.3f} {s['error_pct']:+7.2f}%" if s else
                 f"{'-':>12s} {'-':>6s} {'-':>8s}")
        print(f"{r['run']:20s} {bf16} {f['published_tps']:14.1f} {f['predicted_tps']:10.1f} {f['error_pct']:+7.2f}% "
              f"{ratio}")
    memory = [r for r in rows if "published_gib" in r["fp8"]]
    if memory:
        print("\nMemory per GPU, GiB (published: torchtitan's maximum reserved over GPUs; predicted: the allocator's "
              "reserve, the allocated peak beside it)")
        for r in memory:
            for dtype in ("bf16", "fp8"):
                m = r.get(dtype)
                if m is None or "published_gib" not in m:
                    continue
                print(f"{r['run']:20s} {dtype:5s} published {m['published_gib']:6.1f} reserved {m['reserved_gib']:6.1f} "
                      f"peak {m['peak_gib']:6.1f}")
    print()
    names = {"speedup": "FP8 speed-up (fp8/bf16)", "fp8_tokens": "FP8 tokens/s", "bf16_tokens": "bf16 tokens/s",
             "fp8_memory": "FP8 memory (reserved)"}
    for key, name in names.items():
        s = summary[key]
        if s:
            print(f"{name:24s} mean |error| {s['mean_abs_error_pct']:6.2f}%, max {s['max_abs_error_pct']:6.2f}% "
                  f"over {s['n']} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
