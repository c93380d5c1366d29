"""Compares `estimate` with published mixture-of-experts training runs (scripts/data/published_moe_runs.json): the
figure each publisher states (a step time, TFLOP/s per GPU or tokens/s per GPU: the run's
"figure"), and whether each published layout fits an 80 GB device as it did.

Nothing is fitted: the H100 profile's efficiencies are the same for every model (the H800 profile is the H100's with
its slower NVLink). A run's framework is a preset (DeepSeek-V3's is `deepseek`: its recompute policy, DualPipe's
overlapped pairs, no expert outputs kept, node-deduplicated dispatch, each sourced in spec/frameworks.py), and its
`framework_flags` change it where the publisher states a behaviour; a `published_layout` that autoconf costs through an
equivalent layout is printed beside the layout costed (DeepSeek-V3's DualPipe on 16 ranks is costed as published,
schedule dualpipe). A run's `pipeline_layout` is Megatron-Core's --pipeline-model-parallel-layout as published
(`layout_partition` reads it into the partition costed). Usage:
python scripts/truth_moe.py [--json] [--breakdown]
--breakdown: for each run, the peak pipeline rank's memory by term and what one MoE block keeps per micro-batch,
tensor by tensor (`autoconf.cost.saved`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

from autoconf.cost.estimate import estimate
from autoconf.cost.saved import saved_tensors
from autoconf.errors import UserError
from autoconf.spec.cluster import ClusterProfile, load_cluster
from autoconf.spec.frameworks import Execution, execution, json_flags
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from truth_summary import error_line, error_stats
from truth_torchtitan import reserved_bytes

DATA = Path(__file__).resolve().parent / "data" / "published_moe_runs.json"


def layout(run: dict) -> tuple[ParallelConfig, Execution]:
    c = ParallelConfig(tp=run["tp"], pp=run["pp"], dp=run["gpus"] // (run["tp"] * run["pp"]), vpp=run["vpp"],
                       micro_batch_size=run["micro_batch"], global_batch_size=run["global_batch"],
                       seq_len=run["seq_len"], schedule=run["schedule"], zero_stage=run["zero_stage"],
                       recompute=run["recompute"], sequence_parallel=run["sequence_parallel"], dtype=run["dtype"],
                       ep=run["ep"], etp=run["etp"], grad_reduce=run.get("grad_reduce", "step"),
                       offload_optimizer=run.get("offload_optimizer", False))
    return c, execution(run["framework"]).replace(**json_flags(run.get("framework_flags", {})))


def layout_partition(text: str, model, stages: int) -> list[list[int]]:
    """The [first, end) layers of each virtual stage (chunk-major, as Megatron-Core and a plan order them) that
    Megatron-Core's --pipeline-model-parallel-layout `text` gives: '|' ends a stage, 't' is a transformer layer,
    'E' the embedding (first stage), 'm' an MTP module and 'L' the loss (last stage, where autoconf costs them),
    'X*N' and '(...)*N' repeat. A UserError names what does not match the model or the layout's stage count."""
    flat = text.replace(" ", "")
    while "(" in flat:
        expanded = re.sub(r"\(([^()]*)\)\*(\d+)", lambda g: g.group(1) * int(g.group(2)), flat)
        if expanded == flat:
            raise UserError(f"pipeline_layout {text!r}: a parenthesised group needs '*N'")
        flat = expanded
    flat = re.sub(r"([EtmL])\*(\d+)", lambda g: g.group(1) * int(g.group(2)), flat)
    parts = flat.split("|")
    wrong = set(flat) - set("EtmL|")
    if wrong or len(parts) != stages:
        raise UserError(f"pipeline_layout {text!r} gives {len(parts)} stages of {''.join(sorted(set(flat)))}; "
                        f"the run has {stages} (pp x vpp) and layouts use E, t, m, L, '|', '*N' and '(...)*N'")
    counts = [part.count("t") for part in parts]
    if (sum(counts) != model.num_layers or "".join(parts).count("m") != model.mtp_num_layers
            or any("E" in part for part in parts[1:]) or any(set("mL") & set(part) for part in parts[:-1])):
        raise UserError(f"pipeline_layout {text!r}: needs the model's {model.num_layers} layers ('t'), its "
                        f"{model.mtp_num_layers} MTP modules ('m') and 'L' on the last stage and 'E' on the first")
    ends = [sum(counts[:i + 1]) for i in range(stages)]
    return [[end - n, end] for n, end in zip(counts, ends)]


def model_of(run: dict) -> ModelSpec:
    """The run's preset, with the MTP depth the run states where it differs (`mtp_num_layers`)."""
    model = PRESETS[run["model"]]
    if "mtp_num_layers" in run:
        model = dataclasses.replace(model, mtp_num_layers=run["mtp_num_layers"])
    return model


def cluster_of(run: dict) -> ClusterProfile:
    """The run's profile at gpus / gpus_per_node nodes; on racks of one NVLink fabric, the nodes of each fabric the
    run held where it states them (`scale_up_nodes`, with its reason)."""
    profile = load_cluster(run["cluster"])
    nodes = run["gpus"] // profile.gpus_per_node
    if "scale_up_nodes" in run:
        domain = {"nodes": run["scale_up_nodes"], "why": run["scale_up_why"]}
        return dataclasses.replace(profile, nodes=nodes, scale_up_domain=domain)
    return profile.resized(nodes=nodes)


def predict(run: dict) -> dict:
    c, ex = layout(run)
    model = model_of(run)
    partition = layout_partition(run["pipeline_layout"], model, c.num_stages) if run.get("pipeline_layout") else None
    return estimate(model, cluster_of(run), c, partition=partition, execution=ex).prediction


def reserved_range(run: dict, prediction: dict) -> tuple[float, float]:
    """(least, most) GiB the allocator reserves on a pipeline rank at its peak (`truth_torchtitan.reserved_bytes`
    of each rank's predicted peak): what torchtitan logs as max reserved. A run that measured its first step
    (`first_step`) peaks without the optimizer's state, which torch's AdamW creates in that step's `step()` after
    the activations are gone: the larger of the estimate's peak without it and the step's state with it."""
    (c, ex), model, cluster = layout(run), model_of(run), cluster_of(run)
    first = run.get("first_step", False)
    reserved = []
    for stage in prediction["memory_per_stage"]:
        peak = stage["total"]
        if first:
            state = stage["params"] + stage["grads"] + stage["optimizer"] + stage["other"]
            peak = max(peak - stage["optimizer"], state)
        reserved.append(reserved_bytes(model, cluster, c, peak, ex, first_step=first) / 2**30)
    return min(reserved), max(reserved)


def breakdown(run: dict, prediction: dict) -> list[str]:
    """The peak rank's memory terms, and one MoE block's saved tensors (megatron layout), in GiB / MiB."""
    c, ex = layout(run)
    model = model_of(run)
    stages = prediction["memory_per_stage"]
    peak = max(range(len(stages)), key=lambda r: stages[r]["total"])
    terms = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in stages[peak].items())
    lines = [f"{run['label']}: pipeline rank {peak} of {len(stages)} at its peak (GiB): {terms}"]
    if ex.memory_layout == "megatron":
        rows = [(n, b) for n, b in saved_tensors(model, c, c.recompute, ex.selective_recompute, True,
                                                ex.moe_combine_keeps_outputs, ex.fused_swiglu) if b]
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
    if run.get("pipeline_layout"):
        costed += f" ({run['pipeline_layout']})"
    if run.get("published_layout"):  # a schedule autoconf costs through an equivalent one (the run's levers)
        costed = f"{run['published_layout']}, costed as {run['schedule']} {costed}"
    unit, predicted, faster_is_more = FIGURES.get(run["figure"], ("GiB", None, None))
    row = {"run": run["label"], "layout": costed, "figure": run["figure"]}
    if run["published"] is not None and run["figure"] in FIGURES:
        row["published"] = f"{run['published']:g} {unit}"
    if run.get("not_modelled"):
        return {**row, "not_modelled": run["not_modelled"]}, []
    p = predict(run)
    row.update(fits=p["fits"], peak_GiB=round(p["peak_memory_bytes"] / 2**30, 1),
               ep_comm_share=round(p["time_breakdown"].get("ep_comm", 0.0) / p["iteration_time_s"], 3))
    if run["figure"] == "reserved_gib_per_rank":  # published: [least, most] over the pipeline ranks
        least, most = reserved_range(run, p)
        lo, hi = run["published"]
        row.update(published=f"{lo:g}-{hi:g} GiB", predicted=f"{least:.1f}-{most:.1f} GiB",
                   memory_error=round(most / hi - 1, 3), memory_error_least=round(least / lo - 1, 3))
        return row, breakdown(run, p)
    value = predicted(p, run)
    row["predicted"] = f"{value:.1f} {unit}" if run["figure"] == "step_time_s" else f"{value:.0f} {unit}"
    if run["published"] is not None:
        ratio = value / run["published"]
        row["error"] = round((ratio if faster_is_more else 1 / ratio) - 1, 3)
    return row, breakdown(run, p)


def main() -> int:
    rows, details = [], []
    for run in json.loads(DATA.read_text())["runs"]:
        try:
            row, lines = compare(run)
        except UserError as err:
            print(f"{run['label']}: {err}", file=sys.stderr)
            return 1
        rows.append(row)
        details += lines
    if "--json" in sys.argv[1:]:
        print(json.dumps(rows, indent=2))
        return 0
    print("| run | layout | published | predicted | error | fits (peak GiB) | all-to-all share |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r = {**r, "layout": r["layout"].replace("|", "\\|")}  # a pipeline layout's '|' inside a table cell
        if "not_modelled" in r:
            print(f"| {r['run']} | {r['layout']} | {r.get('published', '')} | not modelled: {r['not_modelled']} "
                  f"| | | |")
            continue
        error = (f"{100 * r['error']:+.1f}%" if "error" in r else
                 f"{100 * r['memory_error_least']:+.1f}% / {100 * r['memory_error']:+.1f}% (memory: least / most "
                 f"rank)" if "memory_error" in r else "")
        print(f"| {r['run']} | {r['layout']} | {r.get('published', '')} | {r.get('predicted', '')} | {error} | "
              f"{'yes' if r['fits'] else 'NO'} ({r['peak_GiB']}) | {100 * r['ep_comm_share']:.1f}% |")
    costed = [r for r in rows if "not_modelled" not in r]
    errors = [r["error"] for r in costed if "error" in r]
    print(f"\nthroughput (error: predicted / published throughput - 1, a step time's inverse): "
          f"{error_line(*error_stats(errors), of='runs')}; "
          f"{sum(r['fits'] for r in costed)} of {len(costed)} published layouts fit; "
          f"{len(rows) - len(costed)} not modelled")
    memory = [abs(r[k]) for r in costed for k in ("memory_error_least", "memory_error") if k in r]
    if memory:
        print(f"memory (reserved per pipeline rank, least and most, against published): "
              f"{error_line(*error_stats(memory), of='figures')}")
    if "--breakdown" in sys.argv[1:]:
        print("\n" + "\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
