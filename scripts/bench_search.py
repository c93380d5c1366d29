"""Planner speed at scale, timed end to end (search + CP-SAT refinement of the top 5): the cases of issues 3 and 12.

    gpt-1t (Megatron's 1T model) on 384 x 8 A100, batch 3072, seq 2048, fp16, standard attention
    Llama-3.1-405B on 2048 x 8 H100, batch 2048, seq 8192
    llama3-70b, batch 8192, seq 8192, on 8, 2048, 8192 and 12288 x 8 H100: the search must not grow with the
        cluster faster than the candidates it weighs (12,288 nodes are 98,304 GPUs: 12,500 nodes, 100k GPUs, have
        no layout whose data-parallel degree divides batch 8192)
    DeepSeek-V3 (671B MoE) on 8 x 8 H800, batch 512, seq 4096, planned for Megatron-Core: a large MoE model, whose
        search weighs ep and etp besides the dense degrees (issue 15; the 256-node plan of the issue took 792 s)
    GPT-OSS-120B on 8 x 8 H100, batch 64, seq 131072: long context and MoE at once (issues 14 and 15), whose search
        weighs cp and its exchange besides ep and etp (1.2M candidates)

Usage: python scripts/bench_search.py [--json DIR] [CASE_PREFIX ...]   (prints one JSON line per case; with --json
the ranked plans of case i go to DIR/case{i}.json, to compare the search's results across code changes)
"""

import json
import sys
import time
from pathlib import Path

from autoconf.solve.search import search
from autoconf.spec import frameworks
from autoconf.spec.cluster import load_cluster
from autoconf.spec.presets import PRESETS, from_hf_config

# Llama-3.1-405B's Hugging Face config.json (meta-llama/Llama-3.1-405B), the keys autoconf reads.
LLAMA_405B_CONFIG = {"model_type": "llama", "num_hidden_layers": 126, "hidden_size": 16384,
                     "num_attention_heads": 128, "num_key_value_heads": 8, "intermediate_size": 53248,
                     "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0,
                     "rms_norm_eps": 1e-05, "tie_word_embeddings": False}

# (label, model, cluster, nodes, global batch, seq len, dtype, attention, target seconds, framework or None for
# the search's default execution)
CASES = [
    ("gpt-1t (Megatron 1T) on 384 x 8 A100, batch 3072, seq 2048, fp16, standard attention", PRESETS["gpt-1t"],
     "dgx-a100-80g", 384, 3072, 2048, "fp16", "standard", 5.0, None),
    ("Llama-3.1-405B on 2048 x 8 H100, batch 2048, seq 8192", from_hf_config(LLAMA_405B_CONFIG, "llama3.1-405b"),
     "dgx-h100-80g", 2048, 2048, 8192, "bf16", "flash", 60.0, None),
] + [(f"llama3-70b on {nodes} x 8 H100, batch 8192, seq 8192", PRESETS["llama3-70b"], "dgx-h100-80g", nodes, 8192,
      8192, "bf16", "flash", 10.0, None) for nodes in (8, 2048, 8192, 12288)] + [
    ("deepseek-v3 on 8 x 8 H800, batch 512, seq 4096, megatron-core", PRESETS["deepseek-v3"], "dgx-h800-80g", 8, 512,
     4096, "bf16", "flash", 60.0, "megatron-core"),
    ("gpt-oss-120b on 8 x 8 H100, batch 64, seq 131072", PRESETS["gpt-oss-120b"], "dgx-h100-80g", 8, 64, 131072,
     "bf16", "flash", 60.0, None),
]

if __name__ == "__main__":
    wanted = sys.argv[1:]
    out_dir = None
    if wanted[:1] == ["--json"]:
        out_dir, wanted = Path(wanted[1]), wanted[2:]
        out_dir.mkdir(parents=True, exist_ok=True)
    for index, (label, model, cluster_name, nodes, batch, seq, dtype, attention, target, framework) in enumerate(
            CASES):
        if wanted and not any(label.startswith(prefix) for prefix in wanted):
            continue
        cluster = load_cluster(cluster_name, nodes=nodes)
        start = time.perf_counter()
        result = search(model, cluster, batch, seq, dtype, attention,
                        **({"execution": frameworks.execution(framework)} if framework else {}))
        seconds = time.perf_counter() - start
        best = result.plans[0]
        if out_dir is not None:
            (out_dir / f"case{index}.json").write_text(json.dumps([plan.to_dict() for plan in result.plans],
                                                                   indent=1, sort_keys=True))
        print(json.dumps({"case": label, "seconds": round(seconds, 2), "target_s": target, **result.stats,
                          "best": best.config.label(), "predicted_mfu": round(best.prediction["mfu"], 3)}), flush=True)
