"""Compares `estimate` with the Megatron-LM README's H100 weak-scaling table (Megatron-Core r0.8.0).

Every row of scripts/data/megatron_core_h100_weak_scaling.csv (its header cites the source) is estimated with the
`megatron-core` framework preset on the bundled dgx-h100-80g profile (data-sheet numbers, nothing fitted). The table
publishes per-GPU teraFLOP/s, MFU and the layout; its step time follows from Megatron's FLOPs formula
(`num_floating_point_operations`: 72 B s l h^2 (1 + s/(6h) + V/(12 l h)) for a GPT with a 4h MLP), which counts the
same FLOPs as `ModelSpec.model_flops_per_iteration`, so published and predicted MFU and throughput compare directly.

What the table does not publish, taken here as Megatron's defaults for such runs (stated, the same for every row):
GPT blocks (LayerNorm, GeLU MLP of 4h, untied input and output embeddings: the parameter counts of the table's
sizes need them), bf16, flash attention, no dropout, micro-batch 1, no activation recompute, sequence parallelism
wherever tp > 1 (--tp-comm-overlap needs it), the distributed optimizer (ZeRO-1; --overlap-param-gather needs it),
the 1F1B schedule without interleaving.

Usage: python scripts/truth_megatron_core.py [--json] [--terms] [--framework NAME] [--micro-batch B] [--flag K=V ...]

--terms prints what one micro-batch costs on one rank, term by term (milliseconds, forward + both backward passes):
the weight GEMMs of one block with the profile's size factor of each (forward FLOPs in GFLOP), the attention core,
the block's element-wise kernels, the head's GEMM and its loss kernels, the embedding; then the step's named terms
and the published step's excess per block and micro-batch.
--micro-batch B estimates every row at micro-batch B (at most the row's sequences per DP rank) instead of 1: the
sensitivity to the largest unpublished setting, not a fit (the default stays 1 for every row).
--flag KEY=VALUE changes a framework flag for every row (e.g. tp_comm_overlap=false: the TP collectives exposed).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from autoconf.cost.compute import gemms_time, layer_gemms, loss_bytes_per_logit, matmul_size_factor, model_pieces
from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.spec.dtypes import DTYPE_BYTES
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import execution, parse_flags, with_flags
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from truth_summary import error_line, error_stats

DATA = Path(__file__).resolve().parent / "data" / "megatron_core_h100_weak_scaling.csv"
PROFILE = "dgx-h100-80g"
SEQ, VOCAB = 4096, 131072


def read_rows(path: Path = DATA) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


def model_of(row: dict) -> ModelSpec:
    h = int(row["hidden"])
    heads = int(row["heads"])
    return ModelSpec(name=f"megatron-core-{row['model']}", arch="gpt", num_layers=int(row["layers"]), hidden_size=h,
                     num_heads=heads, num_kv_heads=heads, ffn_hidden_size=4 * h, vocab_size=VOCAB, max_seq_len=SEQ,
                     tied_embeddings=False, dropout=0.0)


def config_of(row: dict, micro_batch: int = 1) -> ParallelConfig:
    """The row's layout with the script's stated assumptions; `micro_batch` (not published; 1 unless asked) is
    capped at the row's sequences per data-parallel rank."""
    tp, pp, dp = int(row["tp"]), int(row["pp"]), int(row["dp"])
    b = min(micro_batch, int(row["global_batch"]) // dp)
    return ParallelConfig(tp=tp, pp=pp, dp=dp, micro_batch_size=b, global_batch_size=int(row["global_batch"]),
                          seq_len=SEQ, schedule="1f1b", zero_stage=1, recompute="none", sequence_parallel=tp > 1,
                          dtype="bf16", attention="flash")


def compare(framework: str = "megatron-core", micro_batch: int = 1, flags: dict | None = None) -> dict:
    """Every row estimated with the `framework` preset (with `flags` changed, `--flag`) at `micro_batch`."""
    ex = with_flags(execution(framework), flags or {})
    rows, errors = [], []
    for row in read_rows():
        model, c = model_of(row), config_of(row, micro_batch)
        gpus = int(row["gpus"])
        assert c.world_size == gpus, row
        cluster = load_cluster(PROFILE, nodes=gpus // 8)
        plan = estimate(model, cluster, c, execution=ex)
        p = plan.prediction
        flops = model.model_flops_per_iteration(SEQ, c.global_batch_size)
        published_s = flops / (float(row["tflops_per_gpu"]) * 1e12 * gpus)
        tokens_per_gpu = c.global_batch_size * SEQ / gpus
        error = published_s / p["iteration_time_s"] - 1  # of the throughput
        errors.append(abs(error))
        terms = p["time_breakdown"]
        rows.append({"model": row["model"], "layout": f"tp{c.tp} pp{c.pp} dp{c.dp}", "gpus": gpus,
                     "published_mfu_pct": float(row["mfu_pct"]),
                     "predicted_mfu_pct": round(100 * p["mfu"], 1),
                     "published_tokens_per_s_per_gpu": round(tokens_per_gpu / published_s),
                     "predicted_tokens_per_s_per_gpu": round(tokens_per_gpu / p["iteration_time_s"]),
                     "error_pct": round(100 * error, 2),
                     "predicted_step_s": round(p["iteration_time_s"], 3), "published_step_s": round(published_s, 3),
                     "peak_memory_GiB": round(p["peak_memory_bytes"] / 2**30, 1),
                     "breakdown_s": {k: round(v, 3) for k, v in terms.items()}})
    mean, largest, _ = error_stats(errors)
    summary = {"throughput_mean_abs_error_pct": mean, "throughput_max_abs_error_pct": largest, "rows": len(rows)}
    return {"profile": PROFILE, "framework": framework, "flags": flags or {}, "micro_batch": micro_batch, "rows": rows,
            "summary": summary}


def micro_batch_terms(row: dict, framework: str = "megatron-core", micro_batch: int = 1,
                      flags: dict | None = None) -> dict:
    """Milliseconds one micro-batch costs on one TP rank, by term (forward + input-gradient + weight-gradient
    passes), from the specification model's own pieces: per block the weight GEMMs (with each GEMM's forward GFLOP
    and size factor), the attention core and the element-wise rest; the head's GEMM, its loss kernels and its norm;
    the embedding; and the whole micro-batch over the stage's blocks."""
    model, c = model_of(row), config_of(row, micro_batch)
    cluster = load_cluster(PROFILE, nodes=int(row["gpus"]) // 8)
    ex = with_flags(execution(framework), flags or {})
    pieces = model_pieces(model, cluster, c, execution=ex)
    gemms = layer_gemms(model, c.seq_len, c.micro_batch_size, c.tp)
    block_gemms = 3 * gemms_time(cluster, "bf16", gemms)
    head_gemm = 3 * gemms_time(cluster, "bf16", [model.head_forward_flops(c.seq_len, c.micro_batch_size) / c.tp])
    logits = c.seq_len * c.micro_batch_size * model.vocab_size / c.tp
    loss = logits * sum(loss_bytes_per_logit(ex.eager_ops, DTYPE_BYTES[c.dtype])) / (
        cluster.device.memory_bandwidth_Bps * cluster.eff("memory"))
    layers = model.num_layers // c.pp
    ms = 1e3
    return {"gemm_gflop": [round(f / 1e9) for f in gemms],
            "gemm_size_factor": [round(matmul_size_factor(cluster, f), 3) for f in gemms],
            "block_gemms_ms": block_gemms * ms, "attention_core_ms": pieces.attention_core.total * ms,
            "block_elementwise_ms": (pieces.block_rest.total - block_gemms) * ms, "block_ms": pieces.block.total * ms,
            "head_gemm_ms": head_gemm * ms, "loss_ms": loss * ms,
            "head_norm_ms": (pieces.head.total - head_gemm - loss) * ms, "embedding_ms": pieces.embedding.total * ms,
            "layers_per_stage": layers,
            "micro_batch_ms": (layers * pieces.block.total + pieces.head.total + pieces.embedding.total) * ms}


def print_terms(result: dict) -> None:
    print("One micro-batch on one rank, ms (forward + backward): per block GEMMs [forward GFLOP x size factor], "
          "attention core, element-wise; head GEMM, loss, embedding; the pipeline rank's whole micro-batch")
    print(f"{'model':6s} {'block GEMMs':>11s} {'[GFLOP x factor]':40s} {'attn':>6s} {'elem':>6s} {'block':>6s} "
          f"{'head mm':>7s} {'loss':>6s} {'emb':>5s} {'layers':>6s} {'mb ms':>7s}")
    for row, r in zip(read_rows(), result["rows"]):
        t = micro_batch_terms(row, result["framework"], result["micro_batch"], result["flags"])
        shapes = " ".join(f"{g}x{f:.2f}" for g, f in zip(t["gemm_gflop"], t["gemm_size_factor"]))
        print(f"{r['model']:6s} {t['block_gemms_ms']:11.2f} {shapes:40s} {t['attention_core_ms']:6.2f} "
              f"{t['block_elementwise_ms']:6.2f} {t['block_ms']:6.2f} {t['head_gemm_ms']:7.2f} {t['loss_ms']:6.2f} "
              f"{t['embedding_ms']:5.2f} {t['layers_per_stage']:6d} {t['micro_batch_ms']:7.1f}")
    print("The step's terms on the critical rank, s (estimate's time_breakdown), against the published step; the "
          "published step's excess over the predicted one per block and micro-batch of a pipeline rank, in ms and as "
          "a share of the predicted block")
    names = list(result["rows"][0]["breakdown_s"])
    print(f"{'model':6s} " + " ".join(f"{n:>9s}" for n in names) + f" {'predicted':>9s} {'published':>9s} "
          f"{'excess ms':>9s} {'of block':>8s}")
    for row, r in zip(read_rows(), result["rows"]):
        t = micro_batch_terms(row, result["framework"], result["micro_batch"], result["flags"])
        per_block = excess_per_block(r["published_step_s"], r["predicted_step_s"], t["layers_per_stage"],
                                     config_of(row, result["micro_batch"]).num_microbatches)
        print(f"{r['model']:6s} " + " ".join(f"{r['breakdown_s'][n]:9.3f}" for n in names)
              + f" {r['predicted_step_s']:9.3f} {r['published_step_s']:9.3f} {1e3 * per_block:9.2f} "
              f"{100 * per_block / (t['block_ms'] / 1e3):7.0f}%")


def excess_per_block(published_s: float, predicted_s: float, layers: int, micro_batches: int) -> float:
    """Seconds by which the published step exceeds the predicted one, per transformer block and micro-batch of a
    pipeline rank: what a cost charged once per block and micro-batch (a host overhead per layer) would have to be
    to close the gap alone (negative where the prediction is slow)."""
    return (published_s - predicted_s) / (layers * micro_batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--framework", default="megatron-core")
    parser.add_argument("--terms", action="store_true", help="each row's time, term by term")
    parser.add_argument("--micro-batch", type=int, default=1,
                        help="every row's micro-batch (not published; capped at the row's sequences per DP rank)")
    parser.add_argument("--flag", action="append", default=[], metavar="KEY=VALUE",
                        help="a framework flag changed for every row (as estimate's --framework-flag)")
    args = parser.parse_args(argv)
    result = compare(args.framework, args.micro_batch, parse_flags(args.flag))
    if args.terms and not args.json:
        print_terms(result)
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Throughput vs the Megatron-LM README H100 weak-scaling table (Megatron-Core r0.8.0), "
          f"framework={result['framework']}, profile={result['profile']}"
          + (f", micro-batch {result['micro_batch']} (capped per row)" if result["micro_batch"] != 1 else "")
          + "".join(f", {k}={v}" for k, v in result["flags"].items()))
    print(f"{'model':6s} {'layout':15s} {'GPUs':>5s} {'MFU pub':>8s} {'MFU pred':>8s} {'tok/s/GPU pub':>13s} "
          f"{'pred':>7s} {'error':>8s} {'mem GiB':>8s}")
    for r in result["rows"]:
        print(f"{r['model']:6s} {r['layout']:15s} {r['gpus']:5d} {r['published_mfu_pct']:7.0f}% "
              f"{r['predicted_mfu_pct']:7.1f}% {r['published_tokens_per_s_per_gpu']:13d} "
              f"{r['predicted_tokens_per_s_per_gpu']:7d} {r['error_pct']:+7.2f}% {r['peak_memory_GiB']:8.1f}")
    s = result["summary"]
    print(f"throughput: {error_line(s['throughput_mean_abs_error_pct'], s['throughput_max_abs_error_pct'], s['rows'])} "
          f"(error = predicted / published throughput - 1)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"{sys.argv[0]}: error: {e}")
