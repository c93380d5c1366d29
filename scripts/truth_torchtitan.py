"""Compares `estimate` with torchtitan's published throughput and peak memory.

Rows: scripts/data/torchtitan_published.csv (its header cites the sources). Each row is estimated with the
`torchtitan` framework preset on the profile the data file names for it (nothing fitted); a row that needs what the
cost model does not describe (Float8, async TP, layer-frequency selective recompute) is listed with the reason and
left out of the errors. The row's kernels follow its run: its eager ops (RMSNorm fused where the run used norm_type
"fused_rmsnorm", the data file's norm_type column), and the plan's `compile` field set as the row ran, under which
the estimate fuses what torch.compile fuses (`autoconf.spec.frameworks.compiled_ops`).

torchtitan's layouts as its configs run them: FSDP2 over dp (fully_shard per block, reshard after forward without
pipelining: ZeRO 3), tensor parallelism with sequence parallelism, one micro-batch per step (local batch = micro-batch),
bf16 parameters with fp32 gradient reduction, flash (SDPA) attention; the Llama 3 / 3.1 presets (the 3.1 models differ
from 3 only in RoPE scaling and context, which cost nothing here at seq 8192) and, for the April 2024 A100 table, the
Llama 2 presets at seq 4096.

Usage: python scripts/truth_torchtitan.py [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from autoconf.cost.estimate import estimate
from autoconf.cost.memory import largest_block_bytes, rank_params
from autoconf.cost.moe import local_params
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import Execution, execution, loss_compiled
from autoconf.spec.dtypes import DTYPE_BYTES
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model
from truth_summary import error_line, error_stats

DATA = Path(__file__).resolve().parent / "data" / "torchtitan_published.csv"
GIB = 2**30
# A row's activation checkpointing as its label names it (torchtitan's "op" policy is the data file's "selective").
AC_LABELS = {"none": "no AC", "selective": "AC op", "full": "AC full", "selective-layer": "AC every {k} blocks"}


def read_rows(path: Path = DATA) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


def not_modelled(row: dict) -> str | None:
    """Why a row is outside what the cost model describes, or None."""
    needs = [name for name in ("float8", "async_tp") if row[name] == "1"]
    return ", ".join(needs) or None


def execution_of(row: dict) -> Execution:
    """The `torchtitan` preset with the row's kernels, as the torchtitan of these runs (9dec370 and older) ran its
    Llama without torch.compile: the rotary embedding, SwiGLU and the fp32 loss eager, K and V copied to every head
    (`repeat_kv`), its fp32 RMSNorm where the run's norm_type is "rmsnorm" (not its Triton "fused_rmsnorm"). The
    compile rows' fusion is the config's `compile` field (`config_of`); their loss stayed eager (`compile_loss`:
    9dec370's train.py leaves `torch.compile(loss_fn)` commented out). AdamW ran torch's foreach kernels
    (`adam_kernels`): `--optimizer.fused` was an opt-in flag at 9dec370 and 9515a140b (torchtitan/optimizer.py passes
    `foreach=not fused`) that none of the runs' train configs sets, and 1ea476e9f's (and 395a52627's, the Llama 2
    rows') train.py builds AdamW with `foreach=True`; torchtitan 0.3.0, the preset, defaults to the fused kernel."""
    ops = ("rotary", "swiglu", "repeat_kv", "cross_entropy") + (("rmsnorm",) if row["norm_type"] == "rmsnorm" else ())
    return execution("torchtitan").replace(eager_ops=ops, compile_loss=False, adam_kernels="foreach")


def reserved_bytes(model, cluster, c: ParallelConfig, peak: float, execution: Execution | None = None,
                   first_step: bool = False) -> float:
    """What torch's caching allocator reports as max reserved (torchtitan's logged memory) for a one-micro-batch
    FSDP2 step whose estimated peak is `peak` (at the loss backward): the peak less the CUDA context (the profile's
    memory_overhead_bytes, outside the allocator's count), plus blocks the allocator keeps cached and cannot hand to
    the peak's requests. Its pools are per size and per stream (blocks are reused only for requests they fit, on the
    stream that allocated them) and it gives cached blocks back only when cudaMalloc fails, so at the peak it still
    holds: the low-precision logits block, freed (`del pred`) before an eager loss backward asks for fp32 blocks twice
    its size (a compiled loss, `frameworks.loss_compiled` under `execution`, keeps the logits for its backward, which
    asks for one block of their size: nothing cached); in FSDP2's reduce-scatter stream, the previous step's sharded
    fp32 gradients (set to None by zero_grad, 4/dp bytes per parameter) and one block's fp32 reduce-scatter input; in
    its all-gather stream, one block's gathered parameters (with `first_step`, a run's first step: no previous
    step's gradients are cached). Under context parallelism the logits are the rank's
    seq_len / cp tokens' and the gradients shard over dp x cp (torchtitan's dp_shard x cp mesh). Not measured on a GPU
    here: a reading of the allocator's rules (c10/cuda/CUDACachingAllocator.cpp) against torchtitan's train step and
    FSDP2's streams."""
    e = DTYPE_BYTES[c.dtype]
    layer = largest_block_bytes(model, c)
    cached = 0.0 if loss_compiled(c, execution, cluster.device.kind) else (
        e * c.local_seq_len * c.micro_batch_size * model.vocab_size / c.tp)
    if c.zero_sharded:
        whole = sum(local_params(c, *rank_params(model, [[0, model.num_layers]], [0], "torch")))
        cached += (0.0 if first_step else 4 * whole / c.dp_cp) + 4 * layer + e * layer
    return peak - cluster.device.memory_overhead_bytes + cached


def config_of(row: dict, model) -> ParallelConfig:
    """The row's layout. A "selective-layer" row (torchtitan's selective_ac_option k: every k-th transformer block
    wrapped in full activation checkpointing) is full recompute of num_layers // k blocks, the count torchtitan
    wraps; at pp 1 which blocks they are moves neither time nor memory."""
    tp, dp, b = int(row["tp"]), int(row["dp"]), int(row["local_batch"])
    recompute, layers = row["recompute"], None
    if recompute == "selective-layer":
        recompute, layers = "full", (model.num_layers // int(row["ac_every"]),)
    return ParallelConfig(tp=tp, pp=1, dp=dp, micro_batch_size=b, global_batch_size=b * dp,
                          seq_len=int(row["seq_len"]), zero_stage=3 if dp > 1 else 0, recompute=recompute,
                          recompute_layers=layers, sequence_parallel=tp > 1, dtype="bf16", attention="flash",
                          compile=row["compile"] == "1")


def compare() -> dict:
    rows, skipped, tps_errors, mem_errors = [], [], [], []
    for row in read_rows():
        label = (f"{row['source']}: {row['model']} {row['gpus']} GPUs tp{row['tp']} dp{row['dp']} b{row['local_batch']}"
                 + f" {AC_LABELS[row['recompute']].format(k=row['ac_every'])}"
                 + (" compile" if row["compile"] == "1" else ""))
        reason = not_modelled(row)
        if reason:
            skipped.append({"row": label, "needs": reason})
            continue
        model = load_model(row["model"])
        c = config_of(row, model)
        gpus = int(row["gpus"])
        cluster = load_cluster(row["profile"], nodes=max(1, gpus // 8))
        plan = estimate(model, cluster, c, execution=execution_of(row))
        p = plan.prediction
        predicted_tps = p["tokens_per_s"] / gpus
        published_tps = float(row["tokens_per_s_per_gpu"])
        error = predicted_tps / published_tps - 1
        tps_errors.append(abs(error))
        out = {"row": label, "recompute": c.recompute, "profile": row["profile"],
               "published_tokens_per_s_per_gpu": published_tps, "predicted_tokens_per_s_per_gpu": round(predicted_tps),
               "tps_error_pct": round(100 * error, 2), "predicted_mfu_pct": round(100 * p["mfu"], 1),
               "published_mfu_pct": float(row["mfu_pct"]) if row["mfu_pct"] else None,
               "predicted_memory_GiB": round(p["peak_memory_bytes"] / GIB, 1),
               "published_memory_GiB": float(row["memory_gib"]) if row["memory_gib"] else None,
               "memory_error_pct": None}
        reserved = reserved_bytes(model, cluster, c, p["peak_memory_bytes"], execution_of(row))
        out["predicted_reserved_GiB"] = round(reserved / GIB, 1)
        if out["published_memory_GiB"]:
            mem_error = reserved / GIB / out["published_memory_GiB"] - 1
            mem_errors.append(abs(mem_error))
            out["memory_error_pct"] = round(100 * mem_error, 2)
        rows.append(out)
    tps, mem = error_stats(tps_errors), error_stats(mem_errors)
    summary = {"throughput_mean_abs_error_pct": tps[0], "throughput_max_abs_error_pct": tps[1],
               "throughput_rows": tps[2], "memory_mean_abs_error_pct": mem[0], "memory_max_abs_error_pct": mem[1],
               "memory_rows": mem[2]}
    return {"framework": "torchtitan", "rows": rows, "not_modelled": skipped, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = compare()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("torchtitan published runs vs estimate, framework=torchtitan (profile per row from the data file)")
    print(f"{'row':77s} {'profile':25s} {'tok/s/GPU pub':>13s} {'pred':>6s} {'error':>8s} "
          f"{'GiB pub':>8s} {'resvd':>6s} {'error':>8s} {'peak':>6s}")
    for r in result["rows"]:
        mem_pub = f"{r['published_memory_GiB']:8.1f}" if r["published_memory_GiB"] else f"{'-':>8s}"
        mem_err = f"{r['memory_error_pct']:+7.2f}%" if r["memory_error_pct"] is not None else f"{'-':>8s}"
        print(f"{r['row']:77s} {r['profile']:25s} {r['published_tokens_per_s_per_gpu']:13.0f} "
              f"{r['predicted_tokens_per_s_per_gpu']:6d} {r['tps_error_pct']:+7.2f}% {mem_pub} "
              f"{r['predicted_reserved_GiB']:6.1f} {mem_err} {r['predicted_memory_GiB']:6.1f}")
    for r in result["not_modelled"]:
        print(f"{r['row']:77s} not modelled: needs {r['needs']}")
    s = result["summary"]
    throughput = error_line(s["throughput_mean_abs_error_pct"], s["throughput_max_abs_error_pct"], s["throughput_rows"])
    memory = error_line(s["memory_mean_abs_error_pct"], s["memory_max_abs_error_pct"], s["memory_rows"])
    print(f"throughput: {throughput}; memory: {memory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
