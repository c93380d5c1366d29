"""Compares `estimate` with published mixture-of-experts training runs (scripts/data/published_moe_runs.json): the
figure each publisher states (a step time, TFLOP/s per GPU or tokens/s per GPU: the run's
"figure"), and whether each published layout fits an 80 GB device as it did.

Nothing is fitted: the H100 profile's efficiencies are the same for every model (the H800 profile is the H100's with
its slower NVLink). A run's framework is a preset (DeepSeek-V3's is `deepseek`: its recompute policy, DualPipe's
overlapped pairs, no expert outputs kept, node-deduplicated dispatch, each sourced in spec/frameworks.py), and its
`framework_flags` change it where the publisher states a behaviour; a `published_layout` that autoconf costs through an
equivalent layout is printed beside the layout costed (DeepSeek-V3's DualPipe on 16 ranks is costed as published,
schedule dualpipe). Usage:
python scripts/truth_moe.py [--json] [--breakdown]
--breakdown: for each run, the peak pipeline rank's memory by term and what one MoE block keeps per micro-batch,
tensor by tensor (`autoconf.cost.saved`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autoconf.cost.estimate import estimate
from autoconf.cost.saved import saved_tensors
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import Execution, execution
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from truth_summary import error_line, error_stats

DATA = Path(__file__).resolve().parent / "data" / "published_moe_runs.json"


def layout(run: dict) -> tuple[ParallelConfig, Execution]:
    c = ParallelConfig(tp=run["tp"], pp=run["pp"], dp=run["gpus"] // (run["tp"] * run["pp"]), vpp=run["vpp"],
                       micro_batch_size=run["micro_batch"], global_batch_size=run["global_batch"],
                       seq_len=run["seq_len"], schedule=run["schedule"], zero_stage=run["zero_stage"],
                       recompute=run["recompute"], sequence_parallel=run["sequence_parallel"], dtype=run["dtype"],
                       ep=run["ep"], etp=run["etp"])
    return c, execution(run["framework"]).replace(**run.get("framework_flags", {}))


def predict(run: dict) -> dict:
    c, ex = layout(run)
    cluster = load_cluster(run["cluster"], nodes=run["gpus"] // 8)
    return estimate(PRESETS[run["model"]], cluster, c, execution=ex).prediction


def breakdown(run: dict, prediction: dict) -> list[str]:
    """The peak rank's memory terms, and one MoE block's saved tensors (megatron layout), in GiB / MiB."""
    c, ex = layout(run)
    model = PRESETS[run["model"]]
    stages = prediction["memory_per_stage"]
    peak = max(range(len(stages)), key=lambda r: stages[r]["total"])
    terms = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in stages[peak].items())
    lines = [f"{run['label']}: pipeline rank {peak} of {len(stages)} at its peak (GiB): {terms}"]
    if ex.memory_layout == "megatron":
        rows = [(n, b) for n, b in saved_tensors(model, c, c.recompute, ex.selective_recompute, True,
                                                ex.moe_combine_keeps_outputs) if b]
        lines.append(f"  one MoE block, one micro-batch ({c.recompute} recompute, {ex.selective_recompute}, dtype "
                     f"{c.dtype}): {sum(b for _, b in rows) / 2**20:.0f} MiB")
        lines += [f"    {name:48s} {nbytes / 2**20:8.1f} MiB" for name, nbytes in rows]
    return lines


# The figures a publisher states, each as (unit, autoconf's prediction of it for a run, whether more is faster): a
# run's "figure" names one.
FIGURES = {
    "step_time_s": ("s/step", lambda p, run: p["iteration_time_s"], False),
    "tflops_per_gpu": ("TFLOP/s", lambda p, run: p["tflops_per_gpu"], True),
    "tokens_per_s_per_gpu": ("tokens/s/GPU", lambda p, run: p["tokens_per_s"] / run["gpus"], True),
}


def compare(run: dict) -> tuple[dict, list[str]]:
    """One run's row: the layout costed, the published figure beside the predicted one and their error
    (as every truth script's, of throughput: predicted / published throughput - 1, a step time's inverse, so + is
    predicted faster than published), fit and all-to-all share; with the memory breakdown lines. A run autoconf
    cannot express gets its reason only."""
    costed = f"tp{run['tp']} ep{run['ep']} etp{run['etp']} pp{run['pp']} vpp{run['vpp']} on {run['gpus']}"
    if run.get("published_layout"):  # a schedule autoconf costs through an equivalent one (the run's levers)
        costed = f"{run['published_layout']}, costed as {run['schedule']} {costed}"
    unit, predicted, faster_is_more = FIGURES[run["figure"]]
    row = {"run": run["label"], "layout": costed, "figure": run["figure"]}
    if run["published"] is not None:
        row["published"] = f"{run['published']:g} {unit}"
    if run.get("not_modelled"):
        return {**row, "not_modelled": run["not_modelled"]}, []
    p = predict(run)
    row.update(fits=p["fits"], peak_GiB=round(p["peak_memory_bytes"] / 2**30, 1),
               ep_comm_share=round(p["time_breakdown"].get("ep_comm", 0.0) / p["iteration_time_s"], 3))
    value = predicted(p, run)
    row["predicted"] = f"{value:.1f} {unit}" if run["figure"] == "step_time_s" else f"{value:.0f} {unit}"
    if run["published"] is not None:
        ratio = value / run["published"]
        row["error"] = round((ratio if faster_is_more else 1 / ratio) - 1, 3)
    return row, breakdown(run, p)


def main() -> int:
    rows, details = [], []
    for run in json.loads(DATA.read_text())["runs"]:
        row, lines = compare(run)
        rows.append(row)
        details += lines
    if "--json" in sys.argv[1:]:
        print(json.dumps(rows, indent=2))
        return 0
    print("| run | layout | published | predicted | error | fits (peak GiB) | all-to-all share |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "not_modelled" in r:
            print(f"| {r['run']} | {r['layout']} | {r.get('published', '')} | not modelled: {r['not_modelled']} "
                  f"| | | |")
            continue
        error = f"{100 * r['error']:+.1f}%" if "error" in r else ""
        print(f"| {r['run']} | {r['layout']} | {r.get('published', '')} | {r.get('predicted', '')} | {error} | "
              f"{'yes' if r['fits'] else 'NO'} ({r['peak_GiB']}) | {100 * r['ep_comm_share']:.1f}% |")
    costed = [r for r in rows if "not_modelled" not in r]
    errors = [r["error"] for r in costed if "error" in r]
    print(f"\nthroughput (error: predicted / published throughput - 1, a step time's inverse): "
          f"{error_line(*error_stats(errors), of='runs')}; "
          f"{sum(r['fits'] for r in costed)} of {len(costed)} published layouts fit; "
          f"{len(rows) - len(costed)} not modelled")
    if "--breakdown" in sys.argv[1:]:
        print("\n" + "\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
