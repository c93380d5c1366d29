"""Planner speed at scale: the two cases of issue 3, timed end to end (search + CP-SAT refinement of the top 5).

Usage: python scripts/bench_search.py
"""

import json
import time

from autoconf.solve.search import search
from autoconf.spec.cluster import load_cluster
from autoconf.spec.presets import PRESETS, from_hf_config

# Llama-3.1-405B's Hugging Face config.json (meta-llama/Llama-3.1-405B), the keys autoconf reads.
LLAMA_405B_CONFIG = {"model_type": "llama", "num_hidden_layers": 126, "hidden_size": 16384,
                     "num_attention_heads": 128, "num_key_value_heads": 8, "intermediate_size": 53248,
                     "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0,
                     "rms_norm_eps": 1e-05, "tie_word_embeddings": False}

CASES = [
    ("gpt-1t (Megatron 1T) on 384 x 8 A100, batch 3072, seq 2048", PRESETS["gpt-1t"], "dgx-a100-80g", 384, 3072,
     2048, 10.0),
    ("Llama-3.1-405B on 2048 x 8 H100, batch 2048, seq 8192", from_hf_config(LLAMA_405B_CONFIG, "llama3.1-405b"),
     "dgx-h100-80g", 2048, 2048, 8192, 60.0),
]

if __name__ == "__main__":
    rows = []
    for label, model, cluster_name, nodes, batch, seq, target in CASES:
        cluster = load_cluster(cluster_name, nodes=nodes)
        start = time.perf_counter()
        result = search(model, cluster, batch, seq, "bf16")
        seconds = time.perf_counter() - start
        best = result.plans[0]
        c = best.config
        rows.append({"case": label, "seconds": round(seconds, 2), "target_s": target, **result.stats,
                     "best": f"tp{c.tp} pp{c.pp} dp{c.dp} vpp{c.vpp} mb{c.micro_batch_size} {c.schedule} "
                             f"zero{c.zero_stage} rc={c.recompute} sp={c.sequence_parallel}",
                     "predicted_mfu": round(best.prediction["mfu"], 3)})
        print(json.dumps(rows[-1]))
