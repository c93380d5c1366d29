"""Compares `estimate` with NVIDIA's published NeMo / Megatron-Core pre-training throughput on DGX-H100 and DGX-B200.

Data: scripts/data/published_nemo.json, one entry per published table (NeMo 24.07's FP8 table, Megatron-Bridge's
25.11 H100 and B200 tables, 25.09's token-drop row), each citing its page, release and date, and the recipe files its
unprinted flags come from.

Every row is estimated with the `megatron-core` framework preset on the bundled profile its table names (`profile`:
`dgx-h100-80g` unless stated; the B200 table `dgx-b200-180g`, whose efficiencies are the H100's, assumed; data-sheet
numbers, nothing fitted) and the row's own layout: #GPUs, global and micro batch, sequence length, TP, PP, CP, VP and
precision as printed. What the tables do not print is taken from the recipe files of the same release (cited in the
data file), one rule for every row, never chosen per row to improve agreement:
- sequence parallelism, recompute, TP communication overlap (userbuffers) and the fused cross entropy: the recipe's
  own value per row (NeMo-Framework-Launcher 24.07 YAML; Megatron-Bridge v0.2.0 workload configs and recipes).
  The fused cross entropy drops the preset's eager vocab-parallel loss kernels (`eager_ops`); the others are
  `ParallelConfig` fields or the preset's `tp_comm_overlap` flag.
- ZeRO-1 through Megatron's distributed optimizer with overlapped gradient reduction and parameter gather (every
  recipe: distributed_fused_adam / use_distributed_optimizer with both overlaps), the preset's 40M-parameter buckets.
- the schedule: interleaved 1F1B when VP > 1, else 1F1B; flash attention (Transformer Engine's fused attention);
  context parallelism as Megatron-Core's default `cp_comm_type` p2p, a ring (`cp_comm` "ring").
- the vocabulary padded as Megatron pads it: to a multiple of 128 x tp (make_vocab_size_divisible_by 128;
  Megatron-Bridge should_pad_vocab).
- memory: the recipe's gradient buffer dtype (`grad_buffer_dtype`: bf16 in Megatron-Bridge's Llama configs and in
  NeMo 24.07's FP8 recipe files), fp8 parameters (`fp8_params`: Megatron-Bridge's FP8-CS recipe), the table's
  optimizer (NeMo 24.07: apex's DistributedFusedAdam; Megatron-Bridge: Megatron-Core's distributed optimizer) and
  cross entropy (Transformer Engine's for Megatron-Bridge), each a framework flag (spec/frameworks.py). The DP
  traffic reads the same flags (`dp_buffer_bytes`: gradients in the buffer's dtype, bf16 parameters unless
  fp8_params).
- FP8 is autoconf's tensorwise dynamic scaling for both tables (NeMo 24.07 ran TE's delayed scaling).
- MoE rows: the table's EP (expert TP 1, every Qwen3 config's expert_tensor_parallel_size), and where the recipe
  sets moe_a2a_overlap, Megatron-Core's combined 1F1B (the preset's `overlap_paired_chunks`, NCCL's all-to-all taking
  the profile's `collective_sm_share`: see `execution_of`); each row's "note" in the data file cites the recipe.
Rows that need what autoconf cannot express print "not modelled: <reason>" and count in no mean. "fits": the predicted
peak within the profile's usable memory (its device's memory less its headroom); every published run trained on the
table's system.
`--memory` prints the peak rank of each row term by term beside Megatron-LM's own theoretical estimate; `--terms`
what one MoE block costs a rank per micro-batch in each MoE row, term by term, and the step's terms.

For each row it also estimates the same layout in bf16 and prints the predicted FP8 / BF16 speed-up; neither table
publishes a BF16 row of an FP8 layout, so that ratio has no published counterpart here. The "FLOPs" column is the
publisher's model TFLOP/s per GPU over tokens/s per GPU times autoconf's model FLOPs per token: 1.00 when both count
the same model FLOPs (a check of the model spec, not of the estimate).

`--gaps` the published step's excess over the predicted one per block and micro-batch of each dense row, beside the
block's predicted time (the test of a per-layer host overhead, docs/accuracy.md).

`--flag KEY=VALUE` (repeatable) changes a framework flag for every row after the row's own (e.g.
tp_comm_overlap=false: every TP collective exposed).

`--picks` runs autoconf's search on every modelled row's model, GPUs, batch, sequence and precision (the row's
framework flags) and prints its pick beside the published layout, both predicted (`planner_picks`), dense rows then
MoE rows.

Usage: python scripts/truth_nemo.py [--json | --memory | --terms | --gaps | --picks] [--flag KEY=VALUE ...]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from autoconf.cost.estimate import estimate, schedule_inflight, stage_to_rank
from autoconf.cost.memory import (fp8_weight_cache_bytes, layer_activation_bytes, logits_temporary_bytes,
                                  rank_block_params, rank_params)
from autoconf.cost.compute import attention_gemms, gemms_time, model_pieces
from autoconf.cost.fp8 import cast_seconds, mlp_cast_elements, scaling_time
from autoconf.cost.moe import (blocks_params, expert_cast_elements, expert_gemms, load_imbalance, local_params,
                               routed_copy_bytes, rows_per_expert)
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.dtypes import precision
from autoconf.spec.frameworks import execution, parse_flags
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from truth_summary import error_line, error_stats

DATA = Path(__file__).resolve().parent / "data" / "published_nemo.json"
PROFILE = "dgx-h100-80g"
FRAMEWORK = "megatron-core"
VOCAB_MULTIPLE = 128  # Megatron's make_vocab_size_divisible_by, times tp
H100_SMS = 132  # streaming multiprocessors of an H100 SXM (NVIDIA H100 Tensor Core GPU Architecture whitepaper)
GiB = 2**30
OVERRIDES: dict = {}  # framework flags changed for every row (`--flag KEY=VALUE`), after each row's own


def load() -> dict:
    return json.loads(DATA.read_text())


def not_modelled(row: dict, models: dict) -> str | None:
    """Why autoconf cannot describe this row's run, or None."""
    if row["model"] not in PRESETS and row["model"] not in models:
        return (f"no model spec for {row['model']} (GPT-OSS: attention sinks, biased experts and its clamped SwiGLU "
                f"are not expressible)")
    return None


def model_of(row: dict, models: dict, tp: int) -> ModelSpec:
    if row["model"] in PRESETS:
        model = PRESETS[row["model"]]
    else:
        model = ModelSpec(name=row["model"], **models[row["model"]])
    step = VOCAB_MULTIPLE * tp
    return dataclasses.replace(model, vocab_size=-(-model.vocab_size // step) * step)


def config_of(row: dict, dtype: str) -> ParallelConfig:
    tp, pp, cp = row["tp"], row["pp"], row["cp"]
    dp = row["gpus"] // (tp * pp * cp)
    vp = row.get("vp") or 1
    return ParallelConfig(tp=tp, pp=pp, dp=dp, cp=cp, cp_comm="ring", vpp=vp, ep=row.get("ep", 1),
                          etp=row.get("etp", 1), micro_batch_size=row["mbs"],
                          global_batch_size=row["gbs"], seq_len=row["seq_len"],
                          schedule="interleaved-1f1b" if vp > 1 else "1f1b",
                          # Megatron-FSDP (the table's FSDP column): ZeRO-3, every micro-batch reduce-scattered
                          zero_stage=3 if row.get("fsdp") else 1, grad_reduce="microbatch" if row.get("fsdp") else "step",
                          recompute=row["recompute"], selective_recompute=row.get("selective_recompute"),
                          sequence_parallel=row["sequence_parallel"], dtype=dtype, attention="flash")


def execution_of(row: dict, table: dict):
    """The megatron-core preset with the row's recipe settings: TP overlap, the gradient buffer's dtype, fp8
    parameters, the table's optimizer, and the cross entropy (fused: no eager loss kernels; Transformer Engine's
    implementation writes the gradient into the logits, Megatron-Core's own keeps the fp32 softmax as the
    preset's unfused one does), and the passes over the gradient buffer: none counted for apex's distributed Adam
    (NeMo 24.07 does not run Megatron-Core's DDP buffer), the zeroing alone for Megatron-Bridge's performance runs
    (scripts/performance/utils/helpers.py at v0.2.0 turns check_for_nan_in_grad off; recipes/llama/llama3.py
    averages in the collective, so nothing scales the buffer). An MoE row with `moe_a2a_overlap` (Megatron-Bridge
    v0.2.0 scripts/performance/utils/helpers.py set_moe_a2a_overlap_overrides: overlap_moe_expert_parallel_comm and
    delay_wgrad_compute) overlaps its schedule's paired chunks (`overlap_paired_chunks`: Megatron-Core's combined
    1F1B, `ScheduleSpec.pairs` of interleaved-1f1b); its dispatcher is NCCL's all-to-all, which states no SM count
    of its own (`overlap_comm_sm_share` 0), so the exchange takes an NCCL collective's share of the device, the
    profile's `collective_sm_share` (`estimate.exchange_sm_share`), unless the row's `moe_deepep_sms` names the SMs
    of DeepEP's kernels (Megatron-Core's flex dispatcher; its share of the H100's H100_SMS). A row's
    `moe_fp8_padding` replaces the preset's where its recipe makes every expert's row count a multiple of 16 (token
    drop with padding to capacity), so Transformer Engine's fp8 padding copies nothing."""
    flags = {"tp_comm_overlap": row["tp_comm_overlap"], "grad_buffer_dtype": row["grad_buffer_dtype"],
             "fp8_params": row["fp8_params"], "optimizer": table["optimizer"],
             "keep_fp8_transpose": bool(row.get("keep_fp8_transpose")),
             "grad_buffer_passes": () if table["optimizer"] == "apex" else ("zero",),
             "overlap_paired_chunks": bool(row.get("moe_a2a_overlap"))}
    if "moe_fp8_padding" in row:
        flags["moe_fp8_padding"] = row["moe_fp8_padding"]
    if row.get("moe_deepep_sms"):  # Megatron-Core's flex dispatcher over DeepEP: its kernels on their own SMs
        flags["overlap_comm_sm_share"] = row["moe_deepep_sms"] / H100_SMS
    if row.get("selective_recompute"):  # a recipe's recompute_modules (Megatron-Core's selective granularity)
        flags["selective_recompute"] = row["selective_recompute"]
    if row["cross_entropy_fusion"]:
        flags["eager_ops"] = ()
        if table["cross_entropy_fusion_impl"] == "te":
            flags["loss_memory"] = "fused"
    return execution(FRAMEWORK).replace(**{**flags, **OVERRIDES})


def cluster_of(row: dict, table: dict):
    """The table's profile (`PROFILE` unless it names one) with the row's nodes of 8 GPUs."""
    return load_cluster(table.get("profile", PROFILE), nodes=row["gpus"] // 8)


def predict(row: dict, table: dict, model: ModelSpec, dtype: str) -> dict:
    cluster = cluster_of(row, table)
    c = config_of(row, dtype)
    assert c.world_size == row["gpus"], row
    p = estimate(model, cluster, c, execution=execution_of(row, table), detail=False).prediction
    return {"tokens_per_s_per_gpu": p["tokens_per_s"] / row["gpus"], "peak_memory_gib": p["peak_memory_bytes"] / GiB,
            "fits": p["fits"]}


def compare_row(row: dict, models: dict, table: dict) -> dict:
    out = {"label": row["label"], "precision": row["precision"], "gpus": row["gpus"],
           "layout": f"tp{row['tp']} pp{row['pp']} cp{row['cp']} vp{row.get('vp') or 1}"
                     + (f" ep{row['ep']}" if row.get("ep", 1) > 1 else ""),
           "published_tps": row["tokens_per_s_per_gpu"]}
    reason = not_modelled(row, models)
    if reason:
        return {**out, "not_modelled": reason}
    model = model_of(row, models, row["tp"])
    try:
        ours = predict(row, table, model, row["precision"])
        bf16 = predict(row, table, model, "bf16") if row["precision"] == "fp8" else None
    except UserError as e:
        return {**out, "not_modelled": str(e)}
    flops_per_token = model.model_flops_per_iteration(row["seq_len"], row["gbs"]) / (row["gbs"] * row["seq_len"])
    out.update(moe=model.moe is not None, predicted_tps=round(ours["tokens_per_s_per_gpu"], 1),
               error_pct=round(100 * (ours["tokens_per_s_per_gpu"] / row["tokens_per_s_per_gpu"] - 1), 2),
               peak_memory_gib=round(ours["peak_memory_gib"], 1), fits=ours["fits"],
               flops_ratio=round(row["model_tflops_per_gpu"] * 1e12
                                 / (row["tokens_per_s_per_gpu"] * flops_per_token), 3))
    if bf16:
        out.update(predicted_bf16_tps=round(bf16["tokens_per_s_per_gpu"], 1),
                   predicted_speedup=round(ours["tokens_per_s_per_gpu"] / bf16["tokens_per_s_per_gpu"], 3))
    return out


def megatron_warmup_inflight(c: ParallelConfig, rank: int) -> int:
    """Micro-batches (of one chunk) Megatron-Core's schedule holds on pipeline `rank` at its peak: the warm-up
    forwards plus the steady state's one; interleaved, (pp - rank - 1) x 2 + (vpp - 1) x pp warm-up forwards
    (megatron/core/pipeline_parallel/schedules.py, microbatch_group_size_per_vp_stage = pp), at most every one."""
    m = c.num_microbatches
    if c.vpp > 1:
        return min((c.pp - rank - 1) * 2 + (c.vpp - 1) * c.pp + 1, m * c.vpp)
    return min(c.pp - rank, m)


def megatron_theoretical_gib(model: ModelSpec, c: ParallelConfig) -> dict:
    """Megatron-LM's own published estimate (megatron/training/theoretical_memory_usage.py,
    report_theoretical_memory), restated: the most loaded shard (its 1/pp of the blocks plus the embedding, and
    the output layer too when untied at pp 1) at 6 + 12/dp bytes per parameter (the distributed optimizer), and the
    first stage's activations under sequence parallelism and selective recompute, s b h (18 + 4 f/h) per layer
    over all L layers (pp micro-batches in flight), times 1 + (pp - 1)/(pp vpp) when interleaved, or min(1, m/pp)
    with pp > 1 otherwise, plus the embedding's input and dropout, and at pp 1 the output layer's input and logits
    (4 s b h (1 + V/h)), over tp. It counts neither GQA, SwiGLU's third matrix in the activations, CP, fp8 nor
    the runtime's buffers."""
    s, b, h, f, V = c.seq_len, c.micro_batch_size, model.hidden_size, model.ffn_hidden_size, model.vocab_size
    blocks = blocks_params(model, 0, model.num_layers)[0] + model.hidden_size * (2 if model.arch == "gpt" else 1)
    embedding = h * V
    shard = (blocks / c.pp + embedding) / c.tp
    if not model.tied_embeddings and c.pp == 1:
        shard += embedding / c.tp
    weights_optimizer = shard * (6 + 12 / c.dp)
    act = s * b * h * (18 + 4 * f / h) * model.num_layers + 8 * s * b * c.pp + s * b * h * c.pp
    if c.vpp > 1:
        act *= 1 + (c.pp - 1) / (c.pp * c.vpp)
    elif c.pp > 1:
        act *= min(1.0, c.num_microbatches / c.pp)
    if c.pp == 1:
        act += s * b * h * 4 * (1 + V / h)
    act /= c.tp
    return {"weights_optimizer": weights_optimizer / GiB, "activations": act / GiB,
            "total": (weights_optimizer + act) / GiB}


def memory_breakdown(row: dict, table: dict, models: dict) -> dict:
    """The estimate's peak rank term by term (GiB), beside Megatron-Core's in-flight count for that rank and
    Megatron-LM's theoretical estimate."""
    model = model_of(row, models, row["tp"])
    c = config_of(row, row["precision"])
    ex = execution_of(row, table)
    plan = estimate(model, cluster_of(row, table), c, execution=ex, detail=False)
    memory = plan.prediction["memory_per_stage"]
    rank = max(range(len(memory)), key=lambda r: memory[r]["total"])
    owner = stage_to_rank(c.schedule, c.pp, c.vpp)
    stages = [st for st, r in enumerate(owner) if r == rank]
    inflight = schedule_inflight(c.schedule, c.pp, c.vpp, c.num_microbatches)
    layers = [plan.partition[st][1] - plan.partition[st][0] for st in stages]
    block_params = sum(local_params(c, *rank_block_params(model, plan.partition, stages)))
    params = sum(local_params(c, *rank_params(model, plan.partition, stages, ex.memory_layout)))
    m = memory[rank]
    cache = fp8_weight_cache_bytes(c, ex) * block_params
    return {
        "label": row["label"], "rank": rank, "pp": c.pp, "dp": c.dp, "microbatches": c.num_microbatches,
        "params_b": params / 1e9, "weights": (m["params"] - cache) / GiB, "fp8_cache": cache / GiB,
        "grads": m["grads"] / GiB, "optimizer": m["optimizer"] / GiB, "activations": m["activations"] / GiB,
        "layer_mib": layer_activation_bytes(model, c, "megatron", "gpu", execution=ex) / 2**20,
        "layers_per_chunk": max(layers), "inflight": sum(inflight[st] for st in stages),
        "megatron_inflight": megatron_warmup_inflight(c, rank),
        "logits": (logits_temporary_bytes(model, c, "megatron", ex) / GiB if len(owner) - 1 in stages else 0.0),
        "other": m["other"] / GiB, "total": m["total"] / GiB,
        "megatron_formula": megatron_theoretical_gib(model, c)}


def print_memory(data: dict) -> None:
    models = {k: v for k, v in data["models"].items() if k != "source"}
    print("Peak rank of each modelled row, GiB (the estimate's terms; in flight: micro-batches of one chunk the "
          "estimate keeps / Megatron-Core's warm-up count + 1 for that rank; Megatron-LM's theoretical estimate: "
          "weights + optimizer, activations)")
    print(f"{'row':16s} {'rank':>4s} {'P/rank':>6s} {'weights':>7s} {'fp8 w':>5s} {'grads':>5s} {'optim':>5s} "
          f"{'act':>5s} {'layer MiB':>9s} {'x chunk':>7s} {'in flight':>11s} {'logits':>6s} {'other':>5s} "
          f"{'total':>5s} | {'Mtron w+o':>9s} {'act':>5s} {'total':>5s}")
    for table in data["tables"]:
        for row in table["rows"]:
            if not_modelled(row, models):
                continue
            r = memory_breakdown(row, table, models)
            f = r["megatron_formula"]
            print(f"{r['label']:16s} {r['rank']:4d} {r['params_b']:5.2f}B {r['weights']:7.1f} {r['fp8_cache']:5.1f} "
                  f"{r['grads']:5.1f} {r['optimizer']:5.1f} {r['activations']:5.1f} {r['layer_mib']:9.0f} "
                  f"{r['layers_per_chunk']:7d} {r['inflight']:5.1f}/{r['megatron_inflight']:<5d} {r['logits']:6.1f} "
                  f"{r['other']:5.1f} {r['total']:5.1f} | {f['weights_optimizer']:9.1f} {f['activations']:5.1f} "
                  f"{f['total']:5.1f}")


def moe_block_terms(row: dict, table: dict, models: dict) -> dict:
    """Milliseconds one MoE block costs one rank per micro-batch (forward + both backward passes) in the row's
    layout, term by term from the specification model's pieces: the attention core, the attention projections, the
    router (and shared experts), the routed experts' grouped GEMMs, the fp8 casts (the block's, with the experts'
    in place of a dense MLP's), the copies of the routed rows (`cost/moe.routed_copy_bytes`), the rest of the
    element-wise work (norms, SwiGLU, the permutation to and from the all-to-all); and the step's terms (s)."""
    model = model_of(row, models, row["tp"])
    c, ex, cluster = config_of(row, row["precision"]), execution_of(row, table), cluster_of(row, table)
    pieces = model_pieces(model, cluster, c, execution=ex)
    gemm = precision(c.dtype).gemm
    dense, routed, experts = expert_gemms(model, c)
    tokens = (c.local_seq_len, c.micro_batch_size, c.tp)
    rate = cluster.device.memory_bandwidth_Bps * cluster.eff("memory")
    ms = 1e3
    terms = {"attention core": pieces.attention_core.total,
             "attention GEMMs": 3 * gemms_time(cluster, gemm, attention_gemms(model, *tokens)),
             "router GEMM": 3 * gemms_time(cluster, gemm, dense),
             "routed GEMMs": 3 * experts * gemms_time(cluster, gemm, routed) * load_imbalance(cluster, model),
             "fp8 casts": sum(scaling_time(model, cluster, c)) + sum(cast_seconds(cluster, c, *expert_cast_elements(
                 model, c))) - sum(cast_seconds(cluster, c, *mlp_cast_elements(model, c))),
             "routed copies": 2 * routed_copy_bytes(model, c, ex.moe_fp8_padding) / rate}
    block = pieces.attention_core.total + pieces.moe_rest.total
    terms["other element-wise"] = block - sum(terms.values())
    p = estimate(model, cluster, c, execution=ex, detail=True).prediction
    return {"label": row["label"], "block_ms": {k: v * ms for k, v in terms.items()}, "total_ms": block * ms,
            "rows_per_expert": rows_per_expert(model, c), "step_s": p["time_breakdown"],
            "predicted_step_s": p["iteration_time_s"],
            "published_step_s": row["gbs"] * row["seq_len"] / row["gpus"] / row["tokens_per_s_per_gpu"]}


def print_terms(data: dict) -> None:
    models = {k: v for k, v in data["models"].items() if k != "source"}
    for table in data["tables"]:
        for row in table["rows"]:
            model = PRESETS.get(row["model"])
            if not_modelled(row, models) or model is None or model.moe is None:
                continue
            r = moe_block_terms(row, table, models)
            print(f"{r['label']}: one MoE block, one micro-batch, one rank, ms (forward + backward; "
                  f"{r['rows_per_expert']:.0f} rows per local expert)")
            for name, value in r["block_ms"].items():
                print(f"  {name:20s} {value:7.2f}")
            print(f"  {'block':20s} {r['total_ms']:7.2f}")
            steps = ", ".join(f"{k} {v:.2f}" for k, v in r["step_s"].items() if v >= 0.005)
            print(f"  step, s: {steps}; predicted {r['predicted_step_s']:.2f}, published {r['published_step_s']:.2f}")


def _stats(errors: list[float]) -> dict:
    if not errors:
        return {}
    return dict(zip(("mean_abs_error_pct", "max_abs_error_pct", "n"), error_stats(errors, scale=1.0)))


def compare() -> dict:
    data = load()
    models = {k: v for k, v in data["models"].items() if k != "source"}
    tables = []
    for table in data["tables"]:
        rows = [compare_row(row, models, table) for row in table["rows"]]
        summary = {dtype: _stats([r["error_pct"] for r in rows if "error_pct" in r and r["precision"] == dtype])
                   for dtype in ("fp8", "bf16")}
        tables.append({"id": table["id"], "title": table["title"], "profile": table.get("profile", PROFILE),
                       "rows": rows, "summary": summary})
    every = [r for t in tables for r in t["rows"]]
    summary = {dtype: _stats([r["error_pct"] for r in every if "error_pct" in r and r["precision"] == dtype])
               for dtype in ("fp8", "bf16")}
    summary["dense"] = _stats([r["error_pct"] for r in every if "error_pct" in r and not r["moe"]])
    speedups = [r["predicted_speedup"] for r in every if "predicted_speedup" in r]
    summary["predicted_fp8_speedup"] = ({"min": min(speedups), "max": max(speedups), "n": len(speedups)}
                                        if speedups else {})
    modelled = [r for r in every if "fits" in r]
    profiles = {t.get("profile", PROFILE): t for t in data["tables"]}
    summary["memory"] = {"fit": sum(r["fits"] for r in modelled), "n": len(modelled),
                         "usable_gib": {name: [round(cluster.usable_memory_bytes / GiB, 2),
                                               round(cluster.device.memory_bytes / GiB, 2)]
                                        for name, cluster in ((name, cluster_of({"gpus": 8}, t))
                                                              for name, t in profiles.items())},
                         "peak_gib": {"min": min(r["peak_memory_gib"] for r in modelled),
                                      "max": max(r["peak_memory_gib"] for r in modelled)} if modelled else {}}
    return {"framework": FRAMEWORK, "tables": tables, "summary": summary}


def modelled_rows(data: dict, moe: bool = False):
    """(table, row, model spec) of every modelled row of a dense model (of an MoE model with `moe`), in the data
    file's order."""
    models = {k: v for k, v in data["models"].items() if k != "source"}
    for table in data["tables"]:
        for row in table["rows"]:
            if not not_modelled(row, models):
                model = model_of(row, models, row["tp"])
                if (model.moe is not None) == moe:
                    yield table, row, model


def block_gaps(data: dict) -> list[dict]:
    """For every modelled dense row: the published step's excess over the predicted one per transformer block and
    micro-batch of a pipeline rank (what a cost charged once per block and micro-batch, such as a host overhead per
    layer, would have to be to close the gap alone), beside the predicted block's time (forward and backward, one
    micro-batch, one rank)."""
    out = []
    for table, row, model in modelled_rows(data):
        c, ex, cluster = config_of(row, row["precision"]), execution_of(row, table), cluster_of(row, table)
        predicted = predict(row, table, model, row["precision"])["tokens_per_s_per_gpu"]
        tokens_per_gpu = c.global_batch_size * c.seq_len / row["gpus"]
        excess = (tokens_per_gpu / row["tokens_per_s_per_gpu"] - tokens_per_gpu / predicted) / (
            model.num_layers / c.pp * c.num_microbatches)
        block = model_pieces(model, cluster, c, execution=ex).block.total
        out.append({"label": row["label"], "layout": f"tp{c.tp} pp{c.pp} cp{c.cp} mbs{c.micro_batch_size}",
                    "excess_ms": 1e3 * excess, "block_ms": 1e3 * block, "share_pct": 100 * excess / block})
    return out


def print_gaps(data: dict) -> None:
    print("Dense rows: the published step's excess per block and micro-batch of a pipeline rank, ms, and as a share "
          "of the predicted block (forward + backward)")
    print(f"{'row':16s} {'layout':22s} {'excess ms':>9s} {'block ms':>8s} {'share':>6s}")
    for g in block_gaps(data):
        print(f"{g['label']:16s} {g['layout']:22s} {g['excess_ms']:9.2f} {g['block_ms']:8.2f} {g['share_pct']:5.0f}%")


def planner_picks(data: dict, moe: bool = False) -> list[dict]:
    """For every modelled dense row (MoE row with `moe`): the layout autoconf's search picks for the same model,
    GPUs, batch, sequence and precision under the row's framework flags (`execution_of`; the search weighs what
    Megatron-Core runs), its predicted tokens/s beside the predicted tokens/s of NVIDIA's published layout, whether
    the two layouts share tp, pp, cp, vp and ep, and whether the published layout is predicted to fit (a search
    weighs only layouts that do). Rows where nothing fits are left out. Both figures come from one model, so their
    ratio says how much faster than the expert's layout autoconf believes its pick to be, not how fast either runs;
    the published measurement is beside them. The vocabulary stays padded for the published TP."""
    from autoconf.solve.search import search

    out = []
    for table, row, model in modelled_rows(data, moe):
        published = predict(row, table, model, row["precision"])
        start = time.perf_counter()
        plans = search(model, cluster_of(row, table), row["gbs"], row["seq_len"], row["precision"], "flash",
                       top_k=1, execution=execution_of(row, table)).plans
        if not plans:  # (nothing fits the search's memory model: no pick to compare)
            continue
        best = plans[0]
        c = best.config
        same = (c.tp, c.pp, c.cp, c.vpp, c.ep) == (row["tp"], row["pp"], row["cp"], row.get("vp") or 1,
                                                   row.get("ep", 1))
        out.append({"table": table["id"], "label": row["label"], "gpus": row["gpus"],
                    "published_layout": f"tp{row['tp']} pp{row['pp']} cp{row['cp']} vp{row.get('vp') or 1} "
                                        + (f"ep{row['ep']} " if row.get("ep", 1) > 1 else "") + f"mbs{row['mbs']}",
                    "published_tps": row["tokens_per_s_per_gpu"],
                    "published_predicted_tps": round(published["tokens_per_s_per_gpu"], 1),
                    "published_fits": published["fits"],
                    "pick": c.label(),
                    "pick_predicted_tps": round(best.prediction["tokens_per_s"] / row["gpus"], 1),
                    "same_degrees": same, "search_s": round(time.perf_counter() - start, 1)})
    return out


def print_picks(data: dict) -> None:
    for moe in (False, True):
        print(f"\n{'MoE' if moe else 'Dense'} rows: autoconf's pick (search under the row's framework flags) against "
              f"NVIDIA's published layout, tokens/s per GPU (both predicted; the published run's measured figure "
              f"beside)")
        _print_picks(planner_picks(data, moe))


def _print_picks(picks: list[dict]) -> None:
    print(f"{'row':16s} {'table':22s} {'GPUs':>5s} {'published layout':24s} {'measured':>8s} {'pred':>7s} "
          f"{'pick pred':>9s} {'pick/pub':>8s}  pick")
    for p in picks:
        ratio = p["pick_predicted_tps"] / p["published_predicted_tps"]
        print(f"{p['label']:16s} {p['table']:22s} {p['gpus']:5d} {p['published_layout']:24s} "
              f"{p['published_tps']:8.0f} {p['published_predicted_tps']:7.0f} {p['pick_predicted_tps']:9.0f} "
              f"{ratio:8.3f}  {p['pick']}"
              f"{' (the same degrees)' if p['same_degrees'] else ''}"
              f"{'' if p['published_fits'] else ' (the published layout predicted not to fit)'}")
    ratios = sorted(p["pick_predicted_tps"] / p["published_predicted_tps"] for p in picks)
    if ratios:
        print(f"pick / published layout, both predicted: median {ratios[len(ratios) // 2]:.3f}, "
              f"{ratios[0]:.3f} to {ratios[-1]:.3f} over {len(ratios)} rows; "
              f"{sum(p['same_degrees'] for p in picks)} picks with the published tp, pp, cp, vp and ep")


def _print_stats(name: str, s: dict) -> None:
    if s:
        print(f"  {name:5s} tokens/s: {error_line(s['mean_abs_error_pct'], s['max_abs_error_pct'], s['n'])}")
    else:
        print(f"  {name:5s} tokens/s: no modelled row")


def main() -> int:
    args = sys.argv[1:] + [""]  # a trailing --flag reads "" and is refused by parse_flags in one line
    OVERRIDES.update(parse_flags(a.split("=", 1)[1] if a.startswith("--flag=") else args[i + 1]
                                 for i, a in enumerate(args[:-1]) if a == "--flag" or a.startswith("--flag=")))
    if "--memory" in sys.argv:
        print_memory(load())
        return 0
    if "--terms" in sys.argv:
        print_terms(load())
        return 0
    if "--gaps" in sys.argv:
        print_gaps(load())
        return 0
    if "--picks" in sys.argv:
        print_picks(load())
        return 0
    result = compare()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
        return 0
    print(f"NeMo / Megatron-Core published pre-training vs estimate, framework={result['framework']}"
          + "".join(f", {k}={v}" for k, v in OVERRIDES.items())
          + " (tokens/s per GPU; error = predicted / published - 1)")
    for table in result["tables"]:
        print(f"\n{table['title']} [{table['id']}, profile {table['profile']}]")
        print(f"{'row':16s} {'prec':4s} {'GPUs':>5s} {'layout':20s} {'published':>9s} {'pred':>8s} {'error':>8s} "
              f"{'FLOPs':>5s} {'GiB':>5s} {'fits':>4s} {'pred bf16':>9s} {'fp8/bf16':>8s}")
        for r in table["rows"]:
            head = f"{r['label']:16s} {r['precision']:4s} {r['gpus']:5d} {r['layout']:20s} {r['published_tps']:9.0f}"
            if "not_modelled" in r:
                print(f"{head} not modelled: {r['not_modelled']}")
                continue
            tail = (f"{r['predicted_bf16_tps']:9.0f} {r['predicted_speedup']:8.3f}" if "predicted_speedup" in r
                    else f"{'-':>9s} {'-':>8s}")
            print(f"{head} {r['predicted_tps']:8.0f} {r['error_pct']:+7.2f}% {r['flops_ratio']:5.2f} "
                  f"{r['peak_memory_gib']:5.1f} {'yes' if r['fits'] else 'NO':>4s} {tail}")
        for dtype in ("fp8", "bf16"):
            _print_stats(dtype, table["summary"][dtype])
    print("\nAll tables")
    for dtype in ("fp8", "bf16"):
        _print_stats(dtype, result["summary"][dtype])
    _print_stats("dense", result["summary"]["dense"])
    s = result["summary"]["predicted_fp8_speedup"]
    if s:
        print(f"  predicted FP8 / BF16 speed-up of the same layout: {s['min']:.3f} to {s['max']:.3f} over {s['n']} "
              f"rows (no BF16 row of these layouts is published)")
    m = result["summary"]["memory"]
    if m["n"]:
        usable = ", ".join(f"{name} {u:.1f} of {total:.1f} GiB" for name, (u, total) in m["usable_gib"].items())
        print(f"  memory: {m['fit']} of {m['n']} published layouts predicted to fit (usable: {usable}, the profile's "
              f"headroom; each run on its table's system); predicted peaks "
              f"{m['peak_gib']['min']:.1f} to {m['peak_gib']['max']:.1f} GiB")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"{sys.argv[0]}: error: {e}")
