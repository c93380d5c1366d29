"""Compares `estimate` with Hugging Face's Ultra-Scale Playbook benchmark campaign: thousands of layouts of the same
Llama-shaped models on the same H100 cluster, run by nanotron (scripts/data/nanotron_ultrascale_h100.csv, whose
header cites the source; the models' shapes in scripts/data/nanotron_ultrascale_models.json).

Where the other truth scripts test one published layout per model, this one tests what the planner is for: does the
estimate order the layouts of one model on one cluster as they ran (Spearman's rank correlation per model and
cluster size), would its first choice have been among the fastest that ran (regret: how much slower the measured
run of the predicted best is than the measured best, on step times as `autoconf validate` reckons it), and does it
say "does not fit" of the runs that ran out of memory and "fits" of the runs that did not.

What the source does not state, taken here (the same for every run): nanotron's behaviour as flags on the megatron
preset (`execution_of`, each flag with the nanotron code it reads) and nanotron's own pipeline partition
(`nanotron_partition`); the bundled dgx-h100-80g profile (the campaign's nodes are 8 H100 80GB; its results file has
per-job bandwidth columns, but they depend on the layout, about 170 GB/s without a pipeline and 50 GB/s with one at
16 nodes, so they are not read: docs/accuracy.md); flash attention, no recompute, sequence parallelism wherever
tp > 1 (nanotron's REDUCE_SCATTER mode), the 1F1B schedule. A run's step is dp x mbs x batch_accum sequences of
4096 tokens; its published throughput is tokens per second per GPU, which the prediction's step time gives directly.

Usage: python scripts/truth_nanotron.py [--json] [--all-pp-runs] [--limit N]
--all-pp-runs: also the pipeline runs from before the source's `after_pp_fix` (nanotron's pipeline code was made
faster during the campaign; those runs are left out by default).
--limit N: the first N runs of each model and cluster size only (a quick look).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from autoconf.cost.estimate import predict
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import Execution, execution
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.validate.stats import regret, spearman
from truth_summary import error_line, error_stats

DATA = Path(__file__).resolve().parent / "data" / "nanotron_ultrascale_h100.csv"
MODELS = Path(__file__).resolve().parent / "data" / "nanotron_ultrascale_models.json"
PROFILE = "dgx-h100-80g"
SEQ = 4096
GB = 1e9  # the source's memory columns: GB (its peak reserved of the 1.34G pure-DP runs is 36.7 and the estimate's
# peak 37.6e9 bytes; read as GiB the two would differ by 7%)
# Groups (model, nodes) with fewer runs than this are left out of the rank statistics (a correlation of 3 runs says
# little); their runs still count in the error and fit statistics.
MIN_GROUP = 8


def read_runs(path: Path = DATA) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


def models(path: Path = MODELS) -> dict[str, ModelSpec]:
    out = {}
    for label, m in json.loads(path.read_text())["models"].items():
        out[label] = ModelSpec(name=f"ultrascale-{label}", arch="llama", num_layers=m["layers"],
                               hidden_size=m["hidden"], num_heads=m["heads"], num_kv_heads=m["kv_heads"],
                               ffn_hidden_size=m["ffn"], vocab_size=m["vocab"], max_seq_len=SEQ,
                               tied_embeddings=m["tied"])
    return out


def execution_of(zero_stage: int) -> Execution:
    """nanotron as the campaign ran it (huggingface/nanotron at 9055c664, 2025-01-15, the code the campaign's
    config names; file:line there), on the megatron preset's memory layout: bf16 weights, an fp32 gradient buffer of
    every parameter and fp32 master weights and Adam moments (gradient_accumulator.py:95, :171; zero.py:67-91 shards
    master and moments under ZeRO-1, the gradient buffer stays whole). What differs from the preset, each stated:
    - ZeRO-0: torch DDP (bucket_cap_mb 25 of bf16 gradients: 12.5M parameters) whose comm hook all-reduces each
      bucket's fp32 gradients during the last micro-batch's backward (trainer.py:786-852,
      gradient_accumulator.py:336-379): per_bucket. ZeRO-1: no DDP; one blocking all-reduce of the whole fp32 buffer
      after the rank's last backward (trainer.py:510-519: "instead we run all_reduce"), then the updated bf16
      parameters all-gathered (zero.py:118-119): after_stage and `zero1_all_reduce`.
    - each micro-batch's bf16 gradients are added into the fp32 buffer after its backward (gradient_accumulator.py:
      204-223): no gradient-accumulation fusion.
    - the buffer zeroed each step, and gradient clipping (clip_grad 1.0 in the campaign's config) reads it for the
      norm and scales it in place (clip_grads.py:45-94): the passes "zero", "nan_check" (one read, as the norm's)
      and "scale" (a read and a write, as the clip's); the all-reduce averages (op AVG), so no 1/dp pass of its own.
    - SwiGLU as eager split, silu and product (llama.py:194-201); RMSNorm and rotary are flash-attn's fused kernels;
      the loss casts the logits to fp32 and runs a sharded cross entropy (llama.py:874-880, :971-975):
      eager_ops swiglu and vocab_parallel_ce, loss_memory copy.
    - attention is flash-attn 2's varlen kernel (llama.py:271-299): attention_kernel fa2.
    Kept from the preset: blocking pipeline transfers (p2p.py:347-356 isend/irecv then wait), no parameter-gather
    overlap, exposed TP collectives (nanotron overlaps the column all-gather with the local shard's GEMM only and
    the backward's reduce-scatter with the weight-gradient GEMM: not modelled, so the TP terms are at most
    overstated)."""
    return execution("megatron").replace(
        grad_reduce_start="per_bucket" if zero_stage == 0 else "after_stage",
        bucket_params=12.5e6 if zero_stage == 0 else None, zero1_all_reduce=True, grad_accumulation_fusion=False,
        grad_buffer_passes=("zero", "nan_check", "scale"), eager_ops=("swiglu", "vocab_parallel_ce"),
        attention_kernel="fa2", loss_memory="copy")


def config_of(run: dict) -> ParallelConfig:
    tp, pp, dp, mbs, acc = (int(run[k]) for k in ("tp", "pp", "dp", "mbs", "batch_accum"))
    return ParallelConfig(tp=tp, pp=pp, dp=dp, micro_batch_size=mbs, global_batch_size=dp * mbs * acc, seq_len=SEQ,
                          schedule="1f1b", zero_stage=int(run["zero_stage"]), recompute="none",
                          sequence_parallel=tp > 1, dtype="bf16", attention="flash")


def nanotron_partition(model: ModelSpec, pp: int) -> list[list[int]]:
    """The [first, end) decoder layers of each pipeline rank as nanotron assigns them (models/base.py:215-236 and
    llama.py:913-925 at 9055c664): its pipeline blocks in order (embedding, the layers, final norm, LM head, fp32
    cast, loss), costed 4 h^2 + 3 h ffn per layer, vocab x h for the head and nothing for the rest; a block goes to
    the current rank, which moves on once the cumulative cost passes its share, (rank + 1) / pp of the total. The head
    can land before the last rank (the 1.34G model over 8 ranks: layers 3-3-2-3-2-3 on ranks 0-5, the head on rank
    6 and the fp32 cast and loss on rank 7); autoconf costs the head and the loss on the last stage, so ranks past
    the head's keep no layer."""
    h, layers = model.hidden_size, model.num_layers
    layer_cost = 4 * model.num_heads * (h // model.num_heads) * h + 3 * model.ffn_hidden_size * h
    costs = [0] + [layer_cost] * layers + [0, model.vocab_size * h, 0, 0]  # embedding ... loss
    total = sum(costs)
    thresholds = [total * (rank + 1) / pp for rank in range(pp)]
    rank, cumulative, owner = 0, 0, []
    for cost in costs:
        cumulative += cost
        owner.append(rank)
        if cumulative > thresholds[rank]:
            rank += 1
    layer_owner = owner[1:1 + layers]
    return [[sum(1 for r in layer_owner if r < stage), sum(1 for r in layer_owner if r <= stage)]
            for stage in range(pp)]


def predicted(run: dict, model: ModelSpec, clusters: dict) -> dict:
    """The prediction of one run: tokens/s per GPU, peak bytes and whether it fits; where the estimate refuses the
    layout, its reason ("refused")."""
    nodes = int(run["nodes"])
    if nodes not in clusters:
        clusters[nodes] = load_cluster(PROFILE, nodes=nodes)
    cluster, c = clusters[nodes], config_of(run)
    try:
        p = predict(model, cluster, c, partition=nanotron_partition(model, c.pp), execution=execution_of(c.zero_stage),
                    detail=False)[3]
    except UserError as err:
        return {"refused": str(err)}
    tokens = c.global_batch_size * SEQ / (p["iteration_time_s"] * c.world_size)
    # torch's max reserved (the source's "Mem Res") holds no CUDA context, which the estimate's peak does
    reserved = p["peak_memory_bytes"] - cluster.device.memory_overhead_bytes
    return {"tokens_per_s_per_gpu": tokens, "peak_bytes": p["peak_memory_bytes"], "reserved_bytes": reserved,
            "fits": p["fits"]}


REGIMES = ("data parallel only", "pipeline, no TP", "TP within a node", "TP within a node, with a pipeline",
           "TP across nodes")


def regime(c: ParallelConfig, gpus_per_node: int = 8) -> str:
    if c.tp > gpus_per_node:
        return REGIMES[4]
    if c.tp > 1:
        return REGIMES[3] if c.pp > 1 else REGIMES[2]
    return REGIMES[1] if c.pp > 1 else REGIMES[0]


def excess_per_layer_pass(run: dict, model: ModelSpec, c: ParallelConfig, tokens_predicted: float) -> float:
    """Seconds the measured step exceeds the predicted one per layer pass on the critical path: (m + pp - 1)
    micro-batches through the largest stage's layers (at least one), forward and backward counted as one pass."""
    step = c.global_batch_size * SEQ / c.world_size
    layers = max(1, max(end - first for first, end in nanotron_partition(model, c.pp)))
    passes = (c.num_microbatches + c.pp - 1) * layers
    return (step / float(run["tokens_per_s_per_gpu"]) - step / tokens_predicted) / passes


def compare(all_pp_runs: bool = False, limit: int | None = None) -> dict:
    """Every run estimated: the rank statistics per (model, nodes), the errors per regime and in all, and how the
    estimate's fit verdict matches the runs' outcome."""
    specs, clusters = models(), {}
    groups: dict[tuple, list] = defaultdict(list)
    for run in read_runs():
        if not all_pp_runs and int(run["pp"]) > 1 and run["after_pp_fix"] != "True":
            continue
        key = (run["model"], int(run["nodes"]))
        if limit is None or len(groups[key]) < limit:
            groups[key].append((run, predicted(run, specs[run["model"]], clusters)))
    rows, ranks, refused = [], [], []
    errors, memory_errors = [], []
    by_regime: dict[str, dict[str, list]] = {r: {"error": [], "memory": [], "excess": []} for r in REGIMES}
    fit = {"ran": [0, 0], "oom": [0, 0]}  # [predicted to fit, predicted not to]
    for (label, nodes), members in sorted(groups.items(), key=lambda kv: (specs[kv[0][0]].num_layers, kv[0])):
        ran = []
        for run, p in members:
            if "refused" in p:
                refused.append((run["job_id"], p["refused"]))
                continue
            outcome = "ran" if run["status"] == "Success" else "oom"
            fit[outcome][0 if p["fits"] else 1] += 1
            if outcome == "oom":
                continue
            c, measured = config_of(run), float(run["tokens_per_s_per_gpu"])
            error = p["tokens_per_s_per_gpu"] / measured - 1
            memory = p["reserved_bytes"] / (float(run["mem_res_gb"]) * GB) - 1
            errors.append(error)
            memory_errors.append(memory)
            kind = by_regime[regime(c)]
            kind["error"].append(error)
            kind["memory"].append(memory)
            kind["excess"].append(excess_per_layer_pass(run, specs[label], c, p["tokens_per_s_per_gpu"]))
            ran.append((measured, p["tokens_per_s_per_gpu"], run))
        if len(ran) < MIN_GROUP:
            continue
        rho = spearman([m for m, _, _ in ran], [q for _, q, _ in ran])
        best, chosen = max(ran, key=lambda x: x[0]), max(range(len(ran)), key=lambda i: ran[i][1])
        rows.append({"model": label, "nodes": nodes, "runs": len(ran), "spearman": rho,
                     "regret": regret([1 / m for m, _, _ in ran], chosen), "chosen": layout_label(ran[chosen][2]),
                     "chosen_measured": ran[chosen][0], "best": layout_label(best[2]), "best_measured": best[0]})
        ranks.append(rho)
    regimes = [{"regime": name, "runs": len(v["error"]), "median_error": median(v["error"]),
                "median_abs_error": median([abs(e) for e in v["error"]]), "median_memory_error": median(v["memory"]),
                "median_excess_ms": 1e3 * median(v["excess"])} for name, v in by_regime.items() if v["error"]]
    return {"groups": rows, "regimes": regimes, "throughput": error_stats(errors),
            "median_abs_error": median([abs(e) for e in errors]), "memory": error_stats(memory_errors),
            "median_abs_memory_error": median([abs(e) for e in memory_errors]), "fit": fit, "refused": refused,
            "spearman_median": median(ranks), "regret_median": median([r["regret"] for r in rows])}


def layout_label(run: dict) -> str:
    return (f"dp{run['dp']} tp{run['tp']} pp{run['pp']} mbs{run['mbs']} acc{run['batch_accum']} "
            f"zero{run['zero_stage']}")


def median(values: list) -> float:
    """The median of the values that are numbers (NaN where none is)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--all-pp-runs", action="store_true")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    out = compare(args.all_pp_runs, args.limit)
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        return
    print(f"Layouts of one model on one cluster vs Hugging Face's Ultra-Scale Playbook runs (nanotron, H100), "
          f"profile={PROFILE}")
    print("| model | nodes | runs | Spearman | regret | predicted best (measured tok/s/GPU) | measured best |")
    print("|---|---:|---:|---:|---:|---|---|")
    for g in out["groups"]:
        rho = "-" if g["spearman"] is None else f"{g['spearman']:.2f}"
        print(f"| {g['model']} | {g['nodes']} | {g['runs']} | {rho} | {100 * g['regret']:.1f}% | "
              f"{g['chosen']} ({g['chosen_measured']:.0f}) | {g['best']} ({g['best_measured']:.0f}) |")
    print(f"ranking: median Spearman {out['spearman_median']:.2f}, median regret {100 * out['regret_median']:.1f}% "
          f"over {len(out['groups'])} groups of {MIN_GROUP} runs or more")
    print()
    print("| regime | runs | median error | median abs error | measured step's excess per layer pass (ms, median) "
          "| median memory error (reserved) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in out["regimes"]:
        print(f"| {r['regime']} | {r['runs']} | {100 * r['median_error']:+.1f}% | {100 * r['median_abs_error']:.1f}% "
              f"| {r['median_excess_ms']:.2f} | {100 * r['median_memory_error']:+.1f}% |")
    print(f"throughput: {error_line(*out['throughput'], of='runs')} (median {100 * out['median_abs_error']:.2f}%)")
    print(f"peak reserved memory: {error_line(*out['memory'], of='runs')} "
          f"(median {100 * out['median_abs_memory_error']:.2f}%)")
    f = out["fit"]
    print(f"fit: of {sum(f['ran'])} runs that ran, {f['ran'][0]} predicted to fit; of {sum(f['oom'])} that ran out "
          f"of memory, {f['oom'][1]} predicted not to fit")
    if out["refused"]:
        print(f"refused by the estimate: {len(out['refused'])} runs ({out['refused'][0][1]})")


if __name__ == "__main__":
    main()
