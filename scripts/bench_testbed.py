#!/usr/bin/env python
"""Testbed figures: profile, plan and measure tiny-gpt on an emulated 3-node cluster with one slow link (root).

    python scripts/bench_testbed.py [--out DIR] [--slow-mbit 25] [--mid-mbit 200] [--quota 0.6] [--global-batch 12] [--seq-len 128]
                                    [--configs 5] [--steps 6] [--model tiny-gpt] [--profile PROFILE.json]

1. brings up `scripts/testbed.py`'s testbed: 3 nodes x 1 rank, node 0 - node 1 shaped to --slow-mbit, node 1 - node 2 to
   --mid-mbit, node 0 - node 2 unshaped, --quota CPUs per rank (so every rank is a device of fixed speed);
2. profiles it through the testbed (`python -m torch.distributed.run ... -m autoconf.profile.run --quick`, one
   torchrun per node) unless --profile names an existing profile; prints the measured inter-node matrix against
   the shaped rates;
3. plans --model on the measured profile and measures --configs layouts (the planner's choice first; validate's
   selection) through the testbed with `autoconf launch --nnodes 3 --node-rank {node_rank} ...`: regret =
   (measured time of the plan - best measured) / best measured;
4. runs the plan's degrees with the default rank order (mesh = arange) and again with the plan's placement,
   back to back, and reports the measured speedup of the placement.
Prints one JSON line with every figure and writes DIR/bench.json. Always takes the testbed down at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NODES = 3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/autoconf-bench-testbed")
    p.add_argument("--slow-mbit", type=float, default=25.0)
    p.add_argument("--mid-mbit", type=float, default=200.0, help="node 1 - node 2 (node 0 - node 2 is unshaped)")
    p.add_argument("--quota", type=float, default=0.6)
    p.add_argument("--global-batch", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--configs", type=int, default=5)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--model", default="tiny-gpt")
    p.add_argument("--profile", default=None, help="use this profile instead of profiling the testbed")
    p.add_argument("--run-timeout", type=float, default=300.0)
    args = p.parse_args()

    import numpy as np

    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.plan import load_plan
    from autoconf.spec.presets import load_model
    from autoconf.testbed import parse_spec
    from autoconf.testbed.jobs import launch_runner, profile_testbed
    from autoconf.testbed.system import down, up
    from autoconf.validate.run import read_metrics, validate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec_data = {"nodes": NODES, "ranks_per_node": 1, "subnet": "10.77.0.0/24",
                 "links": [{"a": 0, "b": 1, "rate_mbit": args.slow_mbit}, {"a": 1, "b": 2, "rate_mbit": args.mid_mbit}],
                 "cpu_quota_per_rank": args.quota}
    (out / "testbed.json").write_text(json.dumps(spec_data, indent=2) + "\n")
    figures: dict = {"testbed": spec_data, "model": args.model, "global_batch": args.global_batch,
                     "seq_len": args.seq_len, "steps": args.steps}
    start = time.perf_counter()
    down()  # a leftover testbed from an interrupted run
    state = up(parse_spec(spec_data))
    port = 29600
    try:
        profile = Path(args.profile) if args.profile else out / "profile.json"
        if not profile.exists():
            code = profile_testbed(state, profile, args.model, out / "profile.log", port)
            if code:
                print(f"profiling failed with exit code {code}; see {out / 'profile.log'}", file=sys.stderr)
                return code
        figures["profile_s"] = round(time.perf_counter() - start, 1)
        cluster = load_cluster(str(profile))
        shaped = {(0, 1): args.slow_mbit * 1e6 / 8, (1, 2): args.mid_mbit * 1e6 / 8}
        matrix = []
        for a in range(NODES):
            for b in range(NODES):
                if a != b:
                    link = cluster.inter_node_matrix[a][b]
                    rate = shaped.get((min(a, b), max(a, b)))
                    matrix.append({"from": a, "to": b, "measured_MBps": link.bandwidth_Bps / 1e6,
                                   "latency_us": link.latency_s * 1e6,
                                   "shaped_MBps": rate / 1e6 if rate else None,
                                   "error": (link.bandwidth_Bps - rate) / rate if rate else None})
        figures["inter_node_matrix"] = matrix
        print(json.dumps({"inter_node_matrix": matrix}), flush=True)

        model = load_model(args.model)
        runner = launch_runner(state, args.run_timeout, port + 1)
        val = out / "val"
        report = validate(model, cluster, cluster.name, args.global_batch, args.seq_len, "fp32", args.configs,
                          args.steps, val, calibrate=False, force=True, runner=runner)
        figures["layouts"] = [{"label": r.label, "predicted_s": r.predicted_s, "measured_s": r.measured_s,
                               "status": r.status, "chosen": r.chosen} for r in report.runs]
        figures.update(median_abs_error=report.median_abs_error, spearman=report.spearman, regret=report.regret)

        chosen = load_plan(val / "runs" / "0" / "plan.json")
        c = chosen.config
        default_mesh = np.arange(c.world_size).reshape(c.pp, c.dp, c.tp).tolist()
        figures["plan"] = {"label": report.runs[0].label, "mesh": chosen.placement["mesh"],
                           "default_mesh": default_mesh, "reordered": chosen.placement["mesh"] != default_mesh}
        data = copy.deepcopy(chosen.to_dict())
        data["placement"] = {**data["placement"], "mesh": default_mesh}
        pair = out / "placement"
        pair.mkdir(exist_ok=True)
        (pair / "default.json").write_text(json.dumps(data, indent=2) + "\n")
        (pair / "planned.json").write_text(chosen.to_json())
        times = {}
        for name in ("default", "planned"):
            metrics, log = pair / f"{name}.metrics.jsonl", pair / f"{name}.log"
            code = runner(pair / f"{name}.json", metrics, log, args.steps)
            measured, _, why = read_metrics(metrics)
            times[name] = measured if code == 0 else None
            print(f"placement {name}: exit {code}, measured {measured} {why or ''}", flush=True)
        figures["placement_s"] = times
        if times["default"] and times["planned"]:
            figures["placement_speedup"] = times["default"] / times["planned"]
    finally:
        down()
    figures["wall_s"] = round(time.perf_counter() - start, 1)
    (out / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
