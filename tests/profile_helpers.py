"""A synthetic measured CPU profile for tiny-gpt: compute tables, in-place TP layers and every CPU entry the profiler
writes (cpu_share, cpu_share_alone, collective_sync_s, pass_overhead_s), with round numbers."""

from __future__ import annotations

import dataclasses

from autoconf.spec.cluster import load_cluster
from autoconf.spec.presets import PRESETS

TINY = PRESETS["tiny-gpt"]
SEQ = 64
TP_LAYER = {1: (4e-3, 6e-3), 2: (5e-3, 7e-3), 4: (6e-3, 8e-3)}  # per micro-batch size: (forward, backward) seconds


def measured_cpu_profile(share: float = 0.5, alone: float | None = None, tp_layers: bool = True,
                         pass_overhead: float = 1e-3):
    """cpu-local with measured tables for tiny-gpt at seq SEQ (fp32), tp 1/2/4, micro-batches 1/2/4."""
    cpu = load_cluster("cpu-local")
    entries = []
    per_token = {"attention": 4e-6, "mlp": 5e-6, "norm": 2e-7, "embedding": 3e-7, "head": 2e-6}
    for tp in (1, 2, 4):
        for mb in (1, 2, 4):
            for block, rate in per_token.items():
                t = rate * mb * SEQ / (tp if block in ("attention", "mlp", "head") else 1)
                entries.append({"block": block, "tp": tp, "micro_batch": mb, "seq_len": SEQ, "forward_s": t,
                                "backward_input_s": 0.0 if block == "embedding" else t,
                                "backward_weight_s": t})
    compute = {"dtype": "fp32", "device": "cpu", "model": TINY.to_dict(), "entries": entries,
               "optimizer_s_per_param": 5e-9, "optimizer_dtensor_s_per_param": 2e-8}
    if tp_layers:
        compute["tp_layers"] = [{"tp": tp, "micro_batch": mb, "seq_len": SEQ, "sequence_parallel": sp,
                                 "forward_s": TP_LAYER[mb][0] * (1.5 if sp else 1) * tp / 2,
                                 "backward_s": TP_LAYER[mb][1] * (1.5 if sp else 1) * tp / 2}
                                for tp in (2, 4) for sp in (False, True) for mb in (1, 2, 4)]
    efficiency = {**cpu.efficiency,
                  "cpu_share": {"value": share, "why": "test"},
                  "collective_sync_s": {"value": 2e-3, "why": "test"},
                  "pass_overhead_s": {"value": pass_overhead, "why": "test"}}
    if alone is not None:
        efficiency["cpu_share_alone"] = {"value": alone, "why": "test"}
    return dataclasses.replace(cpu, efficiency=efficiency, compute=compute, source="measured")
